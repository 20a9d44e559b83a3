//! Running the system tools the host side drives (losetup, nbd-client,
//! nbdfuse), each with a time limit, and reporting their failures as one
//! sentence with what they printed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a bounded wait looks again.
pub const POLL_INTERVAL_MS: u64 = 20;

/// Runs `program args` to completion within `timeout_ms`; its stdout on
/// success, else a sentence with its stderr.
pub fn run(program: &str, args: &[&str], timeout_ms: u64) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {program}: {e}{}",
                if e.kind() == std::io::ErrorKind::NotFound {
                    install_hint(program)
                } else {
                    String::new()
                }
            )
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} {} did not finish within {} s",
                    args.join(" "),
                    timeout_ms / 1000
                ));
            }
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{program} {} failed ({status}): {}",
            args.join(" "),
            stderr.trim()
        ))
    }
}

/// Whether `program` is on the PATH.
pub fn exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub fn install_hint(program: &str) -> String {
    let package = match program {
        "nbdfuse" => "libnbd-bin",
        "nbd-client" => "nbd-client",
        "losetup" | "umount" => "util-linux",
        _ => return String::new(),
    };
    format!(" (install the {package} package)")
}

/// Waits until `ready()` holds or `timeout_ms` passes; whether it held.
pub fn wait_until(timeout_ms: u64, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}
