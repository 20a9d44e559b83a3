//! The command-line client: every command but `serve` is one or a few calls
//! to a running server's REST API (`--server`), printed as aligned tables
//! for people or as the API's own JSON for scripts (`--output json`).
//!
//! The request and response types are `api::wire`'s, the same the server
//! uses, so that the two cannot drift.

use api::wire::{
    AccessMode, CloneRange, CloneRangeReport, CloneRanges, CreateClones, CreateGroupSnapshot,
    CreateIgroup, CreateLun, CreateSnapshot, CreateSnapshots, ErrorBody, GroupInfo, GrowPool,
    IgroupInfo, IgroupMember, JobInfo, JobState, LunInfo, LunMap, PoolCheck, PoolStatus, ResizeLun,
    Settings, SnapshotInfo, SplitInfo, SplitPhase, SplitTarget, UpdateSettings,
};
use clap::builder::NonEmptyStringValueParser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[path = "host/mod.rs"]
mod host;

/// Longest wait to connect to the server.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for one API call; deleting a large LUN is the slowest.
const REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Largest response body the client reads (a list of many LUNs).
const RESPONSE_BYTES_MAX: u64 = 256 << 20;
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned tables with human sizes.
    Text,
    /// The API's JSON, pretty-printed.
    Json,
}

/// The client commands; each talks to the server given by `--server`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create, list, show, resize and delete LUNs (thin volumes), and clone
    /// snapshots into new LUNs.
    Lun {
        #[command(subcommand)]
        command: LunCommand,
    },
    /// Take, list, delete and restore snapshots of LUNs.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Consistency groups: snapshots of several LUNs at one point in time.
    Cg {
        #[command(subcommand)]
        command: CgCommand,
    },
    /// Show or grow the storage pool, and change its runtime settings.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// List background jobs, such as reclaiming a deleted snapshot's space.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Host groups (igroups): the hosts, by address or TLS certificate CN,
    /// that LUNs can be mapped to.
    Igroup {
        #[command(subcommand)]
        command: IgroupCommand,
    },
    /// On a host that mounts LUNs: attach LUNs as block devices, and clone
    /// files of their file systems without copying bytes.
    Host(host::HostArgs),
}

#[derive(clap::Subcommand, Debug)]
pub enum IgroupCommand {
    /// Create an igroup.
    Create {
        /// igroup name: letters, digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// A member by source address: a CIDR like 10.0.0.0/24 or one
        /// address. Repeat for more.
        #[arg(long = "address", value_name = "CIDR")]
        addresses: Vec<String>,
        /// A member by TLS client-certificate subject CN. Repeat for more.
        #[arg(long = "cert-cn", value_name = "CN")]
        cert_cns: Vec<String>,
    },
    /// Add one member to an igroup.
    Add {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        #[command(flatten)]
        member: MemberArg,
    },
    /// Remove one member from an igroup.
    Remove {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        #[command(flatten)]
        member: MemberArg,
    },
    /// List igroups, their members and the LUNs mapped to them.
    List,
    /// Show one igroup.
    Show {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
    /// Delete an igroup; refused while LUNs are mapped to it.
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

/// Exactly one igroup member.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct MemberArg {
    /// A CIDR like 10.0.0.0/24, or one address.
    #[arg(long, value_name = "CIDR")]
    address: Option<String>,
    /// A TLS client-certificate subject CN.
    #[arg(long = "cert-cn", value_name = "CN")]
    cert_cn: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum LunCommand {
    /// Create a thin LUN; it takes no space until written.
    Create {
        /// LUN name: a path like vol0/db, of segments made of letters,
        /// digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// Size, like 10G, 512M or 1.5T (binary units: K, M, G, T, P, with
        /// optional B or iB), or bytes; a multiple of 4 KiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// List LUNs, by name.
    List {
        /// Only LUNs whose name starts with this, like vol0/.
        prefix: Option<String>,
    },
    /// Show one LUN.
    Show {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
    /// Grow a LUN, or shrink it with --shrink. Snapshots keep their size.
    Resize {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// New size, like 20G (binary units K, M, G, T, P), or bytes.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Allow making the LUN smaller, which discards the data past the new end.
        #[arg(long)]
        shrink: bool,
    },
    /// Delete a LUN. Refused while it has snapshots, unless --recursive.
    Delete {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// Also delete the LUN's snapshots.
        #[arg(long)]
        recursive: bool,
    },
    /// Writable clones of snapshots, and the split that makes a clone
    /// independent of its snapshot.
    Clone {
        #[command(subcommand)]
        command: CloneCommand,
    },
    /// Map a LUN to an igroup: the igroup's hosts see it (and its
    /// snapshots) over NBD.
    Map {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        igroup: String,
    },
    /// Unmap a LUN from an igroup.
    Unmap {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        igroup: String,
    },
    /// Make ranges of a LUN read what ranges of a LUN or snapshot read, by
    /// sharing blocks (no data copied), in one transaction: restore files
    /// from a snapshot, or clone files within or between LUNs.
    #[command(name = "clone-range")]
    CloneRange {
        /// Where the data comes from: LUN or LUN@SNAPSHOT.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        source: Option<String>,
        /// The LUN written.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        target: String,
        /// One range as SRC_OFFSET:DST_OFFSET:LENGTH (bytes, or sizes like
        /// 4M; multiples of 4 KiB). Repeat for more.
        #[arg(long = "range", value_name = "SRC:DST:LEN", value_parser = parse_range)]
        ranges: Vec<(u64, u64, u64)>,
        /// A JSON file with a list of {"source", "source_offset",
        /// "target_offset", "length"} (source defaults to --source).
        #[arg(long, value_name = "FILE")]
        ranges_file: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// Create a writable LUN backed by a snapshot, instantly and taking no
    /// space until written; it is exported over NBD like any LUN. While
    /// clones depend on a snapshot, deleting the snapshot only hides it.
    Create {
        /// The snapshot to clone, as LUN@SNAPSHOT.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        source: String,
        /// The new LUN's name; with --count, the clones are NEW-1 to NEW-N.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        new: String,
        /// Create N clones, NEW-1 to NEW-N, at once (all or none; at most 10000).
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        /// Start each clone's split at once (a snapclone).
        #[arg(long)]
        split: bool,
    },
    /// Start (or resume) splitting a clone: copy, in the background, what it
    /// still reads from its snapshot, after which it is independent.
    Start {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
    },
    /// Show a clone's split: its state, the percentage done and the rate.
    Status {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
        /// Follow the split with a progress bar until it is done, stopped or
        /// waiting for space, then show its state; exit 0 only when done.
        #[arg(long)]
        watch: bool,
    },
    /// List every split under way (running, stopped or waiting for space).
    Show {
        /// Only splits of LUNs whose name starts with this, like vol0/.
        prefix: Option<String>,
    },
    /// Stop a clone's split; the clone stays valid and backed by its
    /// snapshot, and `start` resumes where it stopped.
    Stop {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of a LUN: instant, and it takes no space until the
    /// LUN is overwritten. Readable over NBD as LUN@SNAPSHOT.
    Create {
        /// The LUN to snapshot.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// Snapshot name: letters, digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
    },
    /// List snapshots of one LUN, or of every LUN.
    List {
        /// Only this LUN's snapshots.
        lun: Option<String>,
    },
    /// Delete a snapshot; its space is reclaimed in the background.
    Delete {
        /// The LUN the snapshot belongs to.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// Snapshot name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
        /// Wait, with a progress bar, until the space is reclaimed.
        #[arg(long)]
        wait: bool,
    },
    /// Make a LUN's content and size the snapshot's again, without copying
    /// data. Newer snapshots stay.
    Restore {
        /// The LUN to restore.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// The snapshot to restore it to.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CgCommand {
    /// Group snapshots: one snapshot of each LUN, all at the same instant.
    Snapshot {
        #[command(subcommand)]
        command: CgSnapshotCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CgSnapshotCommand {
    /// Take a group snapshot: each LUN gets a snapshot named NAME, all at
    /// the same instant, so that together they are crash-consistent.
    Create {
        /// Group snapshot name (also each member snapshot's name).
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// The member LUNs.
        #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
        luns: Vec<String>,
    },
    /// List group snapshots.
    List,
    /// Delete a group snapshot and all its member snapshots.
    Delete {
        /// Group snapshot name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PoolCommand {
    /// Show the pool's capacity, use and counts.
    Status,
    /// Check the pool's invariants online, without stopping I/O: the
    /// committed metadata as a restart would read it, then the live maps
    /// one LUN at a time. Exits non-zero when it finds a problem.
    Check,
    /// Grow the pool's capacity (a pool never shrinks).
    Grow {
        /// New total capacity, like 2T (binary units K, M, G, T, P), or bytes.
        #[arg(long, value_parser = parse_size)]
        capacity: u64,
    },
    /// Change the pool's runtime settings; with no option, show them.
    /// Changes last until the server restarts.
    Set {
        /// Pool-wide clone split rate limit in MB/s (10^6 bytes per
        /// second); 0 for unlimited. While reads or writes arrive, splits
        /// copy at a quarter of it (unlimited stays unlimited). `blockfork
        /// serve --split-rate` sets it at start.
        #[arg(long, value_name = "MBPS")]
        split_rate: Option<u64>,
        /// `open`: LUNs without maps are visible to every NBD client;
        /// `closed`: a LUN is visible only to the igroups it is mapped to.
        /// Stored with the pool.
        #[arg(long, value_enum)]
        access: Option<AccessArg>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessArg {
    Open,
    Closed,
}

#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// List background jobs: running ones, then recently finished ones.
    List,
}

/// Runs one client command; errors go to stderr as one sentence, exit 1.
pub fn run(global: &GlobalOpts, command: Command) -> ExitCode {
    let token = resolve_token(global);
    let result = Client::new(&global.server, token, global.ca_cert.as_deref()).and_then(|client| {
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
            Command::Host(args) => host::run(&client, out, args),
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

// ------------------------------------------------------------- commands

fn lun(client: &Client, out: Out, command: LunCommand) -> Result<(), String> {
    match command {
        LunCommand::Create { name, size } => {
            let reply = client.send("POST", "/luns", &CreateLun { name, size })?;
            out.show(reply, |l: LunInfo| lun_details(&l))
        }
        LunCommand::List { prefix } => {
            let path = match prefix {
                Some(p) => format!("/luns?prefix={}", encode(&p)),
                None => "/luns".to_string(),
            };
            out.show(client.get(&path)?, |luns: Vec<LunInfo>| lun_table(&luns))
        }
        LunCommand::Show { name } => {
            out.show(client.get(&lun_path(&name))?, |l: LunInfo| lun_details(&l))
        }
        LunCommand::Resize { name, size, shrink } => {
            let reply = client.send("PATCH", &lun_path(&name), &ResizeLun { size, shrink })?;
            out.show(reply, |l: LunInfo| lun_details(&l))
        }
        LunCommand::Delete { name, recursive } => {
            let path = format!("{}?recursive={recursive}", lun_path(&name));
            client.delete(&path)?;
            let also = if recursive { " and its snapshots" } else { "" };
            out.done(&format!("deleted LUN \"{name}\"{also}"))
        }
        LunCommand::Clone { command } => clone(client, out, command),
        LunCommand::Map { lun, igroup } => {
            client.send(
                "POST",
                "/lun-maps",
                &LunMap {
                    lun: lun.clone(),
                    igroup: igroup.clone(),
                },
            )?;
            out.done(&format!("mapped LUN \"{lun}\" to igroup \"{igroup}\""))
        }
        LunCommand::Unmap { lun, igroup } => {
            client.delete(&format!(
                "/lun-maps?lun={}&igroup={}",
                encode(&lun),
                encode(&igroup)
            ))?;
            out.done(&format!("unmapped LUN \"{lun}\" from igroup \"{igroup}\""))
        }
        LunCommand::CloneRange {
            source,
            target,
            ranges,
            ranges_file,
        } => {
            let mut list: Vec<CloneRange> = Vec::new();
            if let Some(file) = ranges_file {
                list.extend(read_ranges_file(&file, source.as_deref())?);
            }
            if !ranges.is_empty() {
                let source = source.clone().ok_or(
                    "--range needs --source (LUN or LUN@SNAPSHOT) to say where the data comes from",
                )?;
                list.extend(ranges.into_iter().map(|(s, d, l)| CloneRange {
                    source: source.clone(),
                    source_offset: s,
                    target_offset: d,
                    length: l,
                }));
            }
            if list.is_empty() {
                return Err("give at least one --range SRC:DST:LEN or a --ranges-file".into());
            }
            let reply = client.send(
                "POST",
                "/clone-range",
                &CloneRanges {
                    target,
                    ranges: list,
                },
            )?;
            out.show(reply, |r: CloneRangeReport| {
                details(&[
                    ("target", r.target.clone()),
                    ("ranges", r.ranges.to_string()),
                    ("cloned", size_with_bytes(r.bytes)),
                    ("shared data", size_with_bytes(r.shared_bytes)),
                    ("extents", r.extents.to_string()),
                ])
            })
        }
    }
}

/// `SRC:DST:LEN`, each a size (bytes or like 4M).
fn parse_range(s: &str) -> Result<(u64, u64, u64), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [src, dst, len] = parts.as_slice() else {
        return Err(format!("{s:?} is not SRC_OFFSET:DST_OFFSET:LENGTH"));
    };
    Ok((parse_size(src)?, parse_size(dst)?, parse_size(len)?))
}

/// A JSON list of ranges; entries without a source take `default_source`.
fn read_ranges_file(file: &Path, default_source: Option<&str>) -> Result<Vec<CloneRange>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        source: Option<String>,
        source_offset: u64,
        target_offset: u64,
        length: u64,
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a JSON list of {{source, source_offset, target_offset, length}}: {e}",
            file.display()
        )
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let source = e
                .source
                .or_else(|| default_source.map(str::to_string))
                .ok_or_else(|| {
                    format!(
                        "range {i} of {} names no source and no --source was given",
                        file.display()
                    )
                })?;
            Ok(CloneRange {
                source,
                source_offset: e.source_offset,
                target_offset: e.target_offset,
                length: e.length,
            })
        })
        .collect()
}

fn igroup(client: &Client, out: Out, command: IgroupCommand) -> Result<(), String> {
    let member = |m: MemberArg| IgroupMember {
        address: m.address,
        cert_cn: m.cert_cn,
    };
    let path = |name: &str| format!("/igroups/{}", encode(name));
    let reply = match command {
        IgroupCommand::Create {
            name,
            addresses,
            cert_cns,
        } => client.send(
            "POST",
            "/igroups",
            &CreateIgroup {
                name,
                addresses,
                cert_cns,
            },
        )?,
        IgroupCommand::Add { name, member: m } => {
            client.send("POST", &format!("{}/members", path(&name)), &member(m))?
        }
        IgroupCommand::Remove { name, member: m } => {
            let m = member(m);
            let query = match (&m.address, &m.cert_cn) {
                (Some(a), _) => format!("address={}", encode(a)),
                (_, Some(c)) => format!("cert_cn={}", encode(c)),
                _ => unreachable!("clap requires one"),
            };
            client.delete(&format!("{}/members?{query}", path(&name)))?
        }
        IgroupCommand::List => {
            let reply = client.get("/igroups")?;
            return out.show(reply, |g: Vec<IgroupInfo>| igroup_table(&g));
        }
        IgroupCommand::Show { name } => client.get(&path(&name))?,
        IgroupCommand::Delete { name } => {
            client.delete(&path(&name))?;
            return out.done(&format!("deleted igroup \"{name}\""));
        }
    };
    out.show(reply, |g: IgroupInfo| igroup_details(&g))
}

fn igroup_details(g: &IgroupInfo) -> String {
    details(&[
        ("name", g.name.clone()),
        ("addresses", list_or_dash(&g.addresses)),
        ("cert CNs", list_or_dash(&g.cert_cns)),
        ("LUNs", list_or_dash(&g.luns)),
    ])
}

fn igroup_table(groups: &[IgroupInfo]) -> String {
    if groups.is_empty() {
        return "no igroups\n".into();
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                list_or_dash(&g.addresses),
                list_or_dash(&g.cert_cns),
                list_or_dash(&g.luns),
            ]
        })
        .collect();
    table(
        &[
            ("NAME", Align::Left),
            ("ADDRESSES", Align::Left),
            ("CERT CNS", Align::Left),
            ("LUNS", Align::Left),
        ],
        &rows,
    )
}

fn clone(client: &Client, out: Out, command: CloneCommand) -> Result<(), String> {
    match command {
        CloneCommand::Create {
            source,
            new,
            count,
            split,
        } => {
            let body = CreateClones {
                source,
                name: new,
                count,
                split,
            };
            let reply = client.send("POST", "/clones", &body)?;
            out.show(reply, |clones: Vec<LunInfo>| {
                let mut text = match clones.as_slice() {
                    [one] => lun_details(one),
                    many => lun_table(many),
                };
                if split {
                    text.push_str(&format!(
                        "split started; follow it with `blockfork lun clone {}`\n",
                        match clones.as_slice() {
                            [one] => format!("status {} --watch", one.name),
                            _ => "show".to_string(),
                        }
                    ));
                }
                text
            })
        }
        CloneCommand::Start { path } => {
            let reply = client.send("POST", "/splits/start", &SplitTarget { lun: path })?;
            out.show(reply, |s: SplitInfo| split_details(&s))
        }
        CloneCommand::Stop { path } => {
            let reply = client.send("POST", "/splits/stop", &SplitTarget { lun: path })?;
            out.show(reply, |s: SplitInfo| split_details(&s))
        }
        CloneCommand::Status { path, watch: false } => out
            .show(client.get(&split_path(&path))?, |s: SplitInfo| {
                split_details(&s)
            }),
        CloneCommand::Status { path, watch: true } => {
            let (info, raw) = watch_split(client, &path)?;
            match out.format {
                OutputFormat::Json => out.json(&raw)?,
                OutputFormat::Text => out.text(&split_details(&info))?,
            }
            match info.state {
                SplitPhase::Done | SplitPhase::Independent => Ok(()),
                SplitPhase::NotStarted => Err(format!(
                    "no split of \"{path}\" is under way; start it with `blockfork lun clone start {path}`"
                )),
                state => Err(format!(
                    "the split of \"{path}\" is {state}{}",
                    info.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )),
            }
        }
        CloneCommand::Show { prefix } => {
            let path = match prefix {
                Some(p) => format!("/splits?prefix={}", encode(&p)),
                None => "/splits".to_string(),
            };
            out.show(client.get(&path)?, |s: Vec<SplitInfo>| split_table(&s))
        }
    }
}

/// Polls a split, with a progress bar on a terminal, until it is no longer
/// running; returns its last state, as parsed and as the API sent it.
fn watch_split(client: &Client, lun: &str) -> Result<(SplitInfo, Value), String> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {percent:>3}% {msg} ({elapsed})",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_prefix(format!("splitting \"{lun}\""));
    loop {
        let raw = client.get(&split_path(lun))?;
        let info: SplitInfo = parse(raw.clone())?;
        if info.state != SplitPhase::Running {
            bar.finish_and_clear();
            return Ok((info, raw));
        }
        bar.set_position((info.progress.clamp(0.0, 1.0) * 1000.0) as u64);
        bar.set_message(format!(
            "{} copied at {}",
            format_size(info.copied_bytes),
            format_rate(info.rate_bytes_per_sec)
        ));
        std::thread::sleep(Duration::from_millis(SPLIT_POLL_INTERVAL_MS));
    }
}

fn snapshot(client: &Client, out: Out, command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Create { lun, snapshot } => {
            let body = CreateSnapshots::One(CreateSnapshot {
                lun,
                name: snapshot,
            });
            let reply = client.send("POST", "/snapshots", &body)?;
            out.show(reply, |s: SnapshotInfo| snapshot_details(&s))
        }
        SnapshotCommand::List { lun } => {
            let path = match lun {
                Some(l) => format!("/snapshots?lun={}", encode(&l)),
                None => "/snapshots".to_string(),
            };
            out.show(client.get(&path)?, |s: Vec<SnapshotInfo>| {
                snapshot_table(&s)
            })
        }
        SnapshotCommand::Delete {
            lun,
            snapshot,
            wait,
        } => {
            client.delete(&snapshot_path(&lun, &snapshot, ""))?;
            if !wait {
                return out.done(&format!(
                    "deleted snapshot \"{lun}@{snapshot}\"; its space is reclaimed in the background"
                ));
            }
            let finished = wait_for_reclaim(client, &lun)?;
            match (out.format, finished) {
                (OutputFormat::Json, Some((_, raw))) => out.json(&raw),
                (OutputFormat::Json, None) => Ok(()),
                (OutputFormat::Text, Some((job, _))) => out.text(&format!(
                    "deleted snapshot \"{lun}@{snapshot}\"; reclaimed {}",
                    format_size(job.freed_bytes)
                )),
                (OutputFormat::Text, None) => {
                    out.text(&format!("deleted snapshot \"{lun}@{snapshot}\""))
                }
            }
        }
        SnapshotCommand::Restore { lun, snapshot } => {
            let reply = client.post_empty(&snapshot_path(&lun, &snapshot, "/restore"))?;
            out.show(reply, |l: LunInfo| {
                format!(
                    "restored LUN \"{lun}\" to snapshot \"{snapshot}\" (size {})\n",
                    format_size(l.size_bytes)
                )
            })
        }
    }
}

fn cg_snapshot(client: &Client, out: Out, command: CgSnapshotCommand) -> Result<(), String> {
    match command {
        CgSnapshotCommand::Create { name, luns } => {
            let body = CreateGroupSnapshot { name, luns };
            let reply = client.send("POST", "/group-snapshots", &body)?;
            out.show(reply, |g: GroupInfo| group_details(&g))
        }
        CgSnapshotCommand::List => {
            let reply = client.get("/group-snapshots")?;
            out.show(reply, |g: Vec<GroupInfo>| group_table(&g))
        }
        CgSnapshotCommand::Delete { name } => {
            client.delete(&format!("/group-snapshots/{}", encode(&name)))?;
            out.done(&format!(
                "deleted group snapshot \"{name}\" and its member snapshots; their space is reclaimed in the background"
            ))
        }
    }
}

fn pool(client: &Client, out: Out, command: PoolCommand) -> Result<(), String> {
    let reply = match command {
        PoolCommand::Status => client.get("/pool")?,
        PoolCommand::Check => {
            let reply = client.get("/pool/check")?;
            let report: PoolCheck = parse(reply.clone())?;
            out.show(reply, |c: PoolCheck| check_details(&c))?;
            return match report.problems.len() {
                0 => Ok(()),
                n => Err(format!("the pool check found {n} problem(s)")),
            };
        }
        PoolCommand::Grow { capacity } => client.send(
            "PATCH",
            "/pool",
            &GrowPool {
                capacity: Some(capacity),
                access: None,
            },
        )?,
        PoolCommand::Set {
            split_rate,
            access: Some(access),
        } => {
            if let Some(mbps) = split_rate {
                client.send(
                    "PATCH",
                    "/settings",
                    &UpdateSettings {
                        split_rate_mbps: Some(mbps),
                    },
                )?;
            }
            let access = match access {
                AccessArg::Open => AccessMode::Open,
                AccessArg::Closed => AccessMode::Closed,
            };
            client.send(
                "PATCH",
                "/pool",
                &GrowPool {
                    capacity: None,
                    access: Some(access),
                },
            )?
        }
        PoolCommand::Set {
            split_rate,
            access: None,
        } => {
            let reply = match split_rate {
                None => client.get("/settings")?,
                Some(mbps) => client.send(
                    "PATCH",
                    "/settings",
                    &UpdateSettings {
                        split_rate_mbps: Some(mbps),
                    },
                )?,
            };
            return out.show(reply, |s: Settings| settings_details(&s));
        }
    };
    out.show(reply, |p: PoolStatus| pool_details(&p))
}

fn jobs(client: &Client, out: Out) -> Result<(), String> {
    out.show(client.get("/jobs")?, |j: Vec<JobInfo>| job_table(&j))
}

/// Polls the jobs until none is running for `lun`; returns the latest
/// finished one, as parsed and as the API sent it.
fn wait_for_reclaim(client: &Client, lun: &str) -> Result<Option<(JobInfo, Value)>, String> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% ({elapsed})")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!("reclaiming space of \"{lun}\""));
    loop {
        let raw = client.get("/jobs")?;
        let all: Vec<JobInfo> = parse(raw.clone())?;
        let mine = all.iter().enumerate().filter(|(_, j)| j.lun == lun);
        if let Some((_, running)) = mine.clone().find(|(_, j)| j.state == JobState::Running) {
            bar.set_position((running.progress.clamp(0.0, 1.0) * 1000.0) as u64);
            std::thread::sleep(Duration::from_millis(JOB_POLL_INTERVAL_MS));
            continue;
        }
        bar.finish_and_clear();
        let latest = mine.max_by_key(|(_, j)| j.id);
        return Ok(latest.map(|(i, job)| (job.clone(), raw[i].clone())));
    }
}

// --------------------------------------------------------------- output

#[derive(Clone, Copy)]
struct Out {
    format: OutputFormat,
}

impl Out {
    /// Prints a response: its JSON as is, or `text` of it parsed.
    fn show<T: DeserializeOwned>(
        self,
        reply: Value,
        text: impl FnOnce(T) -> String,
    ) -> Result<(), String> {
        match self.format {
            OutputFormat::Json => self.json(&reply),
            OutputFormat::Text => self.text(&text(parse(reply)?)),
        }
    }

    /// Reports a command whose response has no body: a sentence for people,
    /// nothing for scripts (the exit code says it worked).
    fn done(self, sentence: &str) -> Result<(), String> {
        match self.format {
            OutputFormat::Json => Ok(()),
            OutputFormat::Text => self.text(sentence),
        }
    }

    fn json(self, value: &Value) -> Result<(), String> {
        let text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
        self.text(&text)
    }

    fn text(self, text: &str) -> Result<(), String> {
        let mut stdout = std::io::stdout().lock();
        let written = stdout
            .write_all(text.as_bytes())
            .and_then(|()| {
                if text.ends_with('\n') {
                    Ok(())
                } else {
                    stdout.write_all(b"\n")
                }
            })
            .and_then(|()| stdout.flush());
        match written {
            // A reader that stopped early (`| head`) is not an error.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(format!("cannot write the output: {e}"))
            }
            _ => Ok(()),
        }
    }
}

fn parse<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value)
        .map_err(|e| format!("the server's response has an unexpected shape ({e}); is the server the same version as this client?"))
}

fn lun_details(l: &LunInfo) -> String {
    details(&[
        ("name", l.name.clone()),
        ("id", l.id.to_string()),
        ("size", size_with_bytes(l.size_bytes)),
        ("allocated", size_with_bytes(l.allocated_bytes)),
        ("snapshots", l.snapshot_count.to_string()),
        (
            "parent",
            l.parent
                .as_ref()
                .map(|p| format!("clone of {p}"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("clones", list_or_dash(&l.clones)),
        ("maps", list_or_dash(&l.maps)),
        ("created", format_time(l.created)),
    ])
}

fn list_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

fn lun_table(luns: &[LunInfo]) -> String {
    if luns.is_empty() {
        return "no LUNs\n".into();
    }
    let rows = luns
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                format_size(l.size_bytes),
                format_size(l.allocated_bytes),
                l.snapshot_count.to_string(),
                l.parent.clone().unwrap_or_else(|| "-".into()),
                format_time(l.created),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("ALLOCATED", Align::Right),
            ("SNAPSHOTS", Align::Right),
            ("PARENT", Align::Left),
            ("CREATED", Align::Left),
        ],
        &rows,
    )
}

fn snapshot_details(s: &SnapshotInfo) -> String {
    details(&[
        ("snapshot", format!("{}@{}", s.lun, s.name)),
        ("size", size_with_bytes(s.size_bytes)),
        ("exclusive", size_with_bytes(s.exclusive_bytes)),
        ("group", s.group.clone().unwrap_or_else(|| "-".into())),
        ("clones", list_or_dash(&s.clones)),
        ("created", format_time(s.created)),
    ])
}

fn snapshot_table(snapshots: &[SnapshotInfo]) -> String {
    if snapshots.is_empty() {
        return "no snapshots\n".into();
    }
    let rows = snapshots
        .iter()
        .map(|s| {
            vec![
                s.lun.clone(),
                s.name.clone(),
                format_size(s.size_bytes),
                format_size(s.exclusive_bytes),
                s.group.clone().unwrap_or_else(|| "-".into()),
                if s.clones.is_empty() {
                    "-".into()
                } else {
                    s.clones.join(",")
                },
                format_time(s.created),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("LUN", Align::Left),
            ("SNAPSHOT", Align::Left),
            ("SIZE", Align::Right),
            ("EXCLUSIVE", Align::Right),
            ("GROUP", Align::Left),
            ("CLONES", Align::Left),
            ("CREATED", Align::Left),
        ],
        &rows,
    )
}

fn split_details(s: &SplitInfo) -> String {
    let mut rows = vec![
        ("lun", s.lun.clone()),
        (
            "parent",
            s.parent.clone().unwrap_or_else(|| "- (independent)".into()),
        ),
        ("state", s.state.to_string()),
        ("progress", format_percent(s.progress)),
        ("copied", format_size(s.copied_bytes)),
        ("rate", format_rate(s.rate_bytes_per_sec)),
    ];
    if let Some(started) = s.started {
        rows.push(("started", format_time(started)));
    }
    if let Some(message) = &s.message {
        rows.push(("message", message.clone()));
    }
    details(&rows)
}

fn split_table(splits: &[SplitInfo]) -> String {
    if splits.is_empty() {
        return "no splits under way\n".into();
    }
    let rows = splits
        .iter()
        .map(|s| {
            vec![
                s.lun.clone(),
                s.parent.clone().unwrap_or_else(|| "-".into()),
                s.state.to_string(),
                format_percent(s.progress),
                format_size(s.copied_bytes),
                format_rate(s.rate_bytes_per_sec),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("LUN", Align::Left),
            ("PARENT", Align::Left),
            ("STATE", Align::Left),
            ("PROGRESS", Align::Right),
            ("COPIED", Align::Right),
            ("RATE", Align::Right),
        ],
        &rows,
    )
}

fn settings_details(s: &Settings) -> String {
    details(&[(
        "split rate",
        if s.split_rate_bytes_per_sec == 0 {
            "unlimited".to_string()
        } else {
            format_rate(s.split_rate_bytes_per_sec)
        },
    )])
}

/// A fraction as a percentage for people; never shows 100 % before the end.
fn format_percent(fraction: f64) -> String {
    let percent = fraction.clamp(0.0, 1.0) * 100.0;
    let shown = if percent < 100.0 {
        (percent * 10.0).floor() / 10.0
    } else {
        100.0
    };
    format!("{shown:.1}%")
}

/// A rate in MB/s (10^6 bytes per second), the unit of `--split-rate`.
fn format_rate(bytes_per_sec: u64) -> String {
    let mbps = bytes_per_sec as f64 / 1e6;
    if bytes_per_sec.is_multiple_of(1_000_000) {
        format!("{} MB/s", bytes_per_sec / 1_000_000)
    } else {
        format!("{mbps:.1} MB/s")
    }
}

fn group_details(g: &GroupInfo) -> String {
    details(&[
        ("group snapshot", g.name.clone()),
        ("members", g.members.join(", ")),
        ("created", format_time(g.created)),
    ])
}

fn group_table(groups: &[GroupInfo]) -> String {
    if groups.is_empty() {
        return "no group snapshots\n".into();
    }
    let rows = groups
        .iter()
        .map(|g| vec![g.name.clone(), format_time(g.created), g.members.join(",")])
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Align::Left),
            ("CREATED", Align::Left),
            ("MEMBERS", Align::Left),
        ],
        &rows,
    )
}

fn pool_details(p: &PoolStatus) -> String {
    let percent = if p.capacity_bytes == 0 {
        0.0
    } else {
        p.used_bytes as f64 * 100.0 / p.capacity_bytes as f64
    };
    details(&[
        ("capacity", size_with_bytes(p.capacity_bytes)),
        (
            "used",
            format!("{} ({percent:.1}%)", size_with_bytes(p.used_bytes)),
        ),
        ("free", size_with_bytes(p.free_bytes)),
        ("LUNs", p.luns.to_string()),
        ("snapshots", p.snapshots.to_string()),
        ("group snapshots", p.group_snapshots.to_string()),
        ("jobs running", p.jobs_running.to_string()),
        ("epoch", p.epoch.to_string()),
        ("created", format_time(p.created)),
    ])
}

fn check_details(c: &PoolCheck) -> String {
    let mut text = details(&[
        (
            "result",
            if c.ok {
                "ok".into()
            } else {
                "PROBLEMS FOUND".to_string()
            },
        ),
        ("committed epoch", c.epoch.to_string()),
        ("LUNs", c.luns.to_string()),
        ("snapshots", c.snapshots.to_string()),
        ("map entries", c.map_entries.to_string()),
        ("took", format!("{} ms", c.elapsed_ms)),
        ("longest lock hold", format!("{} µs", c.longest_hold_us)),
    ]);
    for p in &c.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    text
}

fn job_table(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.kind.clone(),
                if j.lun.is_empty() {
                    "-".into()
                } else {
                    j.lun.clone()
                },
                j.state.to_string(),
                format!("{:.0}%", j.progress.clamp(0.0, 1.0) * 100.0),
                format_size(j.freed_bytes),
                format_time(j.started),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("ID", Align::Right),
            ("KIND", Align::Left),
            ("LUN", Align::Left),
            ("STATE", Align::Left),
            ("PROGRESS", Align::Right),
            ("FREED", Align::Right),
            ("STARTED", Align::Left),
        ],
        &rows,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell, two spaces apart, numbers aligned
/// right; no trailing spaces.
fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&headers).chain(rows) {
        assert_eq!(row.len(), columns.len(), "a row has one cell per column");
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            match columns[i].1 {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines with the values aligned.
fn details(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// A size for people: "10 GiB" when exact, "1.3 GiB" when rounded.
pub fn format_size(bytes: u64) -> String {
    let unit = (0..UNITS.len())
        .rev()
        .find(|&u| bytes >> (10 * u) > 0)
        .unwrap_or(0);
    let whole = bytes >> (10 * unit);
    if whole << (10 * unit) == bytes {
        format!("{whole} {}", UNITS[unit])
    } else {
        let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn size_with_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format_size(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_size(bytes))
    }
}

/// Unix seconds as an RFC 3339 UTC time, like 2026-05-01T12:30:00Z.
fn format_time(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days to a civil date: Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses a size: bytes ("4096"), or a number with a binary unit K, M, G,
/// T or P, optionally followed by "B" or "iB" ("10G", "512MiB", "1.5T").
/// Every unit is a power of 1024; the result must be a whole number of
/// bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HINT: &str = "use bytes, or a number with a unit K, M, G, T or P (powers of 1024), like 4096, 10G or 1.5T";
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || (number.contains('.') && fraction.is_empty())
    {
        return Err(format!("not a size; {HINT}"));
    }
    let shift = match unit.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return Err(format!("unknown unit {:?}; {HINT}", unit.trim())),
    };
    let too_large = || "too large: the largest size is 16 EiB".to_string();
    // At most 2^64 (20 digits) times 2^50 fits in u128; longer is too large.
    if whole.trim_start_matches('0').len() > 20 || fraction.len() > 20 {
        return Err(too_large());
    }
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole << shift;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let fraction: u128 = fraction.parse().map_err(|_| too_large())?;
        let scaled = fraction << shift;
        if !scaled.is_multiple_of(scale) {
            return Err("not a whole number of bytes".to_string());
        }
        bytes += scaled / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

// --------------------------------------------------------------- client

/// A blocking client of one server's API.
struct Client {
    server: String,
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    fn new(server: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Client, String> {
        let trimmed = server.trim_end_matches('/');
        let scheme = ["http://", "https://"]
            .into_iter()
            .find(|s| trimmed.starts_with(s) && trimmed.len() > s.len());
        if scheme.is_none() {
            return Err(format!(
                "--server must be an http:// or https:// URL like http://127.0.0.1:8080, got {server:?}"
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--ca-cert {} is not PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-cert {} holds no PEM certificate",
                    path.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .timeout_global(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .build()
            .into();
        Ok(Client {
            server: trimmed.to_string(),
            base: format!("{trimmed}/api/v1"),
            agent,
            token,
        })
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        self.call("GET", path, None)
    }

    fn delete(&self, path: &str) -> Result<Value, String> {
        self.call("DELETE", path, None)
    }

    fn post_empty(&self, path: &str) -> Result<Value, String> {
        self.call("POST", path, None)
    }

    fn send(&self, method: &str, path: &str, body: &impl Serialize) -> Result<Value, String> {
        let body = serde_json::to_vec(body).expect("request types serialize");
        self.call(method, path, Some(body))
    }

    /// One API call: the response's JSON (`Null` for none), or the error
    /// to show, which for an API error is the server's own sentence.
    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let sent = match body {
            Some(body) => self.agent.run(
                request
                    .header("content-type", "application/json")
                    .body(body)
                    .map_err(|e| format!("invalid request URL {url:?}: {e}"))?,
            ),
            None => self.agent.run(
                request
                    .body(())
                    .map_err(|e| format!("invalid request URL {url:?}: {e}"))?,
            ),
        };
        let mut response = sent.map_err(|e| match e {
            ureq::Error::Timeout(_) => format!(
                "the blockfork server at {} did not answer in time ({e})",
                self.server
            ),
            e => format!(
                "cannot reach blockfork server at {}: {e}; is `blockfork serve` running?",
                self.server
            ),
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|e| {
                format!(
                    "cannot read the response of the blockfork server at {}: {e}",
                    self.server
                )
            })?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                format!(
                    "the server at {} answered {method} {path} with something that is not JSON ({e}); is it a blockfork server?",
                    self.server
                )
            });
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(error) => Err(error.message),
            Err(_) => Err(format!(
                "the server at {} answered {method} {path} with HTTP {status} and no blockfork error; is it a blockfork server?",
                self.server
            )),
        }
    }
}

fn lun_path(name: &str) -> String {
    format!("/luns/{}", encode(name))
}

fn split_path(lun: &str) -> String {
    format!("/splits/{}", encode(lun))
}

fn snapshot_path(lun: &str, snapshot: &str, action: &str) -> String {
    format!(
        "/snapshots/{}{action}?lun={}",
        encode(snapshot),
        encode(lun)
    )
}

/// Percent-encodes everything but `[A-Za-z0-9_-]`, '/' and '.' included:
/// a LUN name is then one path segment that no client or proxy normalizes
/// (think "a/../b"), and the server decodes it back.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    #[test]
    fn names_become_one_path_segment() {
        assert_eq!(encode("vol0/db"), "vol0%2Fdb");
        assert_eq!(encode("a/../b"), "a%2F%2E%2E%2Fb");
        assert_eq!(encode("x y?&=#"), "x%20y%3F%26%3D%23");
        assert_eq!(encode("ok_-9"), "ok_-9");
        assert_eq!(
            snapshot_path("vol0/db", "nightly", "/restore"),
            "/snapshots/nightly/restore?lun=vol0%2Fdb"
        );
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
