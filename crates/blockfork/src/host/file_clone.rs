//! `blockfork host file-clone`: clone a file's blocks on the server (range
//! clones of the LUN under the file system) and make the destination file
//! point at them, with nothing half-cloned left behind on failure.

use super::*;

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

pub(super) fn file_clone(client: &Client, out: Out, args: FileCloneArgs) -> Result<(), String> {
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
    if a.server.trim_end_matches('/') != client.server() {
        return Err(format!(
            "{} was attached from the server at {}, but this command talks to {}; pass --server {}",
            a.device.display(),
            a.server,
            client.server(),
            a.server
        ));
    }
    if let Some(id) = a.lun_id {
        if client.lun(&a.lun)?.id != id {
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
        let report = client
            .clone_ranges(&body)
            .map_err(|e| format!("the server refused the range clone: {e}; nothing was cloned"))?;
        serde_json::to_value(report).expect("a report serializes")
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

    #[test]
    fn snapshots_never_count_as_the_same_lun() {
        assert!(base_equal("a", "a"));
        assert!(!base_equal("a@s", "a"));
        assert!(!base_equal("a", "b"));
    }
}
