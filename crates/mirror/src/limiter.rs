//! A byte-rate limit shared by whoever takes from it: a relationship's
//! `--rate`, and the pool-wide mirror rate.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Most a limiter lets through at once after an idle spell: a quarter
/// second's worth.
const BURST_SECS: f64 = 0.25;

pub struct Limiter {
    inner: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes per second; 0: no limit.
    rate: u64,
    available: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(rate: u64) -> Limiter {
        Limiter {
            inner: Mutex::new(Bucket {
                rate,
                available: 0.0,
                at: Instant::now(),
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.inner.lock().rate
    }

    pub fn set_rate(&self, rate: u64) {
        let mut b = self.inner.lock();
        b.rate = rate;
        b.available = 0.0;
        b.at = Instant::now();
    }

    /// How long to wait before `bytes` more may go (and counts them).
    pub fn take(&self, bytes: u64) -> Duration {
        let mut b = self.inner.lock();
        if b.rate == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let rate = b.rate as f64;
        b.available =
            (b.available + now.duration_since(b.at).as_secs_f64() * rate).min(rate * BURST_SECS);
        b.at = now;
        b.available -= bytes as f64;
        if b.available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.available / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_in_proportion() {
        let l = Limiter::new(1 << 20);
        let wait = l.take(2 << 20);
        assert!(
            wait > Duration::from_millis(1900) && wait < Duration::from_millis(2100),
            "{wait:?}"
        );
        assert_eq!(Limiter::new(0).take(1 << 40), Duration::ZERO);
    }
}
