//! A device that lies, fails and vanishes on request: our zinject (issue 14,
//! decision 027). `FaultyDevice` wraps any `DataFile` (a simulated one, or a
//! real file) and applies the rules injected into it to the I/O that passes
//! through: EIO by byte range and frequency, silent bit flips on read or on
//! write, torn writes (a prefix reaches the device, the call succeeds),
//! dropped writes (nothing reaches it, the call succeeds), latency, and a
//! device that is gone. Decisions are drawn from a seeded generator, so a
//! run replays exactly.
//!
//! Where `sim` models a crash (what survives of unsynced writes), this
//! models a device's own misbehaviour while it runs; the two stack.

use crate::io::DataFile;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which calls a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Read,
    Write,
    Sync,
}

/// What a rule does to a call it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// The call fails with EIO; a write writes nothing.
    Eio,
    /// One bit of the bytes the call moves inside the rule's range is
    /// flipped: on a read in what the caller gets, on a write in what the
    /// device keeps. The call succeeds.
    BitFlip,
    /// A write keeps only a prefix (a whole number of 512-byte sectors,
    /// fewer than all) and succeeds.
    Torn,
    /// A write keeps nothing and succeeds.
    Dropped,
    /// The call waits this long first, then proceeds.
    Latency(Duration),
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Rule {
    pub on: On,
    /// Byte offsets of the device the rule covers; a call that overlaps it
    /// may be hit (sync calls ignore it).
    pub range: Range<u64>,
    /// Hits one matching call in this many, at random (1: every one).
    pub one_in: u32,
    /// Hits at most this many calls, then lapses (`None`: no limit).
    pub times: Option<u64>,
    pub what: Misbehave,
}

impl Rule {
    /// Every matching call, over every byte.
    pub fn always(on: On, what: Misbehave) -> Rule {
        Rule {
            on,
            range: 0..u64::MAX,
            one_in: 1,
            times: None,
            what,
        }
    }

    /// Only calls that touch `range`.
    pub fn within(mut self, range: Range<u64>) -> Rule {
        self.range = range;
        self
    }

    /// One matching call in `n`.
    pub fn one_in(mut self, n: u32) -> Rule {
        assert!(n >= 1, "one_in needs 1 or more");
        self.one_in = n;
        self
    }

    /// At most `n` hits.
    pub fn times(mut self, n: u64) -> Rule {
        self.times = Some(n);
        self
    }
}

/// How often each misbehaviour happened, for tests to check that what
/// they meant to inject was injected.
#[derive(Debug, Default)]
pub struct Injected {
    pub eio: AtomicU64,
    pub bit_flips: AtomicU64,
    pub torn: AtomicU64,
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
}

struct Rules {
    rules: Vec<Rule>,
    rng: StdRng,
}

/// A `DataFile` that misbehaves as its rules say.
pub struct FaultyDevice {
    inner: Arc<dyn DataFile>,
    rules: Mutex<Rules>,
    gone: AtomicBool,
    injected: Injected,
}

/// A hit: what to do, and inside which bytes of the call.
struct Hit {
    what: Misbehave,
    /// The part of the call's bytes inside the rule's range, relative to
    /// the call's offset.
    within: Range<usize>,
}

impl FaultyDevice {
    pub fn new(inner: Arc<dyn DataFile>, seed: u64) -> FaultyDevice {
        FaultyDevice {
            inner,
            rules: Mutex::new(Rules {
                rules: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            gone: AtomicBool::new(false),
            injected: Injected::default(),
        }
    }

    pub fn inject(&self, rule: Rule) {
        assert!(rule.range.start < rule.range.end, "empty fault range");
        self.rules.lock().rules.push(rule);
    }

    /// Removes every rule (the device behaves again; a vanished one stays
    /// gone).
    pub fn clear(&self) {
        self.rules.lock().rules.clear();
    }

    /// The device disappears: every later call fails, as a pulled disk's
    /// would.
    pub fn vanish(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    pub fn injected(&self) -> &Injected {
        &self.injected
    }

    fn check_present(&self) -> io::Result<()> {
        if self.gone.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the device is gone (fault injected)",
            ));
        }
        Ok(())
    }

    /// The rules that hit a call, in the order they were injected; a rule
    /// that hits uses up one of its times.
    fn hits(&self, on: On, offset: u64, len: usize) -> Vec<Hit> {
        let mut r = self.rules.lock();
        let Rules { rules, rng } = &mut *r;
        let end = offset + len as u64;
        let mut hits = Vec::new();
        for rule in rules.iter_mut() {
            if rule.on != on || rule.times == Some(0) {
                continue;
            }
            let (lo, hi) = if on == On::Sync {
                (offset, end)
            } else {
                (rule.range.start.max(offset), rule.range.end.min(end))
            };
            if on != On::Sync && lo >= hi {
                continue;
            }
            if rule.one_in > 1 && rng.gen_range(0..rule.one_in) != 0 {
                continue;
            }
            if let Some(t) = &mut rule.times {
                *t -= 1;
            }
            hits.push(Hit {
                what: rule.what,
                within: (lo - offset) as usize..(hi - offset) as usize,
            });
        }
        hits
    }

    fn eio(&self) -> io::Error {
        self.injected.eio.fetch_add(1, Ordering::Relaxed);
        io::Error::from_raw_os_error(libc::EIO)
    }

    /// Flips one random bit of `bytes[within]`.
    fn flip(&self, bytes: &mut [u8], within: &Range<usize>) {
        let bit = self.rules.lock().rng.gen_range(0..(within.len() * 8));
        bytes[within.start + bit / 8] ^= 1 << (bit % 8);
        self.injected.bit_flips.fetch_add(1, Ordering::Relaxed);
    }

    fn delay(&self, d: Duration) {
        self.injected.delayed.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(d);
    }
}

impl DataFile for FaultyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_present()?;
        let hits = self.hits(On::Read, offset, buf.len());
        for h in &hits {
            match h.what {
                Misbehave::Eio => return Err(self.eio()),
                Misbehave::Latency(d) => self.delay(d),
                _ => {}
            }
        }
        self.inner.read_at(buf, offset)?;
        for h in &hits {
            if h.what == Misbehave::BitFlip {
                self.flip(buf, &h.within);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_present()?;
        let hits = self.hits(On::Write, offset, buf.len());
        let mut keep = buf.len();
        let mut copy: Option<Vec<u8>> = None;
        for h in &hits {
            match h.what {
                Misbehave::Eio => return Err(self.eio()),
                Misbehave::Latency(d) => self.delay(d),
                Misbehave::Dropped => {
                    self.injected.dropped.fetch_add(1, Ordering::Relaxed);
                    keep = 0;
                }
                Misbehave::Torn => {
                    let sectors = buf.len() / 512;
                    let prefix = if sectors > 1 {
                        self.rules.lock().rng.gen_range(1..sectors) * 512
                    } else {
                        0
                    };
                    self.injected.torn.fetch_add(1, Ordering::Relaxed);
                    keep = keep.min(prefix);
                }
                Misbehave::BitFlip => {
                    let c = copy.get_or_insert_with(|| buf.to_vec());
                    self.flip(c, &h.within);
                }
            }
        }
        if keep == 0 {
            return Ok(());
        }
        let bytes = copy.as_deref().unwrap_or(buf);
        self.inner.write_at(&bytes[..keep], offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.check_present()?;
        for h in self.hits(On::Sync, 0, 0) {
            match h.what {
                Misbehave::Eio => return Err(self.eio()),
                Misbehave::Latency(d) => self.delay(d),
                _ => {}
            }
        }
        self.inner.sync()
    }

    // `copy` is the trait's own, through read_at and write_at, so the
    // rules apply to bulk copies too.

    fn ensure_len(&self, bytes: u64) -> io::Result<()> {
        self.check_present()?;
        self.inner.ensure_len(bytes)
    }

    fn check(&self) -> io::Result<()> {
        self.check_present()?;
        self.inner.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{FaultPlan, SimData};

    const BLOCK: usize = 4096;

    fn device(seed: u64) -> (FaultyDevice, Arc<SimData>) {
        let inner = Arc::new(SimData::new(FaultPlan::new(seed)));
        inner.ensure_len(1 << 20).unwrap();
        (FaultyDevice::new(inner.clone(), seed), inner)
    }

    fn pattern(seed: u8) -> Vec<u8> {
        (0..BLOCK)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn read(d: &dyn DataFile, offset: u64) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; BLOCK];
        d.read_at(&mut b, offset).map(|_| b)
    }

    #[test]
    fn eio_hits_only_its_range_and_lapses_after_its_times() {
        let (d, _) = device(1);
        d.write_at(&pattern(1), 0).unwrap();
        d.write_at(&pattern(2), 8192).unwrap();
        d.inject(
            Rule::always(On::Read, Misbehave::Eio)
                .within(8192..8193)
                .times(2),
        );
        assert_eq!(read(&d, 0).unwrap(), pattern(1), "outside the range");
        for _ in 0..2 {
            let e = read(&d, 8192).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
        }
        assert_eq!(
            read(&d, 8192).unwrap(),
            pattern(2),
            "two times, then lapsed"
        );
        assert_eq!(d.injected().eio.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_bit_flipped_on_read_is_one_bit_and_leaves_the_device_intact() {
        let (d, inner) = device(2);
        d.write_at(&pattern(3), 4096).unwrap();
        d.inject(Rule::always(On::Read, Misbehave::BitFlip).times(1));
        let got = read(&d, 4096).unwrap();
        let differing: u32 = got
            .iter()
            .zip(pattern(3))
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(differing, 1);
        assert_eq!(read(&*inner, 4096).unwrap(), pattern(3));
        assert_eq!(read(&d, 4096).unwrap(), pattern(3));
    }

    #[test]
    fn a_bit_flipped_on_write_is_kept_by_the_device_silently() {
        let (d, inner) = device(3);
        d.inject(Rule::always(On::Write, Misbehave::BitFlip).within(0..4096));
        d.write_at(&pattern(4), 0).unwrap();
        let kept = read(&*inner, 0).unwrap();
        assert_ne!(kept, pattern(4));
        let differing: u32 = kept
            .iter()
            .zip(pattern(4))
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(differing, 1);
    }

    #[test]
    fn torn_and_dropped_writes_succeed_and_keep_less() {
        let (d, inner) = device(4);
        d.write_at(&pattern(5), 0).unwrap();
        d.write_at(&pattern(5), 4096).unwrap();
        d.inject(
            Rule::always(On::Write, Misbehave::Dropped)
                .within(0..4096)
                .times(1),
        );
        d.write_at(&pattern(6), 0).unwrap();
        assert_eq!(
            read(&*inner, 0).unwrap(),
            pattern(5),
            "dropped: the old block"
        );
        d.inject(
            Rule::always(On::Write, Misbehave::Torn)
                .within(4096..8192)
                .times(1),
        );
        d.write_at(&pattern(6), 4096).unwrap();
        let kept = read(&*inner, 4096).unwrap();
        let new_prefix = kept
            .chunks(512)
            .zip(pattern(6).chunks(512))
            .take_while(|(a, b)| a == b)
            .count();
        assert!((1..8).contains(&new_prefix), "{new_prefix} sectors new");
        assert!(kept[new_prefix * 512..]
            .chunks(512)
            .zip(pattern(5)[new_prefix * 512..].chunks(512))
            .all(|(a, b)| a == b));
        assert_eq!(d.injected().torn.load(Ordering::Relaxed), 1);
        assert_eq!(d.injected().dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn frequency_is_seeded_and_replays() {
        let count = |seed| {
            let (d, _) = device(seed);
            d.inject(Rule::always(On::Read, Misbehave::Eio).one_in(4));
            (0..400)
                .map(|i| read(&d, (i % 64) * 4096).is_err())
                .collect::<Vec<bool>>()
        };
        let a = count(9);
        assert_eq!(a, count(9), "the same seed, the same faults");
        let hits = a.iter().filter(|&&x| x).count();
        assert!((60..140).contains(&hits), "{hits} of 400 at one in four");
    }

    #[test]
    fn a_vanished_device_fails_everything_and_sync_faults_apply() {
        let (d, _) = device(5);
        d.inject(Rule::always(On::Sync, Misbehave::Eio).times(1));
        assert!(d.sync().is_err());
        d.sync().unwrap();
        d.inject(Rule::always(On::Read, Misbehave::Latency(Duration::from_millis(20))).times(1));
        let t = std::time::Instant::now();
        read(&d, 0).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
        d.vanish();
        assert_eq!(read(&d, 0).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(d.write_at(&pattern(1), 0).is_err());
        assert!(d.sync().is_err());
        assert!(d.check().is_err());
        d.clear();
        assert!(d.check().is_err(), "gone stays gone");
    }
}
