//! Failover on the destination: abort, break, resync, delete, and a
//! reverse (asked here, accepted on the old source).

use super::*;

impl Mirrors {
    /// Stops the running transfer and discards what it wrote; the next
    /// update starts a new one from the common snapshot.
    pub fn abort(&self, name: &str) -> Result<MirrorInfo, Error> {
        let r = self.relationship(name)?;
        if !self.wait_stopped(name, Duration::from_millis(STOP_WAIT_MS)) {
            return Err(invalid(format!(
                "the transfer of mirror \"{name}\" is still stopping (a peer call in progress); try again"
            )));
        }
        if r.in_flight.is_some() || r.goal.is_some() {
            for m in &r.members {
                if self
                    .engine
                    .lun_info(&m.destination)
                    .is_ok_and(|l| l.replica)
                {
                    self.engine.rollback_replica(&m.destination)?;
                }
            }
            self.change(name, |rel| {
                rel.drop_transfer();
                if rel.state == MirrorState::Transferring || rel.state == MirrorState::Failed {
                    rel.state = if rel.common.is_some() {
                        MirrorState::Idle
                    } else {
                        MirrorState::Baselining
                    };
                }
                rel.last_error = Some("aborted by request".into());
                Ok(())
            })?;
            if let Ok(peer) = self.client(&r.peer) {
                let r = self.relationship(name)?;
                self.release_leftovers(&r, &peer, &self.source_holder(&r));
            }
        }
        self.info(name)
    }

    /// Makes the destination writable at its newest complete snapshot.
    /// Local: the source is not contacted, and no wait on a transfer.
    pub fn break_off(&self, name: &str) -> Result<MirrorInfo, Error> {
        let r = self.relationship(name)?;
        if r.state == MirrorState::Broken {
            return Err(invalid(format!("mirror \"{name}\" is already broken")));
        }
        if let Some(w) = self.workers.lock().get(name) {
            w.cancel.store(true, Ordering::Relaxed);
        }
        self.change(name, |rel| {
            rel.drop_transfer();
            rel.state = MirrorState::Broken;
            Ok(())
        })?;
        for m in &r.members {
            if self
                .engine
                .lun_info(&m.destination)
                .is_ok_and(|l| l.replica)
            {
                self.engine.break_replica(&m.destination)?;
            }
        }
        self.engine.events().emit(
            engine::Severity::Warning,
            "mirror-broken",
            name,
            format!(
                "Mirror \"{name}\" broken off: the destination is writable, at snapshot {}.",
                r.common.as_ref().map_or("(none)", |c| c.name.as_str())
            ),
        );
        self.info(name)
    }

    /// After a break: the destination goes back to the newest common
    /// snapshot (what it wrote since is kept in a safety snapshot) and
    /// transfers from the source resume.
    pub fn resync(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<MirrorPlan, Error> {
        let r = self.relationship(name)?;
        if r.state != MirrorState::Broken {
            return Err(invalid(format!(
                "mirror \"{name}\" is {}, not broken: nothing to resync",
                r.state.as_str()
            )));
        }
        if !self.wait_stopped(name, Duration::from_millis(STOP_WAIT_MS)) {
            return Err(invalid(format!(
                "the transfer of mirror \"{name}\" is still stopping; try again"
            )));
        }
        let peer = self.client(&r.peer)?;
        let mut sides = Vec::new();
        for m in &r.members {
            let src = peer
                .replication_lun(&m.source)
                .map_err(|e| invalid(format!("peer \"{}\": {}", r.peer, e.message)))?;
            let (_, dest) = self.engine.snapshots_brief(&m.destination)?;
            sides.push(Sides {
                source: src.snapshots.into_iter().map(Snap::from).collect(),
                dest: dest.into_iter().map(Snap::from).collect(),
            });
        }
        let discard = |c: &Snap| -> u64 {
            r.members
                .iter()
                .map(|m| written_since(&self.engine, &m.destination, &c.name))
                .sum()
        };
        let plan = planner::plan_rollback(&sides, discard, force).map_err(invalid)?;
        let safety = format!("resync-safety.{}", now_secs());
        let mut out = MirrorPlan {
            name: name.into(),
            common_snapshot: plan.common.name.clone(),
            discard_bytes: plan.discard_bytes,
            safety_snapshot: (plan.discard_bytes > 0).then(|| safety.clone()),
            done: false,
        };
        if dry_run {
            return Ok(out);
        }
        if !plan.allowed {
            return Err(Error::HasDependents(format!(
                "resync of mirror \"{name}\" discards {} bytes written at the destination since snapshot \"{}\"; pass --force to go ahead (a safety snapshot \"{safety}\" keeps them)",
                plan.discard_bytes, plan.common.name
            )));
        }
        for m in &r.members {
            self.engine.make_replica(
                &m.destination,
                &plan.common.name,
                Some(&safety),
                &r.holder(),
            )?;
        }
        let common = SnapRecord {
            name: plan.common.name.clone(),
            created: plan.common.created,
        };
        self.change(name, |rel| {
            rel.common = Some(common);
            rel.in_flight = None;
            rel.state = MirrorState::Idle;
            rel.last_error = None;
            Ok(())
        })?;
        self.engine.events().emit(
            engine::Severity::Warning,
            "mirror-resynced",
            name,
            format!(
                "Mirror \"{name}\" resynced from snapshot {}: the destination is a mirror again ({} bytes written since the break kept in a safety snapshot).",
                plan.common.name, plan.discard_bytes
            ),
        );
        self.start(name)?;
        out.done = true;
        Ok(out)
    }

    /// Ends a relationship: its transfer stops, its holds here and on the
    /// source go, and the destination LUNs stay as ordinary LUNs at their
    /// newest complete snapshot.
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let r = self.relationship(name)?;
        if !self.wait_stopped(name, Duration::from_millis(STOP_WAIT_MS)) {
            return Err(invalid(format!(
                "the transfer of mirror \"{name}\" is still stopping; try again"
            )));
        }
        for m in &r.members {
            if self
                .engine
                .lun_info(&m.destination)
                .is_ok_and(|l| l.replica)
            {
                self.engine.break_replica(&m.destination)?;
            }
        }
        self.engine.release_holds(&r.holder())?;
        if let Ok(peer) = self.client(&r.peer) {
            let holder = self.source_holder(&r);
            let mut snaps: Vec<SnapRecord> = r.release_later.clone();
            snaps.extend(r.common.clone());
            snaps.extend(r.in_flight.as_ref().map(|f| f.target.clone()));
            snaps.extend(r.goal.clone());
            for snap in snaps {
                if let Err(e) = peer.release_mirror_snapshot(&r.release_request(&snap, &holder)) {
                    tracing::warn!(mirror = %name, snapshot = %snap.name, "could not release it on the source ({e}); release it there with `blockfork snapshot` commands");
                }
            }
        }
        self.change_state(|s| {
            s.mirrors.retain(|x| x.name != name);
            Ok(())
        })?;
        self.workers.lock().remove(name);
        self.limiters.lock().remove(name);
        self.engine.events().emit(
            engine::Severity::Info,
            "mirror-deleted",
            name,
            format!("Mirror \"{name}\" deleted; the destination LUNs stay."),
        );
        Ok(())
    }

    // ------------------------------------------------------------ reverse

    /// After a break, on the destination: asks the old source to become
    /// the destination (it keeps its writes since the common snapshot in a
    /// safety snapshot, rolls back, and pulls what was written here).
    pub fn reverse(
        &self,
        name: &str,
        my_url: &str,
        my_ca_cert: Option<String>,
        force: bool,
        dry_run: bool,
    ) -> Result<MirrorPlan, Error> {
        let r = self.relationship(name)?;
        if r.state != MirrorState::Broken {
            return Err(invalid(format!(
                "mirror \"{name}\" is {}: only a broken mirror can be reversed",
                r.state.as_str()
            )));
        }
        let peer = self.client(&r.peer)?;
        let token = if dry_run {
            String::new()
        } else {
            let token_name = format!("reverse.{}.{}", r.id, now_secs());
            self.tokens
                .create(&token_name)?
                .token
                .expect("a new token has its secret")
        };
        let req = ReverseRequest {
            members: r.wire_members(),
            name: name.into(),
            group: r.group,
            holder: self.source_holder(&r),
            url: my_url.into(),
            token,
            ca_cert: my_ca_cert,
            force,
            dry_run,
        };
        let plan = peer
            .reverse_mirror(&req)
            .map_err(|e| match e.code.as_deref() {
                Some("has_dependents") => Error::HasDependents(e.message),
                _ => invalid(format!("peer \"{}\": {}", r.peer, e.message)),
            })?;
        if plan.done {
            // This side is the source now: the old relationship's holds
            // here give way to the new one's (taken by the old source).
            self.engine.release_holds(&r.holder())?;
            self.change(name, |rel| {
                rel.state = MirrorState::Reversed;
                rel.in_flight = None;
                Ok(())
            })?;
            self.engine.events().emit(
                engine::Severity::Warning,
                "mirror-reversed",
                name,
                format!("Mirror \"{name}\" reversed: this side is now the source."),
            );
        }
        Ok(plan)
    }

    /// On the old source, asked by its destination: become the destination
    /// of the LUNs written there since the break.
    pub fn accept_reverse(self: &Arc<Self>, req: &ReverseRequest) -> Result<MirrorPlan, Error> {
        if req.members.is_empty() || req.members.len() > GROUP_MEMBERS_MAX {
            return Err(invalid("a reverse names 1 to 64 members".into()));
        }
        // The token that asks must belong to the relationship: some
        // snapshot of every member is held by it.
        for m in &req.members {
            let (_, snaps) = self.engine.snapshots_brief(&m.source)?;
            if !snaps.iter().any(|s| s.holds.contains(&req.holder)) {
                return Err(Error::InvalidArgument(format!(
                    "LUN \"{}\" is not mirrored by \"{}\"; a peer may only reverse its own mirrors",
                    m.source, req.holder
                )));
            }
        }
        let peer_name = format!("reverse-{}", req.holder.replace([':', '/'], "-"));
        let new_name = if req.group {
            req.name.clone()
        } else {
            req.members[0].source.clone()
        };
        // What the other side holds, through the token it gave.
        let other = client::Client::with_ca_pem(
            &req.url,
            Some(req.token.clone()),
            req.ca_cert.as_deref(),
            PEER_CALL_TIMEOUT_MS,
        )
        .map_err(|e| invalid(e.message))?;
        let mut sides = Vec::new();
        for m in &req.members {
            let (_, mine) = self.engine.snapshots_brief(&m.source)?;
            let theirs = if req.dry_run && req.token.is_empty() {
                // A dry run made no token: their snapshots are ours held.
                mine.iter()
                    .filter(|s| s.holds.contains(&req.holder))
                    .cloned()
                    .map(Snap::from)
                    .collect()
            } else {
                other
                    .replication_lun(&m.destination)
                    .map_err(|e| invalid(format!("the destination at {}: {}", req.url, e.message)))?
                    .snapshots
                    .into_iter()
                    .map(Snap::from)
                    .collect()
            };
            sides.push(Sides {
                source: theirs,
                dest: mine.into_iter().map(Snap::from).collect(),
            });
        }
        let discard = |c: &Snap| -> u64 {
            req.members
                .iter()
                .map(|m| written_since(&self.engine, &m.source, &c.name))
                .sum()
        };
        let plan = planner::plan_rollback(&sides, discard, req.force).map_err(invalid)?;
        let safety = format!("reverse-safety.{}", now_secs());
        let mut out = MirrorPlan {
            name: new_name.clone(),
            common_snapshot: plan.common.name.clone(),
            discard_bytes: plan.discard_bytes,
            safety_snapshot: (plan.discard_bytes > 0).then(|| safety.clone()),
            done: false,
        };
        if req.dry_run {
            return Ok(out);
        }
        if !plan.allowed {
            return Err(Error::HasDependents(format!(
                "reversing discards {} bytes written on the old source since snapshot \"{}\"; pass --force to go ahead (a safety snapshot \"{safety}\" keeps them)",
                plan.discard_bytes, plan.common.name
            )));
        }
        // A relationship of that name that this side reversed away from
        // before (a failback): the new one takes its place.
        let taken = self
            .state
            .lock()
            .mirrors
            .iter()
            .any(|r| r.name == new_name && r.state != MirrorState::Reversed);
        if taken {
            return Err(Error::AlreadyExists {
                kind: "mirror",
                name: new_name,
            });
        }
        let holder = format!("mirror:{new_name}");
        for m in &req.members {
            self.engine
                .make_replica(&m.source, &plan.common.name, Some(&safety), &holder)?;
            // The old relationship's holds here are the new one's now.
            self.engine.release_holds(&req.holder)?;
        }
        let peer = Peer {
            name: peer_name.clone(),
            url: req.url.clone(),
            token: req.token.clone(),
            ca_cert: req.ca_cert.clone(),
            created: now_secs(),
        };
        let r = Relationship {
            name: new_name.clone(),
            id: random_hex(3),
            peer: peer_name.clone(),
            group: req.group,
            members: req
                .members
                .iter()
                .map(|m| Member {
                    source: m.destination.clone(),
                    destination: m.source.clone(),
                    clone_of: None,
                })
                .collect(),
            state: MirrorState::Idle,
            common: Some(SnapRecord {
                name: plan.common.name.clone(),
                created: plan.common.created,
            }),
            in_flight: None,
            goal: None,
            release_later: Vec::new(),
            seq: 0,
            schedule_secs: None,
            lag_alert_secs: None,
            rate_bytes: None,
            keep: KEEP_DEFAULT,
            last_success: None,
            last_error: None,
            last_transfer_bytes: 0,
            last_transfer_secs: 0.0,
            created: now_secs(),
        };
        self.change_state(|s| {
            s.mirrors.retain(|x| x.name != new_name);
            s.peers.retain(|p| p.name != peer_name);
            s.peers.push(peer);
            s.mirrors.push(r);
            Ok(())
        })?;
        self.workers.lock().remove(&new_name);
        self.engine.events().emit(
            engine::Severity::Warning,
            "mirror-reversed",
            &new_name,
            format!(
                "Mirror \"{new_name}\" reversed: this side is now the destination, pulling from {}.",
                req.url
            ),
        );
        self.start(&new_name)?;
        out.done = true;
        Ok(out)
    }
}

/// Bytes `lun`'s head changed since its snapshot `snapshot`: what rolling
/// it back discards.
fn written_since(engine: &Engine, lun: &str, snapshot: &str) -> u64 {
    let mut from = 0;
    let mut total = 0;
    loop {
        let Ok(chunk) = engine.snapshot_diff(
            lun,
            Some(snapshot),
            None,
            false,
            from,
            engine::DIFF_EXTENTS_MAX,
        ) else {
            return total;
        };
        // Data, zeros and trims alike: each is a change the rollback undoes.
        total += chunk
            .extents
            .iter()
            .map(|x| x.blocks * BLOCK_SIZE)
            .sum::<u64>();
        match chunk.next_block {
            Some(n) => from = n,
            None => return total,
        }
    }
}
