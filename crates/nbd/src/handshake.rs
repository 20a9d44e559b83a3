//! Fixed-newstyle handshake: greeting, client flags, then option haggling
//! until the client picks an export (EXPORT_NAME or GO), aborts, or hangs up.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, info, warn};

use crate::backend::{Backend, ClientInfo, Export, OpenError};
use crate::proto::*;
use crate::tls::{TlsSettings, Transport};
use crate::wire;
use crate::ConnError;

/// What the handshake agreed on; everything transmission needs.
pub(crate) struct Negotiated {
    pub export: Arc<dyn Export>,
    pub name: String,
    pub structured: bool,
    /// Id of `base:allocation` if the client selected it for this export.
    pub meta_context: Option<u32>,
}

/// Per-connection state built up by the options.
#[derive(Default)]
struct State {
    no_zeroes: bool,
    structured: bool,
    /// Export name for which SET_META_CONTEXT selected `base:allocation`.
    meta_for: Option<String>,
}

/// Outcome of one option.
enum Step {
    Continue,
    Close,
    Transmit(Negotiated),
}

/// The transmission flags for an export. Everything except READ_ONLY is
/// constant: the backend supports every command, zeroes in metadata (so a
/// fast zero is always fast), and its flush covers all connections.
pub(crate) fn transmission_flags(read_only: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_SEND_FAST_ZERO
        | FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= FLAG_READ_ONLY;
    }
    flags
}

/// Runs the handshake. `Ok(None)` means the session ended cleanly without
/// entering transmission (ABORT). Cancel-safe: the caller drops it on
/// server shutdown and at the handshake time limit.
///
/// With `tls`, NBD_OPT_STARTTLS upgrades `stream` in place and the option
/// loop goes on over TLS, with the negotiation so far forgotten (the spec
/// forbids carrying plain-text state into the TLS session); `client` then
/// says `tls` and carries the certificate's CN for the backend.
pub(crate) async fn negotiate<S>(
    stream: &mut BufReader<Transport<S>>,
    backend: &Arc<dyn Backend>,
    client: &mut ClientInfo,
    tls: Option<&TlsSettings>,
) -> Result<Option<Negotiated>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&wire::encode_greeting()).await?;
    stream.flush().await?;

    let mut raw = [0u8; 4];
    stream.read_exact(&mut raw).await?;
    // A client that does not set FIXED_NEWSTYLE still gets fixed-newstyle
    // replies (the spec allows it): only EXPORT_NAME is then valid anyway.
    let flags = wire::parse_client_flags(raw)?;
    let mut state = State {
        no_zeroes: flags.no_zeroes,
        ..State::default()
    };
    let tls_required = tls.is_some_and(TlsSettings::required);

    loop {
        let mut raw = [0u8; 16];
        stream.read_exact(&mut raw).await?;
        let header = wire::parse_option_header(&raw)?;
        if header.length > OPTION_BYTES_MAX {
            if header.option != OPT_EXPORT_NAME {
                let msg = format!("option data of {} bytes is too large", header.length);
                reply(stream, header.option, REP_ERR_TOO_BIG, msg.as_bytes()).await?;
            }
            return Err(ConnError::Protocol(format!(
                "option {} with {} bytes of data",
                header.option, header.length
            )));
        }
        let mut data = vec![0u8; header.length as usize];
        stream.read_exact(&mut data).await?;
        let tls_active = stream.get_ref().is_tls();

        let step = match header.option {
            OPT_ABORT => {
                // Data is to be ignored; the client may already be gone, so a
                // failed ACK is not an error.
                let _ = reply(stream, OPT_ABORT, REP_ACK, &[]).await;
                Step::Close
            }
            OPT_STARTTLS => match tls {
                // NOTLS mode, where POLICY is the permitted answer.
                None => {
                    let msg = b"TLS is not enabled on this server";
                    reply(stream, OPT_STARTTLS, REP_ERR_POLICY, msg).await?;
                    Step::Continue
                }
                Some(_) if tls_active => {
                    let msg = b"TLS is already active";
                    reply(stream, OPT_STARTTLS, REP_ERR_INVALID, msg).await?;
                    Step::Continue
                }
                Some(_) if !data.is_empty() => {
                    let msg = b"STARTTLS takes no data";
                    reply(stream, OPT_STARTTLS, REP_ERR_INVALID, msg).await?;
                    Step::Continue
                }
                Some(settings) => {
                    start_tls(stream, settings, client).await?;
                    // Nothing negotiated in plain text may carry over.
                    state.structured = false;
                    state.meta_for = None;
                    Step::Continue
                }
            },
            // FORCEDTLS: nothing but STARTTLS and ABORT before TLS. EXPORT_NAME
            // has no error reply, so the spec has the session end instead.
            OPT_EXPORT_NAME if tls_required && !tls_active => {
                return Err(ConnError::Refused(
                    "NBD_OPT_EXPORT_NAME before STARTTLS; this server requires TLS".to_string(),
                ));
            }
            option if tls_required && !tls_active => {
                let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                reply(stream, option, REP_ERR_TLS_REQD, msg).await?;
                Step::Continue
            }
            OPT_EXPORT_NAME => export_name(stream, backend, client, &state, &data).await?,
            OPT_LIST => list(stream, backend, client, &data).await?,
            OPT_INFO | OPT_GO => {
                info_or_go(stream, backend, client, &state, header.option, &data).await?
            }
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    state.structured = true;
                    reply(stream, header.option, REP_ACK, &[]).await?;
                } else {
                    let msg = b"STRUCTURED_REPLY takes no data";
                    reply(stream, header.option, REP_ERR_INVALID, msg).await?;
                }
                Step::Continue
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(stream, backend, client, &mut state, header.option, &data).await?
            }
            other => {
                debug!(option = other, "unsupported option");
                reply(stream, other, REP_ERR_UNSUP, b"option not supported").await?;
                Step::Continue
            }
        };
        match step {
            Step::Continue => {}
            Step::Close => return Ok(None),
            Step::Transmit(n) => return Ok(Some(n)),
        }
    }
}

/// Acknowledges STARTTLS and runs the TLS handshake on the connection.
async fn start_tls<S>(
    stream: &mut BufReader<Transport<S>>,
    settings: &TlsSettings,
    client: &mut ClientInfo,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A client must wait for the ACK before it says anything more. Bytes
    // already buffered were sent in plain text before that; feeding them to
    // the TLS session would let whoever injected them speak inside it.
    if !stream.buffer().is_empty() {
        return Err(ConnError::Protocol(format!(
            "{} bytes sent behind NBD_OPT_STARTTLS before its reply",
            stream.buffer().len()
        )));
    }
    reply(stream, OPT_STARTTLS, REP_ACK, &[]).await?;
    let peer = peer_name(client);
    match stream.get_mut().start_tls(settings.acceptor()).await {
        Ok(cert_cn) => {
            info!(%peer, cert_cn = cert_cn.as_deref().unwrap_or("-"), "nbd TLS established");
            client.tls = true;
            client.cert_cn = cert_cn;
            Ok(())
        }
        Err(e) => {
            warn!(%peer, error = %e, "nbd TLS handshake failed");
            Err(ConnError::Tls(e))
        }
    }
}

/// How a client is named in logs.
pub(crate) fn peer_name(client: &ClientInfo) -> String {
    match client.peer {
        Some(addr) => addr.to_string(),
        None => "unix".to_string(),
    }
}

async fn reply<S>(stream: &mut S, option: u32, reply_type: u32, data: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream
        .write_all(&wire::encode_option_reply(option, reply_type, data))
        .await?;
    stream.flush().await
}

/// Runs a blocking backend call off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T, ConnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnError::Protocol(format!("backend call failed: {e}")))
}

async fn open(
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    name: &str,
) -> Result<Arc<dyn Export>, ConnError> {
    let (b, c, n) = (backend.clone(), client.clone(), name.to_string());
    blocking(move || b.open(&n, &c))
        .await?
        .map_err(|e| match e {
            OpenError::Unknown(m) => ConnError::Refused(format!("unknown export {name:?}: {m}")),
            OpenError::Denied(m) => ConnError::Refused(format!("export {name:?} denied: {m}")),
        })
}

/// Like `open`, but keeps the reply type and message for option replies.
async fn open_for_reply(
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    name: &str,
) -> Result<Result<Arc<dyn Export>, (u32, String)>, ConnError> {
    let (b, c, n) = (backend.clone(), client.clone(), name.to_string());
    Ok(blocking(move || b.open(&n, &c))
        .await?
        .map_err(|e| match e {
            OpenError::Unknown(m) => (REP_ERR_UNKNOWN, format!("unknown export {name:?}: {m}")),
            OpenError::Denied(m) => (
                REP_ERR_POLICY,
                format!("access to export {name:?} denied: {m}"),
            ),
        }))
}

fn negotiated(state: &State, export: Arc<dyn Export>, name: String) -> Negotiated {
    let meta_context =
        (state.meta_for.as_deref() == Some(name.as_str())).then_some(META_BASE_ALLOCATION_ID);
    Negotiated {
        export,
        name,
        structured: state.structured,
        meta_context,
    }
}

/// NBD_OPT_EXPORT_NAME cannot return an error: any failure closes the session.
async fn export_name<S>(
    stream: &mut S,
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    state: &State,
    data: &[u8],
) -> Result<Step, ConnError>
where
    S: AsyncWrite + Unpin,
{
    let name = wire::to_string(data)?;
    let export = open(backend, client, &name).await?;
    let flags = transmission_flags(export.read_only());
    let out = wire::encode_export_name_reply(export.size(), flags, state.no_zeroes);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(Step::Transmit(negotiated(state, export, name)))
}

async fn list<S>(
    stream: &mut S,
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    data: &[u8],
) -> Result<Step, ConnError>
where
    S: AsyncWrite + Unpin,
{
    if !data.is_empty() {
        reply(stream, OPT_LIST, REP_ERR_INVALID, b"LIST takes no data").await?;
        return Ok(Step::Continue);
    }
    let (b, c) = (backend.clone(), client.clone());
    let exports = blocking(move || b.list(&c)).await?;
    let mut out = Vec::new();
    for e in &exports {
        let entry = wire::encode_server_entry(&e.name, &e.description);
        out.extend_from_slice(&wire::encode_option_reply(OPT_LIST, REP_SERVER, &entry));
    }
    out.extend_from_slice(&wire::encode_option_reply(OPT_LIST, REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(Step::Continue)
}

async fn info_or_go<S>(
    stream: &mut S,
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    state: &State,
    option: u32,
    data: &[u8],
) -> Result<Step, ConnError>
where
    S: AsyncWrite + Unpin,
{
    let req = match wire::parse_info_request(data) {
        Ok(r) => r,
        Err(e) => {
            reply(stream, option, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
            return Ok(Step::Continue);
        }
    };
    let export = match open_for_reply(backend, client, &req.name).await? {
        Ok(e) => e,
        Err((rep, msg)) => {
            debug!(%msg, "export refused");
            reply(stream, option, rep, msg.as_bytes()).await?;
            return Ok(Step::Continue);
        }
    };

    let flags = transmission_flags(export.read_only());
    let mut out = Vec::new();
    let mut info = |payload: Vec<u8>| {
        out.extend_from_slice(&wire::encode_option_reply(option, REP_INFO, &payload))
    };
    info(wire::encode_info_export(export.size(), flags));
    // Sent whether asked or not: harmless to clients that ignore it, and it
    // tells the ones that read it our real maximum payload.
    info(wire::encode_info_block_size(
        BLOCK_SIZE_MIN_BYTES,
        BLOCK_SIZE_PREFERRED_BYTES,
        REQUEST_BYTES_MAX,
    ));
    if req.infos.contains(&INFO_NAME) {
        info(wire::encode_info_string(INFO_NAME, &req.name));
    }
    if req.infos.contains(&INFO_DESCRIPTION) {
        let (b, c, n) = (backend.clone(), client.clone(), req.name.clone());
        let description = blocking(move || {
            b.list(&c)
                .into_iter()
                .find(|e| e.name == n)
                .map(|e| e.description)
        })
        .await?;
        if let Some(d) = description.filter(|d| !d.is_empty()) {
            info(wire::encode_info_string(INFO_DESCRIPTION, &d));
        }
    }
    out.extend_from_slice(&wire::encode_option_reply(option, REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;

    if option == OPT_GO {
        Ok(Step::Transmit(negotiated(state, export, req.name)))
    } else {
        Ok(Step::Continue)
    }
}

async fn meta_context<S>(
    stream: &mut S,
    backend: &Arc<dyn Backend>,
    client: &ClientInfo,
    state: &mut State,
    option: u32,
    data: &[u8],
) -> Result<Step, ConnError>
where
    S: AsyncWrite + Unpin,
{
    let setting = option == OPT_SET_META_CONTEXT;
    if setting {
        // SET replaces the selection even when it fails.
        state.meta_for = None;
    }
    if !state.structured {
        let msg = b"negotiate structured replies first";
        reply(stream, option, REP_ERR_INVALID, msg).await?;
        return Ok(Step::Continue);
    }
    let req = match wire::parse_meta_context_request(data) {
        Ok(r) => r,
        Err(e) => {
            reply(stream, option, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
            return Ok(Step::Continue);
        }
    };
    if let Some(bad) = req.queries.iter().find(|q| !q.contains(':')) {
        let msg = format!("query {bad:?} has no namespace");
        reply(stream, option, REP_ERR_INVALID, msg.as_bytes()).await?;
        return Ok(Step::Continue);
    }
    // The contexts are the same for every export, but an unknown or denied
    // export should be reported here rather than at GO.
    if let Err((rep, msg)) = open_for_reply(backend, client, &req.name).await? {
        reply(stream, option, rep, msg.as_bytes()).await?;
        return Ok(Step::Continue);
    }

    let mut out = Vec::new();
    if wire::queries_select_base_allocation(&req.queries, !setting) {
        // LIST replies carry id 0 (reserved); SET gives the real id.
        let id = if setting { META_BASE_ALLOCATION_ID } else { 0 };
        let payload = wire::encode_meta_context(id, META_BASE_ALLOCATION);
        out.extend_from_slice(&wire::encode_option_reply(
            option,
            REP_META_CONTEXT,
            &payload,
        ));
        if setting {
            state.meta_for = Some(req.name);
        }
    }
    out.extend_from_slice(&wire::encode_option_reply(option, REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(Step::Continue)
}
