//! Connection admission: caps on connections per client address and in
//! total, counted over every listener a `Server` (and its clones) serves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::backend::ClientInfo;

/// The caps. A value of 0 refuses every connection of that kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub per_address_max: usize,
    pub total_max: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one connection; entries go at zero so
    /// the map is bounded by `total`.
    by_address: HashMap<IpAddr, usize>,
}

/// Live connection counts, shared by a server's clones.
#[derive(Default, Clone)]
pub(crate) struct Admission {
    counts: Arc<Mutex<Counts>>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    PerAddress { address: IpAddr, max: usize },
    Total { max: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerAddress { address, max } => {
                write!(
                    f,
                    "{address} already has {max} connections (the per-address limit)"
                )
            }
            Refusal::Total { max } => {
                write!(
                    f,
                    "the server already has {max} connections (the total limit)"
                )
            }
        }
    }
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct Slot {
    admission: Admission,
    address: Option<IpAddr>,
}

impl Admission {
    /// Takes a place for `client` or says which cap it hit. Unix-socket
    /// clients (no peer address) count toward the total only.
    pub(crate) fn admit(&self, client: &ClientInfo, limits: Limits) -> Result<Slot, Refusal> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d;
        // it is the same client as a.b.c.d.
        let address = client.peer.map(|p| p.ip().to_canonical());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= limits.total_max {
            return Err(Refusal::Total {
                max: limits.total_max,
            });
        }
        if let Some(address) = address {
            let held = counts.by_address.get(&address).copied().unwrap_or(0);
            if held >= limits.per_address_max {
                return Err(Refusal::PerAddress {
                    address,
                    max: limits.per_address_max,
                });
            }
            counts.by_address.insert(address, held + 1);
        }
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap();
        (counts.total, counts.by_address.len())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        assert!(counts.total > 0, "connection count underflow");
        counts.total -= 1;
        if let Some(address) = self.address {
            let held = counts
                .by_address
                .get_mut(&address)
                .expect("an admitted address has a count");
            assert!(*held > 0, "per-address count underflow");
            *held -= 1;
            if *held == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> ClientInfo {
        ClientInfo::tcp(addr.parse().unwrap())
    }

    #[test]
    fn caps_and_release() {
        let a = Admission::default();
        let limits = Limits {
            per_address_max: 2,
            total_max: 4,
        };
        let s1 = a.admit(&tcp("10.0.0.1:1000"), limits).unwrap();
        let _s2 = a.admit(&tcp("10.0.0.1:1001"), limits).unwrap();
        // The same host over IPv4-mapped IPv6 is the same address.
        assert_eq!(
            a.admit(&tcp("[::ffff:10.0.0.1]:1002"), limits).err(),
            Some(Refusal::PerAddress {
                address: "10.0.0.1".parse().unwrap(),
                max: 2
            })
        );
        let _s3 = a.admit(&tcp("10.0.0.2:1000"), limits).unwrap();
        // Unix clients skip the per-address cap but fill the total.
        let _u = a.admit(&ClientInfo::unix(), limits).unwrap();
        assert_eq!(
            a.admit(&ClientInfo::unix(), limits).err(),
            Some(Refusal::Total { max: 4 })
        );
        assert_eq!(a.held(), (4, 2));
        drop(s1);
        assert_eq!(a.held(), (3, 2));
        let _s4 = a.admit(&tcp("10.0.0.1:1003"), limits).unwrap();
        drop(_s2);
        drop(_s3);
        drop(_s4);
        drop(_u);
        // Released addresses leave the map.
        assert_eq!(a.held(), (0, 0));
    }
}
