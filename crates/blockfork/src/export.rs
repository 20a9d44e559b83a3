//! The NBD server's view of the engine: export names resolve to LUNs
//! (`LUN`, read-write) and snapshots (`LUN@SNAPSHOT`, read-only).

use engine::{Allocation, Engine, Error, Target};
use nbd::{
    Backend, ClientInfo, Export, ExportListing, IoError, OpenError, StatusExtent, STATE_HOLE,
    STATE_ZERO,
};
use std::sync::Arc;

pub struct EngineBackend {
    engine: Arc<Engine>,
}

impl EngineBackend {
    pub fn new(engine: Arc<Engine>) -> EngineBackend {
        EngineBackend { engine }
    }
}

impl Backend for EngineBackend {
    fn list(&self, _client: &ClientInfo) -> Vec<ExportListing> {
        let mut out = Vec::new();
        let Ok(luns) = self.engine.list_luns("") else {
            return out;
        };
        let snapshots = self.engine.list_snapshots(None).unwrap_or_default();
        for l in luns {
            out.push(ExportListing {
                name: l.name.clone(),
                description: format!("LUN, {} bytes", l.size_bytes),
            });
            for s in snapshots.iter().filter(|s| s.lun == l.name) {
                out.push(ExportListing {
                    name: format!("{}@{}", s.lun, s.name),
                    description: format!(
                        "snapshot of {} (read-only), {} bytes",
                        s.lun, s.size_bytes
                    ),
                });
            }
        }
        out
    }

    fn open(&self, name: &str, client: &ClientInfo) -> Result<Arc<dyn Export>, OpenError> {
        let target = self
            .engine
            .resolve(name)
            .map_err(|e| OpenError::Unknown(e.to_string()))?;
        let size = self
            .engine
            .target_size(target)
            .map_err(|e| OpenError::Unknown(e.to_string()))?;
        tracing::info!(export = name, peer = ?client.peer, "export opened");
        Ok(Arc::new(EngineExport {
            engine: self.engine.clone(),
            target,
            size,
        }))
    }
}

pub struct EngineExport {
    engine: Arc<Engine>,
    target: Target,
    size: u64,
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
        matches!(self.target, Target::Snapshot(..))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.engine.read(self.target, offset, buf).map_err(io_error)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.engine
            .write(self.target, offset, data, fua)
            .map_err(io_error)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.engine.flush().map_err(io_error)
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), IoError> {
        self.engine
            .trim(self.target, offset, length, fua)
            .map_err(io_error)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), IoError> {
        self.engine
            .write_zeroes(self.target, offset, length, no_hole, fua)
            .map_err(io_error)
    }

    fn block_status(&self, offset: u64, length: u64) -> Result<Vec<StatusExtent>, IoError> {
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
