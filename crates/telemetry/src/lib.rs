//! blockfork's counters (issue 16, decision 025): what the data path, the
//! NBD server and the REST API count, with atomics that cost the data path
//! no lock. The API's `/metrics` encodes them with prometheus-client,
//! beside what it reads from the engine at each scrape (the pool's space,
//! LUNs, jobs, mirrors: state that lives elsewhere is not copied here).

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
    /// Per-LUN request counters (switched off by `serve
    /// --no-io-metrics` or at run time).
    pub io: IoRegistry,
    pub nbd: Arc<NbdStats>,
    pub api: ApiStats,
}

pub use api::ApiStats;

impl Telemetry {
    /// `lun_labels`: LUNs with a label of their own; `count_io`: whether
    /// the data path counts at all.
    pub fn new(lun_labels: usize, count_io: bool) -> Arc<Telemetry> {
        let io = IoRegistry::new(lun_labels);
        io.set_enabled(count_io);
        Arc::new(Telemetry {
            io,
            nbd: Arc::default(),
            api: ApiStats::default(),
        })
    }
}
