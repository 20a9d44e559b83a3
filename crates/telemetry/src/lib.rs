//! blockfork's counters (issue 16, decision 025): what the data path, the
//! NBD server and the REST API count, with atomics that cost the data path
//! no lock, and the Prometheus text encoding of all of it
//! ([`encode`], with prometheus-client).
//!
//! State that already lives elsewhere (the pool's capacity, LUN counts,
//! jobs, mirrors) is not copied here: the API's scrape reads it from the
//! engine and encodes it beside these counters.

pub mod api;
pub mod histogram;
pub mod io;
pub mod nbd;

pub use histogram::{Histogram, HistogramSnapshot};
pub use io::{IoRegistry, IoTotals, LunIo, Op};
pub use nbd::{NbdStats, Refusal};
pub use prometheus_client;

use std::sync::Arc;

/// Everything one server counts, shared by its NBD listeners and its API.
#[derive(Debug)]
pub struct Telemetry {
    /// `None` with `serve --no-io-metrics`: the data path counts nothing.
    pub io: Option<IoRegistry>,
    pub nbd: NbdStats,
    pub api: ApiStats,
}

pub use api::ApiStats;

impl Telemetry {
    /// `lun_labels`: LUNs with a label of their own; `count_io`: whether
    /// the data path counts at all.
    pub fn new(lun_labels: usize, count_io: bool) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            io: count_io.then(|| IoRegistry::new(lun_labels)),
            nbd: NbdStats::default(),
            api: ApiStats::default(),
        })
    }
}
