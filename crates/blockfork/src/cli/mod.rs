//! The command-line client: every command but `serve` is one or a few calls
//! to a running server's REST API (`--server`), printed as aligned tables
//! for people or as the API's own JSON for scripts (`--output json`).
//!
//! Calls go through the `client` crate, typed with `wire`'s request and
//! response types, the same the server uses, so that the two cannot drift.

use clap::builder::NonEmptyStringValueParser;
use client::wire::{
    AccessMode, AddDevice, CloneRange, CloneRangeReport, CloneRanges, CreateClones,
    CreateGroupSnapshot, CreateIgroup, CreateLun, Damage, DeviceInfo, GroupInfo, GrowPool,
    IgroupInfo, IgroupMember, JobInfo, JobState, LunInfo, MoveInfo, PoolCheck, PoolStatus,
    ReplaceDevice, ResizeLun, ScrubInfo, Settings, SnapshotInfo, SplitInfo, SplitPhase,
    UpdateSettings,
};
use client::Client;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod args;
mod commands;
mod mirror;
mod output;
mod output_devices;

pub use args::*;
use commands::*;
pub use mirror::peer_create_flags;
pub use output::*;
use output_devices::*;
/// How often `snapshot delete --wait` asks for the reclaim job's progress.
const JOB_POLL_INTERVAL_MS: u64 = 200;
/// How often `lun clone status --watch` asks for the split's progress.
const SPLIT_POLL_INTERVAL_MS: u64 = 200;

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalOpts {
    /// URL of the blockfork server's REST API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "BLOCKFORK_SERVER",
        value_name = "URL"
    )]
    pub server: String,
    /// Output format: aligned tables for people, or the API's JSON for scripts.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,
    /// The server's data directory: `serve` keeps its pool there, and client
    /// commands read the API token from DIR/api-token when neither --token
    /// nor BLOCKFORK_TOKEN gives one.
    #[arg(
        long,
        global = true,
        default_value = "./blockfork-data",
        value_name = "DIR"
    )]
    pub data: PathBuf,
    /// The API's bearer token (default: BLOCKFORK_TOKEN, else DIR/api-token).
    #[arg(
        long,
        global = true,
        env = "BLOCKFORK_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// --server, such as a
    /// self-signed certificate given to `serve --tls-cert --api-tls`.
    #[arg(long, global = true, env = "BLOCKFORK_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

/// The token to send: --token or BLOCKFORK_TOKEN, else DATA/api-token when
/// it can be read. None lets the server say what is missing.
fn resolve_token(global: &GlobalOpts) -> Option<String> {
    if let Some(t) = &global.token {
        return Some(t.trim().to_string());
    }
    read_token_file(&global.data)
}

fn read_token_file(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("api-token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Runs one client command; errors go to stderr as one sentence, exit 1.
pub fn run(global: &GlobalOpts, command: Command) -> ExitCode {
    let token = resolve_token(global);
    let client = Client::new(&global.server, token, global.ca_cert.as_deref());
    let result = client.map_err(String::from).and_then(|client| {
        let out = Out {
            format: global.output,
        };
        match command {
            Command::Lun { command } => lun(&client, out, command),
            Command::Snapshot { command } => snapshot(&client, out, command),
            Command::Cg {
                command: CgCommand::Snapshot { command },
            } => cg_snapshot(&client, out, command),
            Command::Pool { command } => pool(&client, out, command),
            Command::Job {
                command: JobCommand::List,
            } => jobs(&client, out),
            Command::Igroup { command } => igroup(&client, out, command),
            Command::Peer { command } => mirror::peer(&client, out, command),
            Command::Mirror { command } => mirror::mirror(&client, out, command),
            Command::Host(args) => crate::host::run(&client, out, args),
            Command::Events {
                follow,
                since,
                last,
            } => events(&client, out, follow, since, last),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn parse_size_accepts() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("1K", 1024),
            ("1k", 1024),
            ("4KiB", 4096),
            ("512M", 512 << 20),
            ("512MB", 512 << 20),
            ("10G", 10 << 30),
            ("10 GiB", 10 << 30),
            ("10gib", 10 << 30),
            (" 10G ", 10 << 30),
            ("1.5T", 3 << 39),
            ("0.5K", 512),
            ("1.25G", (1 << 30) + (1 << 28)),
            ("2P", 2 << 50),
            ("16383P", 16383 << 50),
            ("18446744073709551615", u64::MAX),
            ("007G", 7 << 30),
        ];
        for &(text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn parse_size_refuses() {
        let cases: &[(&str, &str)] = &[
            ("", "not a size"),
            ("G", "not a size"),
            ("-1G", "not a size"),
            ("+1G", "not a size"),
            ("1.G", "not a size"),
            (".5G", "not a size"),
            ("1..5G", "not a size"),
            ("1.2.3G", "not a size"),
            ("1e9", "unknown unit"),
            ("10X", "unknown unit"),
            ("10GG", "unknown unit"),
            ("10 G B", "unknown unit"),
            ("0x10", "unknown unit"),
            ("1.5", "whole number of bytes"),
            ("0.1K", "whole number of bytes"),
            ("16384P", "too large"),
            ("18446744073709551616", "too large"),
            ("99999999999999999999999999999", "too large"),
        ];
        for &(text, fragment) in cases {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(3 << 39), "1.5 TiB");
        assert_eq!(format_size((1 << 30) + 1), "1.0 GiB");
        assert_eq!(format_size(u64::MAX), "16384.0 PiB");
        for bytes in [4096, 10 << 30, 3 << 39, 512 << 20] {
            let shown = format_size(bytes).replace(' ', "");
            assert_eq!(parse_size(&shown), Ok(bytes), "{shown}");
        }
        assert_eq!(size_with_bytes(4096), "4 KiB (4096 bytes)");
        assert_eq!(size_with_bytes(12), "12 B");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_777_638_645), "2026-05-01T12:30:45Z");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["vol0/db".to_string(), "10 GiB".to_string(), "-".to_string()],
            vec!["a".to_string(), "4 KiB".to_string(), "x@y".to_string()],
        ];
        let shown = table(
            &[
                ("NAME", Align::Left),
                ("SIZE", Align::Right),
                ("PARENT", Align::Left),
            ],
            &rows,
        );
        assert_eq!(
            shown,
            "NAME       SIZE  PARENT\n\
             vol0/db  10 GiB  -\n\
             a         4 KiB  x@y\n"
        );
        let kv = details(&[("name", "a".into()), ("allocated", "0 B".into())]);
        assert_eq!(kv, "name       a\nallocated  0 B\n");
    }

    #[test]
    fn lun_table_shows_every_lun() {
        let luns = vec![
            LunInfo {
                id: 1,
                name: "vol0/db".into(),
                size_bytes: 10 << 30,
                allocated_bytes: 3 << 29,
                snapshot_count: 2,
                created: 0,
                parent: None,
                clones: vec!["vol0/clone".into()],
                maps: Vec::new(),
                replica: false,
                replica_view: None,
                redundancy: "none".into(),
                reserve: false,
                snapshot_reserve_percent: 0,
                reserved_bytes: 0,
                relayout_done_bytes: None,
            },
            LunInfo {
                id: 2,
                name: "vol0/clone".into(),
                size_bytes: 10 << 30,
                allocated_bytes: 0,
                snapshot_count: 0,
                created: 0,
                parent: Some("vol0/db@nightly".into()),
                clones: Vec::new(),
                maps: Vec::new(),
                replica: false,
                replica_view: None,
                redundancy: "none".into(),
                reserve: false,
                snapshot_reserve_percent: 0,
                reserved_bytes: 0,
                relayout_done_bytes: None,
            },
        ];
        assert_eq!(
            lun_table(&luns),
            "NAME          SIZE  ALLOCATED  SNAPSHOTS  PARENT           CREATED\n\
             vol0/db     10 GiB    1.5 GiB          2  -                1970-01-01T00:00:00Z\n\
             vol0/clone  10 GiB        0 B          0  vol0/db@nightly  1970-01-01T00:00:00Z\n"
        );
        assert_eq!(lun_table(&[]), "no LUNs\n");
    }

    #[test]
    fn split_table_shows_every_split() {
        let splits = vec![
            SplitInfo {
                lun: "vol0/test".into(),
                parent: Some("vol0/db@nightly".into()),
                state: SplitPhase::Running,
                progress: 0.4567,
                copied_bytes: 20 << 20,
                total_bytes: 48 << 20,
                rate_bytes_per_sec: 2_000_000,
                started: Some(0),
                message: None,
            },
            SplitInfo {
                lun: "ci/run-1".into(),
                parent: Some("vol0/db@nightly (deleted)".into()),
                state: SplitPhase::Stopped,
                progress: 0.0,
                copied_bytes: 0,
                total_bytes: 48 << 20,
                rate_bytes_per_sec: 0,
                started: Some(0),
                message: None,
            },
        ];
        assert_eq!(
            split_table(&splits),
            "LUN        PARENT                     STATE    PROGRESS  COPIED    RATE\n\
             vol0/test  vol0/db@nightly            running     45.6%  20 MiB  2 MB/s\n\
             ci/run-1   vol0/db@nightly (deleted)  stopped      0.0%     0 B  0 MB/s\n"
        );
        assert_eq!(split_table(&[]), "no splits under way\n");
        let shown = split_details(&splits[0]);
        assert!(shown.contains("progress  45.6%\n"), "{shown}");
        assert!(shown.contains("rate      2 MB/s\n"), "{shown}");
    }

    #[test]
    fn percentages_and_rates() {
        assert_eq!(format_percent(0.0), "0.0%");
        assert_eq!(format_percent(0.9999), "99.9%");
        assert_eq!(format_percent(1.0), "100.0%");
        assert_eq!(format_percent(2.0), "100.0%");
        assert_eq!(format_rate(0), "0 MB/s");
        assert_eq!(format_rate(128_000_000), "128 MB/s");
        assert_eq!(format_rate(1_500_000), "1.5 MB/s");
    }

    /// The same shape as main.rs gives the commands.
    #[derive(clap::Parser, Debug)]
    #[command(name = "blockfork")]
    struct TestCli {
        #[command(flatten)]
        global: GlobalOpts,
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn vocabulary() {
        TestCli::command().debug_assert();
        let parse = |line: &str| TestCli::try_parse_from(line.split_whitespace());
        for line in [
            "blockfork lun create vol0/db --size 10G",
            "blockfork lun list",
            "blockfork lun list vol0/",
            "blockfork lun show vol0/db",
            "blockfork lun resize vol0/db --size 5G --shrink",
            "blockfork lun delete vol0/db --recursive",
            "blockfork snapshot create vol0/db nightly",
            "blockfork snapshot list",
            "blockfork snapshot list vol0/db",
            "blockfork snapshot delete vol0/db nightly --wait",
            "blockfork snapshot restore vol0/db nightly",
            "blockfork cg snapshot create cg1 a b c",
            "blockfork cg snapshot list",
            "blockfork cg snapshot delete cg1",
            "blockfork pool status",
            "blockfork pool grow --capacity 2T",
            "blockfork job list",
            "blockfork lun clone create vol0/db@nightly vol0/test",
            "blockfork lun clone create vol0/db@nightly ci/run --count 100 --split",
            "blockfork lun clone start vol0/test",
            "blockfork lun clone status vol0/test",
            "blockfork lun clone status vol0/test --watch",
            "blockfork lun clone show",
            "blockfork lun clone show ci/",
            "blockfork lun clone stop vol0/test",
            "blockfork pool set --split-rate 64",
            "blockfork pool set",
            "blockfork --output json job list",
            "blockfork job list --server http://127.0.0.1:9000 --output json",
        ] {
            parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let parsed = parse("blockfork lun create vol0/db --size 1.5G").unwrap();
        assert!(matches!(
            parsed.command,
            Command::Lun {
                command: LunCommand::Create { size, .. }
            } if size == 3 << 29
        ));
        let parsed = parse("blockfork --output json pool status").unwrap();
        assert_eq!(parsed.global.output, OutputFormat::Json);
        for line in [
            "blockfork lun create vol0/db",
            "blockfork lun create vol0/db --size 10X",
            "blockfork cg snapshot create cg1",
            "blockfork snapshot delete vol0/db",
            "blockfork pool grow",
            "blockfork lun frobnicate",
            "blockfork lun clone create vol0/db@nightly",
            "blockfork lun clone create vol0/db@nightly x --count -1",
            "blockfork lun clone create vol0/db@nightly x --count many",
            "blockfork lun clone start",
            "blockfork lun clone status",
            "blockfork lun clone stop",
            "blockfork pool set --split-rate 2M",
            "blockfork --output yaml job list",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }
}
