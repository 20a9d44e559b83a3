//! Accept loop, per-connection lifecycle and graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Limits};
use crate::backend::{Backend, ClientInfo};
use crate::poll::{Idle, Polled};
use crate::proto::{
    CONNECTIONS_MAX, CONNECTIONS_PER_ADDRESS_MAX, HANDSHAKE_SECS_MAX, POLL_MICROS_DEFAULT,
    SHUTDOWN_DRAIN_SECS_MAX,
};
use crate::tls::{TlsSettings, Transport};
use crate::{handshake, transmission, ConnError};
use std::os::fd::{AsRawFd, RawFd};
use telemetry::{NbdStats, Refusal};

/// Something that hands out client connections: TCP and unix sockets here,
/// anything else (a test harness, a socket-activation wrapper) by
/// implementing it. TLS is not a listener's business: it starts inside the
/// NBD handshake (NBD_OPT_STARTTLS), see [`Server::with_tls`].
pub trait Listener: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Must be cancel-safe: `serve` drops it when shutdown starts.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, ClientInfo)>> + Send;

    /// The socket under a stream, for polling an idle connection's next
    /// request (see `Server::with_poll_budget`); `None` never polls.
    fn socket(_stream: &Self::Stream) -> Option<RawFd> {
        None
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, ClientInfo)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // The spec asks both ends to disable Nagle: replies are small
        // messages that must not wait for an ACK. Failing that only costs
        // latency, so the connection is served anyway.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        Ok((stream, ClientInfo::tcp(peer)))
    }

    fn socket(stream: &TcpStream) -> Option<RawFd> {
        Some(stream.as_raw_fd())
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept(&mut self) -> io::Result<(UnixStream, ClientInfo)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, ClientInfo::unix()))
    }

    fn socket(stream: &UnixStream) -> Option<RawFd> {
        Some(stream.as_raw_fd())
    }
}

/// An NBD server over a backend. Cheap to clone; clones share the backend
/// and the connection counts, so the connection limits hold over every
/// listener served by one server and its clones. Builder methods change
/// the value they are called on (and clones made from it afterwards).
#[derive(Clone)]
pub struct Server {
    backend: Arc<dyn Backend>,
    drain: Duration,
    handshake_timeout: Duration,
    limits: Limits,
    admission: Admission,
    tls: Option<TlsSettings>,
    stats: Arc<NbdStats>,
    poll_budget: Duration,
}

impl Server {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Server {
            backend,
            drain: Duration::from_secs(SHUTDOWN_DRAIN_SECS_MAX),
            handshake_timeout: Duration::from_secs(HANDSHAKE_SECS_MAX),
            limits: Limits {
                per_address_max: CONNECTIONS_PER_ADDRESS_MAX,
                total_max: CONNECTIONS_MAX,
            },
            admission: Admission::default(),
            tls: None,
            stats: Arc::default(),
            poll_budget: Duration::from_micros(POLL_MICROS_DEFAULT),
        }
    }

    /// Counts connections into `stats` (shared with the metrics) instead
    /// of counters of its own.
    pub fn with_stats(mut self, stats: Arc<NbdStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The connection counters.
    pub fn stats(&self) -> &Arc<NbdStats> {
        &self.stats
    }

    /// Connections one TCP client address may hold at once (default
    /// CONNECTIONS_PER_ADDRESS_MAX). Unix-socket clients are exempt. Past
    /// it, a new connection from that address is closed right after
    /// accept; its other connections go on.
    pub fn with_connections_per_address_max(mut self, connections: usize) -> Self {
        self.limits.per_address_max = connections;
        self
    }

    /// Connections served at once over all listeners, unix sockets
    /// included (default CONNECTIONS_MAX). Past it, new connections are
    /// closed right after accept.
    pub fn with_connections_max(mut self, connections: usize) -> Self {
        self.limits.total_max = connections;
        self
    }

    /// How long a client may take from connecting to the end of option
    /// haggling, TLS handshake included (default HANDSHAKE_SECS_MAX). A
    /// client still negotiating then is disconnected.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Offers TLS through NBD_OPT_STARTTLS on every connection this server
    /// (and its clones made afterwards) serves, TCP and unix alike; a
    /// listener that should stay plain needs a clone made before this call.
    /// Without it, STARTTLS is answered with NBD_REP_ERR_POLICY.
    pub fn with_tls(mut self, settings: TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// How long an idle connection's reader polls its socket for the next
    /// request before sleeping (default POLL_MICROS_DEFAULT); zero never
    /// polls. Polling spends up to this much CPU per request and saves the
    /// wake-up that dominates a lone request's latency (decision 026).
    pub fn with_poll_budget(mut self, budget: Duration) -> Self {
        self.poll_budget = budget;
        self
    }

    /// How long `serve` waits for open connections after shutdown
    /// (default SHUTDOWN_DRAIN_SECS_MAX).
    pub fn with_drain_timeout(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Accepts connections until `shutdown` is cancelled, then stops
    /// accepting, lets every connection finish the requests it has already
    /// read, and returns when all are closed or the drain timeout passed
    /// (remaining connections are then aborted).
    pub async fn serve<L: Listener>(&self, mut listener: L, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Reap finished connections so the set does not grow forever.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, client)) => match self.admission.admit(&client, self.limits) {
                        Ok(slot) => {
                            let server = self.clone();
                            let shutdown = shutdown.clone();
                            let fd = L::socket(&stream);
                            connections.spawn(async move {
                                server.serve_stream(stream, fd, client, shutdown).await;
                                drop(slot);
                            });
                        }
                        Err(refusal) => {
                            // NBD has nothing to say before its greeting, so
                            // the refusal is the close itself; the log says why.
                            self.stats.refused(match refusal {
                                crate::admission::Refusal::PerAddress { .. } => Refusal::PerAddressLimit,
                                crate::admission::Refusal::Total { .. } => Refusal::TotalLimit,
                            });
                            let peer = handshake::peer_name(&client);
                            warn!(%peer, reason = %refusal, "nbd connection refused");
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        // Usually out of file descriptors: back off rather
                        // than spin, and keep serving existing clients.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        info!(connections = connections.len(), "nbd server stopping");
        let drained = tokio::time::timeout(self.drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = connections.len(),
                "connections still open after the drain timeout; aborting them"
            );
            connections.shutdown().await;
        }
    }

    /// Serves one already-accepted connection (any byte stream) to the end,
    /// logging its opening and closing. Never panics on client input.
    pub async fn serve_connection<S>(
        &self,
        stream: S,
        client: ClientInfo,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_stream(stream, None, client, shutdown).await
    }

    /// `serve_connection`, polling `fd` (the stream's socket) when idle.
    async fn serve_stream<S>(
        &self,
        stream: S,
        fd: Option<RawFd>,
        client: ClientInfo,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = handshake::peer_name(&client);
        info!(%peer, "nbd connection opened");
        self.stats.accepted();
        let result = self.run_connection(stream, fd, &client, &shutdown).await;
        self.stats.closed();
        match result {
            Ok(()) => info!(%peer, "nbd connection closed"),
            Err(ConnError::Io(e)) if is_hangup(&e) => {
                info!(%peer, "nbd connection closed by client")
            }
            Err(
                e @ (ConnError::Refused(_) | ConnError::Tls(_) | ConnError::HandshakeTimeout(_)),
            ) => {
                self.stats.refused(match e {
                    ConnError::Refused(_) => Refusal::Export,
                    ConnError::Tls(_) => Refusal::Tls,
                    _ => Refusal::HandshakeTimeout,
                });
                info!(%peer, reason = %e, "nbd connection closed")
            }
            Err(e) => {
                if matches!(e, ConnError::Protocol(_)) {
                    self.stats.refused(Refusal::Protocol);
                }
                warn!(%peer, error = %e, "nbd connection closed on error")
            }
        }
    }

    async fn run_connection<S>(
        &self,
        stream: S,
        fd: Option<RawFd>,
        client: &ClientInfo,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // One read buffer for the whole connection, so bytes a client sends
        // right behind its GO are not lost between the two phases.
        let idle = Idle::new(self.poll_budget, self.stats.clone());
        let stream = Polled::new(stream, fd, idle.clone());
        let mut stream = BufReader::new(Transport::Plain(stream));
        let mut client = client.clone();
        let handshake = async {
            let negotiated =
                handshake::negotiate(&mut stream, &self.backend, &mut client, self.tls.as_ref())
                    .await?;
            if negotiated.is_none() {
                // Ends TLS cleanly (close_notify) when it is up; the client
                // may already be gone, which is fine.
                let _ = stream.shutdown().await;
            }
            Ok::<_, ConnError>(negotiated)
        };
        // A client may idle anywhere in the handshake (before its flags, in
        // the middle of an option, inside the TLS handshake): both the time
        // limit and shutdown cover all of it.
        let negotiated = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(self.handshake_timeout, handshake) => {
                r.map_err(|_| ConnError::HandshakeTimeout(self.handshake_timeout))??
            }
        };
        let Some(negotiated) = negotiated else {
            return Ok(());
        };
        self.stats.export_opened();
        info!(
            export = %negotiated.name,
            peer = ?client.peer,
            tls = client.tls,
            cert_cn = client.cert_cn.as_deref().unwrap_or("-"),
            "nbd export opened"
        );
        let (reader, writer) = tokio::io::split(stream);
        transmission::transmit(reader, writer, negotiated, &idle, shutdown).await
    }
}

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Serves NBD on a TCP listener until `shutdown`; see [`Server::serve`].
pub async fn serve(listener: TcpListener, backend: Arc<dyn Backend>, shutdown: CancellationToken) {
    Server::new(backend).serve(listener, shutdown).await
}

/// Serves NBD on a unix-socket listener until `shutdown`; see
/// [`Server::serve`]. Removing the socket file is the caller's business.
pub async fn serve_unix(
    listener: UnixListener,
    backend: Arc<dyn Backend>,
    shutdown: CancellationToken,
) {
    Server::new(backend).serve(listener, shutdown).await
}
