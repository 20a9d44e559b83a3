//! TLS for NBD: the in-session upgrade of NBD_OPT_STARTTLS, on rustls with
//! its `ring` provider (decision 008).
//!
//! [`TlsSettings`] is what a [`Server`](crate::Server) needs; [`load`]
//! builds it from PEM files. With a client CA, every client must present a
//! certificate signed by it, and the certificate's subject common name
//! reaches the backend as [`ClientInfo::cert_cn`](crate::ClientInfo).

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Re-exported so callers can build a [`ServerConfig`] themselves for
/// [`TlsSettings::new`] without depending on a matching rustls version.
pub use tokio_rustls::rustls;

/// How a server offers TLS.
#[derive(Clone)]
pub struct TlsSettings {
    acceptor: TlsAcceptor,
    required: bool,
}

impl TlsSettings {
    /// `required`: refuse every option but STARTTLS and ABORT until TLS is
    /// up (the spec's FORCEDTLS mode). Without it TLS is the client's choice
    /// and the backend can decide on [`ClientInfo::tls`](crate::ClientInfo).
    pub fn new(config: Arc<ServerConfig>, required: bool) -> TlsSettings {
        TlsSettings {
            acceptor: TlsAcceptor::from(config),
            required,
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Builds [`TlsSettings`] from PEM files: the server's certificate chain
/// (leaf first), its private key (PKCS#8, PKCS#1 or SEC1), and optionally
/// the CA that client certificates must chain to. TLS 1.2 and 1.3 only.
/// Errors name the file and say what is wrong with it.
pub fn load(
    cert_pem_path: &Path,
    key_pem_path: &Path,
    client_ca_pem_path: Option<&Path>,
    required: bool,
) -> Result<TlsSettings, String> {
    let config = load_config(cert_pem_path, key_pem_path, client_ca_pem_path)?;
    Ok(TlsSettings::new(config, required))
}

/// The rustls server configuration [`load`] builds, for other TLS servers
/// that share the certificate (blockfork's REST API).
pub fn load_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
    client_ca_pem_path: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certificates(cert_pem_path, "TLS certificate")?;
    let key = read_private_key(key_pem_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match client_ca_pem_path {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in read_certificates(ca_path, "TLS client CA")?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).map_err(|e| {
                    format!(
                        "TLS client CA {}: certificate {} cannot be used as a trust anchor: {e}",
                        ca_path.display(),
                        i + 1
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS client CA {}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "TLS key {} does not fit certificate {}: {e}; give the key that belongs to the certificate",
            key_pem_path.display(),
            cert_pem_path.display()
        )
    })?;
    Ok(Arc::new(config))
}

fn pem_error(what: &str, path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {what} file {}: {e}", path.display()),
        e => format!("{what} file {} is not valid PEM: {e}", path.display()),
    }
}

fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} file {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "TLS key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        e => pem_error("TLS key", path, e),
    })
}

/// The subject common name of a DER certificate, if it has one that is a
/// string. The first CN wins when there are several.
pub(crate) fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A connection's byte stream: plain until STARTTLS, TLS after. `Closed` is
/// what is left when an upgrade failed; it refuses all I/O.
pub(crate) enum Transport<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    Closed,
}

impl<S> Transport<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Runs the TLS handshake over the plain stream. On success returns the
    /// client certificate's subject CN (if a certificate was verified).
    pub(crate) async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<Option<String>> {
        let plain = match std::mem::replace(self, Transport::Closed) {
            Transport::Plain(s) => s,
            other => {
                *self = other;
                return Err(io::Error::other("TLS is already active"));
            }
        };
        let tls = acceptor.accept(plain).await?;
        let cn = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_common_name(leaf));
        *self = Transport::Tls(Box::new(tls));
        Ok(cn)
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
}
