//! The blocking HTTP client of one server's API.

use super::*;

// --------------------------------------------------------------- client

/// A blocking client of one server's API.
pub(super) struct Client {
    pub(super) server: String,
    pub(super) base: String,
    pub(super) agent: ureq::Agent,
    pub(super) token: Option<String>,
}

impl Client {
    pub(super) fn new(
        server: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Client, String> {
        let trimmed = server.trim_end_matches('/');
        let scheme = ["http://", "https://"]
            .into_iter()
            .find(|s| trimmed.starts_with(s) && trimmed.len() > s.len());
        if scheme.is_none() {
            return Err(format!(
                "--server must be an http:// or https:// URL like http://127.0.0.1:8080, got {server:?}"
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--ca-cert {} is not PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-cert {} holds no PEM certificate",
                    path.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .timeout_global(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .build()
            .into();
        Ok(Client {
            server: trimmed.to_string(),
            base: format!("{trimmed}/api/v1"),
            agent,
            token,
        })
    }

    pub(super) fn get(&self, path: &str) -> Result<Value, String> {
        self.call("GET", path, None)
    }

    pub(super) fn delete(&self, path: &str) -> Result<Value, String> {
        self.call("DELETE", path, None)
    }

    pub(super) fn post_empty(&self, path: &str) -> Result<Value, String> {
        self.call("POST", path, None)
    }

    pub(super) fn send(
        &self,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Value, String> {
        let body = serde_json::to_vec(body).expect("request types serialize");
        self.call(method, path, Some(body))
    }

    /// One API call: the response's JSON (`Null` for none), or the error
    /// to show, which for an API error is the server's own sentence.
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let sent = match body {
            Some(body) => self.agent.run(
                request
                    .header("content-type", "application/json")
                    .body(body)
                    .map_err(|e| format!("invalid request URL {url:?}: {e}"))?,
            ),
            None => self.agent.run(
                request
                    .body(())
                    .map_err(|e| format!("invalid request URL {url:?}: {e}"))?,
            ),
        };
        let mut response = sent.map_err(|e| match e {
            ureq::Error::Timeout(_) => format!(
                "the blockfork server at {} did not answer in time ({e})",
                self.server
            ),
            e => format!(
                "cannot reach blockfork server at {}: {e}; is `blockfork serve` running?",
                self.server
            ),
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| {
                format!(
                    "cannot read the response of the blockfork server at {}: {e}",
                    self.server
                )
            })?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                format!(
                    "the server at {} answered {method} {path} with something that is not JSON ({e}); is it a blockfork server?",
                    self.server
                )
            });
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(error) => Err(error.message),
            Err(_) => Err(format!(
                "the server at {} answered {method} {path} with HTTP {status} and no blockfork error; is it a blockfork server?",
                self.server
            )),
        }
    }
}

pub(super) fn lun_path(name: &str) -> String {
    format!("/luns/{}", encode(name))
}

pub(super) fn split_path(lun: &str) -> String {
    format!("/splits/{}", encode(lun))
}

pub(super) fn snapshot_path(lun: &str, snapshot: &str, action: &str) -> String {
    format!(
        "/snapshots/{}{action}?lun={}",
        encode(snapshot),
        encode(lun)
    )
}

/// Percent-encodes everything but `[A-Za-z0-9_-]`, '/' and '.' included:
/// a LUN name is then one path segment that no client or proxy normalizes
/// (think "a/../b"), and the server decodes it back.
pub(super) fn encode(s: &str) -> String {
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
