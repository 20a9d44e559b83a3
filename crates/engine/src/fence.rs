//! Fencing LUNs for a management change: names resolved and fences taken as
//! one step.
//!
//! A change that must not run beside an in-flight write (a shrink or delete
//! frees blocks an in-place write may be filling; a snapshot or range clone
//! must not capture half a write) holds the LUN's fence exclusively. Taking
//! it by name has a window: the fence is looked up under the state lock,
//! taken without it, and the name looked up again under it. If the LUN was
//! deleted and another created under the same name in between, the change
//! would run on the new LUN without holding *its* fence. `Engine::fence_luns`
//! closes the window: after taking the fences it resolves again under the
//! state lock and checks that the same LUNs, with the same fences, come
//! back; if not, it lets go and starts over. While a fence is held the
//! LUN cannot be deleted (deletion needs the fence) and names are never
//! rebound otherwise, so what was checked stays true until the guard drops.

use crate::engine::Engine;
use crate::sched;
use crate::state::State;
use crate::types::*;
use parking_lot::{ArcRwLockWriteGuard, RawRwLock, RwLock};
use std::sync::Arc;

/// How often a resolve may lose the race before the caller is told to retry:
/// every loss is another client deleting and re-creating the LUN in the same
/// moment, which does not happen repeatedly by accident.
const FENCE_ATTEMPTS: usize = 64;

/// Write fences held on a set of LUNs, in id order.
pub(crate) struct Fenced {
    /// The fenced LUNs, sorted, each once.
    pub ids: Vec<LunId>,
    _guards: Vec<ArcRwLockWriteGuard<RawRwLock, ()>>,
}

impl Fenced {
    /// The one LUN fenced (for callers that fence one name).
    pub fn id(&self) -> LunId {
        debug_assert_eq!(self.ids.len(), 1);
        self.ids[0]
    }
}

type Fence = Arc<RwLock<()>>;

fn lookup(
    s: &State,
    resolve: &impl Fn(&State) -> Result<Vec<LunId>>,
) -> Result<Vec<(LunId, Fence)>> {
    s.check_open()?;
    let mut ids = resolve(s)?;
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| s.lun(id).map(|l| (id, l.fence.clone())))
        .collect()
}

impl Engine {
    /// Takes the write fences of the LUNs `resolve` names, in id order (no
    /// deadlock with other fencers), and returns them once `resolve` gives
    /// the same LUNs with the fences held. An error from `resolve` (a name
    /// that no longer exists) is returned as it is.
    pub(crate) fn fence_luns(
        &self,
        resolve: impl Fn(&State) -> Result<Vec<LunId>>,
    ) -> Result<Fenced> {
        for _ in 0..FENCE_ATTEMPTS {
            let wanted = lookup(&self.state.lock(), &resolve)?;
            #[cfg(feature = "sim")]
            self.sim_hooks.fire(crate::sim::HookPoint::FenceResolved);
            let guards: Vec<_> = wanted
                .iter()
                .map(|(_, f)| sched::acquire("fence.write", || f.try_write_arc(), || f.write_arc()))
                .collect();
            let now = lookup(&self.state.lock(), &resolve)?;
            #[cfg(feature = "sim")]
            if self
                .sim_hooks
                .skip_fence_recheck
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                // The bug, on purpose: the LUNs the names mean now, under
                // whatever fences were taken.
                return Ok(Fenced {
                    ids: now.into_iter().map(|(id, _)| id).collect(),
                    _guards: guards,
                });
            }
            let same = now.len() == wanted.len()
                && now
                    .iter()
                    .zip(&wanted)
                    .all(|((a, fa), (b, fb))| a == b && Arc::ptr_eq(fa, fb));
            if same {
                return Ok(Fenced {
                    ids: wanted.into_iter().map(|(id, _)| id).collect(),
                    _guards: guards,
                });
            }
            // Another client deleted and re-created a name meanwhile.
            drop(guards);
        }
        Err(Error::InvalidArgument(format!(
            "the LUNs named changed {FENCE_ATTEMPTS} times while being fenced; try again"
        )))
    }

    /// `fence_luns` for one LUN by name.
    pub(crate) fn fence_lun(&self, name: &str) -> Result<Fenced> {
        self.fence_luns(|s| Ok(vec![s.lun_id(name)?]))
    }
}
