//! REST API request counters by route template, method and status.

use crate::histogram::{Histogram, HistogramSnapshot};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// (route template, method, status).
pub type RouteKey = (String, String, u16);

#[derive(Debug, Default)]
pub struct ApiStats {
    /// Bounded by the routes the server has (unmatched paths count as one
    /// route) times methods times statuses.
    requests: Mutex<BTreeMap<RouteKey, u64>>,
    /// Latency by route template.
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl ApiStats {
    pub fn record(&self, route: &str, method: &str, status: u16, nanos: u64) {
        *self
            .requests
            .lock()
            .entry((route.to_string(), method.to_string(), status))
            .or_insert(0) += 1;
        let h = self
            .latency
            .lock()
            .entry(route.to_string())
            .or_insert_with(|| Arc::new(Histogram::latency()))
            .clone();
        h.observe(nanos);
    }

    pub fn requests(&self) -> Vec<(RouteKey, u64)> {
        self.requests
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn latencies(&self) -> Vec<(String, HistogramSnapshot)> {
        self.latency
            .lock()
            .iter()
            .map(|(k, h)| (k.clone(), h.snapshot()))
            .collect()
    }
}
