//! `blockfork peer ...` and `blockfork mirror ...`: replication tokens on
//! a source, peers and mirror relationships on a destination.

use super::*;
use client::wire::{
    CreateMirror, CreatePeer, MirrorAction, MirrorInfo, MirrorMember, MirrorPlan, MirrorState,
    PeerInfo, PeerTokenInfo,
};

/// How often `mirror update` and `mirror show --watch` ask for progress.
const MIRROR_POLL_INTERVAL_MS: u64 = 250;

#[derive(clap::Subcommand, Debug)]
pub enum PeerCommand {
    /// On a source: replication tokens for the sites that mirror from it.
    Token {
        #[command(subcommand)]
        command: PeerTokenCommand,
    },
    /// On a destination: add a source server to pull mirrors from.
    Create {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// The source's API URL, like https://site-a:8080.
        #[arg(long)]
        url: String,
        /// A replication token from `blockfork peer token create` on the
        /// source. (`--token` works too: after `peer create` it means this
        /// one; the API token then comes from BLOCKFORK_TOKEN or
        /// DATA/api-token.)
        #[arg(long = "peer-token", value_name = "TOKEN")]
        peer_token: String,
        /// PEM of the CA that signed the source's certificate, for an
        /// https URL (`--ca-cert` works too after `peer create`).
        #[arg(long = "peer-ca-cert", value_name = "PEM")]
        peer_ca_cert: Option<PathBuf>,
    },
    /// List peers.
    List,
    /// Delete a peer that no mirror uses.
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PeerTokenCommand {
    /// Make a token; it is printed once.
    Create {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
    List,
    /// Delete a token: the site using it is refused from now on.
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum MirrorCommand {
    /// Mirror PEER:SRC_LUN to a new read-only DEST_LUN here, and start the
    /// baseline. With --group NAME, several `PEER:SRC_LUN DEST_LUN` pairs
    /// are mirrored as one unit (one group snapshot each time).
    Create {
        /// `PEER:SRC_LUN DEST_LUN`, repeated for a group.
        #[arg(required = true, num_args = 2.., value_name = "PEER:SRC_LUN DEST_LUN")]
        pairs: Vec<String>,
        #[arg(long)]
        group: Option<String>,
        /// Transfer this often, like 10s, 5m or 1h.
        #[arg(long, value_parser = parse_duration)]
        schedule: Option<u64>,
        /// Limit this mirror's transfers to MB/s (10^6 bytes per second).
        #[arg(long, value_name = "MB/s")]
        rate: Option<u64>,
        /// Mirror snapshots kept on the destination (default 2).
        #[arg(long)]
        keep: Option<u32>,
        /// Raise a `mirror-lag` event when the destination falls further
        /// behind than this, like 15m (default with --schedule: two
        /// intervals plus a minute; without, no alert).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        lag_alert: Option<u64>,
        /// Return once the baseline started, without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Transfer now; waits, with a progress bar, unless --no-wait.
    Update {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Show one mirror, or list them all.
    Show {
        name: Option<String>,
        /// Follow a running transfer with a progress bar.
        #[arg(long)]
        watch: bool,
    },
    /// Stop the running transfer and discard what it wrote.
    Abort { name: String },
    /// End the relationship: the destination stays, writable, at its last
    /// complete snapshot; holds go on both sides.
    Delete { name: String },
    /// Make the destination writable at its last complete snapshot. Local:
    /// works with the source gone.
    Break { name: String },
    /// After a break: discard what the destination wrote since the newest
    /// common snapshot (kept in a safety snapshot) and resume mirroring.
    Resync {
        name: String,
        /// Go ahead although writes are discarded.
        #[arg(long)]
        force: bool,
        /// Show the plan only.
        #[arg(long)]
        dry_run: bool,
    },
    /// After a break: the old source becomes the destination and receives
    /// what was written here (its own writes since the common snapshot are
    /// kept in a safety snapshot).
    Reverse {
        name: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
        /// This server's API URL as the old source reaches it (default:
        /// the server's --advertise-url or --api).
        #[arg(long)]
        url: Option<String>,
    },
}

/// After `peer create`, `--token` and `--ca-cert` name the peer's token and
/// CA (the vocabulary), not the API's: rewritten to
/// `--peer-token` and `--peer-ca-cert` before parsing.
pub fn peer_create_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let at = args
        .windows(2)
        .position(|w| w[0] == "peer" && w[1] == "create");
    let Some(at) = at else { return args };
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i <= at + 1 {
                return a;
            }
            let Some(text) = a.to_str() else { return a };
            for (from, to) in [("--token", "--peer-token"), ("--ca-cert", "--peer-ca-cert")] {
                if text == from {
                    return to.into();
                }
                if let Some(value) = text.strip_prefix(&format!("{from}=")) {
                    return format!("{to}={value}").into();
                }
            }
            a
        })
        .collect()
}

/// `10s`, `5m`, `2h`, `1d`, or seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 5m or 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if secs == 0 {
        return Err("a duration is at least 1s".into());
    }
    Ok(secs)
}

pub(super) fn peer(client: &Client, out: Out, command: PeerCommand) -> Result<(), String> {
    match command {
        PeerCommand::Token { command } => match command {
            PeerTokenCommand::Create { name } => {
                let t = client.create_peer_token(&name)?;
                out.show(t, |t: PeerTokenInfo| {
                    format!(
                        "{}\nreplication token \"{}\": shown once; give it to the destination's `blockfork peer create --token`\n",
                        t.token.unwrap_or_default(),
                        t.name
                    )
                })
            }
            PeerTokenCommand::List => {
                out.show(client.list_peer_tokens()?, |ts: Vec<PeerTokenInfo>| {
                    if ts.is_empty() {
                        return "no peer tokens\n".into();
                    }
                    let rows = ts
                        .iter()
                        .map(|t| vec![t.name.clone(), format_time(t.created)])
                        .collect::<Vec<_>>();
                    table(&[("NAME", Align::Left), ("CREATED", Align::Left)], &rows)
                })
            }
            PeerTokenCommand::Delete { name } => {
                client.delete_peer_token(&name)?;
                out.done(&format!("deleted peer token \"{name}\""))
            }
        },
        PeerCommand::Create {
            name,
            url,
            peer_token: token,
            peer_ca_cert,
        } => {
            let ca_cert = peer_ca_cert
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map_err(|e| format!("cannot read --ca-cert {}: {e}", p.display()))
                })
                .transpose()?;
            let reply = client.create_peer(&CreatePeer {
                name,
                url,
                token,
                ca_cert,
            })?;
            out.show(reply, |p: PeerInfo| peer_table(&[p]))
        }
        PeerCommand::List => out.show(client.list_peers()?, |p: Vec<PeerInfo>| peer_table(&p)),
        PeerCommand::Delete { name } => {
            client.delete_peer(&name)?;
            out.done(&format!("deleted peer \"{name}\""))
        }
    }
}

fn peer_table(peers: &[PeerInfo]) -> String {
    if peers.is_empty() {
        return "no peers\n".into();
    }
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.url.clone(),
                if p.tls { "yes" } else { "no" }.into(),
                list_or_dash(&p.mirrors),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Align::Left),
            ("URL", Align::Left),
            ("TLS", Align::Left),
            ("MIRRORS", Align::Left),
        ],
        &rows,
    )
}

pub(super) fn mirror(client: &Client, out: Out, command: MirrorCommand) -> Result<(), String> {
    match command {
        MirrorCommand::Create {
            pairs,
            group,
            schedule,
            rate,
            keep,
            lag_alert,
            no_wait,
        } => {
            if pairs.len() % 2 != 0 {
                return Err("give PEER:SRC_LUN DEST_LUN pairs".into());
            }
            let mut peer = None;
            let mut members = Vec::new();
            for pair in pairs.chunks(2) {
                let (p, src) = pair[0]
                    .split_once(':')
                    .ok_or_else(|| format!("{:?} is not PEER:SRC_LUN", pair[0]))?;
                if peer.get_or_insert_with(|| p.to_string()) != p {
                    return Err("every member of a group mirror comes from one peer".into());
                }
                members.push(MirrorMember {
                    source: src.into(),
                    destination: pair[1].clone(),
                });
            }
            let reply = client.create_mirror(&CreateMirror {
                peer: peer.unwrap_or_default(),
                group,
                members,
                schedule_secs: schedule,
                rate_bytes: rate.map(|r| r.saturating_mul(1_000_000)),
                keep,
                lag_alert_secs: lag_alert,
            })?;
            let info = if no_wait {
                reply
            } else {
                watch(client, &reply.name)?
            };
            finish(out, info)
        }
        MirrorCommand::Update { name, no_wait } => {
            let reply = client.mirror_action("update", &name)?;
            let info = if no_wait {
                reply
            } else {
                watch(client, &name)?
            };
            finish(out, info)
        }
        MirrorCommand::Show { name: None, .. } => out
            .show(client.list_mirrors()?, |m: Vec<MirrorInfo>| {
                mirror_table(&m)
            }),
        MirrorCommand::Show {
            name: Some(name),
            watch: w,
        } => {
            let info = if w {
                watch(client, &name)?
            } else {
                client.mirror(&name)?
            };
            out.show(info, |m: MirrorInfo| mirror_details(&m))
        }
        MirrorCommand::Abort { name } => out
            .show(client.mirror_action("abort", &name)?, |m: MirrorInfo| {
                mirror_details(&m)
            }),
        MirrorCommand::Break { name } => out
            .show(client.mirror_action("break", &name)?, |m: MirrorInfo| {
                mirror_details(&m)
            }),
        MirrorCommand::Delete { name } => {
            client.delete_mirror(&name)?;
            out.done(&format!(
                "deleted mirror \"{name}\"; its destination LUNs stay, writable, at their last complete snapshot"
            ))
        }
        MirrorCommand::Resync {
            name,
            force,
            dry_run,
        } => plan(client, out, "resync", name, force, dry_run, None),
        MirrorCommand::Reverse {
            name,
            force,
            dry_run,
            url,
        } => plan(client, out, "reverse", name, force, dry_run, url),
    }
}

fn plan(
    client: &Client,
    out: Out,
    action: &str,
    name: String,
    force: bool,
    dry_run: bool,
    url: Option<String>,
) -> Result<(), String> {
    let body = MirrorAction {
        name,
        force,
        dry_run,
        url,
        ca_cert: None,
    };
    let reply = client.mirror_plan_action(action, &body)?;
    out.show(reply, |p: MirrorPlan| {
        let mut text = details(&[
            ("mirror", p.name.clone()),
            ("common snapshot", p.common_snapshot.clone()),
            ("discards", size_with_bytes(p.discard_bytes)),
            (
                "safety snapshot",
                p.safety_snapshot.clone().unwrap_or_else(|| "-".into()),
            ),
        ]);
        text.push_str(if p.done {
            "done\n"
        } else {
            "plan only (nothing changed)\n"
        });
        text
    })
}

/// After a transfer: its result, or the error it ended with.
fn finish(out: Out, info: MirrorInfo) -> Result<(), String> {
    if info.state == MirrorState::Failed {
        return Err(format!(
            "mirror \"{}\" failed: {}",
            info.name,
            info.last_error.unwrap_or_default()
        ));
    }
    out.show(info, |m: MirrorInfo| mirror_details(&m))
}

/// Polls a mirror, with a progress bar on a terminal, while it transfers.
fn watch(client: &Client, name: &str) -> Result<MirrorInfo, String> {
    let bar = super::commands::progress_bar(format!("mirror \"{name}\""));
    loop {
        let info = client.mirror(name)?;
        if !info.running {
            bar.finish_and_clear();
            return Ok(info);
        }
        if let Some(t) = &info.transfer {
            let total = t.bytes_expected.max(t.bytes).max(1);
            bar.set_position(t.bytes * 1000 / total);
            bar.set_message(format!(
                "{} at {}{}",
                format_size(t.bytes),
                format_rate(t.rate_bytes as u64),
                t.eta_secs
                    .map(|s| format!(", {s} s left"))
                    .unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(MIRROR_POLL_INTERVAL_MS));
    }
}

fn ago(secs: Option<u64>) -> String {
    secs.map_or("-".into(), |s| format!("{s} s"))
}

fn mirror_details(m: &MirrorInfo) -> String {
    let members = m
        .members
        .iter()
        .map(|x| format!("{}:{} -> {}", m.peer, x.source, x.destination))
        .collect::<Vec<_>>();
    let mut rows = vec![
        ("mirror", m.name.clone()),
        ("state", m.state.as_str().into()),
        ("members", members.join(", ")),
        (
            "common snapshot",
            m.common_snapshot.clone().unwrap_or_else(|| "-".into()),
        ),
        ("lag", ago(m.lag_secs)),
        (
            "last success",
            m.last_success.map_or("-".into(), format_time),
        ),
        (
            "last error",
            m.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "last transfer",
            format!(
                "{} in {:.1} s",
                format_size(m.last_transfer_bytes),
                m.last_transfer_secs
            ),
        ),
        (
            "schedule",
            m.schedule_secs
                .map_or("-".into(), |s| format!("every {s} s")),
        ),
        (
            "lag alert",
            m.lag_alert_secs
                .map_or("-".into(), |s| format!("over {s} s")),
        ),
        ("rate limit", m.rate_bytes.map_or("-".into(), format_rate)),
        ("keep", m.keep.to_string()),
    ];
    if let Some(t) = &m.transfer {
        rows.push((
            "transfer",
            format!(
                "{} -> {}: {} of ~{} at {}{}",
                t.base.as_deref().unwrap_or("(baseline)"),
                t.target,
                format_size(t.bytes),
                format_size(t.bytes_expected),
                format_rate(t.rate_bytes as u64),
                t.eta_secs
                    .map(|s| format!(", ETA {s} s"))
                    .unwrap_or_default()
            ),
        ));
    }
    details(&rows)
}

fn mirror_table(ms: &[MirrorInfo]) -> String {
    if ms.is_empty() {
        return "no mirrors\n".into();
    }
    let rows = ms
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.peer.clone(),
                m.state.as_str().into(),
                m.common_snapshot.clone().unwrap_or_else(|| "-".into()),
                ago(m.lag_secs),
                m.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            ("NAME", Align::Left),
            ("PEER", Align::Left),
            ("STATE", Align::Left),
            ("COMMON SNAPSHOT", Align::Left),
            ("LAG", Align::Right),
            ("LAST ERROR", Align::Left),
        ],
        &rows,
    )
}
