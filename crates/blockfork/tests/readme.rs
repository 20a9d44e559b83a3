//! The README's first command, exactly as written there, on a fresh data
//! directory: it must start the server (both listeners answer) and a LUN
//! created through the CLI must take a write over NBD and read it back.
//!
//! Only `--data`, `--nbd` and `--api` are appended, so that the test uses a
//! temporary directory and free ports; everything else is the README's text,
//! run by `sh` from the workspace root as a new user would type it (behind
//! `exec`, so that the signal at the end reaches the server).

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first command of the README's first code block, without its comment.
fn first_command(readme: &str) -> String {
    let mut in_block = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            if in_block {
                break;
            }
            in_block = true;
            continue;
        }
        if in_block {
            let command = line.split('#').next().unwrap().trim();
            if !command.is_empty() {
                return command.to_string();
            }
        }
    }
    panic!("README.md has no command in its first code block");
}

/// Kills the server's whole process group when the test ends, however it ends.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn readme_first_command_serves_a_lun() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = first_command(&readme);
    assert_eq!(command, "cargo run --release -- serve", "README changed");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (nbd_port, api_port) = (free_port(), free_port());
    let full = format!(
        "exec {command} --data '{}' --nbd 127.0.0.1:{nbd_port} --api 127.0.0.1:{api_port}",
        data.display()
    );
    let log = tmp.path().join("serve.log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(&full)
        .current_dir(&root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("run sh");
    let mut group = Group(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // `cargo run --release` may have to build first (scripts/test.sh builds
    // the release binaries before the tests, so this is normally seconds).
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let up = |p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(nbd_port) && up(api_port) {
            break;
        }
        if let Some(status) = group.0.try_wait().unwrap() {
            panic!("`{full}` exited ({status}): {}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "`{full}` did not come up: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The pool is closed by default: map the LUN to this host, as the tour does.
    let server = Server {
        child: None,
        dir: data.clone(),
        nbd_port,
        api_port,
        log: tmp.path().join("unused.log"),
    };
    server.cli_ok(&["igroup", "create", "local", "--address", "127.0.0.1"]);
    server.cli_ok(&["lun", "create", "readme", "--size", "16M"]);
    server.cli_ok(&["lun", "map", "readme", "local"]);

    let mut nbd = NbdClient::connect(nbd_port, "readme").expect("NBD connect");
    assert_eq!(nbd.size, 16 << 20);
    let block: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(nbd.write(1 << 20, &block).unwrap(), 0);
    assert_eq!(nbd.flush().unwrap(), 0);
    let (err, back) = nbd.read(1 << 20, block.len() as u32).unwrap();
    assert_eq!(err, 0);
    assert!(back == block, "read back differs from what was written");
    drop(nbd);

    // SIGTERM: the server exits cleanly (`exec` and `cargo run` both
    // replace their process, so the child is the server itself).
    unsafe {
        libc::kill(-(group.0.id() as i32), libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = group.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", log_text());
}

#[test]
fn first_command_parsing() {
    let text = "# x\n\n```sh\n\ncargo run -- serve   # comment\n./b\n```\n";
    assert_eq!(first_command(text), "cargo run -- serve");
}
