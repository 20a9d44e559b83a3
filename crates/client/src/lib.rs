//! A typed, blocking client of one blockfork server's REST API.
//!
//! One method per API operation, taking and returning `wire`'s types (the
//! server's own), so a caller never formats a URL or parses a response by
//! hand: the CLI, the tests, the benchmarks and (next) mirror peers all go
//! through here. Names are percent-encoded in one place, [`encode`].

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use wire::*;

mod devices;

pub use wire;

/// Longest wait to connect to the server.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for one API call; deleting a large LUN is the slowest.
pub const REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Largest response body read (a list of many LUNs).
pub const RESPONSE_BYTES_MAX: u64 = 256 << 20;

/// Why a call failed: the server's own sentence for an API error (with its
/// HTTP status and code), or a sentence about reaching the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The HTTP status of an API error; `None` when no answer came.
    pub status: Option<u16>,
    /// The API's machine-readable code (`not_found`, ...), if it sent one.
    pub code: Option<String>,
    pub message: String,
}

impl ClientError {
    fn local(message: String) -> ClientError {
        ClientError {
            status: None,
            code: None,
            message,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

impl From<ClientError> for String {
    fn from(e: ClientError) -> String {
        e.message
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A blocking client of one server's API.
pub struct Client {
    server: String,
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `server` (`http://` or `https://`),
    /// authorised by `token`, trusting `ca_cert` (PEM) for HTTPS.
    pub fn new(server: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Client> {
        let certs = ca_cert.map(read_certs).transpose()?;
        Client::with_certs(server, token, certs, REQUEST_TIMEOUT_MS)
    }

    /// Like [`Client::new`] with the CA given as PEM text (a mirror peer's,
    /// kept in the destination's state), each call bounded by `timeout_ms`.
    pub fn with_ca_pem(
        server: &str,
        token: Option<String>,
        ca_pem: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Client> {
        let certs = ca_pem
            .map(|pem| parse_certs(pem.as_bytes(), "the peer's CA certificate"))
            .transpose()?;
        Client::with_certs(server, token, certs, timeout_ms)
    }

    fn with_certs(
        server: &str,
        token: Option<String>,
        certs: Option<Vec<ureq::tls::Certificate<'static>>>,
        timeout_ms: u64,
    ) -> Result<Client> {
        let trimmed = server.trim_end_matches('/');
        let scheme = ["http://", "https://"]
            .into_iter()
            .find(|s| trimmed.starts_with(s) && trimmed.len() > s.len());
        if scheme.is_none() {
            return Err(ClientError::local(format!(
                "--server must be an http:// or https:// URL like http://127.0.0.1:8080, got {server:?}"
            )));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(certs) = certs {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .timeout_global(Some(Duration::from_millis(timeout_ms)))
            .build()
            .into();
        Ok(Client {
            server: trimmed.to_string(),
            base: format!("{trimmed}/api/v1"),
            agent,
            token,
        })
    }

    /// The server's URL, as given (without a trailing '/').
    pub fn server(&self) -> &str {
        &self.server
    }

    // ---------------------------------------------------------------- LUNs

    pub fn create_lun(&self, body: &CreateLun) -> Result<LunInfo> {
        self.send("POST", "/luns", body)
    }

    /// LUNs whose names start with `prefix` (all without one).
    pub fn list_luns(&self, prefix: Option<&str>) -> Result<Vec<LunInfo>> {
        self.get(&with_query("/luns", &[("prefix", prefix)]))
    }

    pub fn lun(&self, name: &str) -> Result<LunInfo> {
        self.get(&lun_path(name))
    }

    pub fn resize_lun(&self, name: &str, body: &ResizeLun) -> Result<LunInfo> {
        self.send("PATCH", &lun_path(name), body)
    }

    /// Deletes a LUN; with `recursive`, its snapshots too.
    pub fn delete_lun(&self, name: &str, recursive: bool) -> Result<()> {
        let path = format!("{}?recursive={recursive}", lun_path(name));
        self.call("DELETE", &path, None).map(drop)
    }

    // ----------------------------------------------------------- snapshots

    pub fn create_snapshot(&self, lun: &str, name: &str) -> Result<SnapshotInfo> {
        let body = CreateSnapshots::One(CreateSnapshot {
            lun: lun.into(),
            name: name.into(),
        });
        self.send("POST", "/snapshots", &body)
    }

    /// Several snapshots at one point in time, in one commit.
    pub fn create_snapshots(&self, body: &CreateSnapshotBatch) -> Result<SnapshotBatchInfo> {
        self.send("POST", "/snapshots", &CreateSnapshots::Batch(body.clone()))
    }

    /// Snapshots of `lun` (of every LUN without one).
    pub fn list_snapshots(&self, lun: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        self.get(&with_query("/snapshots", &[("lun", lun)]))
    }

    pub fn snapshot(&self, lun: &str, snapshot: &str) -> Result<SnapshotInfo> {
        self.get(&snapshot_path(lun, snapshot, ""))
    }

    pub fn delete_snapshot(&self, lun: &str, snapshot: &str) -> Result<()> {
        self.call("DELETE", &snapshot_path(lun, snapshot, ""), None)
            .map(drop)
    }

    /// Restores `lun` to `snapshot`; answers the LUN as it is now.
    pub fn restore_snapshot(&self, lun: &str, snapshot: &str) -> Result<LunInfo> {
        self.post_empty(&snapshot_path(lun, snapshot, "/restore"))
    }

    pub fn create_group_snapshot(&self, body: &CreateGroupSnapshot) -> Result<GroupInfo> {
        self.send("POST", "/group-snapshots", body)
    }

    pub fn list_group_snapshots(&self) -> Result<Vec<GroupInfo>> {
        self.get("/group-snapshots")
    }

    pub fn group_snapshot(&self, name: &str) -> Result<GroupInfo> {
        self.get(&format!("/group-snapshots/{}", encode(name)))
    }

    pub fn delete_group_snapshot(&self, name: &str) -> Result<()> {
        self.call(
            "DELETE",
            &format!("/group-snapshots/{}", encode(name)),
            None,
        )
        .map(drop)
    }

    // -------------------------------------------------------------- clones

    pub fn create_clones(&self, body: &CreateClones) -> Result<Vec<LunInfo>> {
        self.send("POST", "/clones", body)
    }

    pub fn start_split(&self, lun: &str) -> Result<SplitInfo> {
        self.send("POST", "/splits/start", &SplitTarget { lun: lun.into() })
    }

    pub fn stop_split(&self, lun: &str) -> Result<SplitInfo> {
        self.send("POST", "/splits/stop", &SplitTarget { lun: lun.into() })
    }

    pub fn split(&self, lun: &str) -> Result<SplitInfo> {
        self.get(&format!("/splits/{}", encode(lun)))
    }

    /// Splits under way of LUNs whose names start with `prefix`.
    pub fn list_splits(&self, prefix: Option<&str>) -> Result<Vec<SplitInfo>> {
        self.get(&with_query("/splits", &[("prefix", prefix)]))
    }

    pub fn clone_ranges(&self, body: &CloneRanges) -> Result<CloneRangeReport> {
        self.send("POST", "/clone-range", body)
    }

    // -------------------------------------------------------------- access

    pub fn create_igroup(&self, body: &CreateIgroup) -> Result<IgroupInfo> {
        self.send("POST", "/igroups", body)
    }

    pub fn list_igroups(&self) -> Result<Vec<IgroupInfo>> {
        self.get("/igroups")
    }

    pub fn igroup(&self, name: &str) -> Result<IgroupInfo> {
        self.get(&igroup_path(name, ""))
    }

    pub fn delete_igroup(&self, name: &str) -> Result<()> {
        self.call("DELETE", &igroup_path(name, ""), None).map(drop)
    }

    pub fn add_igroup_member(&self, name: &str, member: &IgroupMember) -> Result<IgroupInfo> {
        self.send("POST", &igroup_path(name, "/members"), member)
    }

    /// Removes the member `member` names by address or, else, by CN.
    pub fn remove_igroup_member(&self, name: &str, member: &IgroupMember) -> Result<IgroupInfo> {
        let query = match (&member.address, &member.cert_cn) {
            (Some(address), _) => ("address", Some(address.as_str())),
            (None, cert_cn) => ("cert_cn", cert_cn.as_deref()),
        };
        let path = with_query(&igroup_path(name, "/members"), &[query]);
        self.call("DELETE", &path, None).and_then(parse)
    }

    pub fn list_lun_maps(&self) -> Result<Vec<LunMap>> {
        self.get("/lun-maps")
    }

    pub fn map_lun(&self, lun: &str, igroup: &str) -> Result<LunMap> {
        let body = LunMap {
            lun: lun.into(),
            igroup: igroup.into(),
        };
        self.send("POST", "/lun-maps", &body)
    }

    pub fn unmap_lun(&self, lun: &str, igroup: &str) -> Result<()> {
        let path = with_query("/lun-maps", &[("lun", Some(lun)), ("igroup", Some(igroup))]);
        self.call("DELETE", &path, None).map(drop)
    }

    // ---------------------------------------------------------------- pool

    pub fn pool(&self) -> Result<PoolStatus> {
        self.get("/pool")
    }

    /// Grows the pool and/or sets its access mode.
    pub fn update_pool(&self, body: &GrowPool) -> Result<PoolStatus> {
        self.send("PATCH", "/pool", body)
    }

    /// Checks every invariant, online.
    pub fn check_pool(&self) -> Result<PoolCheck> {
        self.get("/pool/check")
    }

    pub fn jobs(&self) -> Result<Vec<JobInfo>> {
        self.get("/jobs")
    }

    /// Events after `since` (at most `limit`); with `wait` seconds, a long
    /// poll that answers once one happens (keep `wait` under the client's
    /// request timeout).
    pub fn events(&self, since: u64, limit: Option<u32>, wait: Option<u32>) -> Result<EventList> {
        let since = since.to_string();
        let limit = limit.map(|l| l.to_string());
        let wait = wait.map(|w| w.to_string());
        self.get(&with_query(
            "/events",
            &[
                ("since", Some(&since)),
                ("limit", limit.as_deref()),
                ("wait", wait.as_deref()),
            ],
        ))
    }

    /// NBD request counters per LUN since the server started.
    pub fn io(&self) -> Result<IoReport> {
        self.get("/io")
    }

    pub fn settings(&self) -> Result<Settings> {
        self.get("/settings")
    }

    pub fn update_settings(&self, body: &UpdateSettings) -> Result<Settings> {
        self.send("PATCH", "/settings", body)
    }

    // ------------------------------------------------- replication tokens

    /// Makes a replication token; its secret is in the answer, once.
    pub fn create_peer_token(&self, name: &str) -> Result<PeerTokenInfo> {
        self.send(
            "POST",
            "/peer-tokens",
            &CreatePeerToken { name: name.into() },
        )
    }

    pub fn list_peer_tokens(&self) -> Result<Vec<PeerTokenInfo>> {
        self.get("/peer-tokens")
    }

    pub fn delete_peer_token(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/peer-tokens/{}", encode(name)), None)
            .map(drop)
    }

    // ------------------------------------ replication (a source, for a peer)

    pub fn replication_lun(&self, lun: &str) -> Result<ReplicationLun> {
        self.get(&with_query("/replication/luns", &[("lun", Some(lun))]))
    }

    pub fn take_mirror_snapshot(&self, body: &TakeMirrorSnapshot) -> Result<Vec<SnapshotInfo>> {
        self.send("POST", "/replication/snapshots", body)
    }

    pub fn hold_mirror_snapshot(&self, body: &HoldMirrorSnapshot) -> Result<()> {
        let body = serde_json::to_vec(body).expect("request types serialize");
        self.call("POST", "/replication/hold", Some(body)).map(drop)
    }

    pub fn release_mirror_snapshot(&self, body: &ReleaseMirrorSnapshot) -> Result<()> {
        let body = serde_json::to_vec(body).expect("request types serialize");
        self.call("POST", "/replication/release", Some(body))
            .map(drop)
    }

    /// Asks this server, the old source of a broken mirror, to become its
    /// destination (the body is `mirror::ReverseRequest`).
    pub fn reverse_mirror<B: Serialize>(&self, body: &B) -> Result<MirrorPlan> {
        self.send("POST", "/replication/reverse", body)
    }

    /// A mirror stream (see `wire::stream`), to read as it arrives.
    pub fn replication_stream(
        &self,
        query: &StreamQuery,
        max_bytes: u64,
    ) -> Result<Box<dyn std::io::Read + Send>> {
        let from = query.from.to_string();
        let max = max_bytes.to_string();
        let flatten = query.flatten.to_string();
        let path = with_query(
            "/replication/stream",
            &[
                ("lun", Some(&query.lun)),
                ("base", query.base.as_deref()),
                ("target", Some(&query.target)),
                ("flatten", Some(&flatten)),
                ("from", Some(&from)),
                ("max_bytes", Some(&max)),
            ],
        );
        let response = self.request("GET", &path, None)?;
        if !response.status().is_success() {
            return Err(self.error_of(response, "GET", &path));
        }
        Ok(Box::new(response.into_body().into_reader()))
    }

    // --------------------------------------------------------------- peers

    pub fn create_peer(&self, body: &CreatePeer) -> Result<PeerInfo> {
        self.send("POST", "/peers", body)
    }

    pub fn list_peers(&self) -> Result<Vec<PeerInfo>> {
        self.get("/peers")
    }

    pub fn delete_peer(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/peers/{}", encode(name)), None)
            .map(drop)
    }

    // ------------------------------------------------------------- mirrors

    pub fn create_mirror(&self, body: &CreateMirror) -> Result<MirrorInfo> {
        self.send("POST", "/mirrors", body)
    }

    pub fn list_mirrors(&self) -> Result<Vec<MirrorInfo>> {
        self.get("/mirrors")
    }

    pub fn mirror(&self, name: &str) -> Result<MirrorInfo> {
        self.get(&format!("/mirrors/{}", encode(name)))
    }

    pub fn delete_mirror(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/mirrors/{}", encode(name)), None)
            .map(drop)
    }

    /// `update`, `abort` or `break`: answers the relationship as it is now.
    pub fn mirror_action(&self, action: &str, name: &str) -> Result<MirrorInfo> {
        let body = MirrorAction {
            name: name.into(),
            force: false,
            dry_run: false,
            url: None,
            ca_cert: None,
        };
        self.send("POST", &format!("/mirrors/{action}"), &body)
    }

    /// `resync` or `reverse`: the plan, done or not.
    pub fn mirror_plan_action(&self, action: &str, body: &MirrorAction) -> Result<MirrorPlan> {
        self.send("POST", &format!("/mirrors/{action}"), body)
    }

    // ------------------------------------------------------------ plumbing

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None).and_then(parse)
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("POST", path, None).and_then(parse)
    }

    fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).expect("request types serialize");
        self.call(method, path, Some(body)).and_then(parse)
    }

    /// Sends one request; the response, whatever its status.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let invalid =
            |e: ureq::http::Error| ClientError::local(format!("invalid request URL {url:?}: {e}"));
        let sent = match body {
            Some(body) => self.agent.run(
                request
                    .header("content-type", "application/json")
                    .body(body)
                    .map_err(invalid)?,
            ),
            None => self.agent.run(request.body(()).map_err(invalid)?),
        };
        sent.map_err(|e| {
            ClientError::local(match e {
                ureq::Error::Timeout(_) => format!(
                    "the blockfork server at {} did not answer in time ({e})",
                    self.server
                ),
                e => format!(
                    "cannot reach blockfork server at {}: {e}; is `blockfork serve` running?",
                    self.server
                ),
            })
        })
    }

    fn read_text(&self, response: &mut ureq::http::Response<ureq::Body>) -> Result<String> {
        response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| {
                ClientError::local(format!(
                    "cannot read the response of the blockfork server at {}: {e}",
                    self.server
                ))
            })
    }

    /// The error an unsuccessful response carries.
    fn error_of(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
        method: &str,
        path: &str,
    ) -> ClientError {
        let status = response.status();
        let text = match self.read_text(&mut response) {
            Ok(text) => text,
            Err(e) => return e,
        };
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(error) => ClientError {
                status: Some(status.as_u16()),
                code: Some(error.code),
                message: error.message,
            },
            Err(_) => ClientError {
                status: Some(status.as_u16()),
                code: None,
                message: format!(
                    "the server at {} answered {method} {path} with HTTP {status} and no blockfork error; is it a blockfork server?",
                    self.server
                ),
            },
        }
    }

    /// One API call: the response's JSON (`Null` for none), or the error
    /// to show, which for an API error is the server's own sentence.
    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<serde_json::Value> {
        let mut response = self.request(method, path, body)?;
        if !response.status().is_success() {
            return Err(self.error_of(response, method, path));
        }
        let text = self.read_text(&mut response)?;
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            ClientError::local(format!(
                "the server at {} answered {method} {path} with something that is not JSON ({e}); is it a blockfork server?",
                self.server
            ))
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).map_err(|e| {
        ClientError::local(format!("cannot read --ca-cert {}: {e}", path.display()))
    })?;
    parse_certs(&pem, &format!("--ca-cert {}", path.display()))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let certs = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::local(format!("{what} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::local(format!(
            "{what} holds no PEM certificate"
        )));
    }
    Ok(certs.into_iter().map(|c| c.to_owned()).collect())
}

/// A response as the type the operation answers.
fn parse<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        ClientError::local(format!(
            "the server's response has an unexpected shape ({e}); is the server the same version as this client?"
        ))
    })
}

fn lun_path(name: &str) -> String {
    format!("/luns/{}", encode(name))
}

fn igroup_path(name: &str, rest: &str) -> String {
    format!("/igroups/{}{rest}", encode(name))
}

fn snapshot_path(lun: &str, snapshot: &str, action: &str) -> String {
    format!(
        "/snapshots/{}{action}?lun={}",
        encode(snapshot),
        encode(lun)
    )
}

/// `path` with the given query parameters (those that are `Some`).
fn with_query(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut out = path.to_string();
    for (key, value) in params {
        if let Some(value) = value {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(key);
            out.push('=');
            out.push_str(&encode(value));
        }
    }
    out
}

/// Percent-encodes everything but `[A-Za-z0-9_-]`, '/' and '.' included:
/// a LUN name is then one path segment that no client or proxy normalizes
/// (think "a/../b"), and the server decodes it back.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_segment() {
        assert_eq!(encode("vol0/db"), "vol0%2Fdb");
        assert_eq!(encode("a/../b"), "a%2F%2E%2E%2Fb");
        assert_eq!(encode("x y?&=#"), "x%20y%3F%26%3D%23");
        assert_eq!(encode("ok_-9"), "ok_-9");
        assert_eq!(
            snapshot_path("vol0/db", "nightly", "/restore"),
            "/snapshots/nightly/restore?lun=vol0%2Fdb"
        );
        assert_eq!(
            with_query("/lun-maps", &[("lun", Some("a/b")), ("igroup", Some("g"))]),
            "/lun-maps?lun=a%2Fb&igroup=g"
        );
        assert_eq!(with_query("/luns", &[("prefix", None)]), "/luns");
    }

    #[test]
    fn a_bad_url_is_refused() {
        let err = Client::new("127.0.0.1:8080", None, None)
            .err()
            .expect("refused");
        assert!(err.message.contains("http://"), "{err}");
        assert_eq!(err.status, None);
    }
}
