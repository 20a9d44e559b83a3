//! A fixed-bucket histogram updated with atomics only: the data path
//! observes into it without a lock (prometheus-client's own histogram
//! takes a write lock per observation).

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets, in nanoseconds: 25 µs to 10 s.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Size buckets for counts (commit batches in map keys): 1 to 1 Mi.
pub const COUNT_BOUNDS: &[u64] = &[
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16_384,
    65_536,
    262_144,
    1 << 20,
];

/// Most buckets a histogram has (bounds plus the overflow bucket).
pub const BUCKETS_MAX: usize = 18;

/// Observations in buckets with upper bounds `bounds` (inclusive) and one
/// more for everything above. The counts are inline, so that a histogram
/// inside a cache-aligned struct shares no line with anything else.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Not cumulative; `bounds.len()` is the overflow bucket.
    counts: [AtomicU64; BUCKETS_MAX],
    sum: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations in this bucket alone), ending with +Inf
    /// (not cumulative: prometheus-client's encoder adds them up).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    /// In the histogram's own unit (nanoseconds for latencies).
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(
            bounds.len() < BUCKETS_MAX,
            "at most {} bounds",
            BUCKETS_MAX - 1
        );
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram (nanoseconds).
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_NS)
    }

    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts[..=self.bounds.len()]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Reads every bucket; `scale` divides bounds and the sum for the
    /// exported unit (1e9 turns nanoseconds into seconds).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, c) in self.counts[..=self.bounds.len()].iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = self.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// Adds another reading of a histogram with the same bounds (shards
    /// of one counter).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Bounds and sum divided by `scale` (1e9: nanoseconds to seconds).
    pub fn scaled(&self, scale: f64) -> (f64, u64, Vec<(f64, u64)>) {
        (
            self.sum as f64 / scale,
            self.count,
            self.buckets.iter().map(|&(b, c)| (b / scale, c)).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10.0, 2), (100.0, 2), (f64::INFINITY, 2)]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 5222);
        let (sum, count, buckets) = s.scaled(10.0);
        assert_eq!((sum, count), (522.2, 6));
        assert_eq!(buckets[0], (1.0, 2));
    }
}
