//! The planner: what a transfer sends, from which common snapshot, and what
//! a resync or reverse discards. Pure functions of the two sides'
//! snapshot lists (DESIGN.md: "the planner is a pure function"), so that
//! every case is a row of a table test.
//!
//! A snapshot is the same on both sides when its name and creation time
//! match: a transfer copies both, and a snapshot of that name taken
//! independently on each side (after a break) differs in time.

/// One snapshot as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub name: String,
    pub created: u64,
}

/// One member's snapshots on the source and the destination, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Sides {
    pub source: Vec<Snap>,
    pub dest: Vec<Snap>,
}

/// What an update sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Everything: nothing is common yet.
    Baseline,
    /// The change since `base`, which both sides hold. With `rebase`, the
    /// destination's head first goes back to `base` (the relationship's
    /// recorded base is gone from the source, an older common one is used).
    Incremental { base: String, rebase: bool },
}

fn same(a: &Snap, b: &Snap) -> bool {
    a.name == b.name && a.created == b.created
}

/// The newest snapshot every member holds on both sides (by the source's
/// order).
pub fn newest_common(members: &[Sides]) -> Option<Snap> {
    let first = members.first()?;
    first
        .source
        .iter()
        .rev()
        .find(|s| {
            members
                .iter()
                .all(|m| m.source.iter().any(|x| same(x, s)) && m.dest.iter().any(|x| same(x, s)))
        })
        .cloned()
}

/// Plans an update of a relationship whose last complete transfer was
/// `recorded` (None: none yet).
pub fn plan_update(recorded: Option<&Snap>, members: &[Sides]) -> Result<Update, String> {
    let Some(recorded) = recorded else {
        return Ok(Update::Baseline);
    };
    let on_both = members.iter().all(|m| {
        m.source.iter().any(|x| same(x, recorded)) && m.dest.iter().any(|x| same(x, recorded))
    });
    if on_both {
        return Ok(Update::Incremental {
            base: recorded.name.clone(),
            rebase: false,
        });
    }
    match newest_common(members) {
        Some(c) => Ok(Update::Incremental {
            base: c.name,
            rebase: true,
        }),
        None => Err(format!(
            "no snapshot is common to both sides any more (\"{}\" is gone); only a new baseline can continue: `blockfork mirror delete` and `blockfork mirror create` again",
            recorded.name
        )),
    }
}

/// The next snapshot to transfer on the way from `common` (None: nothing
/// yet) to `goal`, the mirror snapshot this update took: the source's
/// snapshots in between travel too, oldest first, so that their names and
/// times reach the destination (and a clone of one can travel as a
/// clone). Other relationships' mirror snapshots (`foreign`) are skipped.
/// None when `common` is `goal` already, or `goal` is gone from the source.
pub fn next_step(
    source: &[Snap],
    common: Option<&Snap>,
    goal: &Snap,
    foreign: impl Fn(&Snap) -> bool,
) -> Option<Snap> {
    if common.is_some_and(|c| same(c, goal)) {
        return None;
    }
    let goal_at = source.iter().position(|s| same(s, goal))?;
    let start = match common {
        // After the common snapshot, if the source still has it; if not
        // (deleted meanwhile), straight to the goal.
        Some(c) => match source.iter().position(|s| same(s, c)) {
            Some(i) if i < goal_at => i + 1,
            _ => goal_at,
        },
        None => 0,
    };
    source[start..=goal_at]
        .iter()
        .find(|s| same(s, goal) || !foreign(s))
        .cloned()
}

/// What a resync (or the old source's side of a reverse) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Where the rolled-back side restarts.
    pub common: Snap,
    /// Bytes written since `common` that are discarded (kept in a safety
    /// snapshot).
    pub discard_bytes: u64,
    /// Whether it may go ahead: nothing to discard, or `force`.
    pub allowed: bool,
}

/// Plans rolling one side back to the newest common snapshot; `discard_bytes`
/// is what that side wrote since (measured by the caller, who knows
/// `common`: see [`newest_common`]).
pub fn plan_rollback(
    members: &[Sides],
    discard_bytes: impl Fn(&Snap) -> u64,
    force: bool,
) -> Result<Rollback, String> {
    let common = newest_common(members).ok_or_else(|| {
        "the two sides have no snapshot in common; only a new baseline can mirror them again"
            .to_string()
    })?;
    let discard = discard_bytes(&common);
    Ok(Rollback {
        allowed: discard == 0 || force,
        discard_bytes: discard,
        common,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps(list: &[(&str, u64)]) -> Vec<Snap> {
        list.iter()
            .map(|&(n, c)| Snap {
                name: n.into(),
                created: c,
            })
            .collect()
    }

    fn one(source: &[(&str, u64)], dest: &[(&str, u64)]) -> Vec<Sides> {
        vec![Sides {
            source: snaps(source),
            dest: snaps(dest),
        }]
    }

    fn snap(n: &str, c: u64) -> Snap {
        Snap {
            name: n.into(),
            created: c,
        }
    }

    #[test]
    fn updates() {
        let inc = |b: &str, rebase| {
            Ok(Update::Incremental {
                base: b.into(),
                rebase,
            })
        };
        #[allow(clippy::type_complexity)]
        let table: Vec<(Option<Snap>, Vec<Sides>, Result<Update, String>)> = vec![
            // Nothing transferred yet.
            (None, one(&[("a", 1)], &[]), Ok(Update::Baseline)),
            // The usual: the recorded base on both sides.
            (
                Some(snap("m1", 5)),
                one(&[("m1", 5), ("m2", 6)], &[("m1", 5)]),
                inc("m1", false),
            ),
            // The recorded base was deleted on the source (retention ran
            // without a hold): the newest older common one, with a rebase.
            (
                Some(snap("m2", 6)),
                one(&[("m1", 5), ("m3", 7)], &[("m1", 5), ("m2", 6)]),
                inc("m1", true),
            ),
            // Same name, different time: not the same snapshot.
            (
                Some(snap("m2", 6)),
                one(&[("m2", 9)], &[("m2", 6)]),
                Err("no snapshot is common".into()),
            ),
            // A group: common only if every member has it on both sides.
            (
                Some(snap("g2", 6)),
                vec![
                    Sides {
                        source: snaps(&[("g1", 5), ("g2", 6)]),
                        dest: snaps(&[("g1", 5), ("g2", 6)]),
                    },
                    Sides {
                        source: snaps(&[("g1", 5)]),
                        dest: snaps(&[("g1", 5), ("g2", 6)]),
                    },
                ],
                inc("g1", true),
            ),
        ];
        for (i, (recorded, members, want)) in table.into_iter().enumerate() {
            let got = plan_update(recorded.as_ref(), &members);
            match (&got, &want) {
                (Err(g), Err(w)) => assert!(g.contains(w.as_str()), "row {i}: {g}"),
                _ => assert_eq!(got, want, "row {i}"),
            }
        }
    }

    #[test]
    fn steps() {
        let src = snaps(&[
            ("daily1", 1),
            ("mirror.x.1", 2),
            ("daily2", 3),
            ("mirror.other.9", 4),
            ("mirror.x.2", 5),
        ]);
        let foreign = |s: &Snap| s.name.starts_with("mirror.") && !s.name.starts_with("mirror.x.");
        let goal = snap("mirror.x.2", 5);
        let step =
            |common: Option<Snap>| next_step(&src, common.as_ref(), &goal, foreign).map(|s| s.name);
        // A baseline starts from the oldest snapshot.
        assert_eq!(step(None).as_deref(), Some("daily1"));
        // Then each one in order, skipping other mirrors' snapshots.
        assert_eq!(step(Some(snap("mirror.x.1", 2))).as_deref(), Some("daily2"));
        assert_eq!(step(Some(snap("daily2", 3))).as_deref(), Some("mirror.x.2"));
        // Done at the goal.
        assert_eq!(step(Some(goal.clone())), None);
        // A common snapshot the source lost: straight to the goal.
        assert_eq!(step(Some(snap("gone", 1))).as_deref(), Some("mirror.x.2"));
        // A goal the source lost: nothing to do (the update starts over).
        assert_eq!(next_step(&src, None, &snap("mirror.x.3", 6), foreign), None);
    }

    #[test]
    fn rollbacks() {
        let m = one(
            &[("m1", 5), ("m2", 6)],
            &[("m1", 5), ("m2", 6), ("mine", 8)],
        );
        // Writes since the common snapshot: refused without force.
        let r = plan_rollback(&m, |c| if c.name == "m2" { 4096 } else { 0 }, false).unwrap();
        assert_eq!(
            (r.common.name.as_str(), r.discard_bytes, r.allowed),
            ("m2", 4096, false)
        );
        assert!(plan_rollback(&m, |_| 4096, true).unwrap().allowed);
        // Nothing written: no force needed.
        assert!(plan_rollback(&m, |_| 0, false).unwrap().allowed);
        // Nothing common: no rollback can help.
        let none = one(&[("x", 1)], &[("y", 2)]);
        assert!(plan_rollback(&none, |_| 0, true).is_err());
        // The newest common is found from the source's order.
        let later = one(&[("a", 1), ("b", 2), ("c", 3)], &[("a", 1), ("c", 3)]);
        assert_eq!(newest_common(&later), Some(snap("c", 3)));
    }
}
