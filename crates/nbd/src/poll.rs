//! Polling for the next request of an idle connection, for a bounded time,
//! before sleeping in the reactor.
//!
//! At queue depth 1 a client sends its next request a few microseconds
//! after it reads a reply. A server that goes to sleep in `epoll_wait` in
//! between pays a wake-up for every request, and on a VM the wake-up of an
//! idle vCPU is most of a 4 KiB read's latency (decision 026). So when every
//! request of a connection has been answered and flushed, its reader keeps
//! trying a non-blocking `recv` on the socket for up to a budget (`serve
//! --nbd-poll-us`, 0 turns it off) and only then registers with the reactor.
//! With requests in flight it never polls: a reply is coming and the reactor
//! wakes the task for it anyway. Nor does it poll when the last idle gap
//! (last reply flushed to next request read) was longer than the budget:
//! a client that pauses between requests would only make it burn the
//! budget each time. The gap is measured whether it polled or not, so a
//! client that speeds up is polled for again from its next request.
//!
//! Nor when this process may use only one CPU (its affinity or its cgroup's
//! quota, re-read every second): there the client needs the very CPU the
//! poll would spin on, and measured, polling cost a pinned pair a sixth of
//! its requests.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use telemetry::NbdStats;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the reader and the reply writer of one connection share.
#[derive(Debug)]
pub(crate) struct Idle {
    /// Requests read and not yet answered on the wire (their replies
    /// flushed).
    busy: AtomicUsize,
    /// The reader's waker while it waits with requests in flight: when the
    /// last reply is flushed it is woken, so that it polls.
    waiter: Mutex<Option<Waker>>,
    budget: Duration,
    /// When the connection last went idle, in ns since `epoch`.
    idle_since: AtomicU64,
    /// Whether the last idle gap was within the budget.
    worth: AtomicBool,
    epoch: Instant,
    stats: Arc<NbdStats>,
}

impl Idle {
    pub(crate) fn new(budget: Duration, stats: Arc<NbdStats>) -> Arc<Idle> {
        Arc::new(Idle {
            busy: AtomicUsize::new(0),
            waiter: Mutex::new(None),
            budget,
            idle_since: AtomicU64::new(0),
            worth: AtomicBool::new(true),
            epoch: Instant::now(),
            stats,
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A request was read.
    pub(crate) fn started(&self) {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            let gap = self
                .now()
                .saturating_sub(self.idle_since.load(Ordering::Relaxed));
            let worth = gap <= self.budget.as_nanos() as u64;
            self.worth.store(worth, Ordering::Relaxed);
        }
    }

    /// `n` replies reached the socket.
    pub(crate) fn answered(&self, n: usize) {
        if n == 0 {
            return;
        }
        if self.busy.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle_since.store(self.now(), Ordering::Relaxed);
            let waiter = self.waiter.lock().expect("idle waker lock").take();
            if let Some(w) = waiter.filter(|_| self.worth_polling()) {
                w.wake();
            }
        }
    }

    /// Nothing in flight.
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Whether polling is likely to find the next request.
    fn worth_polling(&self) -> bool {
        self.worth.load(Ordering::Relaxed) && several_cpus()
    }
}

/// Whether this process may run on more than one CPU: its affinity and
/// its cgroup's CPU quota, as `available_parallelism` reads them, cached
/// for a second (reading them opens files).
fn several_cpus() -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Milliseconds since `EPOCH` of the last check, plus one (0: never).
    static CHECKED_MS: AtomicU64 = AtomicU64::new(0);
    static SEVERAL: AtomicBool = AtomicBool::new(false);
    let now_ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let checked = CHECKED_MS.load(Ordering::Relaxed);
    // One caller re-reads; the others use the value it last stored.
    if (checked == 0 || now_ms.saturating_sub(checked) >= 1_000)
        && CHECKED_MS
            .compare_exchange(checked, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        let several = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        SEVERAL.store(several, Ordering::Release);
        return several;
    }
    SEVERAL.load(Ordering::Acquire)
}

/// A stream whose reads poll the socket for a while when the connection is
/// idle. Writes pass through.
pub(crate) struct Polled<S> {
    inner: S,
    fd: Option<RawFd>,
    idle: Arc<Idle>,
}

impl<S> Polled<S> {
    /// `fd` is the socket under `inner`; without one (or with a zero
    /// budget) reads are `inner`'s own.
    pub(crate) fn new(inner: S, fd: Option<RawFd>, idle: Arc<Idle>) -> Polled<S> {
        let fd = fd.filter(|_| !idle.budget.is_zero());
        Polled { inner, fd, idle }
    }

    /// Tries `recv` until bytes come, the peer closes, an error, or the
    /// budget is spent (`None`).
    fn poll_socket(fd: RawFd, budget: Duration, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            let dst = buf.initialize_unfilled();
            // SAFETY: `dst` is valid for `dst.len()` bytes of writes, and a
            // non-blocking recv writes at most that many.
            let n =
                unsafe { libc::recv(fd, dst.as_mut_ptr().cast(), dst.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                buf.advance(n as usize);
                return Some(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {}
                io::ErrorKind::Interrupted => continue,
                _ => return Some(Err(e)),
            }
            tries += 1;
            // The clock is read every few tries: a try is a syscall
            // already, the clock's cost would double it.
            if tries.is_multiple_of(8) && start.elapsed() >= budget {
                return None;
            }
            std::hint::spin_loop();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Polled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(fd) = this.fd {
            if this.idle.idle() {
                if this.idle.worth_polling() {
                    let found = Self::poll_socket(fd, this.idle.budget, buf);
                    this.idle.stats.polled(found.is_some());
                    match found {
                        Some(r) => return Poll::Ready(r),
                        // Once per idle spell: the reactor wakes the
                        // reader for the next request, and the gap it
                        // ends decides whether the next spell polls.
                        None => this.idle.worth.store(false, Ordering::Relaxed),
                    }
                }
            } else {
                *this.idle.waiter.lock().expect("idle waker lock") = Some(cx.waker().clone());
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Polled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream as StdStream;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    struct Pair {
        server: Polled<UnixStream>,
        client: StdStream,
        idle: Arc<Idle>,
        stats: Arc<NbdStats>,
    }

    fn pair(budget: Duration) -> Pair {
        let (server, client) = StdStream::pair().expect("socketpair");
        server.set_nonblocking(true).expect("nonblocking");
        let server = UnixStream::from_std(server).expect("register with the reactor");
        let stats = Arc::new(NbdStats::default());
        let idle = Idle::new(budget, stats.clone());
        let fd = server.as_raw_fd();
        Pair {
            server: Polled::new(server, Some(fd), idle.clone()),
            client,
            idle,
            stats,
        }
    }

    /// Writes `bytes` from another thread after `delay`.
    fn send_later(client: &StdStream, delay: Duration, bytes: &'static [u8]) {
        let mut client = client.try_clone().expect("clone the client");
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            client.write_all(bytes).expect("client write");
        });
    }

    #[tokio::test]
    async fn an_idle_connection_finds_its_next_request_by_polling() {
        let mut p = pair(Duration::from_secs(2));
        send_later(&p.client, Duration::from_millis(20), b"hello");
        let mut buf = [0u8; 5];
        p.server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(p.stats.polls_total(true), 1);
        assert_eq!(p.stats.polls_total(false), 0);
    }

    #[tokio::test]
    async fn a_spent_budget_sleeps_until_the_reactor_wakes_it() {
        let mut p = pair(Duration::from_millis(2));
        send_later(&p.client, Duration::from_millis(60), b"late");
        let mut buf = [0u8; 4];
        p.server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"late");
        assert_eq!(p.stats.polls_total(false), 1);
        assert_eq!(
            p.stats.polls_total(true),
            0,
            "the reactor, not a poll, found it"
        );
        // The request that ends this long gap keeps the next spell asleep.
        p.idle.started();
        assert!(!p.idle.worth_polling());
    }

    #[tokio::test]
    async fn with_requests_in_flight_it_never_polls() {
        let mut p = pair(Duration::from_secs(5));
        p.idle.started();
        let t0 = Instant::now();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(30), p.server.read(&mut buf)).await;
        assert!(read.is_err(), "nothing was sent");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "it polled: {:?}",
            t0.elapsed()
        );
        assert_eq!(p.stats.polls_total(true) + p.stats.polls_total(false), 0);
    }

    #[tokio::test]
    async fn the_last_reply_wakes_a_waiting_reader_to_poll() {
        let p = pair(Duration::from_secs(2));
        let (mut server, idle, stats) = (p.server, p.idle, p.stats);
        idle.started();
        idle.started();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 2];
            server.read_exact(&mut buf).await.map(|_| buf)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle.answered(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            stats.polls_total(true) + stats.polls_total(false),
            0,
            "one still in flight"
        );
        // The gap starts at the last answer, so the next request is quick.
        idle.answered(1);
        send_later(&p.client, Duration::from_millis(20), b"ok");
        let buf = reader.await.expect("reader task").expect("read");
        assert_eq!(&buf, b"ok");
        assert_eq!(stats.polls_total(true), 1);
    }

    #[test]
    fn the_gap_decides_whether_to_poll() {
        let idle = Idle::new(Duration::from_millis(5), Arc::default());
        idle.started();
        idle.answered(1);
        idle.started();
        assert!(idle.worth_polling(), "an immediate next request");
        idle.answered(1);
        std::thread::sleep(Duration::from_millis(20));
        idle.started();
        assert!(!idle.worth_polling(), "a pause longer than the budget");
        // More in flight: the gap is not measured again.
        idle.started();
        assert!(!idle.worth_polling());
    }

    #[tokio::test]
    async fn a_zero_budget_never_polls() {
        let mut p = pair(Duration::ZERO);
        assert!(p.server.fd.is_none());
        send_later(&p.client, Duration::from_millis(10), b"x");
        let mut buf = [0u8; 1];
        p.server.read_exact(&mut buf).await.expect("read");
        assert_eq!(p.stats.polls_total(true) + p.stats.polls_total(false), 0);
    }
}
