//! Transmission phase. One loop reads requests and starts each as its own
//! task; replies come back over a channel to one writer, in completion
//! order. Reader and writer run as two futures of the connection's task, so
//! aborting the connection stops both.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::{Export, IoError, StatusExtent};
use crate::handshake::Negotiated;
use crate::payload::{Payload, Pool};
use crate::poll::Idle;
use crate::proto::*;
use crate::wire::{self, Request};
use crate::ConnError;

/// What the export and the handshake fixed for this connection.
struct Ctx {
    export: Arc<dyn Export>,
    size: u64,
    read_only: bool,
    structured: bool,
    meta_context: Option<u32>,
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        no_hole: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        req_one: bool,
    },
    /// A prefetch hint; accepted and ignored (some clients send it unasked).
    Cache,
}

impl Command {
    /// FLUSH, FUA and big requests may block for long: give them the
    /// blocking pool. Small ones run inline, saving a thread hand-off.
    fn needs_blocking_pool(&self) -> bool {
        match *self {
            Command::Flush => true,
            Command::Cache => false,
            Command::Write { fua: true, .. }
            | Command::Trim { fua: true, .. }
            | Command::WriteZeroes { fua: true, .. } => true,
            Command::Read { length, .. }
            | Command::Write { length, .. }
            | Command::Trim { length, .. }
            | Command::WriteZeroes { length, .. }
            | Command::BlockStatus { length, .. } => length > INLINE_REQUEST_BYTES_MAX,
        }
    }
}

/// A request refused before reaching the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub errno: u32,
    pub message: String,
}

fn reject(errno: u32, message: impl Into<String>) -> Rejection {
    Rejection {
        errno,
        message: message.into(),
    }
}

/// Checks a request against the export, following the spec's choice of
/// errors: EINVAL for bad flags, unknown commands and reads/trims/status
/// past the end; ENOSPC for writes past the end; EPERM for writes to a
/// read-only export.
pub(crate) fn check_request(
    req: &Request,
    size: u64,
    read_only: bool,
    meta_context: Option<u32>,
) -> Result<Command, Rejection> {
    // FUA is valid on every command once SEND_FUA is advertised.
    let allowed = CMD_FLAG_FUA
        | match req.command {
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Err(reject(
            EINVAL,
            format!(
                "unsupported flags {:#x} for command {}",
                req.flags & !allowed,
                req.command
            ),
        ));
    }
    let (offset, length) = (req.offset, req.length);
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let in_bounds = offset
        .checked_add(u64::from(length))
        .is_some_and(|end| end <= size);
    let past_end = || format!("range {offset}+{length} exceeds export size {size}");
    let writing = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writing && read_only {
        return Err(reject(EPERM, "export is read-only"));
    }
    match req.command {
        CMD_READ if length > REQUEST_BYTES_MAX => Err(reject(
            EINVAL,
            format!("read of {length} bytes exceeds the maximum of {REQUEST_BYTES_MAX}"),
        )),
        CMD_WRITE if length > REQUEST_BYTES_MAX => Err(reject(
            EINVAL,
            format!("write of {length} bytes exceeds the maximum of {REQUEST_BYTES_MAX}"),
        )),
        CMD_READ | CMD_TRIM | CMD_BLOCK_STATUS | CMD_CACHE if !in_bounds => {
            Err(reject(EINVAL, past_end()))
        }
        CMD_WRITE | CMD_WRITE_ZEROES if !in_bounds => Err(reject(ENOSPC, past_end())),
        CMD_READ => Ok(Command::Read { offset, length }),
        CMD_WRITE => Ok(Command::Write {
            offset,
            length,
            fua,
        }),
        CMD_FLUSH => Ok(Command::Flush),
        CMD_TRIM => Ok(Command::Trim {
            offset,
            length,
            fua,
        }),
        CMD_WRITE_ZEROES => Ok(Command::WriteZeroes {
            offset,
            length,
            no_hole: req.flags & CMD_FLAG_NO_HOLE != 0,
            fua,
        }),
        CMD_BLOCK_STATUS if meta_context.is_none() => Err(reject(
            EINVAL,
            "no metadata context selected (SET_META_CONTEXT base:allocation)",
        )),
        // Zero-length status has no valid answer (descriptors are nonzero).
        CMD_BLOCK_STATUS if length == 0 => Err(reject(EINVAL, "block status of zero length")),
        CMD_BLOCK_STATUS => Ok(Command::BlockStatus {
            offset,
            length,
            req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
        }),
        CMD_CACHE => Ok(Command::Cache),
        other => Err(reject(EINVAL, format!("unknown command {other}"))),
    }
}

/// What a successful backend call produced.
enum Outcome {
    Done,
    /// The request's payload now holds the data read.
    Data,
    Extents(Vec<StatusExtent>),
}

/// Calls the backend with the request's payload: the data of a WRITE, the
/// buffer a READ fills. A panic is not caught: a backend that panicked may
/// have left its state half changed, and serving on from it would be worse
/// than the process ending (release builds abort; see DESIGN.md, "Failing
/// loudly").
fn execute(export: &dyn Export, cmd: Command, payload: &mut [u8]) -> Result<Outcome, IoError> {
    // A wrong size is this crate's bug, not the backend's.
    let payload_len = match cmd {
        Command::Read { length, .. } | Command::Write { length, .. } => length as usize,
        _ => 0,
    };
    assert_eq!(payload.len(), payload_len, "payload size for {cmd:?}");
    match cmd {
        Command::Read { offset, .. } => export.read(offset, payload).map(|_| Outcome::Data),
        Command::Write { offset, fua, .. } => {
            export.write(offset, payload, fua).map(|_| Outcome::Done)
        }
        Command::Flush => export.flush().map(|_| Outcome::Done),
        Command::Trim {
            offset,
            length,
            fua,
        } => export
            .trim(offset, length.into(), fua)
            .map(|_| Outcome::Done),
        // FAST_ZERO needs no check: the backend zeroes in metadata, which is
        // always faster than writing.
        Command::WriteZeroes {
            offset,
            length,
            no_hole,
            fua,
        } => export
            .write_zeroes(offset, length.into(), no_hole, fua)
            .map(|_| Outcome::Done),
        Command::BlockStatus { offset, length, .. } => export
            .block_status(offset, length.into())
            .map(Outcome::Extents),
        Command::Cache => Ok(Outcome::Done),
    }
}

/// One reply on its way to the writer. It carries the request's permits so
/// the in-flight limits count a request until its reply is on the wire, and
/// its data goes back to the connection's pool only then.
struct Reply {
    head: Vec<u8>,
    data: Payload,
    _permits: Permits,
}

struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

fn error_reply(ctx: &Ctx, cookie: u64, errno: u32, message: &str, permits: Permits) -> Reply {
    let head = if ctx.structured {
        wire::encode_error_chunk(cookie, errno, message)
    } else {
        wire::encode_simple_reply(errno, cookie).to_vec()
    };
    Reply {
        head,
        data: Payload::empty(),
        _permits: permits,
    }
}

fn encode_outcome(
    ctx: &Ctx,
    cookie: u64,
    cmd: Command,
    result: Result<Outcome, IoError>,
    payload: Payload,
    permits: Permits,
) -> Reply {
    let ok = |head: Vec<u8>, data: Payload, permits| Reply {
        head,
        data,
        _permits: permits,
    };
    match result {
        Err(e) => {
            debug!(?cmd, error = ?e, "request failed");
            error_reply(
                ctx,
                cookie,
                wire::errno_of(&e),
                &wire::message_of(&e),
                permits,
            )
        }
        // With structured replies a simple reply is still allowed for any
        // command but READ, as long as it has no payload.
        Ok(Outcome::Done) => ok(
            wire::encode_simple_reply(0, cookie).to_vec(),
            Payload::empty(),
            permits,
        ),
        Ok(Outcome::Data) => {
            let data = payload;
            let Command::Read { offset, .. } = cmd else {
                return error_reply(
                    ctx,
                    cookie,
                    EIO,
                    "internal error: data for a non-read",
                    permits,
                );
            };
            if !ctx.structured {
                ok(wire::encode_simple_reply(0, cookie).to_vec(), data, permits)
            } else if data.is_empty() {
                ok(wire::encode_none_chunk(cookie).to_vec(), data, permits)
            } else {
                // The whole buffer is read before sending, so no error can
                // follow: one final data chunk is enough.
                ok(
                    wire::encode_offset_data_head(cookie, offset, data.len() as u32),
                    data,
                    permits,
                )
            }
        }
        Ok(Outcome::Extents(extents)) => {
            let (
                Command::BlockStatus {
                    length, req_one, ..
                },
                Some(id),
            ) = (cmd, ctx.meta_context)
            else {
                return error_reply(
                    ctx,
                    cookie,
                    EIO,
                    "internal error: extents for a non-status",
                    permits,
                );
            };
            let descriptors = wire::clamp_extents(&extents, length, req_one);
            if descriptors.is_empty() {
                return error_reply(ctx, cookie, EIO, "backend returned no extents", permits);
            }
            ok(
                wire::encode_block_status_chunk(cookie, id, &descriptors),
                Payload::empty(),
                permits,
            )
        }
    }
}

/// Runs one request to completion and queues its reply.
fn spawn_request(
    ctx: Arc<Ctx>,
    cookie: u64,
    cmd: Command,
    mut payload: Payload,
    permits: Permits,
    tx: mpsc::UnboundedSender<Reply>,
) {
    tokio::spawn(async move {
        let (result, payload) = if cmd.needs_blocking_pool() {
            let export = ctx.export.clone();
            tokio::task::spawn_blocking(move || {
                let result = execute(&*export, cmd, &mut payload);
                (result, payload)
            })
            .await
            .unwrap_or_else(|e| {
                let failed = Err(IoError::Io(format!("backend task failed: {e}")));
                (failed, Payload::empty())
            })
        } else {
            (execute(&*ctx.export, cmd, &mut payload), payload)
        };
        // The writer may be gone (client hung up); the reply is then dropped.
        let _ = tx.send(encode_outcome(&ctx, cookie, cmd, result, payload, permits));
    });
}

/// Why the reader stopped.
enum End {
    Disconnect,
    Eof,
    Shutdown,
}

/// Serves requests until DISC, EOF, a protocol violation, a write error or
/// shutdown; in every case the requests already read are finished and
/// answered before returning.
pub(crate) async fn transmit<R, W>(
    mut reader: R,
    writer: W,
    neg: Negotiated,
    idle: &Idle,
    shutdown: &CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ctx = Arc::new(Ctx {
        size: neg.export.size(),
        read_only: neg.export.read_only(),
        export: neg.export,
        structured: neg.structured,
        meta_context: neg.meta_context,
    });
    debug!(export = %neg.name, structured = ctx.structured, "transmission started");
    // Unbounded is safe: every queued reply holds a request permit, so at
    // most REQUESTS_IN_FLIGHT_MAX replies are ever queued.
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer_failed = CancellationToken::new();

    let read_loop = async {
        // Moved in so the channel closes when the loop ends; the writer then
        // finishes once every running request has sent its reply.
        let tx = tx;
        let requests = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        // Per connection, so reused bytes never cross between clients.
        let pool = Pool::new();
        let bytes = Arc::new(Semaphore::new(REQUEST_BYTES_IN_FLIGHT_MAX as usize));
        loop {
            let request_permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(End::Shutdown),
                _ = writer_failed.cancelled() => return Ok(End::Eof),
                p = requests.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let mut raw = [0u8; REQUEST_HEADER_BYTES];
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(End::Shutdown),
                _ = writer_failed.cancelled() => return Ok(End::Eof),
                r = reader.read_exact(&mut raw) => r,
            };
            match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(End::Eof),
                Err(e) => return Err(ConnError::Io(e)),
            }
            let req = wire::parse_request(&raw)?;
            if req.command == CMD_DISC {
                return Ok(End::Disconnect);
            }
            // Every other request gets exactly one reply.
            idle.started();

            // Payload bytes held by this request: the write data now, or the
            // read buffer once it runs.
            let payload_len = match req.command {
                CMD_READ | CMD_WRITE if req.length <= REQUEST_BYTES_MAX => req.length,
                _ => 0,
            };
            let bytes_permit = bytes
                .clone()
                .acquire_many_owned(payload_len)
                .await
                .expect("semaphore is never closed");
            let permits = Permits {
                _request: request_permit,
                _bytes: bytes_permit,
            };

            let mut payload = Payload::empty();
            if req.command == CMD_WRITE {
                if req.length > REQUEST_BYTES_MAX {
                    // Reading (and discarding) up to 4 GiB a client chose to
                    // send is a denial of service the spec lets us refuse:
                    // answer with an error, then drop the connection.
                    let msg = format!(
                        "write of {} bytes exceeds the maximum of {REQUEST_BYTES_MAX}",
                        req.length
                    );
                    let _ = tx.send(error_reply(&ctx, req.cookie, EINVAL, &msg, permits));
                    return Err(ConnError::Protocol(msg));
                }
                // Read even if the write will be refused: the payload is on
                // the wire and must be consumed to find the next request.
                payload = pool.take(req.length as usize);
                let read = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(End::Shutdown),
                    r = reader.read_exact(&mut payload) => r,
                };
                match read {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(ConnError::Protocol(
                            "connection closed inside a write payload".into(),
                        ))
                    }
                    Err(e) => return Err(ConnError::Io(e)),
                }
            }

            match check_request(&req, ctx.size, ctx.read_only, ctx.meta_context) {
                Ok(cmd) => {
                    if let Command::Read { length, .. } = cmd {
                        // Taken here, counted by the bytes permit above.
                        payload = pool.take(length as usize);
                    }
                    spawn_request(ctx.clone(), req.cookie, cmd, payload, permits, tx.clone())
                }
                Err(r) => {
                    debug!(cookie = req.cookie, command = req.command, message = %r.message, "request refused");
                    let _ = tx.send(error_reply(&ctx, req.cookie, r.errno, &r.message, permits));
                }
            }
        }
    };

    let write_loop = async {
        let result = write_replies(BufWriter::new(writer), rx, idle).await;
        if result.is_err() {
            writer_failed.cancel();
        }
        result
    };

    let (read_result, write_result) = tokio::join!(read_loop, write_loop);
    if let Err(e) = &write_result {
        warn!(error = %e, "writing replies failed");
    }
    match read_result? {
        End::Disconnect => debug!("client disconnected"),
        End::Eof => debug!("client closed the connection"),
        End::Shutdown => debug!("server shutdown"),
    }
    write_result.map_err(ConnError::Io)
}

/// Writes replies as they come; flushes when no more are queued, so a burst
/// of small replies goes out in few packets but none waits.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    idle: &Idle,
) -> std::io::Result<()> {
    let mut unflushed = 0;
    while let Some(reply) = rx.recv().await {
        w.write_all(&reply.head).await?;
        w.write_all(&reply.data).await?;
        // Dropping the reply releases its permits only now that it is sent.
        drop(reply);
        unflushed += 1;
        if rx.is_empty() {
            w.flush().await?;
            // Only now can the client have every answer, and the reader
            // may poll for what comes next.
            idle.answered(std::mem::take(&mut unflushed));
        }
    }
    w.flush().await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn errno(r: Result<Command, Rejection>) -> u32 {
        r.expect_err("should be refused").errno
    }

    const SIZE: u64 = 1 << 20;

    #[test]
    fn valid_commands() {
        let ok = |r: Request| check_request(&r, SIZE, false, Some(1)).unwrap();
        assert_eq!(
            ok(req(CMD_READ, 0, 0, 4096)),
            Command::Read {
                offset: 0,
                length: 4096
            }
        );
        assert_eq!(
            ok(req(CMD_WRITE, CMD_FLAG_FUA, SIZE - 1, 1)),
            Command::Write {
                offset: SIZE - 1,
                length: 1,
                fua: true
            }
        );
        assert_eq!(ok(req(CMD_FLUSH, 0, 0, 0)), Command::Flush);
        assert_eq!(
            ok(req(
                CMD_WRITE_ZEROES,
                CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                0,
                SIZE as u32
            )),
            Command::WriteZeroes {
                offset: 0,
                length: SIZE as u32,
                no_hole: true,
                fua: false
            }
        );
        assert_eq!(
            ok(req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 10)),
            Command::BlockStatus {
                offset: 0,
                length: 10,
                req_one: true
            }
        );
        // Zero-length read/write at the very end is in bounds.
        assert!(check_request(&req(CMD_READ, 0, SIZE, 0), SIZE, false, None).is_ok());
    }

    #[test]
    fn out_of_range() {
        let check = |r: Request| check_request(&r, SIZE, false, Some(1));
        assert_eq!(errno(check(req(CMD_READ, 0, SIZE, 1))), EINVAL);
        assert_eq!(errno(check(req(CMD_READ, 0, u64::MAX, 2))), EINVAL);
        assert_eq!(errno(check(req(CMD_TRIM, 0, SIZE - 1, 2))), EINVAL);
        assert_eq!(errno(check(req(CMD_BLOCK_STATUS, 0, SIZE, 1))), EINVAL);
        assert_eq!(errno(check(req(CMD_WRITE, 0, SIZE, 1))), ENOSPC);
        assert_eq!(
            errno(check(req(CMD_WRITE_ZEROES, 0, u64::MAX, u32::MAX))),
            ENOSPC
        );
        assert_eq!(
            errno(check(req(CMD_READ, 0, 0, REQUEST_BYTES_MAX + 1))),
            EINVAL
        );
    }

    #[test]
    fn refused_requests() {
        let check = |r: Request, ro, meta| check_request(&r, SIZE, ro, meta);
        for cmd in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(errno(check(req(cmd, 0, 0, 1), true, None)), EPERM);
        }
        assert!(check(req(CMD_READ, 0, 0, 1), true, None).is_ok());
        assert_eq!(
            errno(check(req(CMD_BLOCK_STATUS, 0, 0, 1), false, None)),
            EINVAL
        );
        assert_eq!(
            errno(check(req(CMD_BLOCK_STATUS, 0, 0, 0), false, Some(1))),
            EINVAL
        );
        assert_eq!(errno(check(req(99, 0, 0, 0), false, None)), EINVAL);
        // Flags that do not belong to the command, and DF (not offered).
        assert_eq!(
            errno(check(req(CMD_READ, CMD_FLAG_DF, 0, 1), false, None)),
            EINVAL
        );
        assert_eq!(
            errno(check(req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1), false, None)),
            EINVAL
        );
        assert_eq!(
            errno(check(req(CMD_READ, 0x8000, 0, 1), false, None)),
            EINVAL
        );
        // FUA is accepted on any command.
        assert!(check(req(CMD_READ, CMD_FLAG_FUA, 0, 1), false, None).is_ok());
    }

    #[test]
    fn blocking_pool_policy() {
        assert!(Command::Flush.needs_blocking_pool());
        assert!(Command::Write {
            offset: 0,
            length: 1,
            fua: true
        }
        .needs_blocking_pool());
        assert!(!Command::Read {
            offset: 0,
            length: INLINE_REQUEST_BYTES_MAX
        }
        .needs_blocking_pool());
        assert!(Command::Read {
            offset: 0,
            length: INLINE_REQUEST_BYTES_MAX + 1
        }
        .needs_blocking_pool());
    }
}
