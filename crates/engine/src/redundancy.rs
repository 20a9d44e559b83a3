//! Redundancy classes (issue 14, decision 027): how a LUN's blocks are laid
//! out over a pool's devices. `none` keeps one copy, `mirror` two, `mirror3`
//! three, `parity:K+M` stripes of K data blocks and M parity blocks over
//! K+M devices. Spelled as `lun create --redundancy` and `pool set
//! --redundancy` take them.

use crate::types::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Most data or parity shards of a parity stripe: wider stripes spread a
/// small write thinner than any benefit, and reed-solomon-simd's fast paths
/// are for small shard counts.
pub const PARITY_DATA_MAX: u8 = 16;
pub const PARITY_PARITY_MAX: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Redundancy {
    None,
    Mirror,
    Mirror3,
    Parity { data: u8, parity: u8 },
}

impl Redundancy {
    /// The default for a new LUN in a pool of `devices` devices: as many
    /// copies as the devices allow, up to three. Parity is never a default:
    /// it suits large sequential data, not a LUN of unknown use.
    pub fn default_for(devices: usize) -> Redundancy {
        match devices {
            0 | 1 => Redundancy::None,
            2 => Redundancy::Mirror,
            _ => Redundancy::Mirror3,
        }
    }

    /// Distinct devices one store of this class needs.
    pub fn devices(self) -> usize {
        match self {
            Redundancy::None => 1,
            Redundancy::Mirror => 2,
            Redundancy::Mirror3 => 3,
            Redundancy::Parity { data, parity } => usize::from(data) + usize::from(parity),
        }
    }

    /// Devices that may be lost with every block still readable.
    pub fn tolerates(self) -> usize {
        self.devices() - self.data_shards()
    }

    /// Blocks of a store row that hold distinct data.
    pub fn data_shards(self) -> usize {
        match self {
            Redundancy::Parity { data, .. } => usize::from(data),
            _ => 1,
        }
    }

    /// Raw bytes written per byte of data.
    pub fn overhead(self) -> f64 {
        self.devices() as f64 / self.data_shards() as f64
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::None => f.write_str("none"),
            Redundancy::Mirror => f.write_str("mirror"),
            Redundancy::Mirror3 => f.write_str("mirror3"),
            Redundancy::Parity { data, parity } => write!(f, "parity:{data}+{parity}"),
        }
    }
}

impl FromStr for Redundancy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Redundancy> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "redundancy {s:?} {why}; use none, mirror, mirror3 or parity:K+M (for example parity:4+2)"
            ))
        };
        match s {
            "none" => return Ok(Redundancy::None),
            "mirror" => return Ok(Redundancy::Mirror),
            "mirror3" => return Ok(Redundancy::Mirror3),
            _ => {}
        }
        let spec = s.strip_prefix("parity:").ok_or_else(|| bad("is unknown"))?;
        let (k, m) = spec
            .split_once('+')
            .ok_or_else(|| bad("needs K+M after parity:"))?;
        let num = |t: &str| -> Option<u8> {
            (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let (Some(data), Some(parity)) = (num(k), num(m)) else {
            return Err(bad("needs two whole numbers K and M"));
        };
        if !(2..=PARITY_DATA_MAX).contains(&data) {
            return Err(bad(&format!(
                "has {data} data blocks per stripe; K is 2 to {PARITY_DATA_MAX} (one is a mirror)"
            )));
        }
        if !(1..=PARITY_PARITY_MAX).contains(&parity) {
            return Err(bad(&format!(
                "has {parity} parity blocks per stripe; M is 1 to {PARITY_PARITY_MAX}"
            )));
        }
        Ok(Redundancy::Parity { data, parity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in [
            "none",
            "mirror",
            "mirror3",
            "parity:4+2",
            "parity:2+1",
            "parity:16+4",
        ] {
            let r: Redundancy = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let p: Redundancy = "parity:4+2".parse().unwrap();
        assert_eq!((p.devices(), p.tolerates(), p.overhead()), (6, 2, 1.5));
        assert_eq!(Redundancy::Mirror3.tolerates(), 2);
        assert_eq!(Redundancy::None.tolerates(), 0);
    }

    #[test]
    fn defaults_follow_the_device_count() {
        assert_eq!(Redundancy::default_for(1), Redundancy::None);
        assert_eq!(Redundancy::default_for(2), Redundancy::Mirror);
        assert_eq!(Redundancy::default_for(7), Redundancy::Mirror3);
    }

    #[test]
    fn bad_spellings_say_what_is_wrong() {
        for (s, says) in [
            ("raid5", "is unknown"),
            ("Mirror", "is unknown"),
            ("parity", "is unknown"),
            ("parity:4", "needs K+M"),
            ("parity:4+", "two whole numbers"),
            ("parity:+2", "two whole numbers"),
            ("parity:-4+2", "two whole numbers"),
            ("parity:4+2+1", "two whole numbers"),
            ("parity:300+2", "two whole numbers"),
            ("parity:1+1", "K is 2 to 16"),
            ("parity:17+2", "K is 2 to 16"),
            ("parity:4+0", "M is 1 to 4"),
            ("parity:4+5", "M is 1 to 4"),
        ] {
            let e = s.parse::<Redundancy>().unwrap_err().to_string();
            assert!(e.contains(says), "{s}: {e}");
            assert!(e.contains("parity:K+M"), "{s}: {e}");
        }
    }
}
