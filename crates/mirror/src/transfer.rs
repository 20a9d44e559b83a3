//! The destination's side of a transfer: one member's stream, pulled in
//! bounded pieces, checked record by record, applied to the replica's
//! head, with durable checkpoints from which a cut transfer resumes.

use crate::Limiter;
use engine::{DiffKind, Engine, BLOCK_SIZE};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wire::stream::{Record, StreamReader};
use wire::StreamQuery;

/// Data bytes between checkpoints within a piece.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// Longest between checkpoints within a piece.
pub const CHECKPOINT_INTERVAL_MS: u64 = 2_000;
/// Data bytes one stream request may carry: each call is bounded in time
/// (the client's timeout), and a dead peer is noticed.
pub const PIECE_BYTES_MAX: u64 = 256 << 20;

#[derive(Debug)]
pub enum Failure {
    /// Stopped on request (abort, break, delete, shutdown).
    Cancelled,
    /// The connection failed or the stream was cut: worth retrying from
    /// the checkpoint.
    Cut(String),
    /// The stream broke a rule (a checksum, an order, a header that is not
    /// what was asked): refused.
    Refused(String),
    /// This side failed (the pool, a name).
    Local(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Cancelled => f.write_str("stopped on request"),
            Failure::Cut(m) | Failure::Refused(m) | Failure::Local(m) => f.write_str(m),
        }
    }
}

/// What a transfer shares with whoever watches or stops it.
pub struct Ctx<'a> {
    pub cancel: &'a AtomicBool,
    pub limiters: [&'a Limiter; 2],
    /// Bytes received (payload and records), for progress.
    pub bytes: &'a AtomicU64,
    /// Bytes the transfer is expected to carry in all, as the last stream
    /// header said.
    pub expected: &'a AtomicU64,
}

impl Ctx<'_> {
    fn check(&self) -> Result<(), Failure> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Failure::Cancelled);
        }
        Ok(())
    }

    /// Waits as the rate limits say, in short steps so that a cancel is
    /// seen.
    fn pace(&self, bytes: u64) -> Result<(), Failure> {
        let wait = self
            .limiters
            .iter()
            .map(|l| l.take(bytes))
            .max()
            .unwrap_or_default();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            self.check()?;
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        Ok(())
    }
}

/// Pulls `source`'s change (`base` to `target`, created at
/// `target_created`) into replica `dest`, starting at block `from`, until
/// the whole target is covered. `checkpoint(next_block)` records progress
/// durably (after the engine made what came before it durable).
#[allow(clippy::too_many_arguments)]
pub fn pull(
    engine: &Engine,
    peer: &client::Client,
    source: &str,
    dest: &str,
    base: Option<&str>,
    target: &str,
    target_created: u64,
    flatten: bool,
    mut from: u64,
    ctx: &Ctx<'_>,
    checkpoint: &mut dyn FnMut(u64) -> Result<(), String>,
) -> Result<(), Failure> {
    let into = engine
        .replica_target(dest)
        .map_err(|e| Failure::Local(e.to_string()))?;
    let local = |e: engine::Error| Failure::Local(e.to_string());
    loop {
        ctx.check()?;
        let query = StreamQuery {
            lun: source.into(),
            base: base.map(str::to_string),
            target: target.into(),
            flatten,
            from,
            max_bytes: None,
        };
        let piece = PIECE_BYTES_MAX.min(piece_for_rate(ctx));
        let input = peer
            .replication_stream(&query, piece)
            .map_err(|e| match e.status {
                // The source refused what was asked (a snapshot gone): not a cut.
                Some(400..=499) => Failure::Refused(format!("the source refused the stream: {e}")),
                _ => Failure::Cut(e.to_string()),
            })?;
        let mut reader = StreamReader::new(input).map_err(stream_failure)?;
        let h = &reader.header;
        if h.lun != source
            || h.base.as_deref() != base
            || h.target != target
            || h.target_created != target_created
            || h.from_block != from
            || h.flatten != flatten
        {
            return Err(Failure::Refused(format!(
                "the source sent a stream of {}@{} from block {} where {source}@{target} from block {from} was asked",
                h.lun, h.target, h.from_block
            )));
        }
        ctx.expected.store(
            ctx.bytes.load(Ordering::Relaxed) + h.data_bytes,
            Ordering::Relaxed,
        );
        engine.apply_size(into, h.size_blocks).map_err(local)?;
        let size_blocks = h.size_blocks;
        let mut since_checkpoint = 0u64;
        let mut last_checkpoint = Instant::now();
        let mut applied_to: u64;
        loop {
            ctx.check()?;
            let before = reader.bytes;
            let record = reader.next_record().map_err(stream_failure)?;
            ctx.bytes
                .fetch_add(reader.bytes - before, Ordering::Relaxed);
            match record {
                Record::Data { lba, blocks } => {
                    ctx.pace(blocks * BLOCK_SIZE)?;
                    engine.apply_data(into, lba, &reader.data).map_err(local)?;
                    since_checkpoint += blocks * BLOCK_SIZE;
                    applied_to = lba + blocks;
                }
                Record::Zero { lba, blocks } => {
                    engine
                        .apply_extent(into, lba, blocks, DiffKind::Zero)
                        .map_err(local)?;
                    applied_to = lba + blocks;
                }
                Record::Unmap { lba, blocks } => {
                    engine
                        .apply_extent(into, lba, blocks, DiffKind::Unmap)
                        .map_err(local)?;
                    applied_to = lba + blocks;
                }
                Record::End { covered } => {
                    engine.flush().map_err(local)?;
                    checkpoint(covered).map_err(Failure::Local)?;
                    from = covered;
                    break;
                }
            }
            if since_checkpoint >= CHECKPOINT_BYTES
                || last_checkpoint.elapsed() >= Duration::from_millis(CHECKPOINT_INTERVAL_MS)
            {
                // Data first, then the record that says it is there.
                engine.flush().map_err(local)?;
                checkpoint(applied_to).map_err(Failure::Local)?;
                since_checkpoint = 0;
                last_checkpoint = Instant::now();
            }
        }
        if from >= size_blocks {
            return Ok(());
        }
    }
}

/// A piece that takes about a minute at the slowest limit, so that a call
/// never outlives the client's timeout because of pacing.
fn piece_for_rate(ctx: &Ctx<'_>) -> u64 {
    ctx.limiters
        .iter()
        .map(|l| l.rate())
        .filter(|&r| r > 0)
        .min()
        .map_or(u64::MAX, |r| (r * 60).max(1 << 20))
}

fn stream_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::InvalidData && !e.to_string().contains("was cut") {
        Failure::Refused(format!("the mirror stream was refused: {e}"))
    } else {
        Failure::Cut(format!("the mirror stream broke off: {e}"))
    }
}
