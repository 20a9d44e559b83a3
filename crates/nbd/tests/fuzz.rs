//! Property tests: hostile byte streams never panic or hang the server, and
//! random valid request sequences get correct answers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd::proto::*;
use nbd::wire::{self, Request};
use nbd::{CancellationToken, ClientInfo, Server};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DISK_BYTES: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Feeds `input` to a fresh connection, closes the client's sending side and
/// returns everything the server wrote until it closed. Fails the test if
/// the server panicked or did not close within a few seconds.
fn run_session(input: Vec<u8>) -> Vec<u8> {
    runtime().block_on(async move {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let server = Server::new(Arc::new(standard_backend()));
        let task = tokio::spawn(async move {
            server
                .serve_connection(server_side, ClientInfo::unix(), CancellationToken::new())
                .await
        });
        let (mut rx, mut tx) = tokio::io::split(client);
        let send = async move {
            // The server may close first; that is allowed.
            let _ = tx.write_all(&input).await;
            let _ = tx.shutdown().await;
        };
        let mut out = Vec::new();
        let recv = rx.read_to_end(&mut out);
        let (_, received) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(send, recv) })
                .await
                .expect("server neither answered nor closed");
        received.expect("reading from the server");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("connection task did not finish")
            .expect("connection task panicked");
        out
    })
}

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// Client flags, STRUCTURED_REPLY, SET_META_CONTEXT, GO "disk".
fn valid_handshake() -> Vec<u8> {
    let mut v = 3u32.to_be_bytes().to_vec();
    v.extend(option(OPT_STRUCTURED_REPLY, &[]));
    v.extend(option(
        OPT_SET_META_CONTEXT,
        &meta_request("disk", &["base:allocation"]),
    ));
    v.extend(option(OPT_GO, &info_request("disk", &[])));
    v
}

/// Skips the greeting and option replies up to GO's ACK; returns the rest.
fn skip_handshake_replies(out: &[u8]) -> &[u8] {
    let mut rest = &out[18..];
    loop {
        let option = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let reply = u32::from_be_bytes(rest[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        rest = &rest[20 + len..];
        if option == OPT_GO {
            assert_eq!(reply & 0x8000_0000, 0, "GO failed");
            if reply == REP_ACK {
                return rest;
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Read(u64, u32),
    Write(u64, Vec<u8>),
    Trim(u64, u32),
    Zero(u64, u32, u16),
    Flush,
    Status(u64, u32, bool),
}

/// An in-bounds (offset, length) with length >= 1.
fn range() -> impl Strategy<Value = (u64, u32)> {
    (0..DISK_BYTES - 1, 1u32..20_000)
        .prop_map(|(off, len)| (off, len.min((DISK_BYTES - off) as u32)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        range().prop_map(|(o, l)| Op::Read(o, l)),
        (
            0..DISK_BYTES - 1,
            prop::collection::vec(any::<u8>(), 1..3000)
        )
            .prop_map(|(o, mut d)| {
                d.truncate((DISK_BYTES - o) as usize);
                Op::Write(o, d)
            }),
        range().prop_map(|(o, l)| Op::Trim(o, l)),
        (
            range(),
            prop_oneof![
                Just(0),
                Just(CMD_FLAG_NO_HOLE),
                Just(CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA)
            ]
        )
            .prop_map(|((o, l), f)| Op::Zero(o, l, f)),
        Just(Op::Flush),
        (range(), any::<bool>()).prop_map(|((o, l), one)| Op::Status(o, l, one)),
    ]
}

fn encode(op: &Op, cookie: u64) -> Vec<u8> {
    let (command, flags, offset, length, payload): (u16, u16, u64, u32, &[u8]) = match op {
        Op::Read(o, l) => (CMD_READ, 0, *o, *l, &[]),
        Op::Write(o, d) => (CMD_WRITE, CMD_FLAG_FUA, *o, d.len() as u32, d),
        Op::Trim(o, l) => (CMD_TRIM, 0, *o, *l, &[]),
        Op::Zero(o, l, f) => (CMD_WRITE_ZEROES, *f, *o, *l, &[]),
        Op::Flush => (CMD_FLUSH, 0, 0, 0, &[]),
        Op::Status(o, l, one) => (
            CMD_BLOCK_STATUS,
            if *one { CMD_FLAG_REQ_ONE } else { 0 },
            *o,
            *l,
            &[],
        ),
    };
    let mut v = wire::encode_request(&Request {
        flags,
        command,
        cookie,
        offset,
        length,
    })
    .to_vec();
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (never with 0).
    Flip(prop::sample::Index, u8),
    /// Set field (flags, command, offset, length) of one request.
    Field(prop::sample::Index, u8, u64),
}

fn edge_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(DISK_BYTES - 1),
        Just(DISK_BYTES),
        Just(u64::from(REQUEST_BYTES_MAX)),
        Just(u64::from(REQUEST_BYTES_MAX) + 1),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX - 4095),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), 0u8..4, edge_value())
            .prop_map(|(i, f, v)| Mutation::Field(i, f, v)),
    ]
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 200,
        // Failing inputs are printed; do not write regression files into
        // the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    // Each case takes well under a millisecond; many cases make rare edge
    // values (an offset that overflows) likely to be hit on every run.
    #![proptest_config(config(600))]

    /// Arbitrary bytes from the first byte on.
    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2048)) {
        run_session(input);
    }

    /// Arbitrary bytes after a valid handshake prefix, which reach the
    /// option parsers and the transmission phase.
    #[test]
    fn random_bytes_after_valid_prefix(
        cut in 0usize..200,
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut input = valid_handshake();
        input.truncate(cut.min(input.len()));
        input.extend(tail);
        run_session(input);
    }

    /// A valid session corrupted by byte flips or by setting request fields
    /// to edge values (overflowing offsets, huge lengths, unknown commands
    /// and flags), maybe truncated. When only the transmission part is hit,
    /// whatever comes back must still be a well-formed reply stream; with no
    /// corruption, every request gets exactly one successful reply.
    #[test]
    fn corrupted_request_streams(
        ops in prop::collection::vec(op(), 1..40),
        mutations in prop::collection::vec(mutation(), 0..4),
        in_handshake in any::<bool>(),
        truncate in prop::option::of(any::<prop::sample::Index>()),
        disconnect in any::<bool>(),
    ) {
        let handshake = valid_handshake();
        let mut requests = Vec::new();
        let mut starts = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            starts.push(requests.len());
            requests.extend(encode(op, i as u64 + 1));
        }
        if disconnect {
            let disc = Request { flags: 0, command: CMD_DISC, cookie: 0, offset: 0, length: 0 };
            requests.extend(wire::encode_request(&disc));
        }
        let clean = mutations.is_empty() && truncate.is_none();
        let mut input = handshake.clone();
        input.extend(&requests);
        let (start, end) = if in_handshake { (0, handshake.len()) } else { (handshake.len(), input.len()) };
        for m in &mutations {
            match m {
                Mutation::Flip(at, byte) => input[start + at.index(end - start)] ^= byte | 1,
                Mutation::Field(which, field, value) if !in_handshake => {
                    let at = handshake.len() + starts[which.index(starts.len())];
                    let (pos, width) = [(4, 2), (6, 2), (16, 8), (24, 4)][*field as usize % 4];
                    let bytes = value.to_be_bytes();
                    input[at + pos..at + pos + width].copy_from_slice(&bytes[8 - width..]);
                }
                Mutation::Field(..) => {}
            }
        }
        if let Some(t) = truncate {
            input.truncate(start + t.index(end - start + 1));
        }

        let out = run_session(input);
        if !in_handshake {
            let replies = parse_structured_stream(skip_handshake_replies(&out));
            if clean {
                let cookies: HashSet<u64> = replies.iter().map(|r| r.cookie()).collect();
                prop_assert_eq!(replies.len(), ops.len());
                prop_assert_eq!(cookies.len(), ops.len());
                for r in &replies {
                    prop_assert_eq!(r.error(), 0, "{:?}", r);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(40))]

    /// Requests one at a time against a model of the disk: reads return
    /// what was written, and block status never calls data zero wrongly.
    #[test]
    fn sequential_ops_match_a_model(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(async move {
            let backend = standard_backend();
            let mut model = backend.export("disk").snapshot();
            let (client, server_side) = tokio::io::duplex(1 << 20);
            let server = Server::new(Arc::new(backend));
            let task = tokio::spawn(async move {
                server.serve_connection(server_side, ClientInfo::unix(), CancellationToken::new()).await
            });
            let mut c = RawClient::start(client, 3).await;
            c.go("disk", true, true).await;
            for (i, op) in ops.iter().enumerate() {
                let cookie = i as u64 + 1;
                c.s.write_all(&encode(op, cookie)).await.unwrap();
                let (reply, _) = tokio::time::timeout(Duration::from_secs(5), c.read_reply(|_| 0))
                    .await
                    .expect("reply in time")
                    .unwrap();
                assert_eq!(reply.cookie(), cookie);
                assert_eq!(reply.error(), 0, "{op:?}: {reply:?}");
                match op {
                    Op::Write(o, d) => model[*o as usize..*o as usize + d.len()].copy_from_slice(d),
                    Op::Trim(o, l) | Op::Zero(o, l, _) => model[*o as usize..(*o + *l as u64) as usize].fill(0),
                    Op::Read(o, l) => {
                        let Reply::Chunk { chunk_type, payload, .. } = reply else { panic!("read got {reply:?}") };
                        assert_eq!(chunk_type, REPLY_TYPE_OFFSET_DATA);
                        assert_eq!(&payload[..8], &o.to_be_bytes());
                        assert!(payload[8..] == model[*o as usize..(*o + *l as u64) as usize], "read mismatch");
                    }
                    Op::Status(o, l, one) => {
                        let Reply::Chunk { chunk_type, payload, .. } = reply else { panic!("status got {reply:?}") };
                        assert_eq!(chunk_type, REPLY_TYPE_BLOCK_STATUS);
                        let descriptors: Vec<(u64, u32)> = payload[4..].chunks(8).map(|d| (
                            u32::from_be_bytes(d[..4].try_into().unwrap()) as u64,
                            u32::from_be_bytes(d[4..].try_into().unwrap()),
                        )).collect();
                        assert!(!descriptors.is_empty());
                        assert!(!*one || descriptors.len() == 1);
                        assert!(descriptors.iter().map(|d| d.0).sum::<u64>() <= *l as u64);
                        let mut pos = *o as usize;
                        for (len, flags) in descriptors {
                            assert!(len > 0);
                            if flags & nbd::STATE_ZERO != 0 {
                                assert!(model[pos..pos + len as usize].iter().all(|b| *b == 0), "zero extent has data");
                            }
                            pos += len as usize;
                        }
                    }
                    Op::Flush => {}
                }
            }
            drop(c);
            task.await.unwrap();
        });
    }
}
