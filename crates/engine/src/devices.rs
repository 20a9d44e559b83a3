//! The devices of a multi-device pool (issue 14, decision 027): making a
//! file or block device one of the pool's, and opening it again, by its
//! label. A device is never created here: it is a file or block device the
//! operator made (`truncate -s 100G /srv/d0`, a disk), so that a typo in a
//! path cannot conjure an empty "device" on the root file system.

use crate::io::{DataFile, FileData};
use crate::label::{Label, LABEL_BYTES};
use crate::types::{Error, Result, BLOCK_SIZE};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One open device.
pub struct Device {
    pub path: PathBuf,
    pub label: Label,
    pub file: FileData,
}

/// Who a device will be in the pool being made.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub pool: u128,
    pub device: u128,
    pub index: u32,
    pub segment_bytes: u64,
    pub added_secs: u64,
}

/// Bytes of an existing file or block device (a block device's length is
/// where seeking to its end lands).
fn size_of(path: &Path) -> Result<u64> {
    let mut f = OpenOptions::new().read(true).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::InvalidArgument(format!(
                "{} does not exist; a device is an existing file or block device (make a file with: truncate -s SIZE {})",
                path.display(),
                path.display()
            ))
        } else {
            Error::Io(e)
        }
    })?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is a directory, not a file or block device",
            path.display()
        )));
    }
    Ok(f.seek(SeekFrom::End(0))?)
}

fn read_first(file: &FileData, path: &Path) -> Result<Vec<u8>> {
    let mut first = vec![0u8; LABEL_BYTES as usize];
    file.read_at(&mut first, 0).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: cannot read its label: {e}", path.display()),
        ))
    })?;
    Ok(first)
}

/// Checks that `path` may become a device of a new pool, changing
/// nothing: it exists, holds a label and a segment, and (unless `force`)
/// carries no blockfork label. Answers its usable bytes and the open file.
fn vet_open(path: &Path, segment_bytes: u64, force: bool) -> Result<(u64, FileData)> {
    let bytes = size_of(path)? / BLOCK_SIZE * BLOCK_SIZE;
    let need = LABEL_BYTES + segment_bytes;
    if bytes < need {
        return Err(Error::InvalidArgument(format!(
            "{} holds {bytes} bytes; a device needs at least {need} (its label and one segment of {segment_bytes} bytes)",
            path.display(),
        )));
    }
    // Not FileData::open's growth: a device is used at the size it has.
    let file = FileData::open(path, 0)?;
    if !force {
        if let Ok(old) = Label::read(&read_first(&file, path)?, &path.display().to_string()) {
            return Err(Error::InvalidArgument(format!(
                "{} already belongs to blockfork pool {:032x} (device {} of it); add --force to reuse it, which destroys what it holds",
                path.display(),
                old.pool,
                old.index
            )));
        }
    }
    Ok((bytes, file))
}

/// Checks, changing nothing, that `path` may become a device of a pool
/// with segments of `segment_bytes` (see `format`).
pub fn vet(path: &Path, segment_bytes: u64, force: bool) -> Result<u64> {
    vet_open(path, segment_bytes, force).map(|(bytes, _)| bytes)
}

/// Makes `path` a device of a pool: checks its size, refuses a device that
/// already carries a blockfork label unless `force`, and writes both label
/// copies, synced. Its whole size is used, rounded down to whole blocks.
pub fn format(path: &Path, id: Identity, force: bool) -> Result<Device> {
    let (bytes, file) = vet_open(path, id.segment_bytes, force)?;
    let label = Label {
        generation: 1,
        pool: id.pool,
        device: id.device,
        index: id.index,
        size_bytes: bytes,
        segment_bytes: id.segment_bytes,
        added_secs: id.added_secs,
    };
    let block = label.encode();
    file.write_at(&block, 0)?;
    file.write_at(&block, BLOCK_SIZE)?;
    file.sync()?;
    Ok(Device {
        path: path.to_path_buf(),
        label,
        file,
    })
}

/// Opens a device the pool knows as `device`, checking its label.
pub fn open(path: &Path, pool: u128, device: u128) -> Result<Device> {
    let bytes = size_of(path)?;
    let file = FileData::open(path, 0)?;
    let what = path.display().to_string();
    let label = Label::read(&read_first(&file, path)?, &what)?;
    label.expect(pool, device, &what)?;
    if bytes < label.size_bytes {
        return Err(Error::InvalidArgument(format!(
            "{what} holds {bytes} bytes, fewer than the {} it was labelled with: it shrank, or it is another device",
            label.size_bytes
        )));
    }
    Ok(Device {
        path: path.to_path_buf(),
        label,
        file,
    })
}

/// Opens a device that says it belongs to pool `pool`, whichever device
/// of it it is (the label says).
pub fn open_member(path: &Path, pool: u128) -> Result<Device> {
    let what = path.display().to_string();
    size_of(path)?;
    let file = FileData::open(path, 0)?;
    let label = Label::read(&read_first(&file, path)?, &what)?;
    label.expect(pool, label.device, &what)?;
    open(path, pool, label.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 1 << 20;

    fn id(index: u32) -> Identity {
        Identity {
            pool: 0xfeed,
            device: 100 + u128::from(index),
            index,
            segment_bytes: SEGMENT,
            added_secs: 1,
        }
    }

    fn file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }

    #[test]
    fn format_then_open_and_the_label_survives_one_damaged_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "d0", 8 << 20);
        let d = format(&p, id(0), false).unwrap();
        assert_eq!(d.label.size_bytes, 8 << 20);
        assert_eq!(
            d.label.segments(),
            7,
            "the label takes the front of the first"
        );
        drop(d);
        let d = open(&p, 0xfeed, 100).unwrap();
        assert_eq!(d.label.index, 0);
        // Rot in the first copy: the second answers.
        d.file.write_at(&[0xff; 64], 32).unwrap();
        drop(d);
        assert_eq!(open(&p, 0xfeed, 100).unwrap().label.index, 0);
    }

    #[test]
    fn refusals_name_the_device_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = format(&missing, id(0), false).err().unwrap().to_string();
        assert!(
            e.contains("does not exist") && e.contains("truncate -s SIZE"),
            "{e}"
        );
        assert!(!missing.exists(), "nothing was created");

        let small = file(dir.path(), "small", SEGMENT);
        let e = format(&small, id(0), false).err().unwrap().to_string();
        assert!(e.contains("a device needs at least"), "{e}");

        let e = format(dir.path(), id(0), false).err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");

        let p = file(dir.path(), "d1", 4 << 20);
        format(&p, id(1), false).unwrap();
        let e = format(&p, id(2), false).err().unwrap().to_string();
        assert!(
            e.contains("already belongs to blockfork pool") && e.contains("--force"),
            "{e}"
        );
        assert_eq!(
            open(&p, 0xfeed, 101).unwrap().label.index,
            1,
            "the refusal changed nothing"
        );
        format(&p, id(2), true).unwrap();
        assert_eq!(open(&p, 0xfeed, 102).unwrap().label.index, 2);

        let e = open(&p, 0xbeef, 102).err().unwrap().to_string();
        assert!(e.contains("belongs to another pool"), "{e}");
        let e = open(&p, 0xfeed, 101).err().unwrap().to_string();
        assert!(e.contains("is device"), "{e}");

        let plain = file(dir.path(), "plain", 4 << 20);
        let e = open(&plain, 0xfeed, 100).err().unwrap().to_string();
        assert!(e.contains("is not a blockfork device"), "{e}");

        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3 << 20)
            .unwrap();
        let e = open(&p, 0xfeed, 102).err().unwrap().to_string();
        assert!(e.contains("it shrank"), "{e}");
    }
}
