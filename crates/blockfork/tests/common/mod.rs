//! Helpers for end-to-end tests: the real `blockfork` binary on free ports,
//! real clients run as child processes with time limits, and a minimal
//! synchronous NBD client for tests that must know exactly which requests
//! were acknowledged.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_blockfork");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub nbd_port: u16,
    pub api_port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts `blockfork serve` on `dir` with a new capacity (ignored if the
    /// pool exists) and waits until both listeners answer.
    pub fn start(dir: &Path, capacity: &str) -> Server {
        Server::start_with(dir, &["--capacity", capacity])
    }

    /// Starts `blockfork serve` on `dir` with extra arguments, in an open
    /// pool (every unmapped LUN visible to every client).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--open"];
        args.extend_from_slice(extra);
        Server::start_raw(dir, &args)
    }

    /// Starts `blockfork serve` on `dir` with exactly these extra arguments.
    pub fn start_raw(dir: &Path, extra: &[&str]) -> Server {
        let nbd = free_port();
        // Two probes can hand out the same free port (seen once in CI:
        // "Address already in use" for the API): never take it twice.
        let api = std::iter::repeat_with(free_port)
            .find(|&p| p != nbd)
            .expect("a second free port");
        Server::start_on(dir, extra, nbd, api)
    }

    /// Starts `blockfork serve` on `dir` on these ports (a restart that
    /// peers find where they left it).
    pub fn start_on(dir: &Path, extra: &[&str], nbd_port: u16, api_port: u16) -> Server {
        let log = dir.with_extension(format!("log-{nbd_port}"));
        let child = Command::new(BIN)
            .args(["serve", "--data"])
            .arg(dir)
            .args(extra)
            .args(["--nbd", &format!("127.0.0.1:{nbd_port}")])
            .args(["--api", &format!("127.0.0.1:{api_port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start blockfork serve");
        let mut s = Server {
            child: Some(child),
            dir: dir.to_path_buf(),
            nbd_port,
            api_port,
            log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = |p| TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(self.nbd_port) && up(self.api_port) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited early ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "server did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn nbd(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.nbd_port, export)
    }

    /// Runs the CLI against this server (with its token, read from the
    /// data directory as the CLI does by default).
    pub fn cli(&self, args: &[&str]) -> Output {
        run(
            Command::new(BIN)
                .arg("--server")
                .arg(self.url())
                .arg("--data")
                .arg(&self.dir)
                .env_remove("BLOCKFORK_TOKEN")
                .args(args),
            60,
        )
    }

    /// The API token `serve` created in the data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("api-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "blockfork {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("server ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs a command with a time limit, capturing its output.
pub fn run(cmd: &mut Command, timeout_secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took longer than {timeout_secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Runs a tool and insists it succeeds; returns stdout.
pub fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = run(Command::new(program).args(args), 120);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A minimal NBD client: fixed newstyle, NBD_OPT_GO, simple replies.
pub struct NbdClient {
    s: TcpStream,
    pub size: u64,
    handle: u64,
}

const NBD_OPT_GO: u32 = 7;
const REQUEST_MAGIC: u32 = 0x2560_9513;

impl NbdClient {
    pub fn connect(port: u16, export: &str) -> std::io::Result<NbdClient> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Client flags: fixed newstyle | no zeroes.
        s.write_all(&3u32.to_be_bytes())?;
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        opt.extend_from_slice(&((4 + export.len() + 2) as u32).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt)?;
        let mut size = 0;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let reply = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data)?;
            match reply {
                1 => break, // NBD_REP_ACK
                // NBD_REP_INFO carrying NBD_INFO_EXPORT
                3 if u16::from_be_bytes([data[0], data[1]]) == 0 => {
                    size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                }
                r if r & 0x8000_0000 != 0 => {
                    return Err(std::io::Error::other(format!(
                        "option refused: {}",
                        String::from_utf8_lossy(&data)
                    )))
                }
                _ => {}
            }
        }
        Ok(NbdClient { s, size, handle: 0 })
    }

    fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> std::io::Result<u32> {
        self.handle += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&flags.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&self.handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r)?;
        let mut reply = [0u8; 16];
        self.s.read_exact(&mut reply)?;
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            0x6744_6698,
            "simple reply magic"
        );
        assert_eq!(
            u64::from_be_bytes(reply[8..16].try_into().unwrap()),
            self.handle
        );
        Ok(u32::from_be_bytes(reply[4..8].try_into().unwrap()))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<u32> {
        self.request(1, 0, offset, data.len() as u32, data)
    }

    pub fn flush(&mut self) -> std::io::Result<u32> {
        self.request(3, 0, 0, 0, &[])
    }

    pub fn trim(&mut self, offset: u64, len: u32) -> std::io::Result<u32> {
        self.request(4, 0, offset, len, &[])
    }

    /// NBD_CMD_WRITE_ZEROES, with NBD_CMD_FLAG_NO_HOLE when `no_hole`.
    pub fn write_zeroes(&mut self, offset: u64, len: u32, no_hole: bool) -> std::io::Result<u32> {
        self.request(6, if no_hole { 1 << 1 } else { 0 }, offset, len, &[])
    }

    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<(u32, Vec<u8>)> {
        let err = self.request(0, 0, offset, len, &[])?;
        let mut data = vec![0u8; if err == 0 { len as usize } else { 0 }];
        self.s.read_exact(&mut data)?;
        Ok((err, data))
    }
}

/// GET with an optional bearer token and Accept header: (status, body).
pub fn get(url: &str, token: Option<&str>, accept: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let mut resp = req.call().expect("request");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// The value of one sample (`name{labels}` exactly as printed), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn promtool_ok(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tests/ui`, with playwright-core installed (from its lock file) if it is
/// not yet.
#[allow(dead_code)]
pub fn playwright_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui");
    if !dir.join("node_modules/playwright-core").exists() {
        let out = run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            300,
        );
        assert!(
            out.status.success(),
            "npm ci in tests/ui: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}
