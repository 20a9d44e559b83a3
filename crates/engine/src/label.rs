//! The label at the start of every device of a multi-device pool (issue 14,
//! decision 027): which pool the device belongs to, which device it is, the
//! format, its size, and the segment size that carves it. Like a ZFS label
//! it is kept twice (two 4 KiB blocks at the start of the device), each copy
//! with its own crc32c and a generation, so that a torn label write leaves
//! the other copy, and a device from another pool, a device of a newer
//! format or a device that is not ours at all is refused by name before
//! anything is read from it or written to it.

use crate::types::{Error, Result, BLOCK_SIZE};

/// Bytes the two label copies take at the start of a device; segments
/// start after them.
pub const LABEL_BYTES: u64 = 2 * BLOCK_SIZE;
/// The first bytes of a label: "blockfork device".
const MAGIC: [u8; 16] = *b"blockfork device";
/// The label layout this version writes and reads.
pub const LABEL_FORMAT: u32 = 1;
/// The encoded label's length before its checksum.
const BODY_BYTES: usize = 16 + 4 + 8 + 16 + 16 + 4 + 8 + 8 + 8;

/// A label that is ours but unreadable: an I/O error of kind InvalidData.
fn invalid_data(msg: String) -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, msg))
}

/// What a device's label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Rises with every rewrite; the valid copy with the highest wins.
    pub generation: u64,
    pub pool: u128,
    pub device: u128,
    /// The device's place in the pool's device table.
    pub index: u32,
    /// Usable bytes of the device, label included, as the pool sized it.
    pub size_bytes: u64,
    pub segment_bytes: u64,
    /// Seconds since the epoch when the device joined the pool.
    pub added_secs: u64,
}

impl Label {
    /// Whole segments that fit on the device after the label.
    pub fn segments(&self) -> u64 {
        self.size_bytes.saturating_sub(LABEL_BYTES) / self.segment_bytes
    }

    /// One 4 KiB label block: the fields, their crc32c, zeros after.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK_SIZE as usize);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&LABEL_FORMAT.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.pool.to_le_bytes());
        b.extend_from_slice(&self.device.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.size_bytes.to_le_bytes());
        b.extend_from_slice(&self.segment_bytes.to_le_bytes());
        b.extend_from_slice(&self.added_secs.to_le_bytes());
        debug_assert_eq!(b.len(), BODY_BYTES);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(BLOCK_SIZE as usize, 0);
        b
    }

    /// Reads one label copy. `Ok(None)`: not a label at all (no magic), or
    /// a copy whose checksum fails (torn or rotten); an error only for a
    /// label this version cannot read.
    fn decode(block: &[u8]) -> Result<Option<Label>> {
        if block.len() < BODY_BYTES + 4 || block[..16] != MAGIC {
            return Ok(None);
        }
        let crc = u32::from_le_bytes(block[BODY_BYTES..BODY_BYTES + 4].try_into().expect("4"));
        if crc32c::crc32c(&block[..BODY_BYTES]) != crc {
            return Ok(None);
        }
        let mut at = 16;
        let mut take = |n: usize| {
            let s = &block[at..at + n];
            at += n;
            s
        };
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4"));
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8"));
        let u128_ = |s: &[u8]| u128::from_le_bytes(s.try_into().expect("16"));
        let format = u32_(take(4));
        if format != LABEL_FORMAT {
            return Err(invalid_data(format!(
                "the device label is format {format}; this blockfork reads format {LABEL_FORMAT} (a newer version wrote it)"
            )));
        }
        let label = Label {
            generation: u64_(take(8)),
            pool: u128_(take(16)),
            device: u128_(take(16)),
            index: u32_(take(4)),
            size_bytes: u64_(take(8)),
            segment_bytes: u64_(take(8)),
            added_secs: u64_(take(8)),
        };
        if label.segment_bytes == 0
            || !label.segment_bytes.is_multiple_of(BLOCK_SIZE)
            || label.size_bytes < LABEL_BYTES
        {
            return Ok(None);
        }
        Ok(Some(label))
    }

    /// The device's label from the first `LABEL_BYTES` of it: the valid
    /// copy with the highest generation. `what` names the device in errors.
    pub fn read(first: &[u8], what: &str) -> Result<Label> {
        assert!(first.len() as u64 >= LABEL_BYTES);
        let half = BLOCK_SIZE as usize;
        let a = Label::decode(&first[..half])?;
        let b = Label::decode(&first[half..2 * half])?;
        match (a, b) {
            (Some(a), Some(b)) => Ok(if b.generation > a.generation { b } else { a }),
            (Some(one), None) | (None, Some(one)) => Ok(one),
            (None, None) if first[..16] == MAGIC || first[half..half + 16] == MAGIC => {
                Err(invalid_data(format!(
                    "{what}: both copies of its blockfork label are damaged"
                )))
            }
            (None, None) => Err(Error::InvalidArgument(format!(
                "{what} is not a blockfork device (no label)"
            ))),
        }
    }

    /// Checks that the device belongs where the pool expects it.
    pub fn expect(&self, pool: u128, device: u128, what: &str) -> Result<()> {
        if self.pool != pool {
            return Err(Error::InvalidArgument(format!(
                "{what} belongs to another pool ({:032x}, not {pool:032x})",
                self.pool
            )));
        }
        if self.device != device {
            return Err(Error::InvalidArgument(format!(
                "{what} is device {:032x} of this pool, not {device:032x}",
                self.device
            )));
        }
        Ok(())
    }

    /// The copy to write next (`0` or `1`, alternating by generation), so
    /// that a torn write can only damage the older one.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(generation: u64) -> Label {
        Label {
            generation,
            pool: 0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
            device: 7,
            index: 2,
            size_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            added_secs: 1_796_000_000,
        }
    }

    /// Both copies, as a device would hold them after writes of `a` and `b`.
    fn device(a: Option<&Label>, b: Option<&Label>) -> Vec<u8> {
        let mut d = vec![0u8; LABEL_BYTES as usize];
        if let Some(a) = a {
            d[..4096].copy_from_slice(&a.encode());
        }
        if let Some(b) = b {
            d[4096..].copy_from_slice(&b.encode());
        }
        d
    }

    #[test]
    fn round_trip_and_the_newer_copy_wins() {
        let (one, two) = (label(4), label(5));
        assert_eq!(Label::read(&device(Some(&one), None), "d").unwrap(), one);
        assert_eq!(
            Label::read(&device(Some(&one), Some(&two)), "d").unwrap(),
            two
        );
        assert_eq!(
            Label::read(&device(Some(&two), Some(&one)), "d").unwrap(),
            two
        );
        assert_eq!(one.segments(), ((1 << 30) - LABEL_BYTES) / (64 << 20));
        assert_ne!(one.slot(), two.slot(), "rewrites alternate copies");
    }

    #[test]
    fn a_torn_or_rotten_copy_is_passed_over_for_the_other() {
        let (old, new) = (label(8), label(9));
        for byte in [0usize, 20, 40, 70, BODY_BYTES, BODY_BYTES + 3] {
            let mut d = device(Some(&old), Some(&new));
            d[4096 + byte] ^= 0x10;
            assert_eq!(
                Label::read(&d, "d").unwrap(),
                old,
                "byte {byte} of the newer copy flipped"
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        let not_ours = vec![0xabu8; LABEL_BYTES as usize];
        let e = Label::read(&not_ours, "/dev/x").unwrap_err().to_string();
        assert!(e.contains("/dev/x is not a blockfork device"), "{e}");

        let mut both = device(Some(&label(1)), Some(&label(2)));
        both[50] ^= 1;
        both[4096 + 50] ^= 1;
        let e = Label::read(&both, "d0").unwrap_err().to_string();
        assert!(
            e.contains("both copies of its blockfork label are damaged"),
            "{e}"
        );

        let mut newer = label(3).encode();
        newer[16..20].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&newer[..BODY_BYTES]);
        newer[BODY_BYTES..BODY_BYTES + 4].copy_from_slice(&crc.to_le_bytes());
        let mut d = vec![0u8; LABEL_BYTES as usize];
        d[..4096].copy_from_slice(&newer);
        let e = Label::read(&d, "d").unwrap_err().to_string();
        assert!(e.contains("format 2") && e.contains("newer version"), "{e}");

        let l = label(1);
        let e = l.expect(1, 7, "d1").unwrap_err().to_string();
        assert!(e.contains("d1 belongs to another pool"), "{e}");
        let e = l.expect(l.pool, 8, "d1").unwrap_err().to_string();
        assert!(e.contains("is device"), "{e}");
        l.expect(l.pool, 7, "d1").unwrap();
    }
}
