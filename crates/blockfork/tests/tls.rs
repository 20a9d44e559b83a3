//! TLS end to end through `blockfork serve`: NBD with required TLS and
//! client certificates whose CN maps LUNs (igroup --cert-cn), real clients
//! (qemu-io, nbdinfo), and the REST API over HTTPS with the CLI.

mod common;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::Command;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn make_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

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

/// Client credential directory in qemu's and libnbd's layout.
fn client_dir(root: &Path, name: &str, ca_pem: &str, cred: &(String, String)) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("ca-cert.pem"), ca_pem).unwrap();
    std::fs::write(d.join("client-cert.pem"), &cred.0).unwrap();
    std::fs::write(d.join("client-key.pem"), &cred.1).unwrap();
    d
}

fn qemu_io(port: u16, export: &str, creds: &Path, cmds: &[&str]) -> std::process::Output {
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        creds.display()
    );
    let image = format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0");
    let mut args = vec!["--object", &object, "--image-opts", &image];
    for c in cmds {
        args.extend_from_slice(&["-c", c]);
    }
    run(Command::new("qemu-io").args(&args), 60)
}

#[test]
fn tls_required_certificate_cns_map_luns_and_the_api_speaks_https() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca("blockfork test CA");
    let other = make_ca("another CA");
    let server_cred = make_leaf(
        &ca,
        "blockfork",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (cert, key, ca_file) = (
        pki.join("server-cert.pem"),
        pki.join("server-key.pem"),
        pki.join("ca-cert.pem"),
    );
    std::fs::write(&cert, &server_cred.0).unwrap();
    std::fs::write(&key, &server_cred.1).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let host_a = client_dir(
        &pki,
        "host-a",
        &ca.pem(),
        &make_leaf(&ca, "host-a", &[], ExtendedKeyUsagePurpose::ClientAuth),
    );
    let host_b = client_dir(
        &pki,
        "host-b",
        &ca.pem(),
        &make_leaf(&ca, "host-b", &[], ExtendedKeyUsagePurpose::ClientAuth),
    );
    let stray = client_dir(
        &pki,
        "stray",
        &format!("{}{}", ca.pem(), other.pem()),
        &make_leaf(&other, "host-a", &[], ExtendedKeyUsagePurpose::ClientAuth),
    );

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let server = Server::start_raw(
        &tmp.path().join("pool"),
        &[
            "--capacity",
            "256M",
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--tls-client-ca",
            &s(&ca_file),
            "--tls-required",
            "--api-tls",
        ],
    );
    let https = format!("https://127.0.0.1:{}", server.api_port);
    let cli = |args: &[&str]| {
        run(
            Command::new(env!("CARGO_BIN_EXE_blockfork"))
                .args(["--server", &https, "--ca-cert", &s(&ca_file), "--data"])
                .arg(&server.dir)
                .args(args),
            60,
        )
    };
    let ok = |args: &[&str]| {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["lun", "create", "db", "--size", "16M"]);
    ok(&["lun", "create", "web", "--size", "16M"]);
    ok(&["igroup", "create", "a", "--cert-cn", "host-a"]);
    ok(&["igroup", "create", "b", "--cert-cn", "host-b"]);
    ok(&["lun", "map", "db", "a"]);
    ok(&["lun", "map", "web", "b"]);
    // Plain http to the HTTPS API fails; https without trusting the CA too.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_blockfork"))
            .args(["--server", &server.url(), "--data"])
            .arg(&server.dir)
            .args(["lun", "list"]),
        30,
    );
    assert!(!out.status.success());
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_blockfork"))
            .env_remove("BLOCKFORK_CA_CERT")
            .args(["--server", &https, "--data"])
            .arg(&server.dir)
            .args(["lun", "list"]),
        30,
    );
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );

    let port = server.nbd_port;
    // host-a, over TLS with its certificate: reads and writes db.
    let out = qemu_io(
        port,
        "db",
        &host_a,
        &["write -P 0x42 0 64k", "read -P 0x42 0 64k"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("fail"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // host-a cannot open web (mapped to host-b's CN), host-b can.
    assert!(!qemu_io(port, "web", &host_a, &["read 0 4k"])
        .status
        .success());
    assert!(qemu_io(port, "web", &host_b, &["read 0 4k"])
        .status
        .success());
    // Listing over TLS shows each host only its own LUN.
    let list = |creds: &Path| {
        run(
            Command::new("nbdinfo").args([
                "--list",
                &format!(
                    "nbds://127.0.0.1:{port}/?tls-certificates={}",
                    creds.display()
                ),
            ]),
            60,
        )
    };
    let out = list(&host_a);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("db") && !text.contains("web"), "{text}");
    // A certificate from another CA, and a plain client, get nothing.
    assert!(!qemu_io(port, "db", &stray, &["read 0 4k"]).status.success());
    let out = run(
        Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{port}")]),
        60,
    );
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("db"));
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", "-r", &server.nbd("db"), "-c", "read 0 4k"]),
        60,
    );
    assert!(
        !out.status.success(),
        "a plain client opened a LUN with --tls-required"
    );
    let log = server.log_text();
    assert!(
        log.contains("host-a"),
        "the log names the certificate CN: {log}"
    );
}

/// A mirror whose source serves its API over HTTPS: the transfer is TLS,
/// trusting the CA given to `peer create --ca-cert`, and refused without it.
#[test]
fn a_mirror_pulls_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca("site CA");
    let server_cred = make_leaf(
        &ca,
        "site-a",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (cert, key, ca_file) = (
        pki.join("server-cert.pem"),
        pki.join("server-key.pem"),
        pki.join("ca-cert.pem"),
    );
    std::fs::write(&cert, &server_cred.0).unwrap();
    std::fs::write(&key, &server_cred.1).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let a = Server::start_with(
        &tmp.path().join("a"),
        &[
            "--capacity",
            "256M",
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--api-tls",
        ],
    );
    let b = Server::start(&tmp.path().join("b"), "256M");
    let https = format!("https://127.0.0.1:{}", a.api_port);
    let on_a = |args: &[&str]| {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_blockfork"))
                .args(["--server", &https, "--ca-cert", &s(&ca_file), "--data"])
                .arg(&a.dir)
                .args(args),
            60,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    on_a(&["lun", "create", "vm", "--size", "16M"]);
    let mut c = NbdClient::connect(a.nbd_port, "vm").unwrap();
    assert_eq!(c.write(0, &vec![0x5au8; 1 << 20]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    let token = on_a(&["peer", "token", "create", "b"]);
    let token = token.lines().next().unwrap().trim().to_string();
    // Without the CA the source's certificate is not trusted: nothing
    // is created.
    b.cli_ok(&[
        "peer",
        "create",
        "untrusted",
        "--url",
        &https,
        "--token",
        &token,
    ]);
    let out = b.cli(&["mirror", "create", "untrusted:vm", "vm-x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!b.cli(&["lun", "show", "vm-x"]).status.success());
    // With it, the mirror pulls over TLS.
    b.cli_ok(&[
        "peer",
        "create",
        "site-a",
        "--url",
        &https,
        "--token",
        &token,
        "--ca-cert",
        &s(&ca_file),
    ]);
    b.cli_ok(&["mirror", "create", "site-a:vm", "vm-dr"]);
    let mut d = NbdClient::connect(b.nbd_port, "vm-dr").unwrap();
    assert_eq!(d.read(0, 1 << 20).unwrap().1, vec![0x5au8; 1 << 20]);
    assert!(b.cli_ok(&["peer", "list"]).contains("yes"));
}
