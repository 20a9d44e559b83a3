//! NBD (Network Block Device) server protocol for blockfork.
//!
//! Speaks the fixed-newstyle handshake and the transmission phase with
//! simple and structured replies, `base:allocation` block status and
//! pipelined, out-of-order request handling. Storage comes from a
//! [`Backend`]; this crate knows nothing else about it.
//!
//! ```no_run
//! # async fn run(backend: std::sync::Arc<dyn nbd::Backend>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! nbd::serve(listener, backend, shutdown).await;
//! # Ok(()) }
//! ```
//!
//! Limits are in [`proto`] (`REQUEST_BYTES_MAX`, `REQUESTS_IN_FLIGHT_MAX`,
//! ...). A WRITE larger than `REQUEST_BYTES_MAX` gets an error reply and the
//! connection is closed without reading its payload; every other bad
//! request gets an error reply and the connection goes on. Connections are
//! capped per client address and in total, and the handshake has a time
//! limit; [`Server`]'s builder methods change the defaults.
//!
//! TLS (NBD_OPT_STARTTLS, optionally required, optionally with client
//! certificates) is turned on with [`Server::with_tls`]; see [`tls`].

mod admission;
pub mod backend;
mod handshake;
mod payload;
mod poll;
pub mod proto;
mod server;
pub mod tls;
mod transmission;
pub mod wire;

pub use backend::*;
pub use server::{serve, serve_unix, Listener, Server};
pub use tls::TlsSettings;
/// Re-exported so callers need not depend on tokio-util themselves.
pub use tokio_util::sync::CancellationToken;

/// Why a connection ended abnormally. Only logged: one connection's
/// failure never affects another.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// NBD_OPT_EXPORT_NAME named an export we cannot serve; that option has
    /// no error reply, so the session ends.
    #[error("export refused: {0}")]
    Refused(String),
    /// The TLS handshake after NBD_OPT_STARTTLS failed (bad or missing
    /// client certificate, no common cipher, ...); already logged.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The client did not finish option haggling in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
}

impl From<wire::WireError> for ConnError {
    fn from(e: wire::WireError) -> Self {
        ConnError::Protocol(e.to_string())
    }
}
