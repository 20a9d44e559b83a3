//! A file's extents from the FIEMAP ioctl (the seed's FIG. 5: the file
//! system's own map of which device blocks hold which file bytes), and the
//! checks that decide whether those blocks can be cloned as they are.

use super::mapping::{LunExtent, BLOCK_BYTES};
use std::fs::File;
use std::os::fd::AsRawFd;

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Ask the file system to write delayed allocations first.
const FIEMAP_FLAG_SYNC: u32 = 0x1;

pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x80;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
pub const FIEMAP_EXTENT_MERGED: u32 = 0x1000;
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Extents whose device blocks do not hold the file's bytes as they read:
/// not placed yet, stored transformed, shared with other files' tails, or
/// (unwritten) reading as zeros whatever the blocks hold.
pub const REFUSED_FLAGS: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_ENCRYPTED
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL
    | FIEMAP_EXTENT_UNWRITTEN;

/// Extents asked of the kernel per ioctl.
const EXTENTS_PER_CALL: usize = 512;
/// Most extents one file may have; a file more fragmented than this is
/// refused rather than sent as a huge request.
pub const EXTENTS_MAX: usize = 1_000_000;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// One extent as the file system reports it: bytes `[logical, logical +
/// length)` of the file at byte `physical` of the file system's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileExtent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

/// Every extent of `file`, in file order. With `sync`, the file system
/// first writes out delayed allocations, so that they have places.
pub fn extents(file: &File, sync: bool) -> std::io::Result<Vec<FileExtent>> {
    let mut all = Vec::new();
    let mut start = 0u64;
    let mut request = Box::new(FiemapRequest {
        header: FiemapHeader::default(),
        extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
    });
    loop {
        request.header = FiemapHeader {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: if sync { FIEMAP_FLAG_SYNC } else { 0 },
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
        };
        // SAFETY: `request` is a live, writable `struct fiemap` followed by
        // room for `fm_extent_count` extents, as the ioctl expects.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP,
                &mut *request as *mut FiemapRequest,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mapped = request.header.fm_mapped_extents as usize;
        assert!(mapped <= EXTENTS_PER_CALL, "the kernel fills what we gave");
        if mapped == 0 {
            return Ok(all);
        }
        for e in &request.extents[..mapped] {
            all.push(FileExtent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
        }
        let last = request.extents[mapped - 1];
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(all);
        }
        if all.len() > EXTENTS_MAX {
            return Err(std::io::Error::other(format!(
                "more than {EXTENTS_MAX} extents"
            )));
        }
        start = last.fe_logical + last.fe_length;
    }
}

/// Names of the flags set in `flags`, for messages.
pub fn flag_names(flags: u32) -> String {
    const NAMES: [(u32, &str); 11] = [
        (FIEMAP_EXTENT_UNKNOWN, "unknown location"),
        (FIEMAP_EXTENT_DELALLOC, "delayed allocation"),
        (FIEMAP_EXTENT_ENCODED, "encoded"),
        (FIEMAP_EXTENT_DATA_ENCRYPTED, "encrypted"),
        (FIEMAP_EXTENT_NOT_ALIGNED, "not block-aligned"),
        (FIEMAP_EXTENT_DATA_INLINE, "inline data"),
        (FIEMAP_EXTENT_DATA_TAIL, "packed tail"),
        (FIEMAP_EXTENT_UNWRITTEN, "unwritten (preallocated)"),
        (FIEMAP_EXTENT_MERGED, "merged"),
        (FIEMAP_EXTENT_SHARED, "shared"),
        (FIEMAP_EXTENT_LAST, "last"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a file's extents cannot be cloned block for block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The file has `size` bytes but no extent (data stored in the inode,
    /// or nothing written yet).
    NoExtents { size: u64 },
    /// Bytes `[start, end)` of the file have no blocks: a hole.
    Hole { start: u64, end: u64 },
    /// An extent's flags say its blocks do not hold the file's bytes.
    Flags { logical: u64, flags: u32 },
    /// An extent is not aligned to 4 KiB on the LUN.
    Unaligned {
        logical: u64,
        lun_offset: u64,
        length: u64,
    },
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::NoExtents { size } => write!(
                f,
                "has {size} bytes but no blocks of its own (inline data, or not written out)"
            ),
            LayoutError::Hole { start, end } => write!(
                f,
                "is sparse: bytes {start}..{end} are a hole; make it fully allocated first (for example `cp --sparse=never`)"
            ),
            LayoutError::Flags { logical, flags } => write!(
                f,
                "has an extent at file offset {logical} that cannot be cloned block for block ({})",
                flag_names(*flags & REFUSED_FLAGS)
            ),
            LayoutError::Unaligned {
                logical,
                lun_offset,
                length,
            } => write!(
                f,
                "has an extent at file offset {logical} (LUN offset {lun_offset}, {length} bytes) not aligned to 4 KiB; \
                 the file system needs 4 KiB blocks on a 4 KiB-aligned partition"
            ),
        }
    }
}

/// The extents of a file of `size` bytes on a device that starts
/// `device_offset` bytes into its LUN, as LUN extents covering `[0,
/// size rounded up to 4 KiB)`: clipped to that, adjacent extents merged,
/// and refused if anything there is a hole, flagged, or unaligned.
/// Extents wholly past the end (preallocated space) are ignored.
pub fn lun_layout(
    extents: &[FileExtent],
    size: u64,
    device_offset: u64,
) -> Result<Vec<LunExtent>, LayoutError> {
    let end = super::mapping::rounded_size(size);
    if size > 0 && extents.is_empty() {
        return Err(LayoutError::NoExtents { size });
    }
    let mut out: Vec<LunExtent> = Vec::with_capacity(extents.len());
    let mut covered = 0u64;
    for e in extents {
        if e.logical >= end {
            break;
        }
        if e.flags & FIEMAP_EXTENT_DATA_INLINE != 0 && e.logical == 0 && covered == 0 {
            return Err(LayoutError::NoExtents { size });
        }
        if e.flags & REFUSED_FLAGS != 0 {
            return Err(LayoutError::Flags {
                logical: e.logical,
                flags: e.flags,
            });
        }
        if e.logical > covered {
            return Err(LayoutError::Hole {
                start: covered,
                end: e.logical.min(size),
            });
        }
        let lun_offset = device_offset.saturating_add(e.physical);
        let length = e.length.min(end - e.logical);
        if [e.logical, lun_offset, length]
            .iter()
            .any(|v| v % BLOCK_BYTES != 0)
        {
            return Err(LayoutError::Unaligned {
                logical: e.logical,
                lun_offset,
                length,
            });
        }
        match out.last_mut() {
            // The file system may cut one run of blocks into several
            // extents (ext4 does at 128 MiB); one range is cheaper.
            Some(prev)
                if prev.logical + prev.length == e.logical
                    && prev.lun_offset + prev.length == lun_offset =>
            {
                prev.length += length;
            }
            _ => out.push(LunExtent {
                logical: e.logical,
                lun_offset,
                length,
            }),
        }
        covered = covered.max(e.logical + length);
    }
    if covered < end {
        return Err(LayoutError::Hole {
            start: covered,
            end: size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = BLOCK_BYTES;

    fn fe(logical: u64, physical: u64, length: u64, flags: u32) -> FileExtent {
        FileExtent {
            logical: logical * B,
            physical: physical * B,
            length: length * B,
            flags,
        }
    }

    #[test]
    fn layouts() {
        let extents = [
            fe(0, 10, 2, 0),
            fe(2, 12, 3, 0),
            fe(5, 40, 1, FIEMAP_EXTENT_LAST),
        ];
        // Adjacent extents merge; the partition offset is added; the last
        // partial block is included whole.
        assert_eq!(
            lun_layout(&extents, 5 * B + 1, 1 << 20).unwrap(),
            vec![
                LunExtent {
                    logical: 0,
                    lun_offset: (1 << 20) + 10 * B,
                    length: 5 * B
                },
                LunExtent {
                    logical: 5 * B,
                    lun_offset: (1 << 20) + 40 * B,
                    length: B
                },
            ]
        );
        // Shared extents (reflinked on XFS) hold the file's bytes: fine.
        assert!(lun_layout(&[fe(0, 1, 1, FIEMAP_EXTENT_SHARED)], 10, 0).is_ok());
        // Extents past the end are ignored even if preallocated.
        let past = [fe(0, 1, 1, 0), fe(1, 9, 4, FIEMAP_EXTENT_UNWRITTEN)];
        assert_eq!(lun_layout(&past, B, 0).unwrap().len(), 1);
        // The last extent clipped to the rounded size.
        assert_eq!(
            lun_layout(&[fe(0, 1, 8, 0)], B + 1, 0).unwrap()[0].length,
            2 * B
        );
        assert_eq!(lun_layout(&[], 0, 0).unwrap(), vec![]);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            lun_layout(&[], 1, 0),
            Err(LayoutError::NoExtents { size: 1 })
        );
        assert_eq!(
            lun_layout(
                &[FileExtent {
                    logical: 0,
                    physical: 0,
                    length: 60,
                    flags: FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED
                }],
                60,
                0
            ),
            Err(LayoutError::NoExtents { size: 60 })
        );
        assert_eq!(
            lun_layout(&[fe(0, 1, 1, 0), fe(3, 9, 1, 0)], 4 * B, 0),
            Err(LayoutError::Hole {
                start: B,
                end: 3 * B
            })
        );
        assert_eq!(
            lun_layout(&[fe(1, 1, 1, 0)], 2 * B, 0),
            Err(LayoutError::Hole { start: 0, end: B })
        );
        assert_eq!(
            lun_layout(&[fe(0, 1, 1, 0)], 3 * B - 5, 0),
            Err(LayoutError::Hole {
                start: B,
                end: 3 * B - 5
            })
        );
        for flag in [
            FIEMAP_EXTENT_UNKNOWN,
            FIEMAP_EXTENT_DELALLOC,
            FIEMAP_EXTENT_ENCODED,
            FIEMAP_EXTENT_DATA_ENCRYPTED,
            FIEMAP_EXTENT_NOT_ALIGNED,
            FIEMAP_EXTENT_DATA_TAIL,
            FIEMAP_EXTENT_UNWRITTEN,
        ] {
            let err = lun_layout(&[fe(0, 1, 1, 0), fe(1, 5, 1, flag)], 2 * B, 0).unwrap_err();
            assert_eq!(
                err,
                LayoutError::Flags {
                    logical: B,
                    flags: flag
                }
            );
            assert!(err.to_string().contains(&flag_names(flag)), "{err}");
        }
        assert_eq!(
            lun_layout(&[fe(0, 1, 1, 0)], B, 512),
            Err(LayoutError::Unaligned {
                logical: 0,
                lun_offset: B + 512,
                length: B
            })
        );
    }

    #[test]
    fn flags_for_people() {
        assert_eq!(flag_names(0), "");
        assert_eq!(
            flag_names(FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST),
            "unwritten (preallocated), last"
        );
    }

    #[test]
    fn fiemap_of_a_real_file() {
        // Skipped where the temporary directory's file system has no
        // FIEMAP (tmpfs); the end-to-end tests cover ext4 and XFS.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * B as usize + 10]).unwrap();
        let file = File::open(&path).unwrap();
        match extents(&file, true) {
            Ok(list) => {
                let layout = lun_layout(&list, 3 * B + 10, 0).unwrap();
                assert_eq!(layout.iter().map(|e| e.length).sum::<u64>(), 4 * B);
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!(
                    "FIEMAP not supported under {}; skipped",
                    dir.path().display()
                )
            }
            Err(e) => panic!("FIEMAP: {e}"),
        }
    }
}
