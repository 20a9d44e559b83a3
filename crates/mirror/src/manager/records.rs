//! The durable records of mirroring (kept in `DATA/mirror/`): peers,
//! relationships, their members, the snapshots they hold and the transfer
//! in flight, and what the planner and the API make of them.

use super::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct State {
    /// This server's name in the holds it takes on sources.
    pub(super) site: String,
    pub(super) peers: Vec<Peer>,
    pub(super) mirrors: Vec<Relationship>,
    /// Pool-wide mirror rate (bytes/s, 0: none).
    #[serde(default)]
    pub(super) mirror_rate_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Peer {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) token: String,
    pub(super) ca_cert: Option<String>,
    pub(super) created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Member {
    pub(super) source: String,
    pub(super) destination: String,
    /// `LUN@SNAPSHOT` on this side the destination is a clone of: only the
    /// member's own blocks travel.
    pub(super) clone_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapRecord {
    pub(super) name: String,
    pub(super) created: u64,
}

impl From<engine::SnapshotInfo> for Snap {
    fn from(s: engine::SnapshotInfo) -> Snap {
        Snap {
            name: s.name,
            created: s.created,
        }
    }
}

impl From<wire::ReplicationSnapshot> for Snap {
    fn from(s: wire::ReplicationSnapshot) -> Snap {
        Snap {
            name: s.name,
            created: s.created,
        }
    }
}

impl SnapRecord {
    pub(super) fn snap(&self) -> Snap {
        Snap {
            name: self.name.clone(),
            created: self.created,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InFlight {
    pub(super) base: Option<String>,
    pub(super) target: SnapRecord,
    /// Members before this one are complete.
    pub(super) member: usize,
    /// Where `member`'s stream resumes.
    pub(super) next_block: u64,
    pub(super) bytes: u64,
    pub(super) bytes_expected: u64,
    pub(super) started: u64,
    pub(super) resumes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Relationship {
    pub(super) name: String,
    /// Short id, in the names of the mirror snapshots it takes.
    pub(super) id: String,
    pub(super) peer: String,
    pub(super) group: bool,
    pub(super) members: Vec<Member>,
    pub(super) state: MirrorState,
    pub(super) common: Option<SnapRecord>,
    pub(super) in_flight: Option<InFlight>,
    /// The mirror snapshot the running update is heading for.
    #[serde(default)]
    pub(super) goal: Option<SnapRecord>,
    /// Source snapshots to release (and delete) when the source is next
    /// reached: what a break left behind.
    #[serde(default)]
    pub(super) release_later: Vec<SnapRecord>,
    pub(super) seq: u64,
    pub(super) schedule_secs: Option<u64>,
    /// Set by `--lag-alert`; the default follows the schedule.
    #[serde(default)]
    pub(super) lag_alert_secs: Option<u64>,
    pub(super) rate_bytes: Option<u64>,
    pub(super) keep: u32,
    pub(super) last_success: Option<u64>,
    pub(super) last_error: Option<String>,
    pub(super) last_transfer_bytes: u64,
    pub(super) last_transfer_secs: f64,
    pub(super) created: u64,
}

impl Relationship {
    /// Forgets the transfer under way (its checkpoint and goal); their
    /// snapshots on the source are released when it is next reached.
    pub(super) fn drop_transfer(&mut self) {
        let dropped = self
            .in_flight
            .take()
            .map(|f| f.target)
            .into_iter()
            .chain(self.goal.take());
        for target in dropped.collect::<Vec<_>>() {
            if Some(&target) != self.common.as_ref() && !self.release_later.contains(&target) {
                self.release_later.push(target);
            }
        }
    }

    /// The members as the API names them.
    pub(super) fn wire_members(&self) -> Vec<MirrorMember> {
        self.members
            .iter()
            .map(|m| MirrorMember {
                source: m.source.clone(),
                destination: m.destination.clone(),
            })
            .collect()
    }

    /// Asks the source to release (and delete) `snap`, held by `holder`.
    pub(super) fn release_request(&self, snap: &SnapRecord, holder: &str) -> ReleaseMirrorSnapshot {
        ReleaseMirrorSnapshot {
            luns: self.members.iter().map(|m| m.source.clone()).collect(),
            snapshot: snap.name.clone(),
            holder: holder.into(),
            delete: true,
            group: self.group,
        }
    }

    /// The holder of this relationship's snapshots on this side.
    pub(super) fn holder(&self) -> String {
        format!("mirror:{}", self.name)
    }
}
