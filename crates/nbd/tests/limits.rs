//! Connection limits (per client address, in total) and the handshake time
//! limit, over real TCP and unix sockets on this machine. Loopback has many
//! addresses (127.0.0.0/8), so two "hosts" are 127.0.0.1 and 127.0.0.2.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use nbd::proto::*;
use nbd::{CancellationToken, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

/// Every test is bounded; a hang fails it.
const TEST_SECS_MAX: u64 = 20;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(TEST_SECS_MAX), f)
        .await
        .expect("test timed out")
}

fn server() -> Server {
    Server::new(Arc::new(standard_backend()))
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// What the server says first: the greeting if it admitted us, nothing
/// (EOF or reset) if it refused.
async fn admitted<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut greeting = [0u8; 18];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting)).await {
        Ok(Ok(_)) => {
            assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("the server neither greeted nor closed"),
    }
}

/// A client that was greeted: finish the flags and prove the session works.
async fn still_served<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> RawClient<S> {
    let mut c = RawClient { s };
    use tokio::io::AsyncWriteExt;
    c.s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    let r = c.option(OPT_LIST, &[]).await;
    assert_eq!(r.last().unwrap().reply_type, REP_ACK);
    c
}

/// Connects from `from` until the server admits, for a slot that is being
/// released (the server notices a close asynchronously).
async fn connect_when_free(from: &str, server: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(from, server).await;
        if admitted(&mut s).await {
            return s;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    bounded(async {
        let running = start_server(server().with_connections_per_address_max(2)).await;
        let addr = running.addr;
        let mut a1 = connect_from("127.0.0.1", addr).await;
        let mut a2 = connect_from("127.0.0.1", addr).await;
        assert!(admitted(&mut a1).await && admitted(&mut a2).await);
        let mut a3 = connect_from("127.0.0.1", addr).await;
        assert!(
            !admitted(&mut a3).await,
            "third connection from one address"
        );
        // Another address is not affected.
        let mut b1 = connect_from("127.0.0.2", addr).await;
        assert!(admitted(&mut b1).await, "another address was refused");
        // The connections held are unaffected by the refusal.
        let a1 = still_served(a1).await;
        let _a2 = still_served(a2).await;
        let _b1 = still_served(b1).await;
        // Closing one frees its place.
        drop(a1);
        let a4 = connect_when_free("127.0.0.1", addr).await;
        still_served(a4).await;
        running.stop().await;
    })
    .await
}

#[tokio::test]
async fn total_connections_are_capped_over_tcp_and_unix() {
    bounded(async {
        let dir = TempDir::new("limits-unix");
        let path = dir.0.join("nbd.sock");
        // Unix clients are exempt from the per-address cap of 1 but fill
        // the total of 3, which both listeners share.
        let server = server()
            .with_connections_per_address_max(1)
            .with_connections_max(3);
        let unix_listener = tokio::net::UnixListener::bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        let unix_task = {
            let (server, token) = (server.clone(), shutdown.clone());
            tokio::spawn(async move { server.serve(unix_listener, token).await })
        };
        let running = start_server(server).await;

        let mut u1 = UnixStream::connect(&path).await.unwrap();
        let mut u2 = UnixStream::connect(&path).await.unwrap();
        assert!(admitted(&mut u1).await && admitted(&mut u2).await);
        let mut t1 = connect_from("127.0.0.1", running.addr).await;
        assert!(admitted(&mut t1).await);
        let mut t2 = connect_from("127.0.0.2", running.addr).await;
        assert!(!admitted(&mut t2).await, "fourth connection in total");
        let mut u3 = UnixStream::connect(&path).await.unwrap();
        assert!(!admitted(&mut u3).await, "fourth connection in total");
        let u1 = still_served(u1).await;
        still_served(t1).await;

        drop(u1);
        let t3 = connect_when_free("127.0.0.2", running.addr).await;
        still_served(t3).await;
        running.stop().await;
        // u2 never sent its flags; shutdown must not wait for it (the drain
        // timeout is 10 s).
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), unix_task)
            .await
            .expect("a silent client held up shutdown")
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn idle_handshakes_time_out_and_free_their_slot() {
    bounded(async {
        let timeout = Duration::from_millis(300);
        let running = start_server(
            server()
                .with_handshake_timeout(timeout)
                .with_connections_per_address_max(1),
        )
        .await;
        let addr = running.addr;

        // Connects and says nothing at all.
        let start = Instant::now();
        let mut idle = connect_from("127.0.0.1", addr).await;
        assert!(admitted(&mut idle).await);
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest).await;
        let waited = start.elapsed();
        assert!(rest.is_empty());
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(waited < timeout * 10, "closed only after {waited:?}");

        // Sends its flags and one option, then stalls.
        let s = connect_when_free("127.0.0.1", addr).await;
        let mut c = still_served(s).await;
        let mut rest = Vec::new();
        let _ = c.s.read_to_end(&mut rest).await;
        assert!(rest.is_empty());

        // The limit ends at GO: an idle session in transmission stays.
        let s = connect_when_free("127.0.0.1", addr).await;
        let mut c = still_served(s).await;
        c.go("disk", false, false).await;
        tokio::time::sleep(timeout * 3).await;
        c.send_request(CMD_READ, 0, 1, 0, 8, &[]).await;
        let (reply, data) = c.read_reply(|_| 8).await.unwrap();
        assert_eq!(reply.error(), 0);
        assert_eq!(data, vec![0x11; 8]);
        running.stop().await;
    })
    .await
}
