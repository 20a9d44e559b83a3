//! The source's side of a transfer: a LUN's change between two snapshots,
//! as a mirror stream (`wire::stream`), read from the engine's maps and
//! the target snapshot's blocks.

use engine::{DiffKind, Engine, Target, BLOCK_SIZE};
use std::io::Write;
use wire::stream::{StreamHeader, StreamWriter, RECORD_BLOCKS_MAX};
use wire::StreamQuery;

/// Extents asked of the engine per call: its shared lock is held for one
/// call.
const DIFF_CHUNK_EXTENTS: usize = 1024;

/// A stream checked and ready to send: everything that can be refused is
/// refused before the first byte goes out.
pub struct Prepared {
    pub header: StreamHeader,
    target: Target,
    max_bytes: u64,
}

/// Checks a stream request against the pool.
pub fn prepare(engine: &Engine, q: &StreamQuery) -> engine::Result<Prepared> {
    let (_, snaps) = engine.snapshots_brief(&q.lun)?;
    let find = |name: &str| {
        snaps
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| engine::Error::NotFound {
                kind: "snapshot",
                name: format!("{}@{name}", q.lun),
            })
    };
    let target = find(&q.target)?;
    if let Some(base) = &q.base {
        let base = find(base)?;
        if base.epoch > target.epoch {
            return Err(engine::Error::InvalidArgument(format!(
                "snapshot \"{}@{}\" is newer than \"{}@{}\"",
                q.lun, base.name, q.lun, target.name
            )));
        }
    }
    let size_blocks = target.size_bytes / BLOCK_SIZE;
    if q.from > size_blocks {
        return Err(engine::Error::OutOfRange(format!(
            "a stream of \"{}@{}\" cannot start at block {}: it has {size_blocks}",
            q.lun, q.target, q.from
        )));
    }
    // What is left to send, from the maps (no data read): for progress.
    let mut data_bytes = 0;
    let mut from = q.from;
    loop {
        let chunk = engine.snapshot_diff(
            &q.lun,
            q.base.as_deref(),
            Some(&q.target),
            q.flatten,
            from,
            DIFF_CHUNK_EXTENTS,
        )?;
        data_bytes += chunk
            .extents
            .iter()
            .filter(|x| x.kind == DiffKind::Data)
            .map(|x| x.blocks * BLOCK_SIZE)
            .sum::<u64>();
        match chunk.next_block {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(Prepared {
        header: StreamHeader {
            data_bytes,
            lun: q.lun.clone(),
            base: q.base.clone(),
            target: q.target.clone(),
            target_created: target.created,
            size_blocks,
            from_block: q.from,
            flatten: q.flatten,
        },
        target: engine.resolve(&format!("{}@{}", q.lun, q.target))?,
        max_bytes: q.max_bytes.unwrap_or(u64::MAX).max(BLOCK_SIZE),
    })
}

/// Sends the stream to `out`; returns the bytes written. An error after
/// the header leaves the stream without its end record: the receiver sees
/// it cut.
pub fn send(engine: &Engine, p: Prepared, out: impl Write) -> std::io::Result<u64> {
    let h = &p.header;
    let mut w = StreamWriter::new(out, h)?;
    let mut from = h.from_block;
    let mut data_bytes = 0u64;
    let mut buf = vec![0u8; (RECORD_BLOCKS_MAX * BLOCK_SIZE) as usize];
    let io = |e: engine::Error| std::io::Error::other(e.to_string());
    loop {
        let chunk = engine
            .snapshot_diff(
                &h.lun,
                h.base.as_deref(),
                Some(&h.target),
                h.flatten,
                from,
                DIFF_CHUNK_EXTENTS,
            )
            .map_err(io)?;
        for x in &chunk.extents {
            match x.kind {
                DiffKind::Zero => w.zero(x.lba, x.blocks)?,
                DiffKind::Unmap => w.unmap(x.lba, x.blocks)?,
                DiffKind::Data => {
                    let mut lba = x.lba;
                    while lba < x.lba + x.blocks {
                        if data_bytes >= p.max_bytes {
                            // Bounded call: the next one starts here.
                            w.end(lba)?;
                            return Ok(data_bytes);
                        }
                        let n = (x.lba + x.blocks - lba).min(RECORD_BLOCKS_MAX);
                        let bytes = &mut buf[..(n * BLOCK_SIZE) as usize];
                        engine.read(p.target, lba * BLOCK_SIZE, bytes).map_err(io)?;
                        w.data(lba, bytes)?;
                        data_bytes += n * BLOCK_SIZE;
                        lba += n;
                    }
                }
            }
        }
        match chunk.next_block {
            Some(next) if data_bytes >= p.max_bytes => {
                w.end(next)?;
                return Ok(data_bytes);
            }
            Some(next) => from = next,
            None => {
                w.end(h.size_blocks)?;
                return Ok(data_bytes);
            }
        }
    }
}
