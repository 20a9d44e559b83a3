//! Each command group: the API calls it makes and what it prints.

use super::*;

// ------------------------------------------------------------- commands

pub(super) fn lun(client: &Client, out: Out, command: LunCommand) -> Result<(), String> {
    match command {
        LunCommand::Create {
            name,
            size,
            redundancy,
            reserve,
            snapshot_reserve,
        } => {
            let reply = client.create_lun(&CreateLun {
                name,
                size,
                redundancy,
                reserve,
                snapshot_reserve_percent: snapshot_reserve,
            })?;
            out.show(reply, |l: LunInfo| lun_details(&l))
        }
        LunCommand::List { prefix } => {
            let luns = client.list_luns(prefix.as_deref())?;
            out.show(luns, |luns: Vec<LunInfo>| lun_table(&luns))
        }
        LunCommand::Show { name } => out.show(client.lun(&name)?, |l: LunInfo| lun_details(&l)),
        LunCommand::Set {
            name,
            redundancy,
            wait,
        } => {
            let mut reply = client.relayout(&name, &redundancy)?;
            if wait {
                let bar = progress_bar(format!("moving \"{name}\" to {redundancy}"));
                while let Some(done) = reply.relayout_done_bytes {
                    bar.set_position(done * 1000 / reply.size_bytes.max(1));
                    std::thread::sleep(Duration::from_millis(SPLIT_POLL_INTERVAL_MS));
                    reply = client.lun(&name)?;
                }
                bar.finish_and_clear();
            }
            out.show(reply, |l: LunInfo| lun_details(&l))
        }
        LunCommand::Resize { name, size, shrink } => {
            let reply = client.resize_lun(&name, &ResizeLun { size, shrink })?;
            out.show(reply, |l: LunInfo| lun_details(&l))
        }
        LunCommand::Delete { name, recursive } => {
            client.delete_lun(&name, recursive)?;
            let also = if recursive { " and its snapshots" } else { "" };
            out.done(&format!("deleted LUN \"{name}\"{also}"))
        }
        LunCommand::Clone { command } => clone(client, out, command),
        LunCommand::Map { lun, igroup } => {
            client.map_lun(&lun, &igroup)?;
            out.done(&format!("mapped LUN \"{lun}\" to igroup \"{igroup}\""))
        }
        LunCommand::Unmap { lun, igroup } => {
            client.unmap_lun(&lun, &igroup)?;
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
            let reply = client.clone_ranges(&CloneRanges {
                target,
                ranges: list,
            })?;
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
pub(super) fn parse_range(s: &str) -> Result<(u64, u64, u64), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [src, dst, len] = parts.as_slice() else {
        return Err(format!("{s:?} is not SRC_OFFSET:DST_OFFSET:LENGTH"));
    };
    Ok((parse_size(src)?, parse_size(dst)?, parse_size(len)?))
}

/// A JSON list of ranges; entries without a source take `default_source`.
pub(super) fn read_ranges_file(
    file: &Path,
    default_source: Option<&str>,
) -> Result<Vec<CloneRange>, String> {
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

pub(super) fn igroup(client: &Client, out: Out, command: IgroupCommand) -> Result<(), String> {
    let member = |m: MemberArg| IgroupMember {
        address: m.address,
        cert_cn: m.cert_cn,
    };
    let reply = match command {
        IgroupCommand::Create {
            name,
            addresses,
            cert_cns,
        } => client.create_igroup(&CreateIgroup {
            name,
            addresses,
            cert_cns,
        })?,
        IgroupCommand::Add { name, member: m } => client.add_igroup_member(&name, &member(m))?,
        IgroupCommand::Remove { name, member: m } => {
            client.remove_igroup_member(&name, &member(m))?
        }
        IgroupCommand::List => {
            let reply = client.list_igroups()?;
            return out.show(reply, |g: Vec<IgroupInfo>| igroup_table(&g));
        }
        IgroupCommand::Show { name } => client.igroup(&name)?,
        IgroupCommand::Delete { name } => {
            client.delete_igroup(&name)?;
            return out.done(&format!("deleted igroup \"{name}\""));
        }
    };
    out.show(reply, |g: IgroupInfo| igroup_details(&g))
}

pub(super) fn igroup_details(g: &IgroupInfo) -> String {
    details(&[
        ("name", g.name.clone()),
        ("addresses", list_or_dash(&g.addresses)),
        ("cert CNs", list_or_dash(&g.cert_cns)),
        ("LUNs", list_or_dash(&g.luns)),
    ])
}

pub(super) fn igroup_table(groups: &[IgroupInfo]) -> String {
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

pub(super) fn clone(client: &Client, out: Out, command: CloneCommand) -> Result<(), String> {
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
            let reply = client.create_clones(&body)?;
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
            let reply = client.start_split(&path)?;
            out.show(reply, |s: SplitInfo| split_details(&s))
        }
        CloneCommand::Stop { path } => {
            let reply = client.stop_split(&path)?;
            out.show(reply, |s: SplitInfo| split_details(&s))
        }
        CloneCommand::Status { path, watch: false } => {
            out.show(client.split(&path)?, |s: SplitInfo| split_details(&s))
        }
        CloneCommand::Status { path, watch: true } => {
            let info = watch_split(client, &path)?;
            match out.format {
                OutputFormat::Json => out.json(&info)?,
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
            let splits = client.list_splits(prefix.as_deref())?;
            out.show(splits, |s: Vec<SplitInfo>| split_table(&s))
        }
    }
}

/// A progress bar of 1,000 steps on stderr when it is a terminal (hidden
/// otherwise), for the long commands that watch a job.
pub(super) fn progress_bar(prefix: String) -> indicatif::ProgressBar {
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
    bar.set_prefix(prefix);
    bar
}

/// Polls a split, with a progress bar on a terminal, until it is no longer
/// running; returns its last state.
pub(super) fn watch_split(client: &Client, lun: &str) -> Result<SplitInfo, String> {
    let bar = progress_bar(format!("splitting \"{lun}\""));
    loop {
        let info = client.split(lun)?;
        if info.state != SplitPhase::Running {
            bar.finish_and_clear();
            return Ok(info);
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

pub(super) fn snapshot(client: &Client, out: Out, command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Create { lun, snapshot } => {
            let reply = client.create_snapshot(&lun, &snapshot)?;
            out.show(reply, |s: SnapshotInfo| snapshot_details(&s))
        }
        SnapshotCommand::List { lun } => out.show(
            client.list_snapshots(lun.as_deref())?,
            |s: Vec<SnapshotInfo>| snapshot_table(&s),
        ),
        SnapshotCommand::Delete {
            lun,
            snapshot,
            wait,
        } => {
            client.delete_snapshot(&lun, &snapshot)?;
            if !wait {
                return out.done(&format!(
                    "deleted snapshot \"{lun}@{snapshot}\"; its space is reclaimed in the background"
                ));
            }
            let finished = wait_for_reclaim(client, &lun)?;
            match (out.format, finished) {
                (OutputFormat::Json, Some(job)) => out.json(&job),
                (OutputFormat::Json, None) => Ok(()),
                (OutputFormat::Text, Some(job)) => out.text(&format!(
                    "deleted snapshot \"{lun}@{snapshot}\"; reclaimed {}",
                    format_size(job.freed_bytes)
                )),
                (OutputFormat::Text, None) => {
                    out.text(&format!("deleted snapshot \"{lun}@{snapshot}\""))
                }
            }
        }
        SnapshotCommand::Restore { lun, snapshot } => {
            let reply = client.restore_snapshot(&lun, &snapshot)?;
            out.show(reply, |l: LunInfo| {
                format!(
                    "restored LUN \"{lun}\" to snapshot \"{snapshot}\" (size {})\n",
                    format_size(l.size_bytes)
                )
            })
        }
    }
}

pub(super) fn cg_snapshot(
    client: &Client,
    out: Out,
    command: CgSnapshotCommand,
) -> Result<(), String> {
    match command {
        CgSnapshotCommand::Create { name, luns } => {
            let body = CreateGroupSnapshot { name, luns };
            let reply = client.create_group_snapshot(&body)?;
            out.show(reply, |g: GroupInfo| group_details(&g))
        }
        CgSnapshotCommand::List => {
            let reply = client.list_group_snapshots()?;
            out.show(reply, |g: Vec<GroupInfo>| group_table(&g))
        }
        CgSnapshotCommand::Delete { name } => {
            client.delete_group_snapshot(&name)?;
            out.done(&format!(
                "deleted group snapshot \"{name}\" and its member snapshots; their space is reclaimed in the background"
            ))
        }
    }
}

pub(super) fn pool(client: &Client, out: Out, command: PoolCommand) -> Result<(), String> {
    let reply = match command {
        PoolCommand::Status => client.pool()?,
        PoolCommand::Device { command } => return device(client, out, command),
        PoolCommand::Check => {
            let report = client.check_pool()?;
            let problems = report.problems.len();
            out.show(report, |c: PoolCheck| check_details(&c))?;
            return match problems {
                0 => Ok(()),
                n => Err(format!("the pool check found {n} problem(s)")),
            };
        }
        PoolCommand::Grow { capacity } => client.update_pool(&GrowPool {
            capacity: Some(capacity),
            access: None,
            redundancy: None,
        })?,
        PoolCommand::Scrub { command } => return scrub(client, out, command),
        PoolCommand::Set {
            split_rate,
            mirror_rate,
            io_metrics,
            access,
            scrub_rate,
            rebuild_rate,
            redundancy,
        } => {
            let settings = split_rate.is_some()
                || mirror_rate.is_some()
                || io_metrics.is_some()
                || scrub_rate.is_some()
                || rebuild_rate.is_some();
            let stored = access.is_some() || redundancy.is_some();
            let reply = if settings || !stored {
                Some(if settings {
                    client.update_settings(&UpdateSettings {
                        split_rate_mbps: split_rate,
                        mirror_rate_mbps: mirror_rate,
                        io_metrics,
                        scrub_rate_mbps: scrub_rate,
                        rebuild_rate_mbps: rebuild_rate,
                    })?
                } else {
                    client.settings()?
                })
            } else {
                None
            };
            if !stored {
                let reply = reply.expect("settings were read");
                return out.show(reply, |s: Settings| settings_details(&s));
            }
            client.update_pool(&GrowPool {
                capacity: None,
                access: access.map(|a| match a {
                    AccessArg::Open => AccessMode::Open,
                    AccessArg::Closed => AccessMode::Closed,
                }),
                redundancy,
            })?
        }
    };
    out.show(reply, |p: PoolStatus| pool_details(&p))
}

fn device(client: &Client, out: Out, command: DeviceCommand) -> Result<(), String> {
    let job = match command {
        DeviceCommand::List => {
            let devices = client.pool_devices()?;
            return out.show(devices, |d: Vec<DeviceInfo>| device_table(&d));
        }
        DeviceCommand::Add { path, force } => {
            let d = client.add_device(&AddDevice { path, force })?;
            return out.show(d, |d: DeviceInfo| device_table(std::slice::from_ref(&d)));
        }
        DeviceCommand::Remove { path, wait } => {
            let started = client.remove_device(&path)?;
            if wait {
                watch_device_job(client)?
            } else {
                started
            }
        }
        DeviceCommand::Replace {
            old,
            new,
            force,
            wait,
        } => {
            let started = client.replace_device(&ReplaceDevice { old, new, force })?;
            if wait {
                watch_device_job(client)?
            } else {
                started
            }
        }
        DeviceCommand::Clear { path, wait } => {
            let d = client.clear_device(&path)?;
            if wait {
                return scrub(client, out, ScrubCommand::Status { watch: true });
            }
            return out.show(d, |d: DeviceInfo| device_table(std::slice::from_ref(&d)));
        }
        DeviceCommand::Status { watch: false } => client.device_job()?,
        DeviceCommand::Status { watch: true } => watch_device_job(client)?,
    };
    let failed = job.error.clone();
    out.show(job, |j: MoveInfo| move_details(&j))?;
    match failed {
        None => Ok(()),
        Some(why) => Err(format!("the device job failed: {why}")),
    }
}

/// Polls the device job, with a progress bar on a terminal, until it ends.
fn watch_device_job(client: &Client) -> Result<MoveInfo, String> {
    let bar = progress_bar("moving segments".into());
    loop {
        let info = client.device_job()?;
        if info.state != "running" {
            bar.finish_and_clear();
            return Ok(info);
        }
        bar.set_position((info.progress.clamp(0.0, 1.0) * 1000.0) as u64);
        bar.set_message(format!(
            "{} of {} segments, {} copied at {}",
            info.moved_segments,
            info.total_segments,
            format_size(info.copied_bytes),
            format_rate(info.rate_bytes_per_sec)
        ));
        std::thread::sleep(Duration::from_millis(SPLIT_POLL_INTERVAL_MS));
    }
}

fn scrub(client: &Client, out: Out, command: ScrubCommand) -> Result<(), String> {
    let info = match command {
        ScrubCommand::Start => client.scrub_start()?,
        ScrubCommand::Stop => client.scrub_stop()?,
        ScrubCommand::Status { watch: false } => client.scrub_status()?,
        ScrubCommand::Status { watch: true } => {
            let bar = progress_bar("scrubbing".into());
            loop {
                let info = client.scrub_status()?;
                if info.state != "running" {
                    bar.finish_and_clear();
                    break info;
                }
                bar.set_position((info.progress.clamp(0.0, 1.0) * 1000.0) as u64);
                bar.set_message(format!(
                    "{} read at {}, {} repaired, {} lost",
                    format_size(info.scanned_bytes),
                    format_rate(info.rate_bytes_per_sec),
                    info.repaired_copies,
                    info.lost_blocks
                ));
                std::thread::sleep(Duration::from_millis(SPLIT_POLL_INTERVAL_MS));
            }
        }
    };
    let lost = info.lost_blocks;
    out.show(info, |s: ScrubInfo| scrub_details(&s))?;
    match lost {
        0 => Ok(()),
        n => Err(format!(
            "the scrub found {n} block(s) no copy holds right (listed above)"
        )),
    }
}

pub(super) fn jobs(client: &Client, out: Out) -> Result<(), String> {
    out.show(client.jobs()?, |j: Vec<JobInfo>| job_table(&j))
}

/// Polls the jobs until none is running for `lun`; returns the latest
/// finished one.
pub(super) fn wait_for_reclaim(client: &Client, lun: &str) -> Result<Option<JobInfo>, String> {
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
        let all = client.jobs()?;
        let mine = all.iter().filter(|j| j.lun == lun);
        if let Some(running) = mine.clone().find(|j| j.state == JobState::Running) {
            bar.set_position((running.progress.clamp(0.0, 1.0) * 1000.0) as u64);
            std::thread::sleep(Duration::from_millis(JOB_POLL_INTERVAL_MS));
            continue;
        }
        bar.finish_and_clear();
        return Ok(mine.max_by_key(|j| j.id).cloned());
    }
}

/// `blockfork events`: the newest past events (or those after `--since`),
/// then, with `--follow`, each new one as it happens (a long poll). JSON
/// output is one event object a line, so that a script can read a stream.
pub(super) fn events(
    client: &Client,
    out: Out,
    follow: bool,
    since: Option<u64>,
    last: Option<u64>,
) -> Result<(), String> {
    let mut cursor = match since {
        Some(id) => id,
        None => {
            let newest = client.events(i64::MAX as u64, Some(1), None)?.last_id;
            newest.saturating_sub(last.unwrap_or(50))
        }
    };
    let mut printed_any = false;
    loop {
        let wait = (follow && printed_any).then_some(30);
        let page = client.events(cursor, None, wait)?;
        for e in &page.events {
            match out.format {
                OutputFormat::Json => {
                    out.text(&serde_json::to_string(e).expect("events serialize"))?
                }
                OutputFormat::Text => out.text(&event_line(e))?,
            }
        }
        cursor = page.events.last().map_or(cursor, |e| e.id);
        if page.events.is_empty()
            && !follow
            && !printed_any
            && matches!(out.format, OutputFormat::Text)
        {
            out.text("no events")?;
        }
        printed_any = true;
        if !follow && page.events.len() < 1000 {
            return Ok(());
        }
    }
}

/// One event for people: time, severity, kind, object, sentence.
pub(crate) fn event_line(e: &client::wire::Event) -> String {
    use client::wire::Severity;
    let severity = match e.severity {
        Severity::Info => "info",
        Severity::Warning => "WARN",
        Severity::Error => "ERROR",
    };
    format!(
        "{:>6}  {}  {severity:<5}  {:<24}  {:<20}  {}",
        e.id,
        format_time(e.time_ms / 1000),
        e.kind,
        e.object,
        e.message
    )
}
