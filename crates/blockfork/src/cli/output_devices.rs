//! Printing for a pool on devices: the devices, the scrub, the device
//! job and what no copy holds right.

use super::*;

pub(crate) fn damage_lines(damage: &[Damage]) -> String {
    damage
        .iter()
        .map(|d| {
            format!(
                "lost: {}{} bytes {}+{}\n",
                d.lun,
                d.snapshot
                    .as_ref()
                    .map(|s| format!("@{s}"))
                    .unwrap_or_default(),
                d.offset_bytes,
                d.length_bytes
            )
        })
        .collect()
}

pub(crate) fn scrub_details(s: &ScrubInfo) -> String {
    let mut text = details(&[
        ("state", s.state.clone()),
        ("progress", format_percent(s.progress)),
        (
            "scanned",
            format!(
                "{} of {}",
                format_size(s.scanned_bytes),
                format_size(s.total_bytes)
            ),
        ),
        ("bad copies", s.bad_copies.to_string()),
        ("repaired", s.repaired_copies.to_string()),
        ("lost blocks", s.lost_blocks.to_string()),
        (
            "rate",
            if s.state == "running" {
                format_rate(s.rate_bytes_per_sec)
            } else {
                "-".into()
            },
        ),
        (
            "rate limit",
            if s.rate_limit_bytes_per_sec == 0 {
                "unlimited".into()
            } else {
                format_rate(s.rate_limit_bytes_per_sec)
            },
        ),
        ("started", s.started.map_or("-".into(), format_time)),
        ("finished", s.finished.map_or("-".into(), format_time)),
    ]);
    text.push_str(&damage_lines(&s.damage));
    text
}

pub(crate) fn move_details(m: &MoveInfo) -> String {
    let mut text = details(&[
        ("state", m.state.clone()),
        ("job", m.kind.clone().unwrap_or_else(|| "-".into())),
        ("from", m.device.clone().unwrap_or_else(|| "-".into())),
        (
            "to",
            m.target
                .clone()
                .unwrap_or_else(|| "any other device".into()),
        ),
        ("progress", format_percent(m.progress)),
        (
            "segments",
            format!("{} of {} moved", m.moved_segments, m.total_segments),
        ),
        ("copied", format_size(m.copied_bytes)),
        ("skipped blocks", m.skipped_blocks.to_string()),
        (
            "rate",
            if m.state == "running" {
                format_rate(m.rate_bytes_per_sec)
            } else {
                "-".into()
            },
        ),
        ("started", m.started.map_or("-".into(), format_time)),
        ("finished", m.finished.map_or("-".into(), format_time)),
    ]);
    if let Some(e) = &m.error {
        text.push_str(&format!("error: {e}\n"));
    }
    text.push_str(&damage_lines(&m.damage));
    text
}

pub(crate) fn device_table(devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "no devices: this pool is one data file\n".into();
    }
    let rows = devices
        .iter()
        .map(|d| {
            vec![
                d.index.to_string(),
                d.path.clone(),
                d.state.clone(),
                format_size(d.size_bytes),
                format_size(d.used_bytes),
                d.read_errors.to_string(),
                d.write_errors.to_string(),
                d.checksum_errors.to_string(),
                d.repaired_blocks.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    let mut text = table(
        &[
            ("#", Align::Right),
            ("PATH", Align::Left),
            ("STATE", Align::Left),
            ("SIZE", Align::Right),
            ("USED", Align::Right),
            ("READ-ERR", Align::Right),
            ("WRITE-ERR", Align::Right),
            ("CKSUM-ERR", Align::Right),
            ("REPAIRED", Align::Right),
        ],
        &rows,
    );
    for d in devices {
        if let Some(why) = &d.reason {
            text.push_str(&format!("device {} is faulted: {why}\n", d.index));
        }
    }
    text
}
