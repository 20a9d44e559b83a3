//! Finding the LUN (and the offset in it) behind a file system: block
//! devices, partitions, mount points (decision 010).

use super::attach::{attachment_is_live, list, Attachment};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub(super) fn device_name(device: &Path) -> String {
    device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// (major:minor, mount point) of every mount of this process's namespace.
pub(super) fn mount_points() -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let point = fields.nth(1)?;
            Some((dev.to_string(), unescape_mount_point(point)))
        })
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_point(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the device `dev` ("major:minor") or one of its partitions is
/// mounted, if anywhere.
pub fn mounted_on(dev: &str) -> Result<Option<String>, String> {
    let mut devs = vec![dev.to_string()];
    if let Ok(sys) = std::fs::canonicalize(format!("/sys/dev/block/{dev}")) {
        if let Ok(entries) = std::fs::read_dir(&sys) {
            for entry in entries.flatten() {
                if entry.path().join("partition").exists() {
                    if let Some(d) = read_trimmed(&entry.path().join("dev").to_string_lossy()) {
                        devs.push(d);
                    }
                }
            }
        }
    }
    Ok(mount_points()?
        .into_iter()
        .find(|(d, _)| devs.contains(d))
        .map(|(_, point)| point))
}

/// Where a file system's blocks are on a LUN.
#[derive(Clone, Debug)]
pub struct Location {
    /// LUN, or LUN@SNAPSHOT.
    pub lun: String,
    /// Where the file system's device starts in the LUN, in bytes (a
    /// partition's start).
    pub device_offset: u64,
    /// The whole block device (the one attached).
    pub device: PathBuf,
    /// The registry's entry, unless the LUN was named with --lun.
    pub attachment: Option<Attachment>,
}

/// Overrides from the command line for a LUN the registry does not know.
#[derive(Clone, Debug, Default)]
pub struct LocationOverride {
    pub lun: Option<String>,
    pub device_offset: Option<u64>,
}

/// The LUN and offset behind the file system on device `st_dev` (the seed's
/// FIG. 5: the volume's device, and where the volume starts on it).
pub fn locate(
    dir: &Path,
    st_dev: u64,
    what: &str,
    over: &LocationOverride,
) -> Result<Location, String> {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    if major == 0 {
        return Err(format!(
            "{what} is on a file system without a block device of its own (device 0:{minor}: tmpfs, overlay, btrfs, NFS or FUSE?); \
             blockfork clones files of file systems on an attached LUN"
        ));
    }
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).map_err(|e| {
        format!("{what} is on device {major}:{minor}, which sysfs does not show: {e}")
    })?;
    let (whole, partition_start) = if sys.join("partition").exists() {
        let start: u64 = read_trimmed(&sys.join("start").to_string_lossy())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("cannot read the start of partition {}", sys.display()))?;
        let parent = sys
            .parent()
            .ok_or_else(|| format!("partition {} has no disk", sys.display()))?
            .to_path_buf();
        // sysfs counts partition starts in 512-byte sectors, always.
        (parent, start * 512)
    } else {
        (sys, 0)
    };
    let name = whole
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let device = PathBuf::from(format!("/dev/{name}"));
    let device_offset = over.device_offset.unwrap_or(partition_start);
    if let Some(lun) = &over.lun {
        return Ok(Location {
            lun: lun.clone(),
            device_offset,
            device,
            attachment: None,
        });
    }
    let whole_dev = read_trimmed(&whole.join("dev").to_string_lossy()).unwrap_or_default();
    let attachment = list(dir)?
        .into_iter()
        .find(|a| a.dev == whole_dev)
        .ok_or_else(|| {
            format!(
                "{what} is on {} ({whole_dev}), which `blockfork host attach` did not attach (registry in {}); \
                 attach the LUN with it, or name the LUN with --lun (and --device-offset if the file system \
                 does not start at the LUN's first byte)",
                device.display(),
                dir.display()
            )
        })?;
    if !attachment_is_live(&attachment) {
        return Err(format!(
            "the registry says {} is LUN \"{}\", but the device no longer is that attachment; \
             detach it with `blockfork host detach {}` and attach again",
            attachment.device.display(),
            attachment.lun,
            attachment.device.display()
        ));
    }
    Ok(Location {
        lun: attachment.lun.clone(),
        device_offset,
        device,
        attachment: Some(attachment),
    })
}

/// The device number of the file system holding `path` (or, when `path`
/// does not exist yet, its directory).
pub fn st_dev_of(path: &Path) -> Result<u64, String> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            std::fs::metadata(parent)
                .map(|m| m.dev())
                .map_err(|e| format!("cannot stat {}: {e}", parent.display()))
        }
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_unescape() {
        assert_eq!(unescape_mount_point("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_point("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mount_point("/plain"), "/plain");
        assert_eq!(unescape_mount_point("/end\\04"), "/end\\04");
    }
}
