//! What the NBD server needs from the storage behind it. The binary implements
//! these traits on top of the engine; the protocol code knows nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

/// Who is connecting; access control (host groups) decides on this.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Peer address for TCP clients; `None` for unix-socket clients.
    pub peer: Option<SocketAddr>,
    /// Whether the session runs over TLS (after NBD_OPT_STARTTLS). The
    /// server sets it; every backend call after the upgrade sees `true`.
    pub tls: bool,
    /// Subject common name of the client's certificate, when TLS verified
    /// one (a client CA is configured). Only set together with `tls`.
    pub cert_cn: Option<String>,
}

impl ClientInfo {
    /// A TCP client before any TLS.
    pub fn tcp(peer: SocketAddr) -> ClientInfo {
        ClientInfo {
            peer: Some(peer),
            ..ClientInfo::default()
        }
    }

    /// A unix-socket client before any TLS.
    pub fn unix() -> ClientInfo {
        ClientInfo::default()
    }
}

/// One entry of NBD_OPT_LIST.
#[derive(Debug, Clone)]
pub struct ExportListing {
    pub name: String,
    pub description: String,
}

/// Why an export could not be opened; mapped to NBD_REP_ERR_UNKNOWN or
/// NBD_REP_ERR_POLICY.
#[derive(Debug, Clone)]
pub enum OpenError {
    Unknown(String),
    Denied(String),
}

/// An I/O failure, mapped to an NBD errno on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoError {
    /// EIO
    Io(String),
    /// ENOSPC
    NoSpace,
    /// EPERM: write to a read-only export
    ReadOnly,
    /// EINVAL
    Invalid(String),
    /// EOVERFLOW / out of range
    OutOfRange,
    /// ESHUTDOWN: the export went away (deleted) or the server is stopping
    Shutdown,
}

/// Flags of one block-status extent (NBD_STATE_HOLE = 1, NBD_STATE_ZERO = 2).
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;

/// One extent of a block-status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    pub length: u64,
    pub flags: u32,
}

/// The exports a server offers. Calls are blocking; the server runs them
/// where blocking is allowed.
pub trait Backend: Send + Sync + 'static {
    fn list(&self, client: &ClientInfo) -> Vec<ExportListing>;
    fn open(&self, name: &str, client: &ClientInfo) -> Result<Arc<dyn Export>, OpenError>;
}

/// One opened export. Every method is blocking and may be called from many
/// threads at once (pipelined requests, several connections).
pub trait Export: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError>;
    /// Durable: every write completed before this call, on every
    /// connection, survives a crash once this returns Ok.
    fn flush(&self) -> Result<(), IoError>;
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), IoError>;
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), IoError>;
    /// Extents covering [offset, offset+length) in order; may stop early
    /// (then the client asks again) but must cover at least one byte.
    fn block_status(&self, offset: u64, length: u64) -> Result<Vec<StatusExtent>, IoError>;
}
