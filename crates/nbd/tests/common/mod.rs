//! Shared test support: an in-memory backend and a raw NBD client over any
//! byte stream. Each test file uses a different subset.
#![allow(dead_code)]

pub mod process;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nbd::proto::*;
use nbd::wire::{self, Request};
use nbd::{
    Backend, ClientInfo, Export, ExportListing, IoError, OpenError, StatusExtent, STATE_HOLE,
    STATE_ZERO,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Allocation granularity of the memory export.
pub const MEM_BLOCK_BYTES: u64 = 4096;

/// A gate that blocks backend reads until opened, to hold requests in flight.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn new_closed() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

struct MemState {
    data: Vec<u8>,
    /// Per MEM_BLOCK_BYTES block: written (data) or not (hole reading zero).
    allocated: Vec<bool>,
}

/// A byte vector behind a mutex, with hole tracking for block status.
pub struct MemExport {
    state: Mutex<MemState>,
    read_only: bool,
    /// Reads at this offset sleep first (to force out-of-order replies).
    pub slow_read_offset: Option<u64>,
    /// Reads wait for this gate when set.
    pub gate: Option<Arc<Gate>>,
    /// Backend calls running right now / the most seen at once.
    pub running: AtomicUsize,
    pub running_max: AtomicUsize,
    pub flushes: AtomicUsize,
}

impl MemExport {
    pub fn new(size: u64, read_only: bool) -> MemExport {
        let blocks = size.div_ceil(MEM_BLOCK_BYTES) as usize;
        MemExport {
            state: Mutex::new(MemState {
                data: vec![0; size as usize],
                allocated: vec![false; blocks],
            }),
            read_only,
            slow_read_offset: None,
            gate: None,
            running: AtomicUsize::new(0),
            running_max: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.state.lock().unwrap().data.clone()
    }

    /// Fills [offset, offset+data.len()) and marks it allocated.
    pub fn fill(&self, offset: u64, data: &[u8]) {
        self.write(offset, data, false).unwrap();
    }

    fn check(&self, offset: u64, length: u64) -> Result<(), IoError> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(IoError::OutOfRange),
        }
    }

    fn zero(&self, offset: u64, length: u64, keep_allocated: bool) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        self.check(offset, length)?;
        let mut s = self.state.lock().unwrap();
        s.data[offset as usize..(offset + length) as usize].fill(0);
        // Only whole blocks become holes.
        let first = offset.div_ceil(MEM_BLOCK_BYTES);
        let end = (offset + length) / MEM_BLOCK_BYTES;
        for b in first..end {
            s.allocated[b as usize] = keep_allocated;
        }
        Ok(())
    }

    fn enter(&self) -> Running<'_> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.running_max.fetch_max(now, Ordering::SeqCst);
        Running(&self.running)
    }
}

struct Running<'a>(&'a AtomicUsize);
impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.state.lock().unwrap().data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let _running = self.enter();
        if let Some(g) = &self.gate {
            g.wait();
        }
        if self.slow_read_offset == Some(offset) {
            std::thread::sleep(Duration::from_millis(300));
        }
        self.check(offset, buf.len() as u64)?;
        let s = self.state.lock().unwrap();
        buf.copy_from_slice(&s.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), IoError> {
        let _running = self.enter();
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        self.check(offset, data.len() as u64)?;
        let mut s = self.state.lock().unwrap();
        s.data[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        if !data.is_empty() {
            let first = offset / MEM_BLOCK_BYTES;
            let last = (offset + data.len() as u64 - 1) / MEM_BLOCK_BYTES;
            for b in first..=last {
                s.allocated[b as usize] = true;
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64, _fua: bool) -> Result<(), IoError> {
        self.zero(offset, length, false)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        no_hole: bool,
        _fua: bool,
    ) -> Result<(), IoError> {
        self.zero(offset, length, no_hole)
    }
    fn block_status(&self, offset: u64, length: u64) -> Result<Vec<StatusExtent>, IoError> {
        self.check(offset, length)?;
        let s = self.state.lock().unwrap();
        let size = s.data.len() as u64;
        let end = offset + length;
        let mut out: Vec<StatusExtent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block_end = ((pos / MEM_BLOCK_BYTES + 1) * MEM_BLOCK_BYTES).min(size);
            let flags = if s.allocated[(pos / MEM_BLOCK_BYTES) as usize] {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            let len = block_end - pos;
            match out.last_mut() {
                Some(e) if e.flags == flags => e.length += len,
                _ => out.push(StatusExtent { length: len, flags }),
            }
            pos = block_end;
        }
        Ok(out)
    }
}

/// Exports by name; names listed in `denied` exist but are refused.
#[derive(Default)]
pub struct MemBackend {
    pub exports: HashMap<String, (Arc<MemExport>, String)>,
    pub denied: Vec<String>,
}

impl MemBackend {
    pub fn with(mut self, name: &str, description: &str, export: MemExport) -> Self {
        self.exports.insert(
            name.to_string(),
            (Arc::new(export), description.to_string()),
        );
        self
    }
    pub fn export(&self, name: &str) -> Arc<MemExport> {
        self.exports[name].0.clone()
    }
}

impl Backend for MemBackend {
    fn list(&self, _client: &ClientInfo) -> Vec<ExportListing> {
        let mut v: Vec<_> = self
            .exports
            .iter()
            .map(|(name, (_, description))| ExportListing {
                name: name.clone(),
                description: description.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    fn open(&self, name: &str, _client: &ClientInfo) -> Result<Arc<dyn Export>, OpenError> {
        if self.denied.iter().any(|d| d == name) {
            return Err(OpenError::Denied("not for you".to_string()));
        }
        match self.exports.get(name) {
            Some((e, _)) => Ok(e.clone()),
            None => Err(OpenError::Unknown("no such export".to_string())),
        }
    }
}

/// The standard test backend: "disk" (1 MiB, first 64 KiB written with
/// 0x11, the rest a hole) and "ro" (64 KiB, read-only, 0x22), "secret" denied.
pub fn standard_backend() -> MemBackend {
    let disk = MemExport::new(1 << 20, false);
    disk.fill(0, &[0x11; 65536]);
    let ro = MemExport::new(65536, false);
    ro.fill(0, &[0x22; 65536]);
    let ro = MemExport {
        read_only: true,
        ..ro
    };
    let mut b = MemBackend::default()
        .with("disk", "a test disk", disk)
        .with("ro", "read-only disk", ro)
        .with("secret", "", MemExport::new(4096, false));
    b.denied.push("secret".to_string());
    b
}

// ---- Raw client -------------------------------------------------------------

/// One option reply as received.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

/// One transmission reply (simple or a structured chunk) as received.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        chunk_type: u16,
        cookie: u64,
        payload: Vec<u8>,
    },
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }
    /// The errno of a simple reply or an error chunk, 0 otherwise.
    pub fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk {
                chunk_type,
                payload,
                ..
            } if chunk_type & 0x8000 != 0 && payload.len() >= 4 => {
                u32::from_be_bytes(payload[..4].try_into().unwrap())
            }
            _ => 0,
        }
    }
}

pub struct RawClient<S> {
    pub s: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    /// Reads the greeting and sends client flags.
    pub async fn start(s: S, client_flags: u32) -> Self {
        let mut c = RawClient { s };
        let mut g = [0u8; 18];
        c.s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        c.s.write_all(&client_flags.to_be_bytes()).await.unwrap();
        c
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).await.unwrap();
    }

    pub async fn read_opt_reply(&mut self) -> std::io::Result<OptReply> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await?;
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        self.s.read_exact(&mut data).await?;
        Ok(OptReply {
            option: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            reply_type: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        })
    }

    /// Sends an option and collects replies up to the final one.
    pub async fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data).await;
        let mut out = Vec::new();
        loop {
            let r = self.read_opt_reply().await.unwrap();
            let last = !matches!(r.reply_type, REP_SERVER | REP_INFO | REP_META_CONTEXT);
            out.push(r);
            if last {
                return out;
            }
        }
    }

    /// STRUCTURED_REPLY (optionally), SET_META_CONTEXT base:allocation
    /// (optionally), then GO; returns (size, transmission flags).
    pub async fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16) {
        if structured {
            let r = self.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(r[0].reply_type, REP_ACK);
        }
        if meta {
            let r = self
                .option(
                    OPT_SET_META_CONTEXT,
                    &meta_request(name, &["base:allocation"]),
                )
                .await;
            assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        }
        let replies = self.option(OPT_GO, &info_request(name, &[])).await;
        let last = replies.last().unwrap();
        assert_eq!(last.reply_type, REP_ACK, "GO failed: {replies:?}");
        let export = replies
            .iter()
            .find(|r| r.reply_type == REP_INFO && r.data[..2] == INFO_EXPORT.to_be_bytes())
            .expect("INFO_EXPORT");
        (
            u64::from_be_bytes(export.data[2..10].try_into().unwrap()),
            u16::from_be_bytes(export.data[10..12].try_into().unwrap()),
        )
    }

    pub async fn send_request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut m = wire::encode_request(&Request {
            flags,
            command,
            cookie,
            offset,
            length,
        })
        .to_vec();
        m.extend_from_slice(payload);
        self.s.write_all(&m).await.unwrap();
    }

    /// Reads one reply. `read_len` gives the payload length of a simple
    /// reply to a READ (simple replies do not say it themselves).
    pub async fn read_reply(
        &mut self,
        read_len: impl Fn(u64) -> usize,
    ) -> std::io::Result<(Reply, Vec<u8>)> {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).await?;
        match u32::from_be_bytes(m) {
            SIMPLE_REPLY_MAGIC => {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).await?;
                let error = u32::from_be_bytes(h[..4].try_into().unwrap());
                let cookie = u64::from_be_bytes(h[4..].try_into().unwrap());
                let mut data = vec![0u8; if error == 0 { read_len(cookie) } else { 0 }];
                self.s.read_exact(&mut data).await?;
                Ok((Reply::Simple { error, cookie }, data))
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut h = [0u8; 16];
                self.s.read_exact(&mut h).await?;
                let len = u32::from_be_bytes(h[12..].try_into().unwrap()) as usize;
                let mut payload = vec![0u8; len];
                self.s.read_exact(&mut payload).await?;
                Ok((
                    Reply::Chunk {
                        flags: u16::from_be_bytes(h[..2].try_into().unwrap()),
                        chunk_type: u16::from_be_bytes(h[2..4].try_into().unwrap()),
                        cookie: u64::from_be_bytes(h[4..12].try_into().unwrap()),
                        payload,
                    },
                    Vec::new(),
                ))
            }
            other => Err(std::io::Error::other(format!("bad reply magic {other:#x}"))),
        }
    }
}

pub fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

pub fn meta_request(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Checks that `out` (everything a server sent after the handshake, with
/// structured replies negotiated) is a well-formed sequence of replies.
/// Returns the replies; panics on a malformed one.
pub fn parse_structured_stream(mut out: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while !out.is_empty() {
        assert!(out.len() >= 4, "truncated reply magic");
        match u32::from_be_bytes(out[..4].try_into().unwrap()) {
            SIMPLE_REPLY_MAGIC => {
                assert!(out.len() >= 16, "truncated simple reply");
                replies.push(Reply::Simple {
                    error: u32::from_be_bytes(out[4..8].try_into().unwrap()),
                    cookie: u64::from_be_bytes(out[8..16].try_into().unwrap()),
                });
                out = &out[16..];
            }
            STRUCTURED_REPLY_MAGIC => {
                assert!(out.len() >= 20, "truncated chunk header");
                let flags = u16::from_be_bytes(out[4..6].try_into().unwrap());
                let chunk_type = u16::from_be_bytes(out[6..8].try_into().unwrap());
                let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
                assert!(out.len() >= 20 + len, "truncated chunk payload");
                let payload = out[20..20 + len].to_vec();
                match chunk_type {
                    REPLY_TYPE_NONE => assert_eq!(len, 0),
                    REPLY_TYPE_OFFSET_DATA => assert!(len > 8),
                    REPLY_TYPE_BLOCK_STATUS => assert!(len >= 12 && (len - 4).is_multiple_of(8)),
                    REPLY_TYPE_ERROR => {
                        assert!(len >= 6);
                        let mlen = u16::from_be_bytes(payload[4..6].try_into().unwrap()) as usize;
                        assert_eq!(mlen + 6, len);
                        assert_ne!(u32::from_be_bytes(payload[..4].try_into().unwrap()), 0);
                    }
                    other => panic!("unexpected chunk type {other}"),
                }
                assert_eq!(flags, REPLY_FLAG_DONE);
                replies.push(Reply::Chunk {
                    flags,
                    chunk_type,
                    cookie: u64::from_be_bytes(out[8..16].try_into().unwrap()),
                    payload,
                });
                out = &out[20 + len..];
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }
    replies
}
