//! How the engine's state is laid out in the metadata store.
//!
//! Keys start with a tag byte; numbers are big-endian so that keys sort in
//! numeric order. Map values are fixed little-endian layouts (they are many);
//! records (pool, LUN, snapshot, group) are JSON (they are few, and a person
//! debugging a pool can read them).

use crate::map::{HeadExt, HistRange, Val, Version};
use crate::types::{Error, Result};
use serde::{Deserialize, Serialize};

pub const TAG_POOL: u8 = b'P';
pub const TAG_LUN: u8 = b'L';
pub const TAG_SNAPSHOT: u8 = b'S';
pub const TAG_GROUP: u8 = b'G';
pub const TAG_HEAD: u8 = b'h';
pub const TAG_HISTORY: u8 = b'y';
pub const TAG_REFS: u8 = b'r';
pub const TAG_SPLIT: u8 = b'J';
pub const TAG_IGROUP: u8 = b'I';
/// A device of a pool on devices, by index.
pub const TAG_DEVICE: u8 = b'V';
/// A store (segments assembled by a redundancy class), by number.
pub const TAG_STORE: u8 = b'T';
/// A page of block checksums, by page number.
pub const TAG_SUMS: u8 = b'c';
/// The scrub's job (one key).
pub const TAG_SCRUB: u8 = b'U';
/// The device job: rebuild, removal or levelling (one key).
pub const TAG_MOVE: u8 = b'W';

/// The newest format this version reads and writes. Bumped when the layout
/// changes incompatibly; every older one is still read (decision 016).
pub const FORMAT_VERSION: u32 = 2;
/// A pool on one data file, as every pool was before devices (format 1).
/// Such a pool stays in format 1, which it still is byte for byte: an
/// older blockfork opens it (decision 028).
pub const FORMAT_SINGLE_FILE: u32 = 1;
/// A pool on devices: device, store and checksum records (decision 028).
pub const FORMAT_DEVICES: u32 = 2;

pub fn key_pool() -> Vec<u8> {
    vec![TAG_POOL]
}

pub fn key_u64(tag: u8, a: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&a.to_be_bytes());
    k
}

pub fn key_u64_u64(tag: u8, a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

pub fn key_name(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k
}

fn corrupt(what: &str, key: &[u8]) -> Error {
    Error::Store(format!("corrupt {what} record under key {key:02x?}"))
}

pub fn parse_u64(key: &[u8], at: usize) -> Result<u64> {
    key.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt("key", key))
}

fn le(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// What must hold of a head extent at block `lba` of a LUN of `size_blocks`
/// blocks, checked before it is encoded and after it is decoded (the pair
/// catches a bad entry on its way out and a bad record on its way in).
pub fn check_head(lba: u64, e: &HeadExt, size_blocks: u64) -> std::result::Result<(), String> {
    let end = lba.checked_add(e.len).filter(|_| e.len > 0);
    match (end, e.val) {
        (None, _) => Err(format!("head extent at block {lba} has length {}", e.len)),
        (Some(end), _) if end > size_blocks => Err(format!(
            "head extent at block {lba}+{} lies beyond the LUN's {size_blocks} blocks",
            e.len
        )),
        (_, Val::Data(pba)) if pba.checked_add(e.len).is_none() => Err(format!(
            "head extent at block {lba} points past the end of space"
        )),
        _ => Ok(()),
    }
}

/// What must hold of a history range at block `lba`: non-empty, versions in
/// order with lifetimes that neither are empty nor overlap.
pub fn check_history(lba: u64, r: &HistRange) -> std::result::Result<(), String> {
    if r.len == 0 || lba.checked_add(r.len).is_none() || r.versions.is_empty() {
        return Err(format!("history range at block {lba} is empty"));
    }
    if r.versions.iter().any(|v| v.birth >= v.death) {
        return Err(format!(
            "history range at block {lba} has an empty lifetime"
        ));
    }
    if r.versions.windows(2).any(|w| w[0].death > w[1].birth) {
        return Err(format!(
            "history range at block {lba} has overlapping lifetimes"
        ));
    }
    if r.versions
        .iter()
        .any(|v| matches!(v.val, Val::Data(p) if p.checked_add(r.len).is_none()))
    {
        return Err(format!(
            "history range at block {lba} points past the end of space"
        ));
    }
    Ok(())
}

pub fn encode_head(e: &HeadExt) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&e.len.to_le_bytes());
    v.extend_from_slice(&e.val.encode().to_le_bytes());
    v.extend_from_slice(&e.birth.to_le_bytes());
    v
}

pub fn decode_head(key: &[u8], v: &[u8]) -> Result<HeadExt> {
    match (v.len(), le(v, 0), le(v, 8), le(v, 16)) {
        (24, Some(len), Some(val), Some(birth)) if len > 0 => Ok(HeadExt {
            len,
            val: Val::decode(val),
            birth,
        }),
        _ => Err(corrupt("head extent", key)),
    }
}

pub fn encode_history(r: &HistRange) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 24 * r.versions.len());
    v.extend_from_slice(&r.len.to_le_bytes());
    for ver in &r.versions {
        v.extend_from_slice(&ver.birth.to_le_bytes());
        v.extend_from_slice(&ver.death.to_le_bytes());
        v.extend_from_slice(&ver.val.encode().to_le_bytes());
    }
    v
}

pub fn decode_history(key: &[u8], v: &[u8]) -> Result<HistRange> {
    let len = le(v, 0).ok_or_else(|| corrupt("history range", key))?;
    if len == 0 || v.len() < 32 || !(v.len() - 8).is_multiple_of(24) {
        return Err(corrupt("history range", key));
    }
    let versions = v[8..]
        .chunks_exact(24)
        .map(|c| Version {
            birth: le(c, 0).expect("24-byte chunk"),
            death: le(c, 8).expect("24-byte chunk"),
            val: Val::decode(le(c, 16).expect("24-byte chunk")),
        })
        .collect::<Vec<_>>();
    if versions.windows(2).any(|w| w[0].death > w[1].birth)
        || versions.iter().any(|v| v.birth >= v.death)
    {
        return Err(corrupt("history range (lifetimes)", key));
    }
    Ok(HistRange { len, versions })
}

pub fn encode_refs(len: u64, refs: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&refs.to_le_bytes());
    v
}

pub fn decode_refs(key: &[u8], v: &[u8]) -> Result<(u64, u32)> {
    match (v.len(), le(v, 0)) {
        (12, Some(len)) if len > 0 => {
            let refs = u32::from_le_bytes(v[8..12].try_into().expect("4 bytes"));
            if refs < 2 {
                return Err(corrupt("reference count", key));
            }
            Ok((len, refs))
        }
        _ => Err(corrupt("reference count", key)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolRecord {
    pub format: u32,
    pub capacity_blocks: u64,
    pub epoch: u64,
    pub next_lun_id: u64,
    pub created: u64,
    /// Whether unmapped LUNs are visible to every client; pools made
    /// before access control existed are open.
    #[serde(default)]
    pub open: Option<bool>,
    /// A pool on devices (format 2): its id, written in every device's
    /// label, as 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// A pool on devices: the size of its segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// The redundancy class of new LUNs (absent: by device count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<String>,
}

/// A device of a pool on devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device's id, as in its label: 32 hex digits.
    pub id: String,
    /// Where it was last opened.
    pub path: String,
    pub size_bytes: u64,
    pub segments: u64,
    /// Unix seconds.
    pub added: u64,
    /// Removed from the pool (`pool device remove`, or replaced): its index
    /// stays taken, nothing is on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Why it was faulted, while it is: a device that failed stays out of
    /// reads and writes across restarts (its copies may be stale) until
    /// `pool device clear` resilvers it or it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faulted: Option<String>,
}

/// A store: its class and its segments as (device index, segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub class: String,
    pub segments: Vec<(u32, u64)>,
}

/// An igroup's members.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IgroupRecord {
    pub addresses: Vec<String>,
    pub cert_cns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LunRecord {
    pub name: String,
    pub size_blocks: u64,
    pub created: u64,
    /// Backing snapshot for clones: (LUN id, epoch).
    pub parent: Option<(u64, u64)>,
    /// Blocks at or past this read zeros instead of the parent (after a shrink).
    pub parent_limit_blocks: u64,
    /// Deleted snapshots left garbage in the history map.
    pub gc_needed: bool,
    /// The epoch a clone was created at: before it, its blocks' story is
    /// the parent's.
    #[serde(default)]
    pub created_epoch: u64,
    /// Igroups the LUN is mapped to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<String>,
    /// A mirror destination (absent in pools written before mirroring:
    /// none was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaRecord>,
    /// The LUN's redundancy class (absent: `none`, all a single-file pool
    /// has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<String>,
    /// Thick: the whole size reserved (decision 031).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserve: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_reserve_percent: u32,
    /// Moving into its redundancy class: the next block (decision 032).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayout: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub view: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub created: u64,
    pub size_blocks: u64,
    pub group: Option<String>,
    /// Deleted while clones depend on it: gone from listings and exports,
    /// kept until the last dependent clone is split or deleted.
    #[serde(default)]
    pub hidden: bool,
    /// Holders that keep it from deletion (absent before mirroring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
}

/// A split's persisted state: the JSON strings `"running"` and `"stopped"`
/// of format 1; anything else is a corrupt record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitRecordState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitRecord {
    pub cursor: u64,
    pub state: SplitRecordState,
    pub started: u64,
    pub copied_blocks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub epoch: u64,
    pub created: u64,
    /// (LUN id, LUN name at creation)
    pub members: Vec<(u64, String)>,
}

pub fn to_json<T: Serialize>(t: &T) -> Vec<u8> {
    serde_json::to_vec(t).expect("records serialize")
}

pub fn from_json<T: for<'a> Deserialize<'a>>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v)
        .map_err(|e| Error::Store(format!("corrupt record under key {key:02x?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = HeadExt {
            len: 7,
            val: Val::Zero,
            birth: 3,
        };
        assert_eq!(decode_head(b"k", &encode_head(&e)).unwrap(), e);
        let r = HistRange {
            len: 4,
            versions: vec![
                Version {
                    birth: 1,
                    death: 2,
                    val: Val::Data(crate::types::Pba::new(9)),
                },
                Version {
                    birth: 2,
                    death: 5,
                    val: Val::Zero,
                },
            ],
        };
        assert_eq!(decode_history(b"k", &encode_history(&r)).unwrap(), r);
        assert_eq!(decode_refs(b"k", &encode_refs(5, 3)).unwrap(), (5, 3));
        assert!(decode_head(b"k", &[0; 23]).is_err());
        assert!(decode_history(b"k", &[0; 8]).is_err());
        assert!(decode_refs(b"k", &encode_refs(5, 1)).is_err());
    }
}
