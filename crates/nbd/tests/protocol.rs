//! Protocol behaviour over an in-memory stream (and TCP where the listener
//! matters), driven by a raw client so every byte is under test control.

mod common;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd::proto::*;
use nbd::{CancellationToken, ClientInfo, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

struct Conn {
    client: RawClient<DuplexStream>,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

async fn connect_with(backend: MemBackend, client_flags: u32) -> Conn {
    let (client, server_side) = tokio::io::duplex(4 << 20);
    let shutdown = CancellationToken::new();
    let server = Server::new(Arc::new(backend));
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        server
            .serve_connection(server_side, ClientInfo::unix(), token)
            .await
    });
    Conn {
        client: RawClient::start(client, client_flags).await,
        task,
        shutdown,
    }
}

async fn connect() -> Conn {
    connect_with(standard_backend(), FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await
}

/// Asserts the server closed the connection (EOF on read) and its task ended.
async fn assert_closed(conn: Conn) {
    let Conn {
        mut client, task, ..
    } = conn;
    let mut rest = Vec::new();
    client.s.read_to_end(&mut rest).await.unwrap();
    task.await.expect("connection task panicked");
}

fn no_read(_: u64) -> usize {
    0
}

#[tokio::test]
async fn handshake_options() {
    bounded(async {
        let mut c = connect().await;
        let cl = &mut c.client;

        let r = cl.option(OPT_LIST, &[]).await;
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].reply_type, REP_SERVER);
        assert_eq!(&r[0].data[..4], &4u32.to_be_bytes());
        assert_eq!(&r[0].data[4..], b"diska test disk");
        assert_eq!(r[3].reply_type, REP_ACK);
        assert_eq!(
            cl.option(OPT_LIST, b"x").await[0].reply_type,
            REP_ERR_INVALID
        );

        let r = cl.option(OPT_INFO, &info_request("nope", &[])).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply_type, REP_ERR_UNKNOWN);
        assert!(String::from_utf8_lossy(&r[0].data).contains("nope"));
        let r = cl.option(OPT_GO, &info_request("secret", &[])).await;
        assert_eq!(r[0].reply_type, REP_ERR_POLICY);
        let r = cl.option(OPT_GO, b"\x00\x00\x00\x09abc").await;
        assert_eq!(r[0].reply_type, REP_ERR_INVALID);

        assert_eq!(
            cl.option(OPT_STARTTLS, &[]).await[0].reply_type,
            REP_ERR_POLICY
        );
        assert_eq!(
            cl.option(99, b"whatever").await[0].reply_type,
            REP_ERR_UNSUP
        );
        assert_eq!(
            cl.option(OPT_STRUCTURED_REPLY, b"x").await[0].reply_type,
            REP_ERR_INVALID
        );
        let meta = meta_request("disk", &["base:allocation"]);
        assert_eq!(
            cl.option(OPT_SET_META_CONTEXT, &meta).await[0].reply_type,
            REP_ERR_INVALID
        );

        assert_eq!(
            cl.option(OPT_STRUCTURED_REPLY, &[]).await[0].reply_type,
            REP_ACK
        );
        for queries in [&["base:"][..], &[]] {
            let r = cl
                .option(OPT_LIST_META_CONTEXT, &meta_request("disk", queries))
                .await;
            assert_eq!(r.len(), 2, "{queries:?}");
            assert_eq!(r[0].reply_type, REP_META_CONTEXT);
            assert_eq!(&r[0].data[..4], &0u32.to_be_bytes());
            assert_eq!(&r[0].data[4..], b"base:allocation");
        }
        // "base:" selects nothing in SET; unknown namespaces are ignored.
        let r = cl
            .option(OPT_SET_META_CONTEXT, &meta_request("disk", &["base:"]))
            .await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply_type, REP_ACK);
        let r = cl
            .option(
                OPT_SET_META_CONTEXT,
                &meta_request("disk", &["x-foo:bar", "base:allocation"]),
            )
            .await;
        assert_eq!(r.len(), 2);
        assert_eq!(&r[0].data[..4], &META_BASE_ALLOCATION_ID.to_be_bytes());
        let r = cl
            .option(
                OPT_SET_META_CONTEXT,
                &meta_request("nope", &["base:allocation"]),
            )
            .await;
        assert_eq!(r[0].reply_type, REP_ERR_UNKNOWN);
        let r = cl
            .option(OPT_SET_META_CONTEXT, &meta_request("disk", &["nocolon"]))
            .await;
        assert_eq!(r[0].reply_type, REP_ERR_INVALID);

        let r = cl
            .option(
                OPT_INFO,
                &info_request("disk", &[INFO_NAME, INFO_DESCRIPTION]),
            )
            .await;
        let info = |t: u16| {
            r.iter()
                .find(|x| x.reply_type == REP_INFO && x.data[..2] == t.to_be_bytes())
        };
        let export = &info(INFO_EXPORT).unwrap().data;
        assert_eq!(&export[2..10], &(1u64 << 20).to_be_bytes());
        let flags = u16::from_be_bytes([export[10], export[11]]);
        let expected = FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES
            | FLAG_SEND_FAST_ZERO
            | FLAG_CAN_MULTI_CONN;
        assert_eq!(flags, expected);
        let bs = &info(INFO_BLOCK_SIZE).unwrap().data;
        assert_eq!(&bs[2..], &[0, 0, 0, 1, 0, 0, 16, 0, 2, 0, 0, 0]);
        assert_eq!(&info(INFO_NAME).unwrap().data[2..], b"disk");
        assert_eq!(&info(INFO_DESCRIPTION).unwrap().data[2..], b"a test disk");
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);

        let r = cl.option(OPT_INFO, &info_request("ro", &[])).await;
        let export = &r[0].data;
        assert_ne!(
            u16::from_be_bytes([export[10], export[11]]) & FLAG_READ_ONLY,
            0
        );

        assert_eq!(cl.option(OPT_ABORT, &[]).await[0].reply_type, REP_ACK);
        assert_closed(c).await;
    })
    .await
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    bounded(async {
        for (client_flags, reply_len) in [(3u32, 10usize), (1, 134)] {
            let mut c = connect_with(standard_backend(), client_flags).await;
            c.client.send_option(OPT_EXPORT_NAME, b"disk").await;
            let mut r = vec![0u8; reply_len];
            c.client.s.read_exact(&mut r).await.unwrap();
            assert_eq!(&r[..8], &(1u64 << 20).to_be_bytes());
            assert!(r[10..].iter().all(|b| *b == 0));
            // Transmission works right after.
            c.client.send_request(CMD_READ, 0, 7, 0, 4, &[]).await;
            let (reply, data) = c.client.read_reply(|_| 4).await.unwrap();
            assert_eq!(
                reply,
                Reply::Simple {
                    error: 0,
                    cookie: 7
                }
            );
            assert_eq!(data, vec![0x11; 4]);
        }
    })
    .await
}

#[tokio::test]
async fn handshake_violations_close_the_connection() {
    bounded(async {
        // Unknown export with EXPORT_NAME: no way to report, so close.
        let mut c = connect().await;
        c.client.send_option(OPT_EXPORT_NAME, b"nope").await;
        assert_closed(c).await;

        // Option data over the limit: TOO_BIG, then close.
        let mut c = connect().await;
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&(OPTION_BYTES_MAX + 1).to_be_bytes());
        c.client.s.write_all(&m).await.unwrap();
        assert_eq!(
            c.client.read_opt_reply().await.unwrap().reply_type,
            REP_ERR_TOO_BIG
        );
        assert_closed(c).await;

        // Bad option magic.
        let mut c = connect().await;
        c.client.s.write_all(&[0u8; 16]).await.unwrap();
        assert_closed(c).await;

        // Unknown client flags.
        let c = connect_with(standard_backend(), 0x80).await;
        assert_closed(c).await;

        // Client hangs up mid-option.
        let mut c = connect().await;
        c.client.s.write_all(&IHAVEOPT.to_be_bytes()).await.unwrap();
        c.client.s.shutdown().await.unwrap();
        assert_closed(c).await;
    })
    .await
}

#[tokio::test]
async fn simple_replies() {
    bounded(async {
        let backend = standard_backend();
        let disk = backend.export("disk");
        let ro = backend.export("ro");
        let mut c = connect_with(backend, 3).await;
        let (size, _) = c.client.go("disk", false, false).await;
        assert_eq!(size, 1 << 20);
        let cl = &mut c.client;

        cl.send_request(CMD_WRITE, CMD_FLAG_FUA, 1, 20000, 5, b"hello")
            .await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), 0);
        cl.send_request(CMD_READ, 0, 2, 19998, 9, &[]).await;
        let (r, data) = cl.read_reply(|_| 9).await.unwrap();
        assert_eq!(
            r,
            Reply::Simple {
                error: 0,
                cookie: 2
            }
        );
        assert_eq!(&data, b"\x11\x11hello\x11\x11");

        cl.send_request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 3, 0, 8192, &[])
            .await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), 0);
        cl.send_request(CMD_TRIM, 0, 4, 8192, 4096, &[]).await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), 0);
        cl.send_request(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FAST_ZERO,
            5,
            1 << 19,
            1 << 19,
            &[],
        )
        .await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), 0);
        cl.send_request(CMD_FLUSH, 0, 6, 0, 0, &[]).await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), 0);
        let snap = disk.snapshot();
        assert!(snap[..12288].iter().all(|b| *b == 0));
        assert!(snap[12288..20000].iter().all(|b| *b == 0x11));
        assert_eq!(&snap[20000..20005], b"hello");
        assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);

        // Errors the spec chooses: EINVAL past the end for reads, trims and
        // unknown commands/flags; ENOSPC for writes past the end.
        let cases: &[(u16, u16, u64, u32, u32)] = &[
            (CMD_READ, 0, (1 << 20) - 1, 2, EINVAL),
            (CMD_READ, 0, u64::MAX, 1, EINVAL),
            (CMD_TRIM, 0, 1 << 20, 1, EINVAL),
            (CMD_WRITE_ZEROES, 0, 1 << 20, 1, ENOSPC),
            (CMD_BLOCK_STATUS, 0, 0, 1, EINVAL),
            (CMD_READ, 0, 0, REQUEST_BYTES_MAX + 1, EINVAL),
            (CMD_READ, CMD_FLAG_DF, 0, 1, EINVAL),
            (42, 0, 0, 0, EINVAL),
        ];
        for (i, &(cmd, flags, offset, len, errno)) in cases.iter().enumerate() {
            cl.send_request(cmd, flags, 100 + i as u64, offset, len, &[])
                .await;
            let (r, _) = cl.read_reply(no_read).await.unwrap();
            assert_eq!(
                r,
                Reply::Simple {
                    error: errno,
                    cookie: 100 + i as u64
                },
                "case {i}"
            );
        }
        // A write past the end still has its payload consumed.
        cl.send_request(CMD_WRITE, 0, 200, (1 << 20) - 2, 4, b"abcd")
            .await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), ENOSPC);
        cl.send_request(CMD_READ, 0, 201, 20000, 5, &[]).await;
        assert_eq!(cl.read_reply(|_| 5).await.unwrap().1, b"hello");

        cl.send_request(CMD_DISC, 0, 0, 0, 0, &[]).await;
        assert_closed(c).await;
        assert_eq!(ro.snapshot(), vec![0x22; 65536]);
    })
    .await
}

#[tokio::test]
async fn read_only_export_refuses_writes() {
    bounded(async {
        let backend = standard_backend();
        let ro = backend.export("ro");
        let mut c = connect_with(backend, 3).await;
        let (_, flags) = c.client.go("ro", true, false).await;
        assert_ne!(flags & FLAG_READ_ONLY, 0);
        let cl = &mut c.client;
        cl.send_request(CMD_WRITE, 0, 1, 0, 3, b"abc").await;
        cl.send_request(CMD_TRIM, 0, 2, 0, 4096, &[]).await;
        cl.send_request(CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]).await;
        cl.send_request(CMD_READ, 0, 4, 0, 3, &[]).await;
        let mut errors = std::collections::HashMap::new();
        for _ in 0..4 {
            let (r, _) = cl.read_reply(no_read).await.unwrap();
            errors.insert(r.cookie(), r.error());
        }
        assert_eq!(errors[&1], EPERM);
        assert_eq!(errors[&2], EPERM);
        assert_eq!(errors[&3], EPERM);
        assert_eq!(errors[&4], 0);
        assert_eq!(ro.snapshot(), vec![0x22; 65536]);
    })
    .await
}

#[tokio::test]
async fn structured_replies_and_block_status() {
    bounded(async {
        let mut c = connect().await;
        c.client.go("disk", true, true).await;
        let cl = &mut c.client;

        cl.send_request(CMD_READ, 0, 1, 65536 - 2, 4, &[]).await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        let Reply::Chunk {
            flags,
            chunk_type,
            cookie,
            payload,
        } = r
        else {
            panic!("reads must get structured replies")
        };
        assert_eq!(
            (flags, chunk_type, cookie),
            (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1)
        );
        assert_eq!(&payload[..8], &(65536u64 - 2).to_be_bytes());
        assert_eq!(&payload[8..], &[0x11, 0x11, 0, 0]);

        // Zero-length read: a lone NONE chunk.
        cl.send_request(CMD_READ, 0, 2, 0, 0, &[]).await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        assert!(matches!(
            r,
            Reply::Chunk {
                chunk_type: REPLY_TYPE_NONE,
                flags: REPLY_FLAG_DONE,
                ..
            }
        ));

        // Errors are error chunks with a message, reads included.
        cl.send_request(CMD_READ, 0, 3, 1 << 20, 1, &[]).await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        assert_eq!(r.error(), EINVAL);
        let Reply::Chunk {
            chunk_type,
            payload,
            ..
        } = r
        else {
            panic!("structured error expected")
        };
        assert_eq!(chunk_type, REPLY_TYPE_ERROR);
        assert!(String::from_utf8_lossy(&payload[6..]).contains("exceeds export size"));

        // Block status: 64 KiB of data, then a hole reading as zeroes.
        let extents = |payload: &[u8]| -> Vec<(u32, u32)> {
            assert_eq!(&payload[..4], &META_BASE_ALLOCATION_ID.to_be_bytes());
            payload[4..]
                .chunks(8)
                .map(|d| {
                    (
                        u32::from_be_bytes(d[..4].try_into().unwrap()),
                        u32::from_be_bytes(d[4..].try_into().unwrap()),
                    )
                })
                .collect()
        };
        cl.send_request(CMD_BLOCK_STATUS, 0, 4, 0, 1 << 20, &[])
            .await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        let Reply::Chunk {
            chunk_type,
            payload,
            ..
        } = r
        else {
            panic!()
        };
        assert_eq!(chunk_type, REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(extents(&payload), vec![(65536, 0), ((1 << 20) - 65536, 3)]);

        cl.send_request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 5, 4096, 1 << 19, &[])
            .await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        let Reply::Chunk { payload, .. } = r else {
            panic!()
        };
        assert_eq!(extents(&payload), vec![(65536 - 4096, 0)]);

        cl.send_request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 6, 65536, 100, &[])
            .await;
        let (r, _) = cl.read_reply(no_read).await.unwrap();
        let Reply::Chunk { payload, .. } = r else {
            panic!()
        };
        assert_eq!(extents(&payload), vec![(100, 3)]);
    })
    .await
}

#[tokio::test]
async fn block_status_needs_the_same_export_in_set_meta_context() {
    bounded(async {
        let mut c = connect().await;
        let cl = &mut c.client;
        cl.option(OPT_STRUCTURED_REPLY, &[]).await;
        cl.option(
            OPT_SET_META_CONTEXT,
            &meta_request("ro", &["base:allocation"]),
        )
        .await;
        cl.go("disk", false, false).await;
        cl.send_request(CMD_BLOCK_STATUS, 0, 1, 0, 4096, &[]).await;
        assert_eq!(cl.read_reply(no_read).await.unwrap().0.error(), EINVAL);
    })
    .await
}

#[tokio::test]
async fn replies_come_out_of_order() {
    bounded(async {
        let mut disk = MemExport::new(1 << 20, false);
        disk.slow_read_offset = Some(4096);
        let mut c = connect_with(MemBackend::default().with("d", "", disk), 3).await;
        c.client.go("d", false, false).await;
        // The slow read is big enough for the blocking pool; the small one
        // runs inline.
        let len = |cookie| if cookie == 1 { 512 * 1024 } else { 512 };
        c.client
            .send_request(CMD_READ, 0, 1, 4096, 512 * 1024, &[])
            .await;
        c.client.send_request(CMD_READ, 0, 2, 0, 512, &[]).await;
        let (first, _) = c.client.read_reply(len).await.unwrap();
        let (second, _) = c.client.read_reply(len).await.unwrap();
        assert_eq!(
            first.cookie(),
            2,
            "the fast read must not wait for the slow one"
        );
        assert_eq!(second.cookie(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_bounded() {
    bounded(async {
        let gate = Gate::new_closed();
        let mut disk = MemExport::new(64 << 20, false);
        disk.gate = Some(gate.clone());
        let backend = MemBackend::default().with("d", "", disk);
        let disk = backend.export("d");
        let mut c = connect_with(backend, 3).await;
        c.client.go("d", false, false).await;
        let total = REQUESTS_IN_FLIGHT_MAX + 20;
        // 512 KiB reads go to the blocking pool, so gated calls do not
        // starve the runtime.
        let len = 512 * 1024;
        for i in 0..total {
            c.client
                .send_request(CMD_READ, 0, i as u64, 0, len, &[])
                .await;
        }
        // Wait until the limit is reached, then check it is not exceeded.
        while disk.running.load(Ordering::SeqCst) < REQUESTS_IN_FLIGHT_MAX {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(disk.running.load(Ordering::SeqCst), REQUESTS_IN_FLIGHT_MAX);
        gate.open();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..total {
            let (r, data) = c.client.read_reply(|_| len as usize).await.unwrap();
            assert_eq!(r.error(), 0);
            assert_eq!(data.len(), len as usize);
            seen.insert(r.cookie());
        }
        assert_eq!(seen.len(), total);
        assert!(disk.running_max.load(Ordering::SeqCst) <= REQUESTS_IN_FLIGHT_MAX);
    })
    .await
}

#[tokio::test]
async fn oversized_requests() {
    bounded(async {
        let mut c = connect().await;
        c.client.go("disk", true, false).await;
        // An oversized read is refused and the connection goes on.
        c.client
            .send_request(CMD_READ, 0, 1, 0, REQUEST_BYTES_MAX + 1, &[])
            .await;
        assert_eq!(
            c.client.read_reply(no_read).await.unwrap().0.error(),
            EINVAL
        );
        // Trim and write-zeroes have no payload: any length within the export.
        c.client.send_request(CMD_TRIM, 0, 2, 0, 1 << 20, &[]).await;
        assert_eq!(c.client.read_reply(no_read).await.unwrap().0.error(), 0);
        // An oversized write gets an error reply, then the connection drops
        // (its payload is never read).
        c.client
            .send_request(CMD_WRITE, 0, 3, 0, u32::MAX, &[])
            .await;
        let (r, _) = c.client.read_reply(no_read).await.unwrap();
        assert_eq!((r.cookie(), r.error()), (3, EINVAL));
        assert_closed(c).await;
    })
    .await
}

#[tokio::test]
async fn disc_and_eof_finish_in_flight_requests() {
    bounded(async {
        for disc in [true, false] {
            let gate = Gate::new_closed();
            let mut disk = MemExport::new(1 << 20, false);
            disk.gate = Some(gate.clone());
            let mut c = connect_with(MemBackend::default().with("d", "", disk), 3).await;
            c.client.go("d", false, false).await;
            c.client.send_request(CMD_READ, 0, 1, 0, 1 << 20, &[]).await;
            if disc {
                c.client.send_request(CMD_DISC, 0, 2, 0, 0, &[]).await;
            } else {
                c.client.s.shutdown().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!c.task.is_finished());
            gate.open();
            let (r, _) = c.client.read_reply(|_| 1 << 20).await.unwrap();
            assert_eq!(
                r,
                Reply::Simple {
                    error: 0,
                    cookie: 1
                }
            );
            assert_closed(c).await;
        }
    })
    .await
}

#[tokio::test]
async fn shutdown_drains_then_closes() {
    bounded(async {
        let gate = Gate::new_closed();
        let mut disk = MemExport::new(1 << 20, false);
        disk.gate = Some(gate.clone());
        let mut c = connect_with(MemBackend::default().with("d", "", disk), 3).await;
        c.client.go("d", true, false).await;
        c.client.send_request(CMD_READ, 0, 1, 0, 1 << 20, &[]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!c.task.is_finished(), "must wait for the in-flight read");
        gate.open();
        let (r, _) = c.client.read_reply(no_read).await.unwrap();
        assert_eq!((r.cookie(), r.error()), (1, 0));
        assert_closed(c).await;

        // A connection idle in the handshake closes at once.
        let c = connect().await;
        c.shutdown.cancel();
        assert_closed(c).await;
    })
    .await
}

async fn tcp_client(addr: std::net::SocketAddr) -> RawClient<tokio::net::TcpStream> {
    RawClient::start(tokio::net::TcpStream::connect(addr).await.unwrap(), 3).await
}

#[tokio::test]
async fn one_bad_client_does_not_affect_others() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(nbd::serve(
            listener,
            Arc::new(standard_backend()),
            shutdown.clone(),
        ));

        let mut good = tcp_client(addr).await;
        good.go("disk", false, false).await;
        let mut bad = tcp_client(addr).await;
        bad.go("disk", false, false).await;
        bad.s.write_all(&[0xde; 64]).await.unwrap();
        let mut rest = Vec::new();
        bad.s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "bad magic gets no reply, only a close");

        good.send_request(CMD_READ, 0, 9, 0, 16, &[]).await;
        let (r, data) = good.read_reply(|_| 16).await.unwrap();
        assert_eq!(
            r,
            Reply::Simple {
                error: 0,
                cookie: 9
            }
        );
        assert_eq!(data, vec![0x11; 16]);
        let mut fresh = tcp_client(addr).await;
        fresh.go("disk", false, false).await;

        shutdown.cancel();
        server.await.unwrap();
        // The listener is gone after shutdown.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_up_after_the_drain_timeout() {
    bounded(async {
        let gate = Gate::new_closed();
        let mut disk = MemExport::new(1 << 20, false);
        disk.gate = Some(gate.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = Server::new(Arc::new(MemBackend::default().with("d", "", disk)))
            .with_drain_timeout(Duration::from_millis(300));
        let token = shutdown.clone();
        let serving = tokio::spawn(async move { server.serve(listener, token).await });

        let mut c = tcp_client(addr).await;
        c.go("d", false, false).await;
        c.send_request(CMD_READ, 0, 1, 0, 1 << 20, &[]).await; // stuck on the gate
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        shutdown.cancel();
        serving.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut rest = Vec::new();
        c.s.read_to_end(&mut rest).await.unwrap();
        gate.open();
    })
    .await
}

#[tokio::test]
async fn unix_socket_listener() {
    bounded(async {
        let path = std::env::temp_dir().join(format!("nbd-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(nbd::serve_unix(
            listener,
            Arc::new(standard_backend()),
            shutdown.clone(),
        ));
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut c = RawClient::start(stream, 3).await;
        c.go("disk", false, false).await;
        c.send_request(CMD_READ, 0, 1, 0, 8, &[]).await;
        assert_eq!(c.read_reply(|_| 8).await.unwrap().1, vec![0x11; 8]);
        shutdown.cancel();
        server.await.unwrap();
        std::fs::remove_file(&path).unwrap();
    })
    .await
}
