//! TLS through NBD_OPT_STARTTLS: real clients (qemu-io, qemu-img, nbdinfo)
//! with certificates made here by rcgen, and a raw client (rustls on the
//! client side) for the protocol's rules. Servers run in-process on
//! 127.0.0.1 with free ports.
//!
//! Every refusal test also runs a client that must succeed against the same
//! server, so a refusal cannot come from a broken setup.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::*;
use common::*;
use nbd::proto::*;
use nbd::tls::rustls;
use nbd::{Backend, ClientInfo, Export, ExportListing, OpenError, Server, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every raw-client exchange is bounded; a hang fails the test.
const EXCHANGE_SECS_MAX: u64 = 20;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(EXCHANGE_SECS_MAX), f)
        .await
        .expect("test timed out")
}

// ---- Certificates -----------------------------------------------------------

type Ca = CertifiedIssuer<'static, KeyPair>;

fn make_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate and its key, both PEM. qemu checks key usage and
/// purpose, so both are set the way it wants them.
fn make_leaf(
    ca: &Ca,
    cn: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CA, the server's certificate, and client credential directories in the
/// layout qemu's tls-creds-x509 and libnbd's tls-certificates expect
/// (ca-cert.pem, client-cert.pem, client-key.pem).
struct Pki {
    _dir: TempDir,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    /// Client certificate CN "host-a" from our CA.
    good: PathBuf,
    /// Client certificate from another CA. Its ca-cert.pem holds both CAs:
    /// ours to check the server, the other because qemu refuses to load a
    /// client certificate whose issuer it does not have.
    other_ca: PathBuf,
    /// No client certificate at all.
    no_cert: PathBuf,
    ca_pem: String,
    good_pem: (String, String),
    other_pem: (String, String),
}

fn make_pki(name: &str) -> Pki {
    let dir = TempDir::new(&format!("tls-{name}"));
    let ca = make_ca("blockfork test CA");
    let other = make_ca("some other CA");
    let server = make_leaf(
        &ca,
        "nbd server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let good = make_leaf(&ca, "host-a", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let stray = make_leaf(&other, "host-a", &[], ExtendedKeyUsagePurpose::ClientAuth);

    let write = |path: &Path, text: &str| std::fs::write(path, text).unwrap();
    let sub = |name: &str| {
        let d = dir.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let server_dir = sub("server");
    write(&server_dir.join("server-cert.pem"), &server.0);
    write(&server_dir.join("server-key.pem"), &server.1);
    write(&server_dir.join("ca-cert.pem"), &ca.pem());

    let client_dir = |name: &str, ca_pem: &str, cred: Option<&(String, String)>| {
        let d = sub(name);
        write(&d.join("ca-cert.pem"), ca_pem);
        if let Some((cert, key)) = cred {
            write(&d.join("client-cert.pem"), cert);
            write(&d.join("client-key.pem"), key);
        }
        d
    };
    let good_dir = client_dir("good", &ca.pem(), Some(&good));
    let both = format!("{}{}", ca.pem(), other.pem());
    let other_dir = client_dir("other", &both, Some(&stray));
    let no_cert_dir = client_dir("nocert", &ca.pem(), None);
    Pki {
        server_cert: server_dir.join("server-cert.pem"),
        server_key: server_dir.join("server-key.pem"),
        client_ca: server_dir.join("ca-cert.pem"),
        good: good_dir,
        other_ca: other_dir,
        no_cert: no_cert_dir,
        ca_pem: ca.pem(),
        good_pem: good,
        other_pem: stray,
        _dir: dir,
    }
}

impl Pki {
    /// Server settings: our CA verifies client certificates.
    fn settings(&self, required: bool) -> TlsSettings {
        nbd::tls::load(
            &self.server_cert,
            &self.server_key,
            Some(&self.client_ca),
            required,
        )
        .unwrap()
    }
}

// ---- A backend that remembers who asked ---------------------------------------

/// The standard memory backend, recording the ClientInfo of every list and
/// open call so tests can check what the backend was told.
struct Recording {
    inner: MemBackend,
    seen: Mutex<Vec<ClientInfo>>,
}

impl Recording {
    fn new() -> Arc<Recording> {
        Arc::new(Recording {
            inner: standard_backend(),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn seen(&self) -> Vec<ClientInfo> {
        self.seen.lock().unwrap().clone()
    }
}

impl Backend for Recording {
    fn list(&self, client: &ClientInfo) -> Vec<ExportListing> {
        self.seen.lock().unwrap().push(client.clone());
        self.inner.list(client)
    }
    fn open(&self, name: &str, client: &ClientInfo) -> Result<Arc<dyn Export>, OpenError> {
        self.seen.lock().unwrap().push(client.clone());
        self.inner.open(name, client)
    }
}

async fn start_tls_server(backend: &Arc<Recording>, settings: TlsSettings) -> Running {
    let backend: Arc<dyn Backend> = backend.clone();
    start_server(Server::new(backend).with_tls(settings)).await
}

/// Asserts every backend call came over TLS from the "host-a" certificate.
fn assert_all_host_a(seen: &[ClientInfo]) {
    assert!(!seen.is_empty(), "the backend was never called");
    for c in seen {
        assert!(c.tls, "backend called without TLS: {c:?}");
        assert_eq!(c.cert_cn.as_deref(), Some("host-a"), "{c:?}");
        assert!(c.peer.is_some_and(|p| p.ip().is_loopback()), "{c:?}");
    }
}

// ---- Real clients -------------------------------------------------------------

fn qemu_object(creds_dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        creds_dir.display()
    )
}

fn qemu_image(server: &Running, export: &str) -> String {
    format!(
        "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
        server.addr.port()
    )
}

/// qemu-io over TLS with the credentials in `creds_dir`.
async fn qemu_io_tls(server: &Running, creds_dir: &Path, commands: &[&str]) -> Ran {
    let object = qemu_object(creds_dir);
    let image = qemu_image(server, "disk");
    let mut args = vec!["--object", &object, "--image-opts", &image];
    for c in commands {
        args.extend_from_slice(&["-c", c]);
    }
    run("qemu-io", &args).await
}

fn nbds_uri(server: &Running, export: &str, creds_dir: &Path) -> String {
    format!(
        "nbds://{}/{export}?tls-certificates={}",
        server.addr,
        creds_dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_and_qemu_img_over_tls() {
    if !clients_available(&["qemu-io", "qemu-img"]) {
        return;
    }
    let pki = make_pki("qemu");
    let backend = Recording::new();
    let server = start_tls_server(&backend, pki.settings(true)).await;

    let r = qemu_io_tls(
        &server,
        &pki.good,
        &[
            "read -P 0x11 0 64k",
            "write -P 0xab 64k 128k",
            "read -P 0xab 64k 128k",
            "flush",
        ],
    )
    .await;
    assert!(r.ok, "qemu-io over TLS failed");
    assert!(!r.stdout.contains("Pattern verification failed"));
    assert_eq!(r.stdout.matches("read ").count(), 2, "{}", r.stdout);
    assert!(r.stdout.contains("wrote 131072/131072"), "{}", r.stdout);
    let snap = backend.inner.export("disk").snapshot();
    assert!(snap[64 << 10..192 << 10].iter().all(|b| *b == 0xab));

    let object = qemu_object(&pki.good);
    let image = qemu_image(&server, "disk");
    let r = run(
        "qemu-img",
        &[
            "info",
            "--output=json",
            "--object",
            &object,
            "--image-opts",
            &image,
        ],
    )
    .await;
    assert!(r.ok, "qemu-img info over TLS failed");
    assert!(
        r.stdout.contains("\"virtual-size\": 1048576"),
        "{}",
        r.stdout
    );
    assert_all_host_a(&backend.seen());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_over_tls() {
    if !clients_available(&["nbdinfo"]) {
        return;
    }
    let pki = make_pki("nbdinfo");
    let backend = Recording::new();
    let server = start_tls_server(&backend, pki.settings(true)).await;

    let list = format!(
        "nbds://{}?tls-certificates={}",
        server.addr,
        pki.good.display()
    );
    let r = run("nbdinfo", &["--list", &list]).await;
    // Not `r.ok`: nbdinfo --list exits non-zero because "secret" is denied.
    assert!(r.stdout.contains("export=\"disk\""), "{}", r.stdout);
    assert!(r.stdout.contains("export=\"ro\""), "{}", r.stdout);

    let r = run(
        "nbdinfo",
        &["--json", &nbds_uri(&server, "disk", &pki.good)],
    )
    .await;
    assert!(r.ok, "nbdinfo --json over TLS failed");
    let compact: String = r.stdout.split_whitespace().collect();
    assert!(compact.contains("\"TLS\":true"), "{compact}");
    assert!(compact.contains("\"export-size\":1048576"), "{compact}");
    // Structured replies were negotiated again inside TLS.
    assert!(compact.contains("\"base:allocation\""), "{compact}");
    assert_all_host_a(&backend.seen());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_are_refused_when_tls_is_required() {
    if !clients_available(&["nbdinfo", "qemu-io"]) {
        return;
    }
    let pki = make_pki("required");
    let backend = Recording::new();
    let server = start_tls_server(&backend, pki.settings(true)).await;

    let r = run("nbdinfo", &["--list", &format!("nbd://{}", server.addr)]).await;
    assert!(!r.ok, "a plain client listed exports");
    assert!(!r.stdout.contains("export=\"disk\""), "{}", r.stdout);
    let r = run("nbdinfo", &["--size", &server.uri("disk")]).await;
    assert!(!r.ok, "a plain client opened an export");
    assert!(!r.stdout.contains("1048576"), "{}", r.stdout);
    let r = qemu_io(&server.uri("disk"), &[], &["read 0 4k"]).await;
    assert!(!r.ok, "plain qemu-io opened an export");
    assert!(!r.stdout.contains("read 4096/4096"), "{}", r.stdout);
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());

    // The same server serves a TLS client.
    let r = run(
        "nbdinfo",
        &["--size", &nbds_uri(&server, "disk", &pki.good)],
    )
    .await;
    assert_eq!(r.stdout.trim(), "1048576", "TLS client refused too");
    assert_all_host_a(&backend.seen());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_or_none_cannot_connect() {
    if !clients_available(&["nbdinfo", "qemu-io"]) {
        return;
    }
    let pki = make_pki("badcert");
    let backend = Recording::new();
    let server = start_tls_server(&backend, pki.settings(true)).await;

    for creds in [&pki.other_ca, &pki.no_cert] {
        let r = run("nbdinfo", &["--size", &nbds_uri(&server, "disk", creds)]).await;
        assert!(!r.ok, "nbdinfo with {} connected", creds.display());
        assert!(!r.stdout.contains("1048576"), "{}", r.stdout);
        let r = qemu_io_tls(&server, creds, &["read 0 4k"]).await;
        assert!(!r.ok, "qemu-io with {} connected", creds.display());
        assert!(!r.stdout.contains("read 4096/4096"), "{}", r.stdout);
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());

    let r = qemu_io_tls(&server, &pki.good, &["read -P 0x11 0 4k"]).await;
    assert!(
        r.ok && r.stdout.contains("read 4096/4096"),
        "good client refused too"
    );
    assert_all_host_a(&backend.seen());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_tls_serves_both_and_tells_the_backend() {
    if !clients_available(&["nbdinfo"]) {
        return;
    }
    let pki = make_pki("optional");
    let backend = Recording::new();
    let server = start_tls_server(&backend, pki.settings(false)).await;

    let r = run("nbdinfo", &["--json", &server.uri("disk")]).await;
    assert!(r.ok, "plain client refused though TLS is optional");
    let compact: String = r.stdout.split_whitespace().collect();
    assert!(compact.contains("\"TLS\":false"), "{compact}");
    let plain = backend.seen();
    assert!(!plain.is_empty());
    assert!(
        plain.iter().all(|c| !c.tls && c.cert_cn.is_none()),
        "{plain:?}"
    );

    backend.seen.lock().unwrap().clear();
    let r = run(
        "nbdinfo",
        &["--json", &nbds_uri(&server, "disk", &pki.good)],
    )
    .await;
    assert!(r.ok, "TLS client refused");
    let compact: String = r.stdout.split_whitespace().collect();
    assert!(compact.contains("\"TLS\":true"), "{compact}");
    assert_all_host_a(&backend.seen());
    server.stop().await;
}

// ---- Raw client: the protocol rules ---------------------------------------------

fn client_config(pki: &Pki, cred: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cred {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

async fn raw_connect(server: &Running) -> RawClient<TcpStream> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    RawClient::start(tcp, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await
}

type TlsClient = RawClient<tokio_rustls::client::TlsStream<TcpStream>>;

/// STARTTLS (must be ACKed), then the TLS handshake as a client.
async fn raw_starttls(
    mut c: RawClient<TcpStream>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsClient> {
    let r = c.option(OPT_STARTTLS, &[]).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].reply_type, REP_ACK, "STARTTLS not acknowledged");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, c.s)
        .await?;
    Ok(RawClient { s })
}

/// Reads until the server closes; returns what came before.
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    rest
}

#[tokio::test]
async fn required_tls_answers_tls_reqd_until_starttls() {
    bounded(async {
        let pki = make_pki("reqd");
        let backend = Recording::new();
        let server = start_tls_server(&backend, pki.settings(true)).await;
        let mut c = raw_connect(&server).await;
        let meta = meta_request("disk", &["base:allocation"]);
        let go = info_request("disk", &[]);
        for (option, data) in [
            (OPT_LIST, &[][..]),
            (OPT_INFO, &go[..]),
            (OPT_GO, &go[..]),
            (OPT_STRUCTURED_REPLY, &[][..]),
            (OPT_LIST_META_CONTEXT, &meta[..]),
            (OPT_SET_META_CONTEXT, &meta[..]),
            (99, &b"whatever"[..]),
        ] {
            let r = c.option(option, data).await;
            assert_eq!(r.len(), 1, "option {option}: {r:?}");
            assert_eq!(r[0].option, option);
            assert_eq!(r[0].reply_type, REP_ERR_TLS_REQD, "option {option}");
        }
        assert!(backend.seen().is_empty());
        // STARTTLS with data is invalid and leaves the session in plain text.
        assert_eq!(
            c.option(OPT_STARTTLS, b"x").await[0].reply_type,
            REP_ERR_INVALID
        );
        assert_eq!(
            c.option(OPT_LIST, &[]).await[0].reply_type,
            REP_ERR_TLS_REQD
        );

        let mut t = raw_starttls(c, client_config(&pki, Some(&pki.good_pem)))
            .await
            .expect("TLS handshake failed");
        // Inside TLS: no TLS_REQD, and a second STARTTLS is an error.
        let r = t.option(OPT_LIST, &[]).await;
        assert_eq!(r.last().unwrap().reply_type, REP_ACK, "{r:?}");
        assert_eq!(r.len(), 4, "{r:?}");
        let r = t.option(OPT_STARTTLS, &[]).await;
        assert_eq!(r[0].reply_type, REP_ERR_INVALID);
        // Transmission runs over TLS too.
        t.go("disk", true, false).await;
        t.send_request(CMD_READ, 0, 7, 0, 4096, &[]).await;
        let (reply, _) = t.read_reply(|_| 0).await.unwrap();
        let Reply::Chunk {
            chunk_type,
            cookie,
            payload,
            ..
        } = reply
        else {
            panic!("expected a structured reply: {reply:?}");
        };
        assert_eq!((chunk_type, cookie), (REPLY_TYPE_OFFSET_DATA, 7));
        assert_eq!(&payload[..8], &0u64.to_be_bytes());
        assert!(payload[8..].iter().all(|b| *b == 0x11));
        assert_eq!(payload.len(), 8 + 4096);
        t.send_request(CMD_DISC, 0, 8, 0, 0, &[]).await;
        assert!(read_to_close(&mut t.s).await.is_empty());
        assert_all_host_a(&backend.seen());
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn abort_is_acked_and_export_name_ends_the_session_before_tls() {
    bounded(async {
        let pki = make_pki("abort");
        let backend = Recording::new();
        let server = start_tls_server(&backend, pki.settings(true)).await;

        let mut c = raw_connect(&server).await;
        let r = c.option(OPT_ABORT, &[]).await;
        assert_eq!(r[0].reply_type, REP_ACK);
        assert!(read_to_close(&mut c.s).await.is_empty());

        // EXPORT_NAME has no error reply: the server hangs up, sending
        // nothing (no export size, no flags).
        let mut c = raw_connect(&server).await;
        c.send_option(OPT_EXPORT_NAME, b"disk").await;
        assert!(read_to_close(&mut c.s).await.is_empty());
        assert!(backend.seen().is_empty(), "{:?}", backend.seen());
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn starttls_forgets_plain_text_negotiation() {
    bounded(async {
        let pki = make_pki("reset");
        let backend = Recording::new();
        let server = start_tls_server(&backend, pki.settings(false)).await;
        let mut c = raw_connect(&server).await;
        // Optional TLS: options work in plain text.
        assert_eq!(
            c.option(OPT_STRUCTURED_REPLY, &[]).await[0].reply_type,
            REP_ACK
        );
        let meta = meta_request("disk", &["base:allocation"]);
        let r = c.option(OPT_SET_META_CONTEXT, &meta).await;
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(backend.seen().iter().all(|c| !c.tls));

        let mut t = raw_starttls(c, client_config(&pki, Some(&pki.good_pem)))
            .await
            .expect("TLS handshake failed");
        // Structured replies must be negotiated again.
        let r = t.option(OPT_SET_META_CONTEXT, &meta).await;
        assert_eq!(r[0].reply_type, REP_ERR_INVALID, "{r:?}");
        // GO without them: a READ gets a simple reply.
        t.go("disk", false, false).await;
        t.send_request(CMD_READ, 0, 9, 0, 16, &[]).await;
        let (reply, data) = t.read_reply(|_| 16).await.unwrap();
        assert_eq!(
            reply,
            Reply::Simple {
                error: 0,
                cookie: 9
            }
        );
        assert_eq!(data, vec![0x11; 16]);
        let seen = backend.seen();
        let after: Vec<_> = seen.iter().filter(|c| c.tls).collect();
        assert!(!after.is_empty(), "{seen:?}");
        assert!(after.iter().all(|c| c.cert_cn.as_deref() == Some("host-a")));
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn bytes_sent_behind_starttls_end_the_session() {
    bounded(async {
        let pki = make_pki("inject");
        let backend = Recording::new();
        let server = start_tls_server(&backend, pki.settings(false)).await;
        let mut c = raw_connect(&server).await;
        // STARTTLS and, in the same write, a plain-text option that must not
        // end up inside the TLS session.
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&OPT_LIST.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        c.s.write_all(&m).await.unwrap();
        assert!(read_to_close(&mut c.s).await.is_empty());
        assert!(backend.seen().is_empty());

        // A well-behaved client is still served.
        let c = raw_connect(&server).await;
        let mut t = raw_starttls(c, client_config(&pki, Some(&pki.good_pem)))
            .await
            .unwrap();
        let r = t.option(OPT_LIST, &[]).await;
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        server.stop().await;
    })
    .await
}

/// Sends LIST over a TLS session that may have been refused; with TLS 1.3
/// the client only learns of a refused certificate on its first read.
async fn list_over_tls<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut RawClient<S>,
) -> std::io::Result<Vec<OptReply>> {
    c.send_option(OPT_LIST, &[]).await;
    c.s.flush().await?;
    let mut out = Vec::new();
    loop {
        let r = c.read_opt_reply().await?;
        let last = r.reply_type != REP_SERVER;
        out.push(r);
        if last {
            return Ok(out);
        }
    }
}

#[tokio::test]
async fn raw_client_needs_a_certificate_from_the_client_ca() {
    bounded(async {
        let pki = make_pki("rawcert");
        let backend = Recording::new();
        let server = start_tls_server(&backend, pki.settings(true)).await;

        for cred in [Some(&pki.other_pem), None] {
            let c = raw_connect(&server).await;
            let refused = match raw_starttls(c, client_config(&pki, cred)).await {
                Err(_) => true,
                Ok(mut t) => list_over_tls(&mut t).await.is_err(),
            };
            assert!(refused, "client with {cred:?} was served");
        }
        assert!(backend.seen().is_empty(), "{:?}", backend.seen());

        let c = raw_connect(&server).await;
        let mut t = raw_starttls(c, client_config(&pki, Some(&pki.good_pem)))
            .await
            .unwrap();
        let r = list_over_tls(&mut t).await.expect("good client refused");
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        assert_all_host_a(&backend.seen());
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn without_a_client_ca_any_client_is_served_without_a_cn() {
    bounded(async {
        let pki = make_pki("noca");
        let backend = Recording::new();
        let settings = nbd::tls::load(&pki.server_cert, &pki.server_key, None, true).unwrap();
        let server = start_tls_server(&backend, settings).await;
        let c = raw_connect(&server).await;
        let mut t = raw_starttls(c, client_config(&pki, None)).await.unwrap();
        let r = list_over_tls(&mut t).await.unwrap();
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        let seen = backend.seen();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|c| c.tls && c.cert_cn.is_none()),
            "{seen:?}"
        );
        server.stop().await;
    })
    .await
}

#[test]
fn load_names_the_file_and_the_problem() {
    let pki = make_pki("load");
    let dir = pki._dir.0.clone();
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &pki.other_pem.1).unwrap();

    let err = |cert: &Path, key: &Path, ca: Option<&Path>| {
        nbd::tls::load(cert, key, ca, false).expect_err("load should fail")
    };
    let e = err(&missing, &pki.server_key, None);
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    assert!(e.contains("No such file"), "{e}");
    let e = err(&garbage, &pki.server_key, None);
    assert!(
        e.contains("garbage.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = err(&broken, &pki.server_key, None);
    assert!(
        e.contains("broken.pem") && e.contains("not valid PEM"),
        "{e}"
    );
    let e = err(&pki.server_cert, &missing, None);
    assert!(e.contains("missing.pem") && e.contains("TLS key"), "{e}");
    // A certificate file is no key.
    let e = err(&pki.server_cert, &pki.server_cert, None);
    assert!(
        e.contains("server-cert.pem") && e.contains("no PEM private key"),
        "{e}"
    );
    let e = err(&pki.server_cert, &other_key, None);
    assert!(
        e.contains("other-key.pem") && e.contains("does not fit"),
        "{e}"
    );
    let e = err(&pki.server_cert, &pki.server_key, Some(&garbage));
    assert!(e.contains("client CA") && e.contains("garbage.pem"), "{e}");
    let e = err(&pki.server_cert, &pki.server_key, Some(&missing));
    assert!(e.contains("client CA") && e.contains("missing.pem"), "{e}");

    let ok = nbd::tls::load(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.client_ca),
        true,
    )
    .unwrap();
    assert!(ok.required());
}
