//! `blockfork host`: what runs on the host that mounts a file system on a
//! LUN. `attach` and `detach` make a LUN a block device of this host;
//! `file-clone` clones a file of such a file system without copying its
//! bytes (MISSION.md D, the seed's FIG. 4-6): the file's extents become
//! LBA ranges of the LUN, an empty destination file gets written extents of
//! its own, the two layouts are mapped onto each other, and the server
//! clones the ranges by sharing blocks. Decision 010 has the reasons.

mod access;
mod attach;
mod cache;
mod destination;
mod fiemap;
mod file_clone;
mod locate;
mod mapping;
mod source;
mod tool;

use crate::cli::{format_size, parse_size, Align, Out, OutputFormat};
use attach::{Attachment, Location, LocationOverride, Via};
use client::wire::{CloneRange as WireRange, CloneRanges};
use client::Client;
use file_clone::file_clone;
use mapping::CloneRange;
use serde::Serialize;
use serde_json::{json, Value};
use source::{Fingerprint, ReadLease, SignalsHeld};
use std::fs::File;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Most clones one `file-clone --count` makes.
const CLONES_MAX: u32 = 10_000;
/// Most ranges one range-clone request carries: the server's limit.
const RANGES_PER_CALL_MAX: usize = engine::RANGES_PER_CALL_MAX;
/// What `--count` replaces in the destination name.
const COUNT_PLACEHOLDER: &str = "{}";

#[derive(clap::Args, Debug)]
pub struct HostArgs {
    #[command(subcommand)]
    command: HostCommand,
}

#[derive(clap::Subcommand, Debug)]
enum HostCommand {
    /// Attach a LUN to this host as a block device and record it, so that
    /// `file-clone` knows which LUN a file system is on. Uses the kernel
    /// NBD client when /dev/nbd0 exists, else nbdfuse and a loop device.
    /// Needs root. LUN@SNAPSHOT attaches read-only.
    Attach {
        /// The LUN (or LUN@SNAPSHOT) to attach.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        lun: String,
        /// The server's NBD address.
        #[arg(
            long,
            default_value = "127.0.0.1:10809",
            env = "BLOCKFORK_NBD",
            value_name = "HOST:PORT"
        )]
        nbd: String,
        /// How to attach: kernel-nbd or fuse-loop (default: kernel-nbd when
        /// /dev/nbd0 and nbd-client exist).
        #[arg(long, value_enum)]
        via: Option<Via>,
        /// Let the loop device read its file through the page cache
        /// (faster re-reads; one more cache for `file-clone` to drop).
        #[arg(long)]
        buffered: bool,
    },
    /// Detach attached LUNs, named by device (/dev/loop3) or LUN. Refused
    /// while the device is mounted.
    Detach {
        #[arg(required = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        targets: Vec<String>,
    },
    /// List the LUNs attached to this host.
    List,
    /// Clone a file of a file system on an attached LUN without copying
    /// its bytes: the server shares the file's blocks with a new file's
    /// blocks. SRC and DST may be on the same LUN or on two.
    ///
    /// DST is created at SRC's size with written blocks of its own, its
    /// extents are mapped onto SRC's, and one range-clone call shares the
    /// blocks; nothing is left behind when anything fails. Refused: files
    /// with holes, inline or preallocated (unwritten) extents, encrypted or
    /// compressed files, and files open for writing or changed meanwhile.
    /// Where the destination file system cannot make written blocks
    /// without data, zeros are written first (ext4 mounted with -o
    /// dioread_lock and a raised extent_max_zeroout_kb does not need them).
    /// If DST's LUN is not mapped to SRC's igroups, it is mapped to them for
    /// the operation and unmapped afterwards. The registry of attached LUNs
    /// is in $BLOCKFORK_HOST_STATE (default /run/blockfork).
    FileClone(FileCloneArgs),
}

#[derive(clap::Args, Debug)]
struct FileCloneArgs {
    /// The file to clone: a regular file without holes, not being written.
    source: PathBuf,
    /// The new file (must not exist), or a directory to put it in under
    /// SRC's name. With --count, every "{}" in it becomes 1..N.
    destination: String,
    /// Make N clones in one range-clone call (all or none; at most 10000);
    /// DST must contain "{}", like vm-{}.img.
    #[arg(long, value_name = "N")]
    count: Option<u32>,
    /// SRC's LUN (LUN or LUN@SNAPSHOT), for a file system on a device that
    /// `host attach` did not attach.
    #[arg(long, value_name = "LUN")]
    lun: Option<String>,
    /// Where SRC's file system starts in its LUN, in bytes (default: the
    /// partition's start, or 0).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    device_offset: Option<u64>,
    /// DST's LUN, when its file system is on another device that `host
    /// attach` did not attach.
    #[arg(long, value_name = "LUN")]
    dest_lun: Option<String>,
    /// Where DST's file system starts in its LUN, in bytes.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    dest_device_offset: Option<u64>,
}

/// Runs one `blockfork host` command.
pub fn run(client: &Client, out: Out, args: HostArgs) -> Result<(), String> {
    let state = attach::state_dir();
    // Attaching and detaching start and stop processes and devices: a
    // Ctrl-C halfway would leave them unrecorded (file-clone holds the
    // signals itself, polling them).
    let _signals = match args.command {
        HostCommand::Attach { .. } | HostCommand::Detach { .. } => Some(SignalsHeld::hold()),
        _ => None,
    };
    match args.command {
        HostCommand::Attach {
            lun,
            nbd,
            via,
            buffered,
        } => {
            let facts = lun_facts(client, &lun)?;
            let a = attach::attach(&state, &facts, client.server(), &nbd, via, !buffered)?;
            match out.format {
                OutputFormat::Json => out.json(&serde_json::to_value(&a).expect("serializes")),
                OutputFormat::Text => out.text(&format!(
                    "attached LUN \"{}\" as {} ({}{}{})\n",
                    a.lun,
                    a.device.display(),
                    a.via,
                    if a.read_only { ", read-only" } else { "" },
                    if a.direct_io { "" } else { ", buffered" }
                )),
            }
        }
        HostCommand::Detach { targets } => {
            let mut detached = Vec::new();
            for target in targets {
                detached.push(attach::detach(&state, &target)?);
            }
            match out.format {
                OutputFormat::Json => {
                    out.json(&serde_json::to_value(&detached).expect("serializes"))
                }
                OutputFormat::Text => out.text(
                    &detached
                        .iter()
                        .map(|a| format!("detached {} (LUN \"{}\")\n", a.device.display(), a.lun))
                        .collect::<String>(),
                ),
            }
        }
        HostCommand::List => {
            let all = attach::list(&state)?;
            match out.format {
                OutputFormat::Json => out.json(&serde_json::to_value(&all).expect("serializes")),
                OutputFormat::Text => out.text(&attachment_table(&all)),
            }
        }
        HostCommand::FileClone(args) => file_clone(client, out, args),
    }
}

/// The LUN's id and size (or the snapshot's size), from the API.
fn lun_facts(client: &Client, name: &str) -> Result<attach::LunFacts, String> {
    if let Some((lun, snapshot)) = name.split_once('@') {
        let size = client
            .list_snapshots(Some(lun))?
            .into_iter()
            .find(|s| s.name == snapshot)
            .map(|s| s.size_bytes)
            .ok_or_else(|| format!("LUN \"{lun}\" has no snapshot \"{snapshot}\""))?;
        return Ok(attach::LunFacts {
            name: name.to_string(),
            id: None,
            size,
            read_only: true,
        });
    }
    let info = client.lun(name)?;
    Ok(attach::LunFacts {
        name: name.to_string(),
        id: Some(info.id),
        size: info.size_bytes,
        read_only: false,
    })
}

fn attachment_table(all: &[Attachment]) -> String {
    if all.is_empty() {
        return "no LUNs attached\n".into();
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|a| {
            let mounted = if attach::attachment_is_live(a) {
                attach::mounted_on(&a.dev)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "-".into())
            } else {
                "(stale: device gone)".into()
            };
            vec![
                a.device.display().to_string(),
                a.lun.clone(),
                a.via.to_string(),
                a.nbd.clone(),
                mounted,
            ]
        })
        .collect();
    crate::cli::table(
        &[
            ("DEVICE", Align::Left),
            ("LUN", Align::Left),
            ("VIA", Align::Left),
            ("NBD", Align::Left),
            ("MOUNTED ON", Align::Left),
        ],
        &rows,
    )
}

/// The destination paths: DST, DST/<SRC's name> for a directory, or the
/// pattern expanded 1..=N.
fn destinations(
    source: &Path,
    destination: &str,
    count: Option<u32>,
) -> Result<Vec<PathBuf>, String> {
    let Some(count) = count else {
        let path = PathBuf::from(destination);
        if path.is_dir() {
            let name = source
                .file_name()
                .ok_or_else(|| format!("{} has no file name", source.display()))?;
            return Ok(vec![path.join(name)]);
        }
        return Ok(vec![path]);
    };
    if count == 0 || count > CLONES_MAX {
        return Err(format!("--count must be 1 to {CLONES_MAX}, got {count}"));
    }
    if !destination.contains(COUNT_PLACEHOLDER) {
        return Err(format!(
            "with --count, DST must contain \"{COUNT_PLACEHOLDER}\" where the clone's number goes, like vm-{COUNT_PLACEHOLDER}.img"
        ));
    }
    Ok((1..=count)
        .map(|n| PathBuf::from(destination.replace(COUNT_PLACEHOLDER, &n.to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The same shape as main.rs gives the commands.
    #[derive(clap::Parser, Debug)]
    #[command(name = "blockfork")]
    struct TestCli {
        #[command(flatten)]
        global: crate::cli::GlobalOpts,
        #[command(subcommand)]
        command: crate::cli::Command,
    }

    #[test]
    fn vocabulary() {
        let parse = |line: &str| TestCli::try_parse_from(line.split_whitespace());
        for line in [
            "blockfork host attach vol0/db",
            "blockfork host attach vol0/db@nightly --nbd 10.0.0.5:10809 --via fuse-loop --buffered",
            "blockfork host attach vol0/db --via kernel-nbd",
            "blockfork host detach /dev/loop3",
            "blockfork host detach vol0/db /dev/loop4",
            "blockfork host list",
            "blockfork --output json host list",
            "blockfork host file-clone /mnt/a.img /mnt/b.img",
            "blockfork host file-clone /mnt/a.img /mnt/vm-{}.img --count 100",
            "blockfork host file-clone /mnt/a /mnt/b --lun vol0 --device-offset 1M",
            "blockfork host file-clone /mnt/a /x/b --dest-lun vol1 --dest-device-offset 2048",
        ] {
            parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for line in [
            "blockfork host attach",
            "blockfork host detach",
            "blockfork host attach vol0 --via carrier-pigeon",
            "blockfork host file-clone /mnt/a",
            "blockfork host file-clone /mnt/a /mnt/b --count x",
            "blockfork host file-clone /mnt/a /mnt/b --device-offset 1X",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn destination_names() {
        let src = Path::new("/mnt/images/golden.img");
        assert_eq!(
            destinations(src, "/mnt/x.img", None).unwrap(),
            vec![PathBuf::from("/mnt/x.img")]
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            destinations(src, dir.path().to_str().unwrap(), None).unwrap(),
            vec![dir.path().join("golden.img")]
        );
        assert_eq!(
            destinations(src, "/m/vm-{}.img", Some(3)).unwrap(),
            vec![
                PathBuf::from("/m/vm-1.img"),
                PathBuf::from("/m/vm-2.img"),
                PathBuf::from("/m/vm-3.img")
            ]
        );
        assert!(destinations(src, "/m/vm.img", Some(3))
            .unwrap_err()
            .contains("must contain \"{}\""));
        assert!(destinations(src, "/m/{}", Some(0)).is_err());
        assert!(destinations(src, "/m/{}", Some(CLONES_MAX + 1)).is_err());
    }
}
