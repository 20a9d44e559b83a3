//! Peers and mirror relationships on the destination: their durable
//! records, the worker that runs a relationship's transfer, the schedule
//! that starts them, and break, resync, reverse and delete.

mod failover;
mod lag;
mod records;
mod worker;

use records::*;

use crate::planner::{self, Sides, Snap, Update};
use crate::tokens::PeerTokens;
use crate::transfer::{self, Ctx, Failure};
use crate::{now_secs, store, Limiter, MIRROR_SNAPSHOT_PREFIX};
use engine::{Engine, Error, ReplicaSnapshot, BLOCK_SIZE};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::{
    CreateMirror, CreatePeer, MirrorInfo, MirrorMember, MirrorPlan, MirrorState, PeerInfo,
    ReleaseMirrorSnapshot, ReverseRequest, TakeMirrorSnapshot, TransferInfo,
};

/// Most peers, and most relationships, one server keeps.
pub const PEERS_MAX: usize = 64;
pub const MIRRORS_MAX: usize = 1024;
/// Most LUNs one group mirror holds.
pub const GROUP_MEMBERS_MAX: usize = 64;
/// Attempts at a transfer that keeps getting cut, each resuming from the
/// last checkpoint, before the relationship is marked failed.
pub const CUT_RETRIES_MAX: u32 = 5;
/// Timeout of one call to a peer (a stream piece is sized to fit).
pub const PEER_CALL_TIMEOUT_MS: u64 = 120_000;
/// Longest `abort`, `resync` and `delete` wait for a transfer to stop.
pub const STOP_WAIT_MS: u64 = 15_000;
/// The schedule's tick.
const SCHEDULE_TICK_MS: u64 = 500;
/// Times one update starts over when the source loses its goal.
const GOAL_RESTARTS_MAX: u32 = 3;
/// Default mirror snapshots kept on the destination.
pub const KEEP_DEFAULT: u32 = 2;
/// Shortest schedule.
pub const SCHEDULE_SECS_MIN: u64 = 1;

/// What a worker's transfer shares with those who watch or stop it.
struct Live<'a> {
    cancel: &'a AtomicBool,
    bytes: &'a AtomicU64,
    expected: &'a AtomicU64,
}

/// A running transfer, as the API sees it.
struct Worker {
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    bytes: Arc<AtomicU64>,
    expected: Arc<AtomicU64>,
    /// (when, bytes) a few seconds apart, for the rate.
    window: Mutex<(Instant, u64, f64)>,
}

pub struct Mirrors {
    engine: Arc<Engine>,
    path: PathBuf,
    pub tokens: PeerTokens,
    state: Mutex<State>,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    pool_limiter: Arc<Limiter>,
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
    stop: AtomicBool,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// Last time each scheduled relationship started.
    last_start: Mutex<HashMap<String, Instant>>,
    /// Relationships whose lag is over their alert threshold (told once).
    lagging: Mutex<std::collections::HashSet<String>>,
    /// When the lag was last checked.
    lag_checked: Mutex<Option<Instant>>,
}

/// By default, a scheduled mirror whose recovery point is older than this
/// many schedule intervals, plus [`LAG_ALERT_SLACK_SECS`], raises
/// `mirror-lag` (`mirror create --lag-alert` sets another threshold).
pub const LAG_ALERT_INTERVALS: u64 = 2;
pub const LAG_ALERT_SLACK_SECS: u64 = 60;

fn not_found(kind: &'static str, name: &str) -> Error {
    Error::NotFound {
        kind,
        name: name.into(),
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Mirrors {
    /// Opens mirroring's state in `data/mirror` and starts the schedule;
    /// transfers interrupted by a stop resume.
    pub fn open(data: &Path, engine: Arc<Engine>) -> Result<Arc<Mirrors>, String> {
        let dir = data.join("mirror");
        let path = dir.join("state.json");
        let mut state: State = store::load(&path)?;
        if state.site.is_empty() {
            state.site = random_hex(4);
            store::save(&path, &state)?;
        }
        let mirrors = Arc::new(Mirrors {
            tokens: PeerTokens::open(&dir)?,
            pool_limiter: Arc::new(Limiter::new(state.mirror_rate_bytes)),
            engine,
            path,
            state: Mutex::new(state),
            workers: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            scheduler: Mutex::new(None),
            last_start: Mutex::new(HashMap::new()),
            lagging: Mutex::new(Default::default()),
            lag_checked: Mutex::new(None),
        });
        let weak = Arc::downgrade(&mirrors);
        let handle = std::thread::Builder::new()
            .name("mirror-schedule".into())
            .spawn(move || schedule_loop(weak))
            .map_err(|e| format!("cannot start the mirror schedule: {e}"))?;
        *mirrors.scheduler.lock() = Some(handle);
        // Interrupted transfers resume.
        let resume: Vec<String> = mirrors
            .state
            .lock()
            .mirrors
            .iter()
            .filter(|r| {
                (r.in_flight.is_some() || r.goal.is_some())
                    && !matches!(r.state, MirrorState::Broken | MirrorState::Reversed)
            })
            .map(|r| r.name.clone())
            .collect();
        for name in resume {
            tracing::info!(mirror = %name, "resuming the transfer a stop interrupted");
            let _ = mirrors.start(&name);
        }
        Ok(mirrors)
    }

    /// Stops every transfer (each resumes from its checkpoint at the next
    /// start) and the schedule.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let workers: Vec<Arc<Worker>> = self.workers.lock().values().cloned().collect();
        for w in &workers {
            w.cancel.store(true, Ordering::Relaxed);
        }
        if let Some(h) = self.scheduler.lock().take() {
            let _ = h.join();
        }
        // The names first: `wait_stopped` takes the workers' lock.
        let names: Vec<String> = self.workers.lock().keys().cloned().collect();
        for name in names {
            self.wait_stopped(&name, Duration::from_millis(STOP_WAIT_MS));
        }
    }

    pub fn mirror_rate(&self) -> u64 {
        self.pool_limiter.rate()
    }

    pub fn set_mirror_rate(&self, bytes_per_sec: u64) -> Result<(), Error> {
        self.change_state(|s| {
            s.mirror_rate_bytes = bytes_per_sec;
            Ok(())
        })?;
        self.pool_limiter.set_rate(bytes_per_sec);
        Ok(())
    }

    /// Applies `f` to the state and saves it; nothing changes if either
    /// fails.
    fn change_state<R>(&self, f: impl FnOnce(&mut State) -> Result<R, Error>) -> Result<R, Error> {
        let mut guard = self.state.lock();
        let mut next = guard.clone();
        let r = f(&mut next)?;
        store::save(&self.path, &next).map_err(Error::Store)?;
        *guard = next;
        Ok(r)
    }

    fn change(
        &self,
        name: &str,
        f: impl FnOnce(&mut Relationship) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.change_state(|s| {
            let r = s
                .mirrors
                .iter_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| not_found("mirror", name))?;
            f(r)
        })
    }

    fn relationship(&self, name: &str) -> Result<Relationship, Error> {
        self.state
            .lock()
            .mirrors
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "mirror",
                name: name.into(),
            })
    }

    fn site(&self) -> String {
        self.state.lock().site.clone()
    }

    /// The holder of a relationship's snapshots on its source.
    fn source_holder(&self, r: &Relationship) -> String {
        format!("mirror:{}:{}", self.site(), r.name)
    }

    // --------------------------------------------------------------- peers

    pub fn create_peer(&self, req: &CreatePeer) -> Result<PeerInfo, Error> {
        engine::validate_snapshot_name(&req.name).map_err(|_| {
            invalid(format!(
                "peer name {:?} must be 1 to 255 characters of [A-Za-z0-9._-]",
                req.name
            ))
        })?;
        // The URL and the CA must make a client.
        client::Client::with_ca_pem(
            &req.url,
            Some(req.token.clone()),
            req.ca_cert.as_deref(),
            1_000,
        )
        .map_err(|e| invalid(e.message.replace("--server", "the peer URL")))?;
        if req.token.trim().is_empty() {
            return Err(invalid("a peer needs its replication token".into()));
        }
        let peer = Peer {
            name: req.name.clone(),
            url: req.url.trim_end_matches('/').to_string(),
            token: req.token.trim().to_string(),
            ca_cert: req.ca_cert.clone(),
            created: now_secs(),
        };
        self.change_state(|s| {
            if s.peers.iter().any(|p| p.name == peer.name) {
                return Err(Error::AlreadyExists {
                    kind: "peer",
                    name: peer.name.clone(),
                });
            }
            if s.peers.len() >= PEERS_MAX {
                return Err(invalid(format!(
                    "this server already has {PEERS_MAX} peers, the most it keeps"
                )));
            }
            s.peers.push(peer.clone());
            Ok(())
        })?;
        Ok(self.peer_info(&self.state.lock(), &peer))
    }

    fn peer_info(&self, s: &State, p: &Peer) -> PeerInfo {
        PeerInfo {
            name: p.name.clone(),
            url: p.url.clone(),
            tls: p.url.starts_with("https://"),
            created: p.created,
            mirrors: s
                .mirrors
                .iter()
                .filter(|r| r.peer == p.name)
                .map(|r| r.name.clone())
                .collect(),
        }
    }

    pub fn list_peers(&self) -> Vec<PeerInfo> {
        let s = self.state.lock();
        s.peers.iter().map(|p| self.peer_info(&s, p)).collect()
    }

    pub fn delete_peer(&self, name: &str) -> Result<(), Error> {
        self.change_state(|s| {
            let i = s
                .peers
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| not_found("peer", name))?;
            if let Some(r) = s.mirrors.iter().find(|r| r.peer == name) {
                return Err(Error::HasDependents(format!(
                    "peer \"{name}\" is used by mirror \"{}\"; delete the mirror first",
                    r.name
                )));
            }
            s.peers.remove(i);
            Ok(())
        })
    }

    fn client(&self, peer: &str) -> Result<client::Client, Error> {
        let p = self
            .state
            .lock()
            .peers
            .iter()
            .find(|p| p.name == peer)
            .cloned()
            .ok_or_else(|| not_found("peer", peer))?;
        client::Client::with_ca_pem(
            &p.url,
            Some(p.token),
            p.ca_cert.as_deref(),
            PEER_CALL_TIMEOUT_MS,
        )
        .map_err(|e| invalid(e.message))
    }

    // ------------------------------------------------------------- mirrors

    /// Creates a relationship, its read-only destination LUNs, and starts
    /// the baseline.
    pub fn create(self: &Arc<Self>, req: &CreateMirror) -> Result<MirrorInfo, Error> {
        if req.members.is_empty() || req.members.len() > GROUP_MEMBERS_MAX {
            return Err(invalid(format!(
                "a mirror has 1 to {GROUP_MEMBERS_MAX} members, not {}",
                req.members.len()
            )));
        }
        if req.group.is_none() && req.members.len() > 1 {
            return Err(invalid(
                "several LUNs are mirrored as one unit only with --group NAME".into(),
            ));
        }
        if let Some(g) = &req.group {
            engine::validate_snapshot_name(g)?;
        }
        if req.schedule_secs.is_some_and(|s| s < SCHEDULE_SECS_MIN) {
            return Err(invalid(format!(
                "a schedule is at least {SCHEDULE_SECS_MIN} s"
            )));
        }
        if req.lag_alert_secs == Some(0) {
            return Err(invalid("a lag alert threshold is at least 1 s".into()));
        }
        if req.keep == Some(0) {
            return Err(invalid(
                "--keep must be at least 1: the newest mirror snapshot is what readers see".into(),
            ));
        }
        for m in &req.members {
            engine::validate_lun_name(&m.source)?;
            engine::validate_lun_name(&m.destination)?;
        }
        let name = req
            .group
            .clone()
            .unwrap_or_else(|| req.members[0].destination.clone());
        {
            let s = self.state.lock();
            if s.mirrors.iter().any(|r| r.name == name) {
                return Err(Error::AlreadyExists {
                    kind: "mirror",
                    name,
                });
            }
            if s.mirrors.len() >= MIRRORS_MAX {
                return Err(invalid(format!(
                    "this server already has {MIRRORS_MAX} mirrors, the most it keeps"
                )));
            }
            if !s.peers.iter().any(|p| p.name == req.peer) {
                return Err(not_found("peer", &req.peer));
            }
        }
        let peer = self.client(&req.peer)?;
        // Every source must exist; a clone whose parent snapshot is
        // already mirrored here travels as a clone.
        let mut members = Vec::new();
        let mut sizes = Vec::new();
        for m in &req.members {
            let src = peer
                .replication_lun(&m.source)
                .map_err(|e| invalid(format!("peer \"{}\": {}", req.peer, e.message)))?;
            if self.engine.lun_info(&m.destination).is_ok() {
                return Err(Error::AlreadyExists {
                    kind: "LUN",
                    name: m.destination.clone(),
                });
            }
            let clone_of = src
                .parent
                .as_deref()
                .and_then(|p| self.mirrored_parent(&req.peer, p));
            members.push(Member {
                source: m.source.clone(),
                destination: m.destination.clone(),
                clone_of,
            });
            sizes.push(src.size_bytes);
        }
        let mut created = Vec::new();
        for (m, size) in members.iter().zip(&sizes) {
            match self.engine.create_replica(
                &m.destination,
                (*size).max(BLOCK_SIZE),
                m.clone_of.as_deref(),
            ) {
                Ok(_) => created.push(m.destination.clone()),
                Err(e) => {
                    for d in created {
                        let _ = self.engine.break_replica(&d);
                        let _ = self.engine.delete_lun(&d, true);
                    }
                    return Err(e);
                }
            }
        }
        let r = Relationship {
            name: name.clone(),
            id: random_hex(3),
            peer: req.peer.clone(),
            group: req.group.is_some(),
            members,
            state: MirrorState::Baselining,
            common: None,
            in_flight: None,
            goal: None,
            release_later: Vec::new(),
            seq: 0,
            schedule_secs: req.schedule_secs,
            lag_alert_secs: req.lag_alert_secs,
            rate_bytes: req.rate_bytes,
            keep: req.keep.unwrap_or(KEEP_DEFAULT),
            last_success: None,
            last_error: None,
            last_transfer_bytes: 0,
            last_transfer_secs: 0.0,
            created: now_secs(),
        };
        self.change_state(|s| {
            s.mirrors.push(r.clone());
            Ok(())
        })?;
        self.engine.events().emit(
            engine::Severity::Info,
            "mirror-created",
            &name,
            format!(
                "Mirror \"{name}\" created from peer \"{}\"; the baseline transfer starts.",
                req.peer
            ),
        );
        self.start(&name)?;
        self.info(&name)
    }

    /// `LUN@SNAPSHOT` here that mirrors the source's `parent`
    /// (`LUN@SNAPSHOT` there) from the same peer, if any.
    fn mirrored_parent(&self, peer: &str, parent: &str) -> Option<String> {
        let (plun, psnap) = parent.split_once('@')?;
        let s = self.state.lock();
        let r = s
            .mirrors
            .iter()
            .find(|r| r.peer == peer && r.members.iter().any(|m| m.source == plun))?;
        let dest = &r.members.iter().find(|m| m.source == plun)?.destination;
        let (_, snaps) = self.engine.snapshots_brief(dest).ok()?;
        snaps
            .iter()
            .any(|sn| sn.name == psnap)
            .then(|| format!("{dest}@{psnap}"))
    }

    pub fn list(&self) -> Vec<MirrorInfo> {
        let names: Vec<String> = self
            .state
            .lock()
            .mirrors
            .iter()
            .map(|r| r.name.clone())
            .collect();
        names.iter().filter_map(|n| self.info(n).ok()).collect()
    }

    pub fn info(&self, name: &str) -> Result<MirrorInfo, Error> {
        let r = self.relationship(name)?;
        let worker = self.workers.lock().get(name).cloned();
        let now = now_secs();
        let transfer = r.in_flight.as_ref().map(|f| {
            let (bytes, rate, expected) = match &worker {
                Some(w) => {
                    let bytes = w.bytes.load(Ordering::Relaxed);
                    let expected = w.expected.load(Ordering::Relaxed);
                    let mut win = w.window.lock();
                    let dt = win.0.elapsed().as_secs_f64();
                    if dt >= 1.0 {
                        win.2 = (bytes.saturating_sub(win.1)) as f64 / dt;
                        *win = (Instant::now(), bytes, win.2);
                    }
                    (f.bytes.max(bytes), win.2, expected.max(f.bytes_expected))
                }
                None => (f.bytes, 0.0, f.bytes_expected),
            };
            let left = expected.saturating_sub(bytes);
            TransferInfo {
                base: f.base.clone(),
                target: f.target.name.clone(),
                started: f.started,
                bytes,
                bytes_expected: expected,
                rate_bytes: rate,
                eta_secs: (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64),
                resumes: f.resumes,
            }
        });
        let running = worker.is_some_and(|w| w.handle.as_ref().is_some_and(|h| !h.is_finished()));
        let state = match r.state {
            MirrorState::Idle | MirrorState::Failed if running => MirrorState::Transferring,
            s => s,
        };
        Ok(MirrorInfo {
            running,
            name: r.name.clone(),
            peer: r.peer.clone(),
            group: r.group,
            members: r.wire_members(),
            state,
            common_snapshot: r.common.as_ref().map(|c| c.name.clone()),
            common_created: r.common.as_ref().map(|c| c.created),
            lag_secs: r.common.as_ref().map(|c| now.saturating_sub(c.created)),
            last_success: r.last_success,
            last_error: r.last_error.clone(),
            last_transfer_bytes: r.last_transfer_bytes,
            last_transfer_secs: r.last_transfer_secs,
            schedule_secs: r.schedule_secs,
            lag_alert_secs: r.lag_alert_secs.or_else(|| {
                r.schedule_secs
                    .map(|i| i * LAG_ALERT_INTERVALS + LAG_ALERT_SLACK_SECS)
            }),
            rate_bytes: r.rate_bytes,
            keep: r.keep,
            clone_of: r.members.iter().map(|m| m.clone_of.clone()).collect(),
            transfer,
            holder: r.holder(),
        })
    }

    /// Starts a transfer now (`mirror update`), unless one is running.
    pub fn update(self: &Arc<Self>, name: &str) -> Result<MirrorInfo, Error> {
        let r = self.relationship(name)?;
        if matches!(r.state, MirrorState::Broken | MirrorState::Reversed) {
            return Err(invalid(format!(
                "mirror \"{name}\" is {}; `blockfork mirror resync {name}` re-establishes it",
                r.state.as_str()
            )));
        }
        self.start(name)?;
        self.info(name)
    }

    fn running(&self, name: &str) -> bool {
        self.workers
            .lock()
            .get(name)
            .is_some_and(|w| w.handle.as_ref().is_some_and(|h| !h.is_finished()))
    }

    /// Starts the worker of `name` if none runs.
    fn start(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let mut workers = self.workers.lock();
        if workers
            .get(name)
            .is_some_and(|w| w.handle.as_ref().is_some_and(|h| !h.is_finished()))
        {
            return Ok(());
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let expected = Arc::new(AtomicU64::new(0));
        let me = Arc::clone(self);
        let worker_name = name.to_string();
        let (c, b, x) = (cancel.clone(), bytes.clone(), expected.clone());
        let handle = std::thread::Builder::new()
            .name(format!("mirror {name}"))
            .spawn(move || me.run(&worker_name, &c, &b, &x))
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        workers.insert(
            name.to_string(),
            Arc::new(Worker {
                cancel,
                handle: Some(handle),
                bytes,
                expected,
                window: Mutex::new((Instant::now(), 0, 0.0)),
            }),
        );
        self.last_start
            .lock()
            .insert(name.to_string(), Instant::now());
        Ok(())
    }

    /// Asks the worker of `name` to stop and waits up to `wait`; true when
    /// none runs any more.
    fn wait_stopped(&self, name: &str, wait: Duration) -> bool {
        let worker = self.workers.lock().get(name).cloned();
        let Some(w) = worker else { return true };
        w.cancel.store(true, Ordering::Relaxed);
        let until = Instant::now() + wait;
        while w.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.workers.lock().remove(name);
        true
    }

    fn limiter(&self, r: &Relationship) -> Arc<Limiter> {
        let mut l = self.limiters.lock();
        let lim = l
            .entry(r.name.clone())
            .or_insert_with(|| Arc::new(Limiter::new(0)))
            .clone();
        let want = r.rate_bytes.unwrap_or(0);
        if lim.rate() != want {
            lim.set_rate(want);
        }
        lim
    }

    fn due(&self) -> Vec<String> {
        let s = self.state.lock();
        let last = self.last_start.lock();
        s.mirrors
            .iter()
            .filter(|r| !matches!(r.state, MirrorState::Broken | MirrorState::Reversed))
            .filter_map(|r| {
                let every = Duration::from_secs(r.schedule_secs?);
                let due = last.get(&r.name).is_none_or(|t| t.elapsed() >= every);
                due.then(|| r.name.clone())
            })
            .collect()
    }
}

fn schedule_loop(weak: std::sync::Weak<Mirrors>) {
    loop {
        std::thread::sleep(Duration::from_millis(SCHEDULE_TICK_MS));
        let Some(m) = weak.upgrade() else { return };
        if m.stop.load(Ordering::Relaxed) {
            return;
        }
        for name in m.due() {
            if !m.running(&name) {
                let _ = m.start(&name);
            }
        }
        m.check_lag();
    }
}
