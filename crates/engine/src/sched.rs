//! Where the engine's threads may be interleaved, and (with the `sim`
//! feature) the deterministic scheduler that interleaves them.
//!
//! The engine calls `point` before every lock it takes and every I/O it
//! makes, takes the locks that can be held across such a point with
//! `acquire`, and waits for a commit with `wait`. Outside a simulated run
//! these are a plain lock and a plain wait (and `point` is nothing): a
//! thread-local check in test builds, no code at all in release builds.
//!
//! Inside a run started by `sim::Sched::run`, exactly one of the run's
//! threads executes at any moment. At each point the running thread asks a
//! seeded random number generator which thread runs next and hands over to
//! it; a lock that is taken is retried after handing over, a wait for a
//! commit hands over until the commit is done. The whole interleaving is a
//! function of the seed, so a failing seed replays exactly (TigerBeetle's
//! VOPR is the model; our threads are real, their order is not left to the
//! operating system). A run in which every thread only waits for a long
//! stretch is a deadlock or a hang, and is reported as one with where each
//! thread waits.

#[cfg(feature = "sim")]
pub use imp::{Outcome, Sched};

/// Whether this thread runs inside a simulated run.
#[cfg(feature = "sim")]
pub(crate) fn active() -> bool {
    imp::active()
}

/// Lets a simulated run switch to another thread here. (Called by the
/// simulated devices; the engine's own points are its `acquire`s.)
#[inline(always)]
#[cfg_attr(not(feature = "sim"), allow(dead_code))]
pub(crate) fn point(_at: &'static str) {
    #[cfg(feature = "sim")]
    imp::switch(_at, false);
}

/// Takes a lock: `lock` outside a simulated run; inside one, `try_lock`
/// until it succeeds, handing over to another thread after each failure.
#[inline(always)]
pub(crate) fn acquire<G>(
    _at: &'static str,
    _try_lock: impl FnMut() -> Option<G>,
    lock: impl FnOnce() -> G,
) -> G {
    #[cfg(feature = "sim")]
    if imp::active() {
        return imp::acquire(_at, _try_lock);
    }
    lock()
}

/// Waits on `cv` (callers re-check their condition, as with any condvar).
/// In a simulated run: lets go of the mutex, hands over, and takes it back.
#[inline(always)]
pub(crate) fn wait<T>(
    _at: &'static str,
    cv: &parking_lot::Condvar,
    guard: &mut parking_lot::MutexGuard<'_, T>,
) {
    #[cfg(feature = "sim")]
    if imp::active() {
        use parking_lot::lock_api::RawMutex as _;
        let mutex = parking_lot::MutexGuard::mutex(guard);
        // SAFETY: this thread holds the lock through `guard`, and holds it
        // again before returning (by the loop below), so the guard is
        // valid whenever anyone can use it; meanwhile other threads may
        // take the lock, as with a condvar wait.
        unsafe { mutex.force_unlock() };
        imp::switch(_at, true);
        while !unsafe { mutex.raw() }.try_lock() {
            imp::switch(_at, true);
        }
        return;
    }
    cv.wait(guard);
}

/// The state mutex is never held across a point (DESIGN.md: never across
/// I/O, and it is the last lock taken). Simulated runs check it.
#[inline(always)]
pub(crate) fn holding_state(_delta: isize) {
    #[cfg(feature = "sim")]
    imp::holding_state(_delta);
}

#[cfg(feature = "sim")]
mod imp {
    use parking_lot::{Condvar, Mutex};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::sync::Arc;

    /// How many switches in a row may all be waits, per live thread, before
    /// the run counts as stuck. Taking a lock that another thread holds
    /// costs one wait per try; a commit that syncs and writes the store
    /// takes a handful of points. Far below this in every healthy run.
    const STUCK_WAITS_PER_THREAD: u64 = 400;
    /// Switches kept for the report of a failed run.
    const TAIL: usize = 48;

    struct Inner {
        rng: StdRng,
        /// The thread whose turn it is.
        turn: usize,
        names: Vec<String>,
        alive: Vec<bool>,
        /// Where each thread last handed over (for a stuck report).
        at: Vec<&'static str>,
        /// In percent: how likely a thread that is not waiting goes on
        /// running at a point instead of handing over (drawn per seed, so
        /// that some seeds interleave finely and others in long stretches).
        stay: u32,
        steps: u64,
        max_steps: u64,
        waits_in_a_row: u64,
        hash: u64,
        tail: VecDeque<String>,
        stuck: Option<String>,
        panics: Vec<(String, String)>,
    }

    struct Shared {
        inner: Mutex<Inner>,
        cv: Condvar,
    }

    thread_local! {
        static ME: RefCell<Option<(Arc<Shared>, usize)>> = const { RefCell::new(None) };
        static STATE_HELD: Cell<isize> = const { Cell::new(0) };
    }

    pub(super) fn active() -> bool {
        ME.with(|m| m.borrow().is_some())
    }

    pub(super) fn holding_state(delta: isize) {
        if active() {
            STATE_HELD.with(|h| h.set(h.get() + delta));
        }
    }

    /// What a run did.
    #[derive(Debug, Clone)]
    pub struct Outcome {
        /// Points passed.
        pub steps: u64,
        /// A hash of the whole interleaving (thread and point at every
        /// step): equal for two runs of one seed.
        pub trace_hash: u64,
        /// The last switches, for a report.
        pub tail: Vec<String>,
        /// Set when the run deadlocked, hung or ran past its step limit: the
        /// run's threads are left parked (they can never run again).
        pub stuck: Option<String>,
        /// Threads that panicked, with their message.
        pub panics: Vec<(String, String)>,
    }

    impl Outcome {
        /// A report of the run's end, for a failure message.
        pub fn report(&self) -> String {
            let mut r = format!("{} steps", self.steps);
            if let Some(s) = &self.stuck {
                r += &format!("; stuck: {s}");
            }
            for (t, p) in &self.panics {
                r += &format!("; thread {t} panicked: {p}");
            }
            r += "\nlast switches:\n  ";
            r += &self.tail.join("\n  ");
            r
        }
    }

    /// A deterministic scheduler for one run.
    pub struct Sched;

    type Body = Box<dyn FnOnce() + Send>;

    impl Sched {
        /// Lets the run switch to another thread here (for a test's own
        /// threads, between their calls into the engine).
        pub fn yield_now() {
            switch("test", false);
        }

        /// Runs each `(name, body)` on a thread of its own, one at a time,
        /// interleaved at the engine's points in an order drawn from
        /// `seed`, until every body has returned (or panicked), or the run
        /// is stuck, or it passes `max_steps` points.
        pub fn run(seed: u64, max_steps: u64, bodies: Vec<(String, Body)>) -> Outcome {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5c4e_d001);
            let n = bodies.len();
            let stay = [0, 50, 90, 98][rng.gen_range(0..4)];
            let turn = rng.gen_range(0..n.max(1));
            let shared = Arc::new(Shared {
                inner: Mutex::new(Inner {
                    rng,
                    turn,
                    names: bodies.iter().map(|(n, _)| n.clone()).collect(),
                    alive: vec![true; n],
                    at: vec!["start"; n],
                    stay,
                    steps: 0,
                    max_steps,
                    waits_in_a_row: 0,
                    hash: 0xcbf2_9ce4_8422_2325,
                    tail: VecDeque::new(),
                    stuck: None,
                    panics: Vec::new(),
                }),
                cv: Condvar::new(),
            });
            let threads: Vec<_> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, (name, body))| {
                    let shared = shared.clone();
                    std::thread::Builder::new()
                        .name(format!("sim-{name}"))
                        .spawn(move || actor(shared, i, body))
                        .expect("spawn a simulated thread")
                })
                .collect();
            let mut g = shared.inner.lock();
            while g.stuck.is_none() && g.alive.iter().any(|a| *a) {
                shared.cv.wait(&mut g);
            }
            let outcome = Outcome {
                steps: g.steps,
                trace_hash: g.hash,
                tail: g.tail.iter().cloned().collect(),
                stuck: g.stuck.clone(),
                panics: g.panics.clone(),
            };
            drop(g);
            if outcome.stuck.is_none() {
                for t in threads {
                    let _ = t.join();
                }
            }
            outcome
        }
    }

    fn actor(shared: Arc<Shared>, me: usize, body: Body) {
        ME.with(|m| *m.borrow_mut() = Some((shared.clone(), me)));
        STATE_HELD.with(|h| h.set(0));
        {
            let mut g = shared.inner.lock();
            while g.turn != me || g.stuck.is_some() {
                shared.cv.wait(&mut g);
            }
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        ME.with(|m| *m.borrow_mut() = None);
        let mut g = shared.inner.lock();
        if let Err(p) = result {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(not a string)".into());
            let name = g.names[me].clone();
            g.panics.push((name, msg));
        }
        g.alive[me] = false;
        if let Some(next) = pick(&mut g, me, true) {
            g.turn = next;
        }
        shared.cv.notify_all();
    }

    /// The next thread to run after `me` hands over (`waiting`: `me` cannot
    /// go on, so another is preferred).
    fn pick(g: &mut Inner, me: usize, waiting: bool) -> Option<usize> {
        if g.alive[me] && !waiting && g.rng.gen_range(0..100) < g.stay {
            return Some(me);
        }
        let others: Vec<usize> = (0..g.alive.len())
            .filter(|&i| g.alive[i] && (i != me || !waiting))
            .collect();
        if others.is_empty() {
            return g.alive[me].then_some(me);
        }
        Some(others[g.rng.gen_range(0..others.len())])
    }

    pub(super) fn acquire<G>(at: &'static str, mut try_lock: impl FnMut() -> Option<G>) -> G {
        switch(at, false);
        loop {
            if let Some(g) = try_lock() {
                return g;
            }
            switch(at, true);
        }
    }

    /// Hands over at `at`; returns when it is this thread's turn again.
    pub(super) fn switch(at: &'static str, waiting: bool) {
        let Some((shared, me)) = ME.with(|m| m.borrow().clone()) else {
            return;
        };
        if STATE_HELD.with(|h| h.get()) > 0 {
            panic!("the state lock is held at a switch point ({at}): it must never be held across I/O or another lock");
        }
        let mut g = shared.inner.lock();
        g.steps += 1;
        g.at[me] = at;
        for b in (me as u64).to_le_bytes().iter().chain(at.as_bytes()) {
            g.hash = (g.hash ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        if g.tail.len() == TAIL {
            g.tail.pop_front();
        }
        let line = format!(
            "{:>6} {} {}{}",
            g.steps,
            g.names[me],
            at,
            if waiting { " (waits)" } else { "" }
        );
        g.tail.push_back(line);
        g.waits_in_a_row = if waiting { g.waits_in_a_row + 1 } else { 0 };
        let live = g.alive.iter().filter(|a| **a).count() as u64;
        if g.stuck.is_none() && g.waits_in_a_row > STUCK_WAITS_PER_THREAD * live.max(1) {
            let waits: Vec<String> = (0..g.alive.len())
                .filter(|&i| g.alive[i])
                .map(|i| format!("{} at {}", g.names[i], g.at[i]))
                .collect();
            g.stuck = Some(format!(
                "every thread only waits (deadlock or hang): {}",
                waits.join(", ")
            ));
        }
        if g.stuck.is_none() && g.steps > g.max_steps {
            g.stuck = Some(format!("passed the step limit of {}", g.max_steps));
        }
        if g.stuck.is_some() {
            shared.cv.notify_all();
            // Parked for good: the run is over and reported.
            loop {
                shared.cv.wait(&mut g);
            }
        }
        if let Some(next) = pick(&mut g, me, waiting) {
            g.turn = next;
        }
        if g.turn != me {
            shared.cv.notify_all();
            while g.turn != me || g.stuck.is_some() {
                shared.cv.wait(&mut g);
            }
        }
    }
}
