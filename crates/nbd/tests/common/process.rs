//! Real client programs against an in-process server: starting the server
//! on a free 127.0.0.1 port, running a client with a time limit, scratch
//! directories.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use nbd::{CancellationToken, Server};
use tokio::task::JoinHandle;

/// Every client run is bounded; a hung client fails the test.
pub const CLIENT_SECS_MAX: u64 = 60;

pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.addr, export)
    }

    /// Shuts the server down and checks that it stops in time.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("server did not stop")
            .expect("server panicked");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves `server` on a free port of 127.0.0.1 until `stop` or drop.
pub async fn start_server(server: Server) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { server.serve(listener, token).await });
    Running {
        addr,
        shutdown,
        task: Some(task),
    }
}

/// Whether the client programs can be used; panics when they are missing
/// unless skipping was asked for.
pub fn clients_available(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| {
            !std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("NBD_SKIP_CLIENT_TESTS").is_some() {
        eprintln!("skipping: {missing:?} not installed");
        return false;
    }
    panic!("{missing:?} not installed: apt-get install -y qemu-utils libnbd-bin (or set NBD_SKIP_CLIENT_TESTS=1)");
}

pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a program to its end (killed on timeout or drop) and echoes its
/// output for the test log.
pub async fn run(program: &str, args: &[&str]) -> Ran {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let out: Output = tokio::time::timeout(
        Duration::from_secs(CLIENT_SECS_MAX),
        child.wait_with_output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
    .unwrap();
    let ran = Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ {program} {args:?}\n{}\n{}", ran.stdout, ran.stderr);
    ran
}

/// qemu-io with one `-c` per command.
pub async fn qemu_io(uri: &str, extra: &[&str], commands: &[&str]) -> Ran {
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(extra);
    args.push(uri);
    for c in commands {
        args.extend_from_slice(&["-c", c]);
    }
    run("qemu-io", &args).await
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nbd-tests-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
