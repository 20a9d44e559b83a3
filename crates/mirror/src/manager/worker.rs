//! The transfer worker: one update of a relationship, from its checkpoint
//! if it has one, with retries of a cut stream; the steps of a transfer;
//! and what follows a complete one (publish, release, retention).

use super::*;

impl Mirrors {
    /// The worker: one update, with retries of cuts from the checkpoint.
    pub(super) fn run(
        &self,
        name: &str,
        cancel: &AtomicBool,
        bytes: &AtomicU64,
        expected: &AtomicU64,
    ) {
        let live = Live {
            cancel,
            bytes,
            expected,
        };
        let mut attempt = 0;
        loop {
            let result = self.transfer(name, &live);
            // Whatever a stopped transfer ran into after the stop (a break
            // ends the replica under it) is the stop's doing.
            let result = match result {
                Err(_) if cancel.load(Ordering::Relaxed) => Err(Failure::Cancelled),
                r => r,
            };
            match result {
                Ok(()) => return,
                Err(Failure::Cancelled) => {
                    tracing::info!(mirror = %name, "transfer stopped on request; it resumes from its checkpoint");
                    return;
                }
                Err(Failure::Cut(msg))
                    if attempt < CUT_RETRIES_MAX && !cancel.load(Ordering::Relaxed) =>
                {
                    attempt += 1;
                    tracing::warn!(mirror = %name, attempt, "transfer cut ({msg}); resuming from the checkpoint");
                    let _ = self.change(name, |r| {
                        if let Some(f) = &mut r.in_flight {
                            f.resumes += 1;
                        }
                        r.last_error = Some(msg.clone());
                        Ok(())
                    });
                    let backoff = Duration::from_millis(250 << attempt.min(5));
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => {
                    self.engine.events().emit(
                        engine::Severity::Error,
                        "mirror-failed",
                        name,
                        format!("Mirror \"{name}\": the update failed ({e}); the next update retries, and the destination keeps its last complete snapshot."),
                    );
                    let _ = self.change(name, |r| {
                        if !matches!(r.state, MirrorState::Broken | MirrorState::Reversed) {
                            r.state = MirrorState::Failed;
                        }
                        r.last_error = Some(e.to_string());
                        Ok(())
                    });
                    return;
                }
            }
        }
    }

    /// One update of `name`, from its checkpoint if it has one: a new
    /// mirror snapshot on the source (the goal), then every source
    /// snapshot from the common one to the goal, one transfer each.
    pub(super) fn transfer(&self, name: &str, live: &Live<'_>) -> Result<(), Failure> {
        let (cancel, bytes) = (live.cancel, live.bytes);
        let local = |e: Error| Failure::Local(e.to_string());
        let r = self.relationship(name).map_err(local)?;
        if matches!(r.state, MirrorState::Broken | MirrorState::Reversed) {
            return Err(Failure::Cancelled);
        }
        let peer = self.client(&r.peer).map_err(local)?;
        let holder = self.source_holder(&r);
        self.release_leftovers(&r, &peer, &holder);
        let started = Instant::now();
        let mut restarts = 0;
        if r.goal.is_none() && r.in_flight.is_none() {
            self.begin(&r, &peer, &holder)?;
        }
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(Failure::Cancelled);
            }
            let r = self.relationship(name).map_err(local)?;
            if let Some(f) = r.in_flight.clone() {
                self.step(&r, &peer, &holder, f, live)?;
                continue;
            }
            let Some(goal) = r.goal.clone() else {
                return Ok(());
            };
            let source = source_snaps(&peer, &r.members[0].source)?;
            let mine = format!("{MIRROR_SNAPSHOT_PREFIX}{}.{}.", self.site(), r.id);
            let foreign =
                |s: &Snap| s.name.starts_with(MIRROR_SNAPSHOT_PREFIX) && !s.name.starts_with(&mine);
            let common = r.common.as_ref().map(SnapRecord::snap);
            // A group travels by its mirror snapshots only: a member's own
            // snapshots are not group snapshots.
            let next = if r.group {
                (common.as_ref() != Some(&goal.snap()) && source.contains(&goal.snap()))
                    .then(|| goal.snap())
            } else {
                planner::next_step(&source, common.as_ref(), &goal.snap(), foreign)
            };
            let Some(next) = next else {
                if common.as_ref() == Some(&goal.snap()) {
                    return self.finish(&r, bytes, started);
                }
                // The goal is gone from the source (its hold was let go
                // by hand, or the source was restored): start over from
                // the common snapshot with a new one, a bounded number of
                // times.
                restarts += 1;
                if restarts > GOAL_RESTARTS_MAX {
                    self.change(name, |rel| {
                        rel.goal = None;
                        Ok(())
                    })
                    .map_err(local)?;
                    return Err(Failure::Refused(format!(
                        "the source keeps losing the mirror snapshot this update heads for (\"{}\")",
                        goal.name
                    )));
                }
                tracing::warn!(mirror = %name, snapshot = %goal.name, "the source no longer has the snapshot this update heads for; starting over from the common snapshot");
                self.change(name, |rel| {
                    rel.goal = None;
                    Ok(())
                })
                .map_err(local)?;
                let r = self.relationship(name).map_err(local)?;
                self.begin(&r, &peer, &holder)?;
                continue;
            };
            if next != goal.snap() {
                // A snapshot on the way is held while it travels and while
                // it is the common base.
                let held = peer.hold_mirror_snapshot(&wire::HoldMirrorSnapshot {
                    lun: r.members[0].source.clone(),
                    snapshot: next.name.clone(),
                    holder: holder.clone(),
                });
                if let Err(e) = held {
                    if e.status.is_none() {
                        return Err(Failure::Cut(e.message));
                    }
                    // Deleted meanwhile: the next look skips it.
                    continue;
                }
            }
            let f = InFlight {
                base: r.common.as_ref().map(|c| c.name.clone()),
                target: SnapRecord {
                    name: next.name,
                    created: next.created,
                },
                member: 0,
                next_block: 0,
                bytes: 0,
                bytes_expected: 0,
                started: now_secs(),
                resumes: 0,
            };
            self.change(name, |rel| {
                rel.in_flight = Some(f);
                if rel.state != MirrorState::Baselining {
                    rel.state = MirrorState::Transferring;
                }
                Ok(())
            })
            .map_err(local)?;
        }
    }

    /// Plans an update and takes its mirror snapshot on the source.
    pub(super) fn begin(
        &self,
        r: &Relationship,
        peer: &client::Client,
        holder: &str,
    ) -> Result<(), Failure> {
        let local = |e: Error| Failure::Local(e.to_string());
        let mut sides = Vec::new();
        for m in &r.members {
            let source = source_snaps(peer, &m.source)?;
            let (_, dest) = self.engine.snapshots_brief(&m.destination).map_err(local)?;
            sides.push(Sides {
                source,
                dest: dest.into_iter().map(Snap::from).collect(),
            });
        }
        let recorded = r.common.as_ref().map(SnapRecord::snap);
        let plan = planner::plan_update(recorded.as_ref(), &sides).map_err(Failure::Refused)?;
        let mut common = r.common.clone();
        if let Update::Incremental { base, rebase: true } = &plan {
            tracing::warn!(mirror = %r.name, %base, "the recorded common snapshot is gone from the source; continuing from an older common one");
            for m in &r.members {
                self.engine
                    .rebase_replica(&m.destination, base)
                    .map_err(local)?;
            }
            let created = sides[0]
                .source
                .iter()
                .find(|s| s.name == *base)
                .map_or(0, |s| s.created);
            common = Some(SnapRecord {
                name: base.clone(),
                created,
            });
        }
        let seq = r.seq + 1;
        let target_name = format!("{MIRROR_SNAPSHOT_PREFIX}{}.{}.{seq}", self.site(), r.id);
        let taken = peer
            .take_mirror_snapshot(&TakeMirrorSnapshot {
                luns: r.members.iter().map(|m| m.source.clone()).collect(),
                name: target_name.clone(),
                group: r.group,
                holder: holder.into(),
            })
            .map_err(|e| match e.status {
                Some(_) => Failure::Refused(format!(
                    "the source refused a mirror snapshot: {}",
                    e.message
                )),
                None => Failure::Cut(e.message),
            })?;
        let created = taken.first().map(|s| s.created).unwrap_or_else(now_secs);
        self.change(&r.name, |rel| {
            rel.seq = seq;
            rel.common = common;
            rel.goal = Some(SnapRecord {
                name: target_name,
                created,
            });
            Ok(())
        })
        .map_err(local)
    }

    /// One transfer, `f.base` to `f.target`, from its checkpoint; then
    /// readers move to it, and the old base is let go on the source.
    pub(super) fn step(
        &self,
        r: &Relationship,
        peer: &client::Client,
        holder: &str,
        mut f: InFlight,
        live: &Live<'_>,
    ) -> Result<(), Failure> {
        let (cancel, bytes, expected) = (live.cancel, live.bytes, live.expected);
        let local = |e: Error| Failure::Local(e.to_string());
        let name = &r.name;
        let published = r.members.iter().all(|m| {
            self.engine
                .lun_info(&m.destination)
                .is_ok_and(|l| l.replica_view.as_deref() == Some(&f.target.name))
        });
        if !published {
            // Still what the source has?
            let mut there = true;
            for m in &r.members {
                if !source_snaps(peer, &m.source)?.contains(&f.target.snap()) {
                    there = false;
                }
            }
            if !there {
                tracing::warn!(
                    mirror = %name,
                    "the resume record names \"{}\", which the source no longer has; discarding it and going on from the common snapshot",
                    f.target.name
                );
                for m in &r.members {
                    self.engine
                        .rollback_replica(&m.destination)
                        .map_err(local)?;
                }
                return self
                    .change(name, |rel| {
                        rel.in_flight = None;
                        Ok(())
                    })
                    .map_err(local);
            }
            let limiter = self.limiter(r);
            let ctx = Ctx {
                cancel,
                limiters: [&limiter, &self.pool_limiter],
                bytes,
                expected,
            };
            while f.member < r.members.len() {
                let m = &r.members[f.member];
                let mut checkpoint = |next: u64| -> Result<(), String> {
                    let b = bytes.load(Ordering::Relaxed);
                    let x = expected.load(Ordering::Relaxed);
                    self.change(name, |rel| {
                        if let Some(fl) = &mut rel.in_flight {
                            fl.next_block = next;
                            fl.bytes = b;
                            fl.bytes_expected = x;
                        }
                        Ok(())
                    })
                    .map_err(|e| e.to_string())
                };
                transfer::pull(
                    &self.engine,
                    peer,
                    &m.source,
                    &m.destination,
                    f.base.as_deref(),
                    &f.target.name,
                    f.target.created,
                    m.clone_of.is_none(),
                    f.next_block,
                    &ctx,
                    &mut checkpoint,
                )?;
                f.member += 1;
                f.next_block = 0;
                let fc = f.clone();
                self.change(name, |rel| {
                    rel.in_flight = Some(fc);
                    Ok(())
                })
                .map_err(local)?;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(Failure::Cancelled);
            }
            // Every member complete: readers move to it at once.
            let snaps: Vec<ReplicaSnapshot> = r
                .members
                .iter()
                .map(|m| ReplicaSnapshot {
                    lun: m.destination.clone(),
                    snapshot: f.target.name.clone(),
                    created: f.target.created,
                })
                .collect();
            let group = r.group.then_some(f.target.name.as_str());
            self.engine
                .publish_replica(&snaps, group, &r.holder())
                .map_err(local)?;
        }
        let old = r.common.clone();
        let target = f.target.clone();
        self.change(name, |rel| {
            rel.common = Some(target);
            rel.in_flight = None;
            Ok(())
        })
        .map_err(local)?;
        tracing::info!(mirror = %name, snapshot = %f.target.name, "snapshot transferred");
        if let Some(old) = old.filter(|o| o.name != f.target.name) {
            self.release_on_source(r, peer, holder, &old);
        }
        Ok(())
    }

    /// After an update reached its goal: records it and applies retention.
    pub(super) fn finish(
        &self,
        r: &Relationship,
        bytes: &AtomicU64,
        started: Instant,
    ) -> Result<(), Failure> {
        let local = |e: Error| Failure::Local(e.to_string());
        let total = bytes.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let (first, recovered) = (r.last_success.is_none(), r.last_error.is_some());
        self.change(&r.name, |rel| {
            rel.goal = None;
            rel.state = MirrorState::Idle;
            rel.last_success = Some(now_secs());
            rel.last_error = None;
            rel.last_transfer_bytes = total;
            rel.last_transfer_secs = secs;
            Ok(())
        })
        .map_err(local)?;
        tracing::info!(mirror = %r.name, bytes = total, secs, "mirror update complete");
        if first || recovered {
            let what = if first {
                "baseline complete"
            } else {
                "updating again after a failure"
            };
            self.engine.events().emit(
                engine::Severity::Info,
                if first {
                    "mirror-baselined"
                } else {
                    "mirror-recovered"
                },
                &r.name,
                format!(
                    "Mirror \"{}\": {what} ({total} bytes in {secs:.1} s).",
                    r.name
                ),
            );
        }
        self.retain(r);
        Ok(())
    }

    /// Lets go of (and deletes, if it is a mirror snapshot nothing else
    /// holds) `snap` on the source; remembered for later if the source
    /// cannot be reached.
    pub(super) fn release_on_source(
        &self,
        r: &Relationship,
        peer: &client::Client,
        holder: &str,
        snap: &SnapRecord,
    ) {
        if let Err(e) = peer.release_mirror_snapshot(&r.release_request(snap, holder)) {
            tracing::warn!(mirror = %r.name, snapshot = %snap.name, "cannot release the old base on the source yet: {e}");
            let s = snap.clone();
            let _ = self.change(&r.name, |rel| {
                if !rel.release_later.contains(&s) {
                    rel.release_later.push(s);
                }
                Ok(())
            });
        }
    }

    pub(super) fn release_leftovers(&self, r: &Relationship, peer: &client::Client, holder: &str) {
        for snap in &r.release_later {
            if peer
                .release_mirror_snapshot(&r.release_request(snap, holder))
                .is_ok()
            {
                let s = snap.clone();
                let _ = self.change(&r.name, |rel| {
                    rel.release_later.retain(|x| *x != s);
                    Ok(())
                });
            }
        }
    }

    /// Keeps the newest `keep` mirror snapshots of this relationship here.
    pub(super) fn retain(&self, r: &Relationship) {
        let prefix = format!("{MIRROR_SNAPSHOT_PREFIX}{}.{}.", self.site(), r.id);
        let Ok((_, snaps)) = self.engine.snapshots_brief(&r.members[0].destination) else {
            return;
        };
        let ours: Vec<String> = snaps
            .iter()
            .filter(|s| s.name.starts_with(&prefix) && s.holds.is_empty())
            .map(|s| s.name.clone())
            .collect();
        let held = snaps
            .iter()
            .filter(|s| s.name.starts_with(&prefix) && !s.holds.is_empty())
            .count();
        let excess = (ours.len() + held).saturating_sub(r.keep as usize);
        for name in ours.into_iter().take(excess) {
            let result = engine::quietly(|| {
                if r.group {
                    self.engine.delete_group_snapshot(&name)
                } else {
                    self.engine
                        .delete_snapshot(&r.members[0].destination, &name)
                }
            });
            if let Err(e) = result {
                tracing::warn!(mirror = %r.name, snapshot = %name, "retention could not delete it: {e}");
            }
        }
    }

    // ------------------------------------------------------------ schedule
}

/// A source LUN's snapshots, oldest first.
fn source_snaps(peer: &client::Client, lun: &str) -> Result<Vec<Snap>, Failure> {
    peer.replication_lun(lun)
        .map(|l| l.snapshots.into_iter().map(Snap::from).collect())
        .map_err(|e| match e.status {
            Some(_) => Failure::Refused(format!("the source: {}", e.message)),
            None => Failure::Cut(e.message),
        })
}
