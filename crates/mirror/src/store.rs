//! Mirroring's own durable state: small JSON files in `DATA/mirror/`,
//! each replaced atomically (written beside, synced, renamed, directory
//! synced), so that a crash leaves the old file or the new one.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads `path`, or the default when it does not exist yet.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not valid mirror state: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces `path` with `value`, durably; readable by the owner only
/// (peers' tokens are secrets).
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let dir = path.parent().expect("state files live in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp: PathBuf = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("state serializes");
    let write = || -> std::io::Result<()> {
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/state.json");
        let empty: Vec<String> = load(&path).unwrap();
        assert!(empty.is_empty());
        save(&path, &vec!["a".to_string()]).unwrap();
        assert_eq!(load::<Vec<String>>(&path).unwrap(), ["a"]);
        std::fs::write(&path, b"{").unwrap();
        assert!(load::<Vec<String>>(&path)
            .unwrap_err()
            .contains("not valid"));
    }
}
