//! NBD connection counters, shared by every listener of one server.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a connection ended before serving I/O, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address already holds its share of connections.
    PerAddressLimit,
    /// The server already serves its most connections.
    TotalLimit,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// TLS failed, or the server requires it and the client did not start it.
    Tls,
    /// The export is unknown or not mapped to the client.
    Export,
    /// The client broke the protocol during the handshake.
    Protocol,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::PerAddressLimit,
        Refusal::TotalLimit,
        Refusal::HandshakeTimeout,
        Refusal::Tls,
        Refusal::Export,
        Refusal::Protocol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::PerAddressLimit => "per-address-limit",
            Refusal::TotalLimit => "total-limit",
            Refusal::HandshakeTimeout => "handshake-timeout",
            Refusal::Tls => "tls",
            Refusal::Export => "export",
            Refusal::Protocol => "protocol",
        }
    }
}

#[derive(Debug, Default)]
pub struct NbdStats {
    /// Connections being served now (handshake or transmission).
    open: AtomicI64,
    accepted: AtomicU64,
    /// Connections that reached transmission (an export was opened).
    exports_opened: AtomicU64,
    refused: [AtomicU64; 6],
    /// Idle polls (decision 026) that found the next request, and that
    /// spent their budget and went to sleep.
    polls_found: AtomicU64,
    polls_expired: AtomicU64,
}

impl NbdStats {
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn export_opened(&self) {
        self.exports_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection polled for its next request: `found` it, or
    /// spent the budget.
    pub fn polled(&self, found: bool) {
        let c = if found {
            &self.polls_found
        } else {
            &self.polls_expired
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Idle polls that found a request (`true`) or expired (`false`).
    pub fn polls_total(&self, found: bool) -> u64 {
        if found {
            self.polls_found.load(Ordering::Relaxed)
        } else {
            self.polls_expired.load(Ordering::Relaxed)
        }
    }

    pub fn open_now(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn exports_opened_total(&self) -> u64 {
        self.exports_opened.load(Ordering::Relaxed)
    }

    pub fn refused_total(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }
}
