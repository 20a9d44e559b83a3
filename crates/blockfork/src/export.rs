//! The NBD server's view of the engine: export names resolve to LUNs
//! (`LUN`, read-write) and snapshots (`LUN@SNAPSHOT`, read-only).

use engine::{Allocation, ClientIdentity, Engine, Error, Target};
use nbd::{
    Backend, ClientInfo, Export, ExportListing, IoError, OpenError, StatusExtent, STATE_HOLE,
    STATE_ZERO,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use telemetry::{LunIo, Op, Telemetry};

pub struct EngineBackend {
    engine: Arc<Engine>,
    telemetry: Arc<Telemetry>,
}

impl EngineBackend {
    pub fn new(engine: Arc<Engine>, telemetry: Arc<Telemetry>) -> EngineBackend {
        EngineBackend { engine, telemetry }
    }
}

/// The engine's view of an NBD client. Unix-socket clients are local: they
/// count as the loopback address (the socket's file permissions guard it).
fn identity(client: &ClientInfo) -> ClientIdentity {
    ClientIdentity {
        addr: Some(
            client
                .peer
                .map(|p| p.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ),
        cert_cn: client.cert_cn.clone(),
    }
}

impl Backend for EngineBackend {
    fn list(&self, client: &ClientInfo) -> Vec<ExportListing> {
        let who = identity(client);
        let Ok(exports) = self.engine.list_exports() else {
            return Vec::new();
        };
        let visible: std::collections::HashSet<String> =
            self.engine.luns_visible_to(&who).into_iter().collect();
        exports
            .into_iter()
            .filter(|x| visible.contains(&x.lun))
            .map(|x| ExportListing {
                name: x.name(),
                description: match &x.snapshot {
                    None => format!("LUN, {} bytes", x.size_bytes),
                    Some(_) => format!("snapshot of {} (read-only), {} bytes", x.lun, x.size_bytes),
                },
            })
            .collect()
    }

    fn open(&self, name: &str, client: &ClientInfo) -> Result<Arc<dyn Export>, OpenError> {
        let who = identity(client);
        // Existence is checked after access, and a refusal reads like an
        // unknown name: a client learns nothing about LUNs it may not see.
        let generation = self.engine.access_generation();
        if !self.engine.visible_to(name, &who) {
            self.engine.events().emit_coalesced(
                engine::Severity::Warning,
                "access-refused",
                name,
                format!("NBD access refused: client {who} may not open export \"{name}\" (not mapped to it, or no such export)."),
            );
            return Err(OpenError::Unknown(format!(
                "no export named \"{name}\" is available to this client"
            )));
        }
        let target = self
            .engine
            .resolve(name)
            .map_err(|e| OpenError::Unknown(e.to_string()))?;
        let size = self
            .engine
            .target_size(target)
            .map_err(|e| OpenError::Unknown(e.to_string()))?;
        // A mirror destination is read-only to clients: they are told so
        // at negotiation (and a write that comes anyway gets EPERM).
        let replica =
            matches!(target, Target::Lun(_)) && self.engine.lun_info(name).is_ok_and(|l| l.replica);
        tracing::info!(export = name, client = %who, "export opened");
        let lun = name.split_once('@').map_or(name, |(l, _)| l);
        Ok(Arc::new(EngineExport {
            io: self.telemetry.io.lun(lun),
            telemetry: self.telemetry.clone(),
            engine: self.engine.clone(),
            target,
            replica,
            size,
            name: name.to_string(),
            who,
            checked: AtomicU64::new(generation),
        }))
    }
}

pub struct EngineExport {
    /// Where this export's requests are counted, while counting is on.
    io: Arc<LunIo>,
    telemetry: Arc<Telemetry>,
    engine: Arc<Engine>,
    target: Target,
    /// Opened while the LUN was a mirror destination.
    replica: bool,
    size: u64,
    name: String,
    who: ClientIdentity,
    /// The access generation last found to allow this client.
    checked: AtomicU64,
}

impl EngineExport {
    /// Unmapping (or an igroup change) takes effect on open connections:
    /// each request compares one counter, and re-checks only when access
    /// changed since.
    fn allowed(&self) -> Result<(), IoError> {
        let now = self.engine.access_generation();
        if self.checked.load(Ordering::Acquire) == now {
            return Ok(());
        }
        if self.engine.visible_to(&self.name, &self.who) {
            self.checked.store(now, Ordering::Release);
            Ok(())
        } else {
            tracing::warn!(export = %self.name, client = %self.who, "NBD request refused: export no longer mapped to this client");
            Err(IoError::Shutdown)
        }
    }

    /// Runs one request, counting it (op, bytes, latency, failure) when
    /// this export counts.
    fn counted<T>(
        &self,
        op: Op,
        bytes: u64,
        run: impl FnOnce() -> Result<T, IoError>,
    ) -> Result<T, IoError> {
        self.allowed()?;
        if !self.telemetry.io.enabled() {
            return run();
        }
        let started = telemetry::io::start();
        let result = run();
        self.io.record(op, bytes, started, result.is_ok());
        result
    }
}

fn io_error(e: Error) -> IoError {
    match e {
        Error::NoSpace(_) => IoError::NoSpace,
        Error::ReadOnly(_) => IoError::ReadOnly,
        Error::InvalidArgument(m) => IoError::Invalid(m),
        Error::OutOfRange(_) => IoError::OutOfRange,
        Error::NotFound { .. } | Error::Closed => IoError::Shutdown,
        e => IoError::Io(e.to_string()),
    }
}

impl Export for EngineExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.replica || matches!(self.target, Target::Snapshot(..))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let bytes = buf.len() as u64;
        self.counted(Op::Read, bytes, || {
            self.engine.read(self.target, offset, buf).map_err(io_error)
        })
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.counted(Op::Write, data.len() as u64, || {
            self.engine
                .write(self.target, offset, data, fua)
                .map_err(io_error)
        })
    }

    fn flush(&self) -> Result<(), IoError> {
        self.counted(Op::Flush, 0, || self.engine.flush().map_err(io_error))
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), IoError> {
        self.counted(Op::Trim, length, || {
            self.engine
                .trim(self.target, offset, length, fua)
                .map_err(io_error)
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), IoError> {
        self.counted(Op::Zero, length, || {
            self.engine
                .write_zeroes(self.target, offset, length, no_hole, fua)
                .map_err(io_error)
        })
    }

    fn block_status(&self, offset: u64, length: u64) -> Result<Vec<StatusExtent>, IoError> {
        self.allowed()?;
        let extents = self
            .engine
            .block_status(self.target, offset, length)
            .map_err(io_error)?;
        Ok(extents
            .into_iter()
            .map(|(length, kind)| StatusExtent {
                length,
                flags: match kind {
                    Allocation::Data => 0,
                    Allocation::Zero => STATE_ZERO,
                    Allocation::Hole => STATE_HOLE | STATE_ZERO,
                },
            })
            .collect())
    }
}
