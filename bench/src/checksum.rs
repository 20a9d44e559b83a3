//! `--only checksum`: the candidates for issue 14's per-block checksums and
//! parity (decision 027), measured where they would run.
//!
//! - Each checksum over 4 KiB blocks of a buffer larger than the caches:
//!   ns per block and GB/s.
//! - In-process 4 KiB random reads of a LUN, with and without the checksum
//!   of each block read computed over the buffer (what verifying on every
//!   read adds), rounds alternating, the ratio the median of the rounds'.
//! - Reed-Solomon 4+2 encode of full stripes, two crates, two stripe sizes.

use super::reads::rate;
use super::{fresh_dir, open_engine, Opts, Row, MIB};
use engine::BLOCK_SIZE;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 9;

/// A checksum candidate: its name and its function over one block.
type Candidate = (&'static str, fn(&[u8]) -> u64);

fn candidates() -> [Candidate; 3] {
    [
        ("crc32c", |b| u64::from(crc32c::crc32c(b))),
        ("xxh3-64", xxhash_rust::xxh3::xxh3_64),
        ("blake3 (first 8 bytes)", |b| {
            let h = blake3::hash(b);
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
        }),
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn rows(o: &Opts, rows: &mut Vec<Row>) {
    let mut rng = StdRng::seed_from_u64(27);
    let bytes = if o.quick { 32 * MIB } else { 256 * MIB };
    let mut data = vec![0u8; bytes as usize];
    rng.fill_bytes(&mut data);

    // The functions alone.
    for (name, f) in candidates() {
        let mut ns = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let mut x = 0u64;
            for b in data.chunks(BLOCK_SIZE as usize) {
                x ^= f(b);
            }
            black_box(x);
            ns.push(t.elapsed().as_nanos() as f64 / (bytes / BLOCK_SIZE) as f64);
        }
        let per = median(&mut ns);
        rows.push(Row {
            what: format!("{name} of a 4 KiB block, ns (GB/s)"),
            ours: format!("{per:.0} ({:.1})", BLOCK_SIZE as f64 / per),
            baseline: "—".into(),
            ratio: "—".into(),
            goal: "(information)".into(),
        });
    }

    // On the read path.
    let lun_bytes = if o.quick { 64 * MIB } else { 256 * MIB };
    let ops = if o.quick { 50_000 } else { 200_000 };
    let blocks = lun_bytes / BLOCK_SIZE;
    let offsets: Vec<u64> = (0..ops)
        .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
        .collect();
    let dir = fresh_dir(&o.dir, "checksum");
    let e = open_engine(&dir, lun_bytes * 3);
    e.create_lun("lun", lun_bytes).expect("create the LUN");
    let t = e.resolve("lun").expect("resolve the LUN");
    for (i, &off) in offsets.iter().enumerate() {
        let at = (i * BLOCK_SIZE as usize) % (data.len() - BLOCK_SIZE as usize);
        e.write(t, off, &data[at..at + BLOCK_SIZE as usize], false)
            .expect("write");
    }
    e.flush().expect("flush");
    for (name, f) in candidates() {
        let (mut plain, mut checked, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let p = rate(1, &offsets, |off, b| e.read(t, off, b).expect("read"));
            let c = rate(1, &offsets, |off, b| {
                e.read(t, off, b).expect("read");
                black_box(f(b));
            });
            plain.push(p);
            checked.push(c);
            ratios.push(c / p);
        }
        rows.push(Row {
            what: format!("4 KiB random reads in-process, each block's {name} computed, ops/s"),
            ours: format!("{:.0}", median(&mut checked)),
            baseline: format!("no checksum {:.0}", median(&mut plain)),
            ratio: format!("{:.2}×", median(&mut ratios)),
            goal: "(information; issue 14's ≤ 5 % is over NBD)".into(),
        });
    }
    e.close().expect("close");
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);

    // Parity: full stripes of 4 data shards, 2 parity shards.
    for shard in [4096usize, 256 * 1024] {
        let stripes = (bytes as usize / (4 * shard)).min(if o.quick { 64 } else { 512 });
        let originals: Vec<Vec<Vec<u8>>> = (0..stripes)
            .map(|s| {
                (0..4)
                    .map(|i| data[(s * 4 + i) * shard..(s * 4 + i + 1) * shard].to_vec())
                    .collect()
            })
            .collect();
        let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(4, 2).expect("4+2 codec");
        let (mut simd, mut erasure) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let t = Instant::now();
            for o in &originals {
                black_box(reed_solomon_simd::encode(4, 2, o).expect("encode"));
            }
            simd.push((stripes * 4 * shard) as f64 / t.elapsed().as_secs_f64() / 1e9);
            let mut parity = vec![vec![0u8; shard]; 2];
            let t = Instant::now();
            for o in &originals {
                let data_refs: Vec<&[u8]> = o.iter().map(Vec::as_slice).collect();
                let mut parity_refs: Vec<&mut [u8]> =
                    parity.iter_mut().map(Vec::as_mut_slice).collect();
                rs.encode_sep(&data_refs, &mut parity_refs).expect("encode");
                black_box(&parity_refs);
            }
            erasure.push((stripes * 4 * shard) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        let (s, r) = (median(&mut simd), median(&mut erasure));
        rows.push(Row {
            what: format!(
                "Reed-Solomon 4+2 encode, {} KiB shards, data GB/s",
                shard / 1024
            ),
            ours: format!("reed-solomon-simd {s:.2}"),
            baseline: format!("reed-solomon-erasure {r:.2}"),
            ratio: format!("{:.2}×", s / r),
            goal: "(information)".into(),
        });
    }
}

/// The checksum rows alone.
pub(super) fn bench(o: &Opts) {
    let mut out = Vec::new();
    rows(o, &mut out);
    let _ = std::fs::remove_dir_all(&o.dir);
    super::print_table(&out);
}
