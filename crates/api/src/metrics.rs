//! `GET /metrics`: the Prometheus text format (or OpenMetrics, when the
//! scraper asks for it), written with prometheus-client. Counters come
//! from [`telemetry`] (kept by the data path, the NBD server and the API);
//! the pool, its LUNs, jobs and mirrors are read from the engine at each
//! scrape. Every name is documented in README.md ("Metrics").

use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::{Engine, JobInfo, LunInfo, PoolStatus, SplitInfo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use telemetry::{HistogramSnapshot, Op, Refusal, Telemetry};

/// What one scrape read from the engine and the mirrors.
#[derive(Debug, Default)]
struct Scrape {
    pool: Option<PoolStatus>,
    devices: Vec<engine::DeviceInfo>,
    scrub: Option<engine::scrub::ScrubInfo>,
    moving: Option<engine::reloc::MoveInfo>,
    luns: Vec<LunInfo>,
    /// LUNs left out of per-LUN gauges by the label limit.
    luns_unlabelled: usize,
    jobs: Vec<JobInfo>,
    splits: Vec<SplitInfo>,
    mirrors: Vec<wire::MirrorInfo>,
    commits: u64,
    commit_failures: u64,
    commit_latency: Option<HistogramSnapshot>,
    commit_batch: Option<HistogramSnapshot>,
    events: u64,
    telemetry: Option<Arc<Telemetry>>,
}

fn read(engine: &Engine, mirrors: Option<&mirror::Mirrors>, t: Option<Arc<Telemetry>>) -> Scrape {
    let stats = engine.commit_stats();
    let limit = t
        .as_ref()
        .map_or(telemetry::io::LUN_LABELS_DEFAULT, |t| t.io.limit());
    let mut luns = engine.list_luns("").unwrap_or_default();
    if let Some(io) = t.as_ref().map(|t| &t.io) {
        let names: std::collections::HashSet<&str> = luns.iter().map(|l| l.name.as_str()).collect();
        io.prune(|n| names.contains(n));
    }
    let luns_unlabelled = luns.len().saturating_sub(limit);
    luns.truncate(limit);
    Scrape {
        pool: engine.pool_status().ok(),
        devices: engine.pool_devices().unwrap_or_default(),
        scrub: engine.scrub_status().ok(),
        moving: engine.move_status().ok(),
        luns,
        luns_unlabelled,
        jobs: engine.jobs(),
        splits: engine.list_splits("").unwrap_or_default(),
        mirrors: mirrors.map(|m| m.list()).unwrap_or_default(),
        commits: stats.commits.load(Ordering::Relaxed),
        commit_failures: stats.failures.load(Ordering::Relaxed),
        commit_latency: Some(stats.latency.snapshot()),
        commit_batch: Some(stats.batch_keys.snapshot()),
        events: engine.events().last_id(),
        telemetry: t,
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let engine = state.engine.clone();
    let mirrors = state.mirrors.clone();
    let t = state.telemetry.clone();
    let scrape =
        match tokio::task::spawn_blocking(move || read(&engine, mirrors.as_deref(), t)).await {
            Ok(s) => s,
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the scrape failed: {e}\n"),
                )
                    .into_response()
            }
        };
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    let (result, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut text, &registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    match result {
        Ok(()) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes metric families; each name is described once, with its samples.
struct Out<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            if labels.is_empty() {
                ConstGauge::new(*v).encode(m.encode_family(&Vec::<(&str, String)>::new())?)?;
            } else {
                ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }

    fn gauge1(&mut self, name: &str, help: &str, v: f64) -> std::fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }

    fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counter1(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    /// `scale` turns the histogram's unit into the exported one.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        scale: f64,
        samples: &[(Labels, &HistogramSnapshot)],
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            let (sum, count, buckets) = h.scaled(scale);
            if labels.is_empty() {
                m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            } else {
                m.encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

const NANOS: f64 = 1e9;

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut out = Out { enc: &mut enc };
        out.gauge(
            "blockfork_build_info",
            "The server's version.",
            &[(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        self.encode_pool(&mut out)?;
        self.encode_devices(&mut out)?;
        self.encode_luns(&mut out)?;
        self.encode_commits(&mut out)?;
        self.encode_jobs(&mut out)?;
        self.encode_mirrors(&mut out)?;
        if let Some(t) = &self.telemetry {
            encode_nbd(&mut out, t)?;
            encode_api(&mut out, t)?;
        }
        out.counter1(
            "blockfork_events",
            "Events recorded in this pool (the newest event's id).",
            self.events,
        )
    }
}

impl Scrape {
    /// A pool on devices: each device's state and error counts.
    fn encode_devices(&self, out: &mut Out) -> std::fmt::Result {
        if self.devices.is_empty() {
            return Ok(());
        }
        let label = |d: &engine::DeviceInfo| vec![("device", d.path.clone())];
        let up: Vec<(Labels, f64)> = self
            .devices
            .iter()
            .map(|d| (label(d), if d.state == "online" { 1.0 } else { 0.0 }))
            .collect();
        out.gauge(
            "blockfork_device_up",
            "1 while a device of the pool is online; 0 once faulted (pool device list says why).",
            &up,
        )?;
        let used: Vec<(Labels, f64)> = self
            .devices
            .iter()
            .map(|d| (label(d), d.used_bytes as f64))
            .collect();
        out.gauge(
            "blockfork_device_used_bytes",
            "Bytes of each device in segments of the pool's stores.",
            &used,
        )?;
        let mut errors: Vec<(Labels, u64)> = Vec::new();
        for d in &self.devices {
            for (kind, n) in [
                ("read", d.read_errors),
                ("write", d.write_errors),
                ("checksum", d.checksum_errors),
            ] {
                let mut l = label(d);
                l.push(("kind", kind.to_string()));
                errors.push((l, n));
            }
        }
        out.counter(
            "blockfork_device_errors_total",
            "Errors on each device since the server started, by kind: read and write errors, and blocks that failed their checksum.",
            &errors,
        )?;
        let repaired: Vec<(Labels, u64)> = self
            .devices
            .iter()
            .map(|d| (label(d), d.repaired_blocks))
            .collect();
        out.counter(
            "blockfork_device_repaired_blocks_total",
            "Blocks of each device rewritten from a good copy since the server started.",
            &repaired,
        )?;
        if let Some(s) = &self.scrub {
            out.gauge1(
                "blockfork_scrub_running",
                "1 while a scrub runs.",
                if s.state == "running" { 1.0 } else { 0.0 },
            )?;
            out.gauge1(
                "blockfork_scrub_progress",
                "The running or last scrub's progress, 0 to 1.",
                s.progress,
            )?;
            out.gauge1(
                "blockfork_scrub_repaired_copies",
                "Block copies the running or last scrub repaired.",
                s.repaired_copies as f64,
            )?;
            out.gauge1(
                "blockfork_scrub_lost_blocks",
                "Blocks the running or last scrub found with no good copy.",
                s.lost_blocks as f64,
            )?;
        }
        if let Some(m) = &self.moving {
            out.gauge1(
                "blockfork_device_job_running",
                "1 while a rebuild, removal or levelling runs.",
                if m.state == "running" { 1.0 } else { 0.0 },
            )?;
            out.gauge1(
                "blockfork_device_job_progress",
                "The running or last device job's progress, 0 to 1.",
                m.progress,
            )?;
        }
        Ok(())
    }

    fn encode_pool(&self, out: &mut Out) -> std::fmt::Result {
        out.gauge1(
            "blockfork_pool_up",
            "1 while the pool serves; 0 once it failed (see the events and the log).",
            if self.pool.is_some() { 1.0 } else { 0.0 },
        )?;
        let Some(p) = &self.pool else {
            return Ok(());
        };
        out.gauge1(
            "blockfork_pool_capacity_bytes",
            "Capacity of the pool.",
            p.capacity_bytes as f64,
        )?;
        out.gauge1(
            "blockfork_pool_used_bytes",
            "Bytes of the pool in use (data, snapshots, in-flight frees).",
            p.used_bytes as f64,
        )?;
        out.gauge1(
            "blockfork_pool_free_bytes",
            "Bytes of the pool free for new data.",
            p.free_bytes as f64,
        )?;
        out.gauge1(
            "blockfork_pool_reserved_bytes",
            "Raw bytes held back for LUNs with reservations (lun create --reserve, --snapshot-reserve) and not yet used by them.",
            p.reserved_bytes as f64,
        )?;
        out.gauge1(
            "blockfork_luns",
            "LUNs in the pool, clones included.",
            p.luns as f64,
        )?;
        out.gauge1(
            "blockfork_snapshots",
            "Snapshots in the pool.",
            p.snapshots as f64,
        )?;
        out.gauge1(
            "blockfork_group_snapshots",
            "Group snapshots in the pool.",
            p.group_snapshots as f64,
        )?;
        out.gauge1(
            "blockfork_clones",
            "LUNs that still read through a parent snapshot (clones not yet split).",
            self.luns.iter().filter(|l| l.parent.is_some()).count() as f64,
        )
    }

    fn encode_luns(&self, out: &mut Out) -> std::fmt::Result {
        let per = |f: &dyn Fn(&LunInfo) -> f64| -> Vec<(Labels, f64)> {
            self.luns
                .iter()
                .map(|l| (vec![("lun", l.name.clone())], f(l)))
                .collect()
        };
        out.gauge(
            "blockfork_lun_size_bytes",
            "Size of each LUN.",
            &per(&|l| l.size_bytes as f64),
        )?;
        out.gauge(
            "blockfork_lun_allocated_bytes",
            "Bytes of data each LUN's current content holds (shared or not).",
            &per(&|l| l.allocated_bytes as f64),
        )?;
        out.gauge(
            "blockfork_lun_snapshots",
            "Snapshots of each LUN.",
            &per(&|l| l.snapshot_count as f64),
        )?;
        out.gauge(
            "blockfork_lun_reserved_bytes",
            "Bytes of data each LUN may still claim from its reservation (0 without one).",
            &per(&|l| l.reserved_bytes as f64),
        )?;
        let moving: Vec<(Labels, f64)> = self
            .luns
            .iter()
            .filter_map(|l| {
                l.relayout_done_bytes.map(|d| {
                    (
                        vec![("lun", l.name.clone()), ("to", l.redundancy.clone())],
                        d as f64 / l.size_bytes.max(1) as f64,
                    )
                })
            })
            .collect();
        out.gauge(
            "blockfork_lun_relayout_progress",
            "LUNs moving to another redundancy class (lun set --redundancy): how far, 0 to 1.",
            &moving,
        )?;
        out.gauge1(
            "blockfork_luns_unlabelled",
            "LUNs past the label limit (serve --metrics-lun-limit): not in the per-LUN gauges, and their I/O counted under lun=\"_other\".",
            self.luns_unlabelled as f64,
        )?;
        // Stale counters are not shown while counting is off.
        let Some(io) = self
            .telemetry
            .as_ref()
            .map(|t| &t.io)
            .filter(|io| io.enabled())
        else {
            return Ok(());
        };
        let snaps = io.snapshots();
        let mut ops = Vec::new();
        let mut bytes = Vec::new();
        let mut errors = Vec::new();
        let mut latency = Vec::new();
        for s in &snaps {
            for (op, r) in &s.ops {
                let labels = vec![("lun", s.lun.clone()), ("op", op.name().to_string())];
                ops.push((labels.clone(), r.ops));
                if *op != Op::Flush {
                    bytes.push((labels.clone(), r.bytes));
                }
                errors.push((labels.clone(), r.errors));
                latency.push((labels, &r.latency));
            }
        }
        out.counter(
            "blockfork_lun_io_ops",
            "NBD requests served, by LUN and op (read, write, trim, zero, flush).",
            &ops,
        )?;
        out.counter(
            "blockfork_lun_io_bytes",
            "Bytes of NBD requests served, by LUN and op.",
            &bytes,
        )?;
        out.counter(
            "blockfork_lun_io_errors",
            "NBD requests answered with an error, by LUN and op.",
            &errors,
        )?;
        out.histogram(
            "blockfork_lun_io_latency_seconds",
            "Time from a request reaching the engine to its answer, by LUN and op.",
            NANOS,
            &latency,
        )
    }

    fn encode_commits(&self, out: &mut Out) -> std::fmt::Result {
        out.counter1(
            "blockfork_commits",
            "Metadata commits since the pool opened.",
            self.commits,
        )?;
        out.counter1(
            "blockfork_commit_failures",
            "Commits that failed (each fails the pool).",
            self.commit_failures,
        )?;
        if let Some(h) = &self.commit_latency {
            out.histogram(
                "blockfork_commit_latency_seconds",
                "Time per commit: data sync, metadata write, frees.",
                NANOS,
                &[(Vec::new(), h)],
            )?;
        }
        if let Some(h) = &self.commit_batch {
            out.histogram(
                "blockfork_commit_batch_keys",
                "Metadata keys written per commit.",
                1.0,
                &[(Vec::new(), h)],
            )?;
        }
        Ok(())
    }

    /// Background jobs: clone splits, snapshot reclaim, mirror transfers.
    fn encode_jobs(&self, out: &mut Out) -> std::fmt::Result {
        let mut progress = Vec::new();
        let mut rate = Vec::new();
        let mut state = Vec::new();
        for s in &self.splits {
            let labels = vec![("kind", "split".to_string()), ("object", s.lun.clone())];
            progress.push((labels.clone(), s.progress));
            rate.push((labels.clone(), s.rate_bytes_per_sec as f64));
            let st = serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            state.push((
                vec![labels[0].clone(), labels[1].clone(), ("state", st)],
                1.0,
            ));
        }
        for j in &self.jobs {
            let labels = vec![("kind", j.kind.clone()), ("object", j.lun.clone())];
            progress.push((labels.clone(), j.progress));
            let st = format!("{:?}", j.state).to_lowercase();
            state.push((
                vec![labels[0].clone(), labels[1].clone(), ("state", st)],
                1.0,
            ));
        }
        for m in &self.mirrors {
            if let Some(t) = &m.transfer {
                let labels = vec![("kind", "mirror".to_string()), ("object", m.name.clone())];
                let p = if t.bytes_expected > 0 {
                    (t.bytes as f64 / t.bytes_expected as f64).min(1.0)
                } else {
                    0.0
                };
                progress.push((labels.clone(), p));
                rate.push((labels, t.rate_bytes));
            }
        }
        out.gauge(
            "blockfork_job_progress_ratio",
            "Progress of each background job, 0 to 1.",
            &progress,
        )?;
        out.gauge(
            "blockfork_job_rate_bytes_per_second",
            "Rate of each background job that moves data.",
            &rate,
        )?;
        out.gauge("blockfork_job_state", "1 for each job's current state (split: running, stopped, waiting-for-space; reclaim: running, done).", &state)
    }

    fn encode_mirrors(&self, out: &mut Out) -> std::fmt::Result {
        let label = |m: &wire::MirrorInfo| vec![("mirror", m.name.clone())];
        let lag: Vec<(Labels, f64)> = self
            .mirrors
            .iter()
            .filter_map(|m| Some((label(m), m.lag_secs? as f64)))
            .collect();
        out.gauge("blockfork_mirror_lag_seconds", "Age of the newest snapshot complete on both sides (the recovery point), per mirror destination.", &lag)?;
        let alert: Vec<(Labels, f64)> = self
            .mirrors
            .iter()
            .filter_map(|m| Some((label(m), m.lag_alert_secs? as f64)))
            .collect();
        out.gauge(
            "blockfork_mirror_lag_alert_seconds",
            "The lag over which each mirror raises a mirror-lag event (mirror create --lag-alert).",
            &alert,
        )?;
        let state: Vec<(Labels, f64)> = self
            .mirrors
            .iter()
            .map(|m| {
                let mut l = label(m);
                l.push(("state", m.state.as_str().to_string()));
                (l, 1.0)
            })
            .collect();
        out.gauge(
            "blockfork_mirror_state",
            "1 for each mirror's state (baselining, idle, transferring, broken, failed, reversed).",
            &state,
        )?;
        let last: Vec<(Labels, f64)> = self
            .mirrors
            .iter()
            .filter_map(|m| Some((label(m), m.last_success? as f64)))
            .collect();
        out.gauge(
            "blockfork_mirror_last_success_timestamp_seconds",
            "When each mirror's last transfer completed (Unix seconds).",
            &last,
        )?;
        let bytes: Vec<(Labels, f64)> = self
            .mirrors
            .iter()
            .map(|m| (label(m), m.last_transfer_bytes as f64))
            .collect();
        out.gauge(
            "blockfork_mirror_last_transfer_bytes",
            "Bytes each mirror's last complete transfer carried.",
            &bytes,
        )
    }
}

fn encode_nbd(out: &mut Out, t: &Telemetry) -> std::fmt::Result {
    out.gauge1(
        "blockfork_nbd_connections_open",
        "NBD connections being served now.",
        t.nbd.open_now() as f64,
    )?;
    out.counter1(
        "blockfork_nbd_connections_accepted",
        "NBD connections admitted since the server started.",
        t.nbd.accepted_total(),
    )?;
    out.counter1(
        "blockfork_nbd_exports_opened",
        "NBD connections that opened an export.",
        t.nbd.exports_opened_total(),
    )?;
    let refused: Vec<(Labels, u64)> = Refusal::ALL
        .iter()
        .map(|&r| {
            (
                vec![("reason", r.name().to_string())],
                t.nbd.refused_total(r),
            )
        })
        .collect();
    out.counter(
        "blockfork_nbd_connections_refused",
        "NBD connections refused or ended early, by reason (per-address-limit, total-limit, handshake-timeout, tls, export, protocol).",
        &refused,
    )?;
    let polls: Vec<(Labels, u64)> = [("found", true), ("expired", false)]
        .into_iter()
        .map(|(name, found)| {
            (
                vec![("outcome", name.to_string())],
                t.nbd.polls_total(found),
            )
        })
        .collect();
    out.counter(
        "blockfork_nbd_idle_polls",
        "Times an idle NBD connection polled its socket for the next request (serve --nbd-poll-us), by outcome: found it, or expired and slept.",
        &polls,
    )
}

fn encode_api(out: &mut Out, t: &Telemetry) -> std::fmt::Result {
    let requests: Vec<(Labels, u64)> = t
        .api
        .requests()
        .into_iter()
        .map(|((route, method, status), n)| {
            (
                vec![
                    ("route", route),
                    ("method", method),
                    ("status", status.to_string()),
                ],
                n,
            )
        })
        .collect();
    out.counter(
        "blockfork_api_requests",
        "REST API requests, by route template, method and status.",
        &requests,
    )?;
    let latencies = t.api.latencies();
    let samples: Vec<(Labels, &HistogramSnapshot)> = latencies
        .iter()
        .map(|(route, h)| (vec![("route", route.clone())], h))
        .collect();
    out.histogram(
        "blockfork_api_request_latency_seconds",
        "REST API request latency, by route template.",
        NANOS,
        &samples,
    )
}
