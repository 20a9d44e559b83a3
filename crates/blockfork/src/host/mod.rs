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
mod mapping;
mod source;
mod tool;

use super::{format_size, lun_path, parse_size, Align, Client, Out, OutputFormat};
use api::wire::{CloneRange as WireRange, CloneRanges};
use attach::{Attachment, Location, LocationOverride, Via};
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
pub(super) fn run(client: &Client, out: Out, args: HostArgs) -> Result<(), String> {
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
            let a = attach::attach(&state, &facts, &client.server, &nbd, via, !buffered)?;
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
        let list = client.get(&format!("/snapshots?lun={}", super::encode(lun)))?;
        let size = list
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|s| s.get("name").and_then(Value::as_str) == Some(snapshot))
            })
            .and_then(|s| s.get("size_bytes").and_then(Value::as_u64))
            .ok_or_else(|| format!("LUN \"{lun}\" has no snapshot \"{snapshot}\""))?;
        return Ok(attach::LunFacts {
            name: name.to_string(),
            id: None,
            size,
            read_only: true,
        });
    }
    let info = client.get(&lun_path(name))?;
    Ok(attach::LunFacts {
        name: name.to_string(),
        id: info.get("id").and_then(Value::as_u64),
        size: info
            .get("size_bytes")
            .and_then(Value::as_u64)
            .ok_or("the server's LUN info has no size; is it the same version as this client?")?,
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
    super::table(
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

/// One destination, for the output.
#[derive(Serialize)]
struct CloneReport {
    path: PathBuf,
    created_by: destination::Method,
    zero_bytes_written: u64,
    extents: usize,
    ranges: Vec<CloneRange>,
}

/// Removes the destination files unless the clone completed: nothing
/// half-cloned stays behind.
struct CreatedFiles {
    paths: Vec<PathBuf>,
    kept: bool,
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        if !self.kept {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A progress line on stderr, when stderr is a terminal.
fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {wide_bar} {bytes}/{total_bytes} ({elapsed})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar
}

fn file_clone(client: &Client, out: Out, args: FileCloneArgs) -> Result<(), String> {
    // Before any thread starts, so that every thread holds them back.
    let signals = SignalsHeld::hold();
    let result = file_clone_held(client, out, args, &signals);
    if let (Err(e), true) = (&result, signals.interrupted()) {
        // The held signal ends the process as soon as it is let through,
        // before the caller could print this.
        eprintln!("error: {e}");
    }
    result
}

fn file_clone_held(
    client: &Client,
    out: Out,
    args: FileCloneArgs,
    signals: &SignalsHeld,
) -> Result<(), String> {
    let started = Instant::now();
    let bar = progress_bar();
    let state = attach::state_dir();
    let src_name = args.source.display().to_string();

    // FIG. 4 block 420 / FIG. 5: the source's extents as LUN ranges.
    bar.set_message(format!("reading the extents of {src_name}"));
    let src_file = File::open(&args.source).map_err(|e| format!("cannot open {src_name}: {e}"))?;
    let src_meta = src_file
        .metadata()
        .map_err(|e| format!("cannot stat {src_name}: {e}"))?;
    if !src_meta.is_file() {
        return Err(format!("{src_name} is not a regular file"));
    }
    source::check_attributes(&src_file, &src_name)?;
    let lease = ReadLease::take(&src_file, &src_name)?;
    // Delayed allocations get their blocks, and the data reaches the LUN.
    src_file
        .sync_all()
        .map_err(|e| format!("cannot fsync {src_name}: {e}"))?;
    let before = Fingerprint::of(&src_file).map_err(|e| format!("cannot stat {src_name}: {e}"))?;
    let size = before.size();
    let src_loc = attach::locate(
        &state,
        src_meta.dev(),
        &src_name,
        &LocationOverride {
            lun: args.lun.clone(),
            device_offset: args.device_offset,
        },
    )?;
    let src_extents = fiemap::extents(&src_file, true)
        .map_err(|e| format!("cannot read the extents of {src_name} (FIEMAP): {e}"))?;
    let src_layout = fiemap::lun_layout(&src_extents, size, src_loc.device_offset)
        .map_err(|e| format!("{src_name} {e}"))?;

    // The destinations: all in one file system, so on one LUN, so in one
    // range-clone call.
    let paths = destinations(&args.source, &args.destination, args.count)?;
    let mut dst_dev = None;
    for path in &paths {
        if path.symlink_metadata().is_ok() {
            return Err(format!(
                "{} exists already; blockfork never overwrites a file with a clone",
                path.display()
            ));
        }
        let dev = attach::st_dev_of(path)?;
        if *dst_dev.get_or_insert(dev) != dev {
            return Err(format!(
                "the destinations are on more than one file system ({} is elsewhere); one call clones into one LUN",
                path.display()
            ));
        }
    }
    let dst_dev = dst_dev.expect("at least one destination");
    let dst_loc = if dst_dev == src_meta.dev() && args.dest_lun.is_none() {
        Location {
            device_offset: args.dest_device_offset.unwrap_or(src_loc.device_offset),
            ..src_loc.clone()
        }
    } else {
        attach::locate(
            &state,
            dst_dev,
            &paths[0].display().to_string(),
            &LocationOverride {
                lun: args.dest_lun.clone(),
                device_offset: args.dest_device_offset,
            },
        )?
    };
    if dst_loc.lun.contains('@') || dst_loc.attachment.as_ref().is_some_and(|a| a.read_only) {
        return Err(format!(
            "the destination's LUN \"{}\" is read-only (a snapshot)",
            dst_loc.lun
        ));
    }
    for loc in [&src_loc, &dst_loc] {
        check_identity(client, loc)?;
    }

    // FIG. 4 blocks 410-415: the destination LUN borrows the source's host
    // groups; restored whatever happens below.
    let borrowed = access::BorrowedMaps::borrow(client, &src_loc.lun, &dst_loc.lun)?;
    let result = clone_into(
        client,
        signals,
        &bar,
        &args,
        &src_file,
        &lease,
        &before,
        &src_layout,
        &src_loc,
        &dst_loc,
        &paths,
    );
    bar.finish_and_clear();
    let added = borrowed.added().to_vec();
    let restored = borrowed.restore();
    let (reports, reply, dropped) = result?;
    restored?;

    let total_ranges: usize = reports.iter().map(|r| r.ranges.len()).sum();
    let bytes: u64 = reports
        .iter()
        .flat_map(|r| r.ranges.iter())
        .map(|r| r.length)
        .sum();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match out.format {
        OutputFormat::Json => out.json(&json!({
            "source": {
                "path": args.source,
                "lun": src_loc.lun,
                "size": size,
                "extents": src_layout.len(),
            },
            "target_lun": dst_loc.lun,
            "clones": reports,
            "ranges": total_ranges,
            "bytes": bytes,
            "borrowed_host_groups": added,
            "cache": dropped,
            "server": reply,
            "elapsed_ms": elapsed_ms,
        })),
        OutputFormat::Text => {
            let target = match reports.as_slice() {
                [one] => one.path.display().to_string(),
                many => format!("{} files", many.len()),
            };
            let zeros: u64 = reports.iter().map(|r| r.zero_bytes_written).sum();
            let mut text = format!(
                "cloned {src_name} ({}) to {target}: {total_ranges} ranges, {} shared from LUN \"{}\" into LUN \"{}\" in {:.2} s\n",
                format_size(size),
                format_size(bytes),
                src_loc.lun,
                dst_loc.lun,
                elapsed_ms as f64 / 1000.0
            );
            if zeros.saturating_mul(16) >= bytes && bytes > 0 {
                text.push_str(&format!(
                    "the destination file system needed {} of zeros written first, as it cannot allocate written blocks without data{}\n",
                    format_size(zeros),
                    ext4_hint(&reports[0].path)
                ));
            }
            if !added.is_empty() {
                text.push_str(&format!(
                    "LUN \"{}\" was mapped to host group(s) {} for the clone, and unmapped again\n",
                    dst_loc.lun,
                    added.join(", ")
                ));
            }
            out.text(&text)
        }
    }
}

/// How ext4 can do without the zeros: its zero-out of whole extents,
/// which uses the device's write-zeroes (decision 010).
fn ext4_hint(path: &Path) -> String {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return String::new();
    };
    // SAFETY: statfs fills `fs` for a valid NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0
        || fs.f_type as i64 != EXT4_SUPER_MAGIC
    {
        return String::new();
    }
    let device = std::fs::metadata(path)
        .ok()
        .and_then(|m| {
            std::fs::canonicalize(format!(
                "/sys/dev/block/{}:{}",
                libc::major(m.dev()),
                libc::minor(m.dev())
            ))
            .ok()
        })
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "DEVICE".into());
    format!(
        "; ext4 does without them when mounted with -o dioread_lock and with \
         /sys/fs/ext4/{device}/extent_max_zeroout_kb raised to 131072"
    )
}

/// A LUN found through the registry must still be the one attached: the
/// same server, and the same LUN id (not a namesake created since).
fn check_identity(client: &Client, loc: &Location) -> Result<(), String> {
    let Some(a) = &loc.attachment else {
        return Ok(());
    };
    if a.server.trim_end_matches('/') != client.server {
        return Err(format!(
            "{} was attached from the server at {}, but this command talks to {}; pass --server {}",
            a.device.display(),
            a.server,
            client.server,
            a.server
        ));
    }
    if let Some(id) = a.lun_id {
        let info = client.get(&lun_path(&a.lun))?;
        if info.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(format!(
                "LUN \"{}\" is not the LUN that was attached as {} (it was deleted and created again?); detach and attach it again",
                a.lun,
                a.device.display()
            ));
        }
    }
    Ok(())
}

type Cloned = (Vec<CloneReport>, Value, cache::Dropped);

/// FIG. 4 blocks 425-440: create the destinations, map the layouts, clone,
/// and make the host see the clone. Any failure removes the destinations.
#[allow(clippy::too_many_arguments)]
fn clone_into(
    client: &Client,
    signals: &SignalsHeld,
    bar: &indicatif::ProgressBar,
    args: &FileCloneArgs,
    src_file: &File,
    lease: &ReadLease,
    before: &Fingerprint,
    src_layout: &[mapping::LunExtent],
    src_loc: &Location,
    dst_loc: &Location,
    paths: &[PathBuf],
) -> Result<Cloned, String> {
    let src_name = args.source.display().to_string();
    let size = before.size();
    let mode = src_file
        .metadata()
        .map(|m| m.mode() & 0o777)
        .unwrap_or(0o644);
    let mut created = CreatedFiles {
        paths: Vec::new(),
        kept: false,
    };
    let mut files = Vec::with_capacity(paths.len());
    let mut reports = Vec::with_capacity(paths.len());
    let zero_total = size * paths.len() as u64;
    bar.set_length(zero_total);
    for (i, path) in paths.iter().enumerate() {
        if signals.interrupted() {
            return Err("interrupted; nothing was cloned".into());
        }
        bar.set_message(format!(
            "creating {} ({}/{})",
            path.display(),
            i + 1,
            paths.len()
        ));
        let base = i as u64 * size;
        let made = destination::create(path, size, mode, signals, &mut |n| {
            bar.set_position(base + n)
        })?;
        created.paths.push(path.clone());
        bar.set_position(base + size);
        // FIG. 4 block 430: the destination's extents as LUN ranges.
        let extents = fiemap::extents(&made.file, true).map_err(|e| {
            format!(
                "cannot read the extents of {} (FIEMAP): {e}",
                path.display()
            )
        })?;
        let layout = fiemap::lun_layout(&extents, size, dst_loc.device_offset)
            .map_err(|e| format!("the new file {} {e}", path.display()))?;
        // FIG. 4 block 435 / FIG. 6.
        let ranges = mapping::map_ranges(src_layout, &layout, size).map_err(|e| e.to_string())?;
        reports.push(CloneReport {
            path: path.clone(),
            created_by: made.method,
            zero_bytes_written: made.zero_bytes,
            extents: layout.len(),
            ranges,
        });
        files.push(made.file);
    }
    let all: Vec<CloneRange> = reports
        .iter()
        .flat_map(|r| r.ranges.iter().copied())
        .collect();
    if all.len() > RANGES_PER_CALL_MAX {
        return Err(format!(
            "{} ranges are more than one call may carry ({RANGES_PER_CALL_MAX}); clone fewer copies at once, or defragment {src_name}",
            all.len()
        ));
    }
    if let Some(at) = mapping::find_conflict(&all, base_equal(&src_loc.lun, &dst_loc.lun)) {
        return Err(format!(
            "the file systems report overlapping blocks at LUN offset {at}; nothing was cloned"
        ));
    }
    check_still(src_file, lease, before, &src_name)?;
    if signals.interrupted() {
        return Err("interrupted; nothing was cloned".into());
    }

    // Everything written (the source's data, the destinations' zeros) must
    // be on the server before it shares blocks.
    bar.set_message(format!("cloning {} ranges", all.len()));
    cache::flush_device(&src_loc.device)?;
    if dst_loc.device != src_loc.device {
        cache::flush_device(&dst_loc.device)?;
    }
    let body = CloneRanges {
        target: dst_loc.lun.clone(),
        ranges: all
            .iter()
            .map(|r| WireRange {
                source: src_loc.lun.clone(),
                source_offset: r.source_offset,
                target_offset: r.target_offset,
                length: r.length,
            })
            .collect(),
    };
    // An empty file has no blocks to share: creating it was the clone.
    let reply = if all.is_empty() {
        Value::Null
    } else {
        client
            .send("POST", "/clone-range", &body)
            .map_err(|e| format!("the server refused the range clone: {e}; nothing was cloned"))?
    };
    check_still(src_file, lease, before, &src_name)?;

    // Show the host the cloned blocks instead of the zeros it cached.
    bar.set_message("dropping cached pages");
    let refs: Vec<&File> = files.iter().collect();
    let dropped =
        cache::drop_destination_pages(&refs, &dst_loc.device, dst_loc.attachment.as_ref())?;
    created.kept = true;
    Ok((reports, reply, dropped))
}

fn base_equal(a: &str, b: &str) -> bool {
    access::base_lun(a) == access::base_lun(b) && !a.contains('@') && !b.contains('@')
}

/// The source must be as it was when its extents were read.
fn check_still(
    file: &File,
    lease: &ReadLease,
    before: &Fingerprint,
    name: &str,
) -> Result<(), String> {
    let now = Fingerprint::of(file).map_err(|e| format!("cannot stat {name}: {e}"))?;
    if let Some(why) = before.changed(&now) {
        return Err(format!(
            "{name} changed during the clone ({why}); nothing was cloned, try again when nothing writes to it"
        ));
    }
    if !lease.still_held() {
        return Err(format!(
            "another process opened {name} for writing during the clone; nothing was cloned, try again when nothing writes to it"
        ));
    }
    Ok(())
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
        global: super::super::GlobalOpts,
        #[command(subcommand)]
        command: super::super::Command,
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

    #[test]
    fn snapshots_never_count_as_the_same_lun() {
        assert!(base_equal("a", "a"));
        assert!(!base_equal("a@s", "a"));
        assert!(!base_equal("a", "b"));
    }
}
