//! Printing: aligned tables and details for people, the API's JSON for
//! scripts; sizes, rates and times in one style.

use super::*;

// --------------------------------------------------------------- output

#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub(crate) format: OutputFormat,
}

impl Out {
    /// Prints a response: as the API's JSON, or `text` of it.
    pub fn show<T: Serialize>(
        self,
        reply: T,
        text: impl FnOnce(T) -> String,
    ) -> Result<(), String> {
        match self.format {
            OutputFormat::Json => self.json(&reply),
            OutputFormat::Text => self.text(&text(reply)),
        }
    }

    /// Reports a command whose response has no body: a sentence for people,
    /// nothing for scripts (the exit code says it worked).
    pub fn done(self, sentence: &str) -> Result<(), String> {
        match self.format {
            OutputFormat::Json => Ok(()),
            OutputFormat::Text => self.text(sentence),
        }
    }

    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<(), String> {
        let text = serde_json::to_string_pretty(value).expect("API types serialize");
        self.text(&text)
    }

    pub fn text(self, text: &str) -> Result<(), String> {
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

pub(crate) fn lun_details(l: &LunInfo) -> String {
    let mut text = details(&[
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
        ("redundancy", l.redundancy.clone()),
        ("created", format_time(l.created)),
    ]);
    if let Some(done) = l.relayout_done_bytes {
        text.push_str(&details(&[(
            "moving",
            format!(
                "into {}: {} of {} looked at",
                l.redundancy,
                format_percent(done as f64 / l.size_bytes.max(1) as f64),
                size_with_bytes(l.size_bytes)
            ),
        )]));
    }
    if l.reserve || l.snapshot_reserve_percent > 0 {
        let mut what = Vec::new();
        if l.reserve {
            what.push("thick".to_string());
        }
        if l.snapshot_reserve_percent > 0 {
            what.push(format!("{} % for snapshots", l.snapshot_reserve_percent));
        }
        text.push_str(&details(&[(
            "reserve",
            format!(
                "{}; {} still reserved",
                what.join(", "),
                size_with_bytes(l.reserved_bytes)
            ),
        )]));
    }
    if l.replica {
        text.push_str(&details(&[(
            "mirror",
            format!(
                "a mirror destination (read-only); readers see {}",
                l.replica_view
                    .as_deref()
                    .map_or("nothing yet (baseline running)".into(), |v| format!(
                        "snapshot \"{v}\""
                    ))
            ),
        )]));
    }
    text
}

pub(crate) fn list_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

pub(crate) fn lun_table(luns: &[LunInfo]) -> String {
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

pub(crate) fn snapshot_details(s: &SnapshotInfo) -> String {
    details(&[
        ("snapshot", format!("{}@{}", s.lun, s.name)),
        ("size", size_with_bytes(s.size_bytes)),
        ("exclusive", size_with_bytes(s.exclusive_bytes)),
        ("group", s.group.clone().unwrap_or_else(|| "-".into())),
        ("clones", list_or_dash(&s.clones)),
        ("created", format_time(s.created)),
    ])
}

pub(crate) fn snapshot_table(snapshots: &[SnapshotInfo]) -> String {
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
                list_or_dash(&s.holds),
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
            ("HELD BY", Align::Left),
            ("CREATED", Align::Left),
        ],
        &rows,
    )
}

pub(crate) fn split_details(s: &SplitInfo) -> String {
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

pub(crate) fn split_table(splits: &[SplitInfo]) -> String {
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

pub(crate) fn settings_details(s: &Settings) -> String {
    let rate = |bytes: u64| {
        if bytes == 0 {
            "unlimited".to_string()
        } else {
            format_rate(bytes)
        }
    };
    details(&[
        ("split rate", rate(s.split_rate_bytes_per_sec)),
        ("mirror rate", rate(s.mirror_rate_bytes_per_sec)),
        ("scrub rate", rate(s.scrub_rate_bytes_per_sec)),
        ("rebuild rate", rate(s.rebuild_rate_bytes_per_sec)),
        (
            "I/O metrics",
            if s.io_metrics { "on" } else { "off" }.into(),
        ),
    ])
}

/// A fraction as a percentage for people; never shows 100 % before the end.
pub(crate) fn format_percent(fraction: f64) -> String {
    let percent = fraction.clamp(0.0, 1.0) * 100.0;
    let shown = if percent < 100.0 {
        (percent * 10.0).floor() / 10.0
    } else {
        100.0
    };
    format!("{shown:.1}%")
}

/// A rate in MB/s (10^6 bytes per second), the unit of `--split-rate`.
pub(crate) fn format_rate(bytes_per_sec: u64) -> String {
    let mbps = bytes_per_sec as f64 / 1e6;
    if bytes_per_sec.is_multiple_of(1_000_000) {
        format!("{} MB/s", bytes_per_sec / 1_000_000)
    } else {
        format!("{mbps:.1} MB/s")
    }
}

pub(crate) fn group_details(g: &GroupInfo) -> String {
    details(&[
        ("group snapshot", g.name.clone()),
        ("members", g.members.join(", ")),
        ("created", format_time(g.created)),
    ])
}

pub(crate) fn group_table(groups: &[GroupInfo]) -> String {
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

pub(crate) fn pool_details(p: &PoolStatus) -> String {
    let percent = if p.capacity_bytes == 0 {
        0.0
    } else {
        p.used_bytes as f64 * 100.0 / p.capacity_bytes as f64
    };
    let mut text = details(&[
        ("capacity", size_with_bytes(p.capacity_bytes)),
        (
            "used",
            format!("{} ({percent:.1}%)", size_with_bytes(p.used_bytes)),
        ),
        ("free", size_with_bytes(p.free_bytes)),
        (
            "reserved",
            if p.reserved_bytes == 0 {
                "-".into()
            } else {
                format!(
                    "{} (for LUNs with reservations)",
                    size_with_bytes(p.reserved_bytes)
                )
            },
        ),
        ("LUNs", p.luns.to_string()),
        ("snapshots", p.snapshots.to_string()),
        ("group snapshots", p.group_snapshots.to_string()),
        ("jobs running", p.jobs_running.to_string()),
        ("epoch", p.epoch.to_string()),
        ("created", format_time(p.created)),
    ]);
    if p.devices > 0 {
        let state = if p.faulted_devices > 0 {
            format!(
                "{} ({} of {} devices faulted: `pool device list`)",
                p.state, p.faulted_devices, p.devices
            )
        } else {
            p.state.clone()
        };
        text.push_str(&details(&[
            ("state", state),
            ("devices", p.devices.to_string()),
            ("redundancy", format!("{} (for new LUNs)", p.redundancy)),
        ]));
    }
    text.push_str(&damage_lines(&p.damage));
    text
}

pub(crate) fn check_details(c: &PoolCheck) -> String {
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

pub(crate) fn job_table(jobs: &[JobInfo]) -> String {
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
pub(crate) enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell, two spaces apart, numbers aligned
/// right; no trailing spaces.
pub(crate) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
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
pub(crate) fn details(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

pub(crate) const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

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

pub(crate) fn size_with_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format_size(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_size(bytes))
    }
}

/// Unix seconds as an RFC 3339 UTC time, like 2026-05-01T12:30:00Z.
pub(crate) fn format_time(unix_secs: u64) -> String {
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

/// `on` or `off` (also `true`/`false`, `yes`/`no`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: say on or off")),
    }
}
