//! Parity stores (issue 14, decision 030): part of `Stores`.
//!
//! A parity store's rows are stripes: K data blocks (block `b` of the store
//! is column `b % K` of row `b / K`) and M parity blocks computed with
//! Reed-Solomon (reed-solomon-simd). A stripe is written once, whole, with
//! zeros where the allocator left padding, and never again while any block
//! of it lives (`classes::Space` holds it): no read-modify-write, so no
//! write hole. A read checks each block against its checksum; a block that
//! fails is recovered from any K good shards of its row (the checksum picks
//! the set that is right) and rewritten in place.
//!
//! Reed-Solomon works byte position by byte position, so consecutive rows
//! of a column are one shard: a write of many stripes is one encode and
//! one request per device.

use super::{eio, unplaced, Scrubbed, Stores};
use crate::erasure::{column_rows, encode, solve};
use crate::io::DataFile;
use crate::layout::Layout;
use crate::redundancy::Redundancy;
use crate::sums;
use crate::types::{Pba, BLOCK_SIZE};
use std::io;
use std::sync::atomic::Ordering;

const BS: usize = BLOCK_SIZE as usize;

/// Rows encoded and written per request: 256 rows are 1 MiB per device.
const ROWS_PER_REQUEST: u64 = 256;

/// One parity store, as a read or a write sees it.
pub(crate) struct Stripes {
    /// Its first (virtual) block.
    pub start: u64,
    pub blocks: u64,
    pub k: usize,
    pub m: usize,
    /// Each column's device, and where its row 0 is on it.
    columns: Vec<(u32, u64)>,
}

impl Stripes {
    /// The parity store holding `pba`; None when its store keeps copies.
    pub fn of(layout: &Layout, pba: u64) -> io::Result<Option<Stripes>> {
        let (store, block) = layout.store_at(Pba::new(pba)).map_err(unplaced)?;
        let Redundancy::Parity { data, parity } = store.class else {
            return Ok(None);
        };
        let columns = store
            .segments
            .iter()
            .map(|&r| {
                let p = layout.place_of(r, 0);
                (p.device, p.offset)
            })
            .collect();
        Ok(Some(Stripes {
            start: pba - block,
            blocks: layout.store_blocks(store.class),
            k: usize::from(data),
            m: usize::from(parity),
            columns,
        }))
    }

    /// Device and byte offset of `column` at `row`.
    fn at(&self, column: usize, row: u64) -> (u32, u64) {
        let (d, o) = self.columns[column];
        (d, o + row * BLOCK_SIZE)
    }
}

impl Stores {
    /// Writes whole stripes from a stripe's first block: `buf`'s blocks,
    /// then zeros to the end of the last stripe (padding the allocator
    /// holds). Every column on a device that is not faulted is written;
    /// fails when fewer than K columns of a stripe were.
    pub(super) fn write_parity(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !offset.is_multiple_of(BLOCK_SIZE) || !buf.len().is_multiple_of(BS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a parity store is written in whole blocks",
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pba = offset / BLOCK_SIZE + (done / BS) as u64;
            let st = self.parity_store(pba)?;
            let b0 = pba - st.start;
            let k = st.k as u64;
            if !b0.is_multiple_of(k) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "block {b0} of the parity store at block {} is not a stripe's first: stripes are written whole",
                        st.start
                    ),
                ));
            }
            let left = ((buf.len() - done) / BS) as u64;
            let n = left.min(st.blocks - b0);
            let rows = n.div_ceil(k);
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(ROWS_PER_REQUEST);
                let first = done + (r * k) as usize * BS;
                let last = (done + ((r + nr) * k) as usize * BS).min(done + n as usize * BS);
                self.write_rows(&st, b0 / k + r, nr, &buf[first..last])?;
                r += nr;
            }
            done += n as usize * BS;
        }
        Ok(())
    }

    fn parity_store(&self, pba: u64) -> io::Result<Stripes> {
        Stripes::of(&self.layout.read(), pba)?.ok_or_else(|| {
            eio(format!(
                "block {pba} is in a store of copies, inside a parity write or read"
            ))
        })
    }

    /// Writes `nr` rows from `row`: `data` is their blocks in order, short
    /// by the padding.
    fn write_rows(&self, st: &Stripes, row: u64, nr: u64, data: &[u8]) -> io::Result<()> {
        let len = nr as usize * BS;
        let mut shards = vec![vec![0u8; len]; st.k];
        for (i, block) in data.chunks(BS).enumerate() {
            let (r, c) = (i / st.k, i % st.k);
            shards[c][r * BS..(r + 1) * BS].copy_from_slice(block);
        }
        let parity = encode(st.k, st.m, &shards)?;
        shards.extend(parity);
        let write = |c: usize| -> Option<io::Result<()>> {
            let (d, at) = st.at(c, row);
            if self.errors[d as usize].faulted() {
                return None;
            }
            Some(self.file(d).write_at(&shards[c], at))
        };
        let results: Vec<Option<io::Result<()>>> = if len >= 64 << 10 {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..shards.len())
                    .map(|c| scope.spawn(move || write(c)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a column write does not panic"))
                    .collect()
            })
        } else {
            (0..shards.len()).map(write).collect()
        };
        let mut written = 0;
        let mut last = None;
        for (c, r) in results.into_iter().enumerate() {
            match r {
                None => {}
                Some(Ok(())) => written += 1,
                Some(Err(e)) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(e),
                Some(Err(e)) => {
                    self.write_error(st.columns[c].0, &e);
                    last = Some(e);
                }
            }
        }
        if written < st.k {
            return Err(eio(format!(
                "only {written} of the {} columns of the parity store at block {} could be written{}",
                st.k + st.m,
                st.start,
                last.map(|e| format!(" (last error: {e})")).unwrap_or_default()
            )));
        }
        if let Some(e) = last {
            if let Err(why) = self.servable() {
                return Err(eio(format!("{e}; {why}")));
            }
        }
        Ok(())
    }

    /// Reads whole blocks in parity stores, each checked against `expect`
    /// when given. A block that fails its read or its checksum is
    /// recovered from its stripe and rewritten; fails only when no set of
    /// K shards gives it back.
    pub(super) fn read_parity(
        &self,
        buf: &mut [u8],
        offset: u64,
        expect: Option<&[u32]>,
    ) -> io::Result<()> {
        assert!(offset.is_multiple_of(BLOCK_SIZE) && buf.len().is_multiple_of(BS));
        let mut done = 0usize;
        while done < buf.len() {
            let pba = offset / BLOCK_SIZE + (done / BS) as u64;
            let st = self.parity_store(pba)?;
            let b0 = pba - st.start;
            let n = (((buf.len() - done) / BS) as u64).min(st.blocks - b0) as usize;
            let sums = expect.map(|e| &e[done / BS..done / BS + n]);
            self.read_stripes(&st, b0, &mut buf[done..done + n * BS], sums)?;
            done += n * BS;
        }
        Ok(())
    }

    fn read_stripes(
        &self,
        st: &Stripes,
        b0: u64,
        out: &mut [u8],
        sums: Option<&[u32]>,
    ) -> io::Result<()> {
        let n = (out.len() / BS) as u64;
        let k = st.k as u64;
        let mut bad: Vec<u64> = Vec::new();
        let mut col = Vec::new();
        for c in 0..k {
            let Some((r0, r1)) = column_rows(k, c, b0, n) else {
                continue;
            };
            let blocks = (r0..r1)
                .map(|r| r * k + c)
                .filter(|&b| b >= b0 && b < b0 + n);
            let (d, at) = st.at(c as usize, r0);
            if self.errors[d as usize].faulted() {
                bad.extend(blocks.map(|b| b - b0));
                continue;
            }
            col.resize((r1 - r0) as usize * BS, 0);
            if let Err(e) = self.file(d).read_at(&mut col, at) {
                self.read_error(d, &e);
                bad.extend(blocks.map(|b| b - b0));
                continue;
            }
            for b in blocks {
                let (i, r) = ((b - b0) as usize, (b / k - r0) as usize);
                let block = &col[r * BS..(r + 1) * BS];
                out[i * BS..(i + 1) * BS].copy_from_slice(block);
                if sums.is_some_and(|s| sums::of_block(block) != s[i]) {
                    self.errors[d as usize]
                        .checksum
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        device = d,
                        block = st.start + b,
                        "a parity store's block fails its checksum"
                    );
                    bad.push(b - b0);
                }
            }
        }
        bad.sort_unstable();
        let mut i = 0;
        while i < bad.len() {
            let row = (b0 + bad[i]) / k;
            let mut targets = Vec::new();
            while i < bad.len() && (b0 + bad[i]) / k == row {
                let b = b0 + bad[i];
                targets.push(((b % k) as usize, sums.map(|s| s[bad[i] as usize])));
                i += 1;
            }
            let got = self.recover_row(st, row, &targets)?;
            for (&(c, _), block) in targets.iter().zip(&got) {
                let at = (row * k + c as u64 - b0) as usize;
                out[at * BS..(at + 1) * BS].copy_from_slice(block);
                self.repair(st, c, row, block);
            }
        }
        Ok(())
    }

    /// The data blocks `targets` (column, checksum) of `row`, from the
    /// row's other shards.
    fn recover_row(
        &self,
        st: &Stripes,
        row: u64,
        targets: &[(usize, Option<u32>)],
    ) -> io::Result<Vec<Vec<u8>>> {
        let shards: Vec<Option<Vec<u8>>> = (0..st.k + st.m)
            .map(|c| {
                if targets.iter().any(|t| t.0 == c) {
                    return None;
                }
                let (d, at) = st.at(c, row);
                if self.errors[d as usize].faulted() {
                    return None;
                }
                let mut b = vec![0u8; BS];
                match self.file(d).read_at(&mut b, at) {
                    Ok(()) => Some(b),
                    Err(e) => {
                        self.read_error(d, &e);
                        None
                    }
                }
            })
            .collect();
        let views: Vec<Option<&[u8]>> = shards.iter().map(Option::as_deref).collect();
        solve(st.k, st.m, &views, targets).ok_or_else(|| {
            eio(format!(
                "block {}: no {} shards of its stripe give it back",
                st.start + row * st.k as u64 + targets[0].0 as u64,
                st.k
            ))
        })
    }

    /// Rewrites a shard with its recovered content (a repair: the stripe
    /// is as committed again).
    fn repair(&self, st: &Stripes, c: usize, row: u64, block: &[u8]) {
        let (d, at) = st.at(c, row);
        if self.errors[d as usize].faulted() {
            return;
        }
        match self.file(d).write_at(block, at) {
            Ok(()) => {
                self.errors[d as usize]
                    .repaired
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.write_error(d, &e),
        }
    }

    /// Column `column` of `rows` rows from the stripe starting at `pba`
    /// (a move's copy): the data read and checked (recovered where it must
    /// be), the parity computed from it. `expect` holds the checksums of
    /// the rows' data blocks. Answers the column's bytes and the blocks
    /// no set of shards gives back (their rows are written as zeros).
    pub fn parity_column(
        &self,
        pba: u64,
        rows: u64,
        column: usize,
        expect: &[u32],
    ) -> io::Result<(Vec<u8>, Vec<u64>)> {
        let st = self.parity_store(pba)?;
        let k = st.k;
        let b0 = pba - st.start;
        if !b0.is_multiple_of(k as u64) || expect.len() != rows as usize * k {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a parity column is copied by whole stripes",
            ));
        }
        let mut data = vec![0u8; expect.len() * BS];
        let mut lost = Vec::new();
        if self.read_stripes(&st, b0, &mut data, Some(expect)).is_err() {
            let row_bytes = k * BS;
            for (r, chunk) in data.chunks_mut(row_bytes).enumerate() {
                let first = b0 + (r * k) as u64;
                let sums = &expect[r * k..(r + 1) * k];
                if self.read_stripes(&st, first, chunk, Some(sums)).is_err() {
                    chunk.fill(0);
                    lost.extend((0..k as u64).map(|i| st.start + first + i));
                }
            }
        }
        let len = rows as usize * BS;
        let mut shards = vec![vec![0u8; len]; k];
        for (i, block) in data.chunks(BS).enumerate() {
            shards[i % k][(i / k) * BS..(i / k + 1) * BS].copy_from_slice(block);
        }
        let out = if column < k {
            std::mem::take(&mut shards[column])
        } else {
            encode(k, st.m, &shards)?.swap_remove(column - k)
        };
        Ok((out, lost))
    }

    /// Scrubs whole stripes from `offset` (a stripe's first block): every
    /// shard on a device that is not faulted is read; data blocks are
    /// checked against `expect` (None: free or being written), and where
    /// every data block of a row is known, its parity is recomputed and
    /// compared. What fails is rewritten from the rest of its stripe.
    pub(super) fn scrub_parity(&self, offset: u64, expect: &[Option<u32>]) -> io::Result<Scrubbed> {
        let mut report = Scrubbed::default();
        let mut done = 0usize;
        while done < expect.len() {
            let pba = offset / BLOCK_SIZE + done as u64;
            let st = self.parity_store(pba)?;
            let k = st.k;
            let b0 = pba - st.start;
            if !b0.is_multiple_of(k as u64) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a parity store is scrubbed by whole stripes",
                ));
            }
            let n = ((expect.len() - done) as u64).min(st.blocks - b0) as usize;
            let rows = n.div_ceil(k);
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(ROWS_PER_REQUEST as usize);
                let from = done + r * k;
                let upto = (from + nr * k).min(done + n);
                let found =
                    self.scrub_rows(&st, b0 / k as u64 + r as u64, nr, &expect[from..upto])?;
                report.checked += found.checked;
                report.bad += found.bad;
                report.repaired += found.repaired;
                report.lost.extend(found.lost.iter().map(|&b| b + from));
                r += nr;
            }
            done += n;
        }
        Ok(report)
    }

    fn scrub_rows(
        &self,
        st: &Stripes,
        row: u64,
        nr: usize,
        expect: &[Option<u32>],
    ) -> io::Result<Scrubbed> {
        let (k, m) = (st.k, st.m);
        let len = nr * BS;
        let read = |c: usize| -> Option<Vec<u8>> {
            let (d, at) = st.at(c, row);
            if self.errors[d as usize].faulted() {
                return None;
            }
            let mut buf = vec![0u8; len];
            match self.file(d).read_at(&mut buf, at) {
                Ok(()) => Some(buf),
                Err(e) => {
                    self.read_error(d, &e);
                    None
                }
            }
        };
        let cols: Vec<Option<Vec<u8>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..k + m).map(|c| scope.spawn(move || read(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a scrub read does not panic"))
                .collect()
        });
        let present = cols.iter().filter(|c| c.is_some()).count() as u64;
        // Parity as the data read says it should be (rows with a bad data
        // block are not compared).
        let data_read = cols[..k].iter().all(Option::is_some);
        let parity = if data_read {
            let shards: Vec<Vec<u8>> = cols[..k].iter().map(|c| c.clone().expect("read")).collect();
            Some(encode(k, m, &shards)?)
        } else {
            None
        };
        let mut report = Scrubbed::default();
        let block = |c: usize, r: usize| cols[c].as_ref().map(|b| &b[r * BS..(r + 1) * BS]);
        for r in 0..nr {
            let want = |c: usize| expect.get(r * k + c).copied().flatten();
            let mut targets = Vec::new();
            let mut known = true;
            for c in 0..k {
                let w = want(c);
                known &= w.is_some();
                let ok = match (block(c, r), w) {
                    (None, _) => false,
                    (Some(b), Some(w)) => sums::of_block(b) == w,
                    (Some(_), None) => true,
                };
                if !ok {
                    if block(c, r).is_some() {
                        let d = st.columns[c].0;
                        self.errors[d as usize]
                            .checksum
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    targets.push((c, w));
                }
            }
            report.checked += present;
            if targets.is_empty() {
                if !known {
                    continue;
                }
                let Some(parity) = &parity else { continue };
                for (p, shard) in parity.iter().enumerate() {
                    let good = &shard[r * BS..(r + 1) * BS];
                    if block(k + p, r) == Some(good) {
                        continue;
                    }
                    let d = st.columns[k + p].0;
                    if self.errors[d as usize].faulted() {
                        continue;
                    }
                    if block(k + p, r).is_some() {
                        self.errors[d as usize]
                            .checksum
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    report.bad += 1;
                    self.repair(st, k + p, row + r as u64, good);
                    report.repaired += 1;
                }
                continue;
            }
            report.bad += targets
                .iter()
                .filter(|t| !self.errors[st.columns[t.0].0 as usize].faulted())
                .count() as u64;
            let shards: Vec<Option<&[u8]>> = (0..k + m).map(|c| block(c, r)).collect();
            match solve(k, m, &shards, &targets) {
                Some(got) => {
                    for (&(c, _), b) in targets.iter().zip(&got) {
                        let d = st.columns[c].0;
                        if !self.errors[d as usize].faulted() {
                            self.repair(st, c, row + r as u64, b);
                            report.repaired += 1;
                        }
                    }
                }
                None => {
                    for &(c, w) in &targets {
                        if w.is_some() {
                            report.lost.push(r * k + c);
                        }
                    }
                }
            }
        }
        Ok(report)
    }
}
