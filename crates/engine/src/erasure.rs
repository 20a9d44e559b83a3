//! The erasure code of parity stores (issue 14, decision 030):
//! Reed-Solomon by reed-solomon-simd, and recovery that lets the blocks'
//! checksums pick the set of shards that is right.

use crate::sums;
use crate::types::BLOCK_SIZE;
use std::io;

const BS: usize = BLOCK_SIZE as usize;

/// Sets of K shards tried for one row before the row counts as lost
/// (C(19, 16) = 969 covers every set of the widest class).
const SOLVE_TRIES_MAX: usize = 1024;

/// Parity shards of data shards (all of one length, a whole number of
/// blocks).
pub fn encode(k: usize, m: usize, data: &[Vec<u8>]) -> io::Result<Vec<Vec<u8>>> {
    debug_assert_eq!(data.len(), k);
    reed_solomon_simd::encode(k, m, data)
        .map_err(|e| io::Error::other(format!("encoding parity: {e}")))
}

/// Recovers the data columns `targets` of one row from the other shards
/// (`shards[c]`: column c, None when unread or known bad): tries sets of K
/// shards in order until every target whose checksum is known matches.
/// None when no set does.
pub fn solve(
    k: usize,
    m: usize,
    shards: &[Option<&[u8]>],
    targets: &[(usize, Option<u32>)],
) -> Option<Vec<Vec<u8>>> {
    let have: Vec<usize> = (0..k + m)
        .filter(|&c| shards[c].is_some() && !targets.iter().any(|t| t.0 == c))
        .collect();
    if have.len() < k {
        return None;
    }
    let mut pick: Vec<usize> = (0..k).collect();
    for _ in 0..SOLVE_TRIES_MAX {
        let chosen: Vec<usize> = pick.iter().map(|&i| have[i]).collect();
        if let Some(out) = decode_with(k, m, shards, &chosen, targets) {
            return Some(out);
        }
        if !next_combination(&mut pick, have.len()) {
            return None;
        }
    }
    None
}

fn decode_with(
    k: usize,
    m: usize,
    shards: &[Option<&[u8]>],
    chosen: &[usize],
    targets: &[(usize, Option<u32>)],
) -> Option<Vec<Vec<u8>>> {
    let shard = |c: usize| shards[c].expect("chosen shards are present");
    let originals = chosen.iter().filter(|&&c| c < k).map(|&c| (c, shard(c)));
    let recovery = chosen
        .iter()
        .filter(|&&c| c >= k)
        .map(|&c| (c - k, shard(c)));
    let restored = reed_solomon_simd::decode(k, m, originals, recovery).ok()?;
    let mut out = Vec::with_capacity(targets.len());
    for &(c, want) in targets {
        let block = restored.get(&c)?;
        let agrees = match want {
            Some(w) => block.chunks(BS).all(|b| sums::of_block(b) == w),
            None => true,
        };
        if !agrees {
            return None;
        }
        out.push(block.clone());
    }
    Some(out)
}

/// The next k-subset of 0..n in lexicographic order; false after the last.
fn next_combination(pick: &mut [usize], n: usize) -> bool {
    let k = pick.len();
    for i in (0..k).rev() {
        if pick[i] < n - k + i {
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// Rows `[r0, r1)` of the blocks of column `c` in `[b0, b0 + n)` (None when
/// the range has none of that column).
pub fn column_rows(k: u64, c: u64, b0: u64, n: u64) -> Option<(u64, u64)> {
    let first = b0 + (c + k - b0 % k) % k;
    if first >= b0 + n {
        return None;
    }
    let last = b0 + n - 1 - ((b0 + n - 1) % k + k - c) % k;
    Some((first / k, last / k + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                (0..BS)
                    .map(|j| (j as u8).wrapping_mul(31) ^ seed ^ i as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn rows_of_a_column_are_one_shard() {
        // Encoding two rows at once equals encoding each row.
        let (k, m) = (4, 2);
        let row1 = blocks(k, 1);
        let row2 = blocks(k, 2);
        let both: Vec<Vec<u8>> = (0..k)
            .map(|c| [row1[c].clone(), row2[c].clone()].concat())
            .collect();
        let p1 = encode(k, m, &row1).unwrap();
        let p2 = encode(k, m, &row2).unwrap();
        let p = encode(k, m, &both).unwrap();
        for c in 0..m {
            assert_eq!(p[c], [p1[c].clone(), p2[c].clone()].concat());
        }
    }

    #[test]
    fn solve_finds_the_set_that_matches_the_checksum() {
        let (k, m) = (4, 2);
        let data = blocks(k, 7);
        let parity = encode(k, m, &data).unwrap();
        let mut all: Vec<Vec<u8>> = data.clone();
        all.extend(parity);
        let want = sums::of_block(&data[1]);
        // Column 1 lost, column 0 silently rotten: the first set (0, 2, 3,
        // 4) gives a wrong block; the checksum rejects it.
        let mut rotten = all.clone();
        rotten[0][100] ^= 0xff;
        let mut shards: Vec<Option<&[u8]>> = rotten.iter().map(|s| Some(&s[..])).collect();
        shards[1] = None;
        let got = solve(k, m, &shards, &[(1, Some(want))]).unwrap();
        assert_eq!(got[0], data[1]);
        // Without the checksum the first set answers, wrongly.
        let blind = solve(k, m, &shards, &[(1, None)]).unwrap();
        assert_ne!(blind[0], data[1]);
        // Two data columns lost: both back from parity.
        let mut shards: Vec<Option<&[u8]>> = all.iter().map(|s| Some(&s[..])).collect();
        shards[0] = None;
        shards[3] = None;
        let got = solve(k, m, &shards, &[(0, None), (3, None)]).unwrap();
        assert_eq!((&got[0], &got[1]), (&data[0], &data[3]));
        // Three lost of a 4+2 stripe: gone.
        shards[1] = None;
        assert!(solve(k, m, &shards, &[(0, None), (3, None)]).is_none());
    }

    #[test]
    fn combinations_and_column_rows() {
        let mut pick = vec![0, 1];
        let mut seen = vec![pick.clone()];
        while next_combination(&mut pick, 4) {
            seen.push(pick.clone());
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(seen.last(), Some(&vec![2, 3]));
        // K = 4, blocks 2..11: column 0 has 4 and 8 (rows 1, 2); column 2
        // has 2, 6 and 10 (rows 0..3).
        assert_eq!(column_rows(4, 0, 2, 9), Some((1, 3)));
        assert_eq!(column_rows(4, 2, 2, 9), Some((0, 3)));
        assert_eq!(column_rows(4, 1, 2, 2), None);
        assert_eq!(column_rows(4, 3, 0, 4), Some((0, 1)));
    }
}
