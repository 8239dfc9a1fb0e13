//! The timer service behind [`ServerHandle::every`](crate::ServerHandle::every): one
//! thread per server holding a min-heap of deadlines, so a thousand timers cost one
//! thread, and each fires when it is due rather than at the next poll.
//!
//! It lives apart from the workers because timer callbacks are user code that may block
//! (a database read before a `server:sync` push); on a worker that would stall every
//! connection of its core.
//!
//! Schedule: a timer started at `t0` with period `p` is due at `t0 + p`, `t0 + 2p`, …;
//! each next deadline is the previous deadline plus `p`, never "now plus `p`", so lateness
//! does not accumulate. When a callback (this one or another, since they share one
//! thread) runs past one or more of a timer's deadlines, those ticks are skipped, not
//! fired in a burst: the timer fires once, late, then resumes on its grid.
//!
//! Cancellation: dropping the [`Timer`] removes it under the lock that the service holds
//! when it decides to start a callback, so once `drop` has returned no new call of that
//! callback starts. A call that had already started when `drop` began runs to its end
//! (`drop` does not wait for it, so dropping a timer from inside its own callback, or
//! while holding a lock the callback takes, cannot deadlock).
//!
//! Limits: a zero period is clamped to [`MIN_PERIOD`] (1 ms) so it cannot spin the
//! thread; a callback that panics is logged and its timer cancelled (as the thread per
//! timer of before would have died); on `stop`/`shutdown` no callback starts any more,
//! the thread exits after the one running (if any) returns, and every callback is
//! dropped, releasing what it captured (often a `ServerHandle`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;

use crate::api::ServerHandle;
use crate::shared::Shared;

/// The shortest period a timer runs at: a zero period is clamped to it, so that a timer
/// asked to run "continuously" takes one callback per millisecond instead of spinning
/// the timer thread (and starving every other timer).
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(1);

type Callback = Box<dyn Fn(&ServerHandle) + Send>;

/// One server's timers: the schedule and the thread that runs it.
pub(crate) struct Timers {
    queue: Arc<Queue>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The schedule, shared by the timer thread and every [`Timer`].
struct Queue {
    state: Mutex<State>,
    /// Signalled when a timer is added (its deadline may be the earliest) or on stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// `(deadline, timer id)`, earliest first. Entries of cancelled timers stay until
    /// popped (or until a cancel compacts the heap), and are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Live timers not running right now.
    tasks: HashMap<u64, Task>,
    /// The timer whose callback runs now (out of `tasks` meanwhile).
    running: Option<u64>,
    /// Its `Timer` was dropped during the call: do not schedule it again.
    running_cancelled: bool,
    next_id: u64,
    stopped: bool,
}

struct Task {
    period: Duration,
    callback: Callback,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Self {
            queue: Arc::new(Queue {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Starts the timer thread. It holds the server weakly, so timers never keep a
    /// server alive, and it exits on [`Timers::stop`].
    pub(crate) fn spawn(&self, server: Weak<Shared>) -> std::io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let thread = std::thread::Builder::new()
            .name("stellar-timers".into())
            .spawn(move || run(&queue, &server))?;
        *lock(&self.thread) = Some(thread);
        Ok(())
    }

    /// Schedules `callback` every `period` (at least [`MIN_PERIOD`]), first one period
    /// from now. After [`Timers::stop`] the timer is never scheduled.
    pub(crate) fn add(&self, period: Duration, callback: Callback) -> Timer {
        let period = period.max(MIN_PERIOD);
        let mut state = self.queue.lock();
        let id = state.next_id;
        state.next_id += 1;
        if !state.stopped {
            // A period so long that its deadline is past the clock's range never fires.
            if let Some(at) = Instant::now().checked_add(period) {
                state.deadlines.push(Reverse((at, id)));
            }
            state.tasks.insert(id, Task { period, callback });
            self.queue.changed.notify_one();
        }
        Timer {
            queue: Arc::clone(&self.queue),
            id,
        }
    }

    /// Stops every timer: no callback starts after this returns, and the thread exits
    /// once a callback still running has returned.
    pub(crate) fn stop(&self) {
        self.queue.lock().stopped = true;
        self.queue.changed.notify_all();
    }

    /// Waits for the timer thread to exit (after [`Timers::stop`]); returns at once when
    /// called from a timer callback, which could not wait for its own thread.
    pub(crate) fn join(&self) {
        let mut slot = lock(&self.thread);
        if slot
            .as_ref()
            .is_some_and(|t| t.thread().id() == std::thread::current().id())
        {
            return;
        }
        if let Some(thread) = slot.take() {
            drop(slot);
            let _ = thread.join();
        }
    }
}

impl Drop for Timers {
    /// The server is gone: let the thread go too.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Timer callbacks run outside every lock and under `catch_unwind`, so a poisoned lock
/// can only come from a panic in this module's own bookkeeping, which leaves the state
/// consistent (every mutation is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The timer thread: sleeps until the earliest deadline, runs what is due, reschedules.
fn run(queue: &Queue, server: &Weak<Shared>) {
    let mut state = queue.lock();
    while !state.stopped {
        let now = Instant::now();
        let Some(&Reverse((at, id))) = state.deadlines.peek() else {
            state = queue
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        if at > now {
            state = queue
                .changed
                .wait_timeout(state, at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        state.deadlines.pop();
        let Some(task) = state.tasks.remove(&id) else {
            continue;
        };
        state.running = Some(id);
        drop(state);
        let Some(shared) = server.upgrade() else {
            return;
        };
        let handle = ServerHandle(shared);
        let panicked = catch_unwind(AssertUnwindSafe(|| (task.callback)(&handle))).is_err();
        drop(handle);
        if panicked {
            error!(
                timer = id,
                "timer callback panicked; the timer is cancelled"
            );
        }
        state = queue.lock();
        state.running = None;
        let cancelled = std::mem::take(&mut state.running_cancelled) || panicked;
        if cancelled || state.stopped {
            // The callback may own anything (a handle, a connection pool): drop it with
            // no lock held.
            drop(state);
            drop(task);
            state = queue.lock();
            continue;
        }
        if let Some(next) = next_deadline(at, task.period, Instant::now()) {
            state.deadlines.push(Reverse((next, id)));
        }
        state.tasks.insert(id, task);
    }
    // Callbacks often hold a `ServerHandle`: dropping them breaks that cycle.
    let tasks = std::mem::take(&mut state.tasks);
    state.deadlines.clear();
    drop(state);
    drop(tasks);
}

/// The first deadline of the grid `at + k·period` (k ≥ 1) that is later than `now`:
/// `at + period` unless the callback overran it, in which case the missed ticks are
/// skipped. `None` when that instant is beyond the clock's range.
fn next_deadline(at: Instant, period: Duration, now: Instant) -> Option<Instant> {
    let next = at.checked_add(period)?;
    if next > now {
        return Some(next);
    }
    let step = period.as_nanos().max(1);
    let periods = now.duration_since(at).as_nanos() / step + 1;
    let offset = u64::try_from(periods.checked_mul(step)?).ok()?;
    at.checked_add(Duration::from_nanos(offset))
}

/// A running [`ServerHandle::every`](crate::ServerHandle::every) timer; dropping it
/// cancels the timer. Once `drop` has returned no new call of its callback starts; a
/// call already running when `drop` began (on the timer thread) finishes.
#[must_use = "dropping the Timer cancels it at once"]
pub struct Timer {
    queue: Arc<Queue>,
    id: u64,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        let task = state.tasks.remove(&self.id);
        if task.is_none() && state.running == Some(self.id) {
            state.running_cancelled = true;
        }
        // Stale heap entries are skipped when popped; compact when they dominate, so
        // timers made and dropped in a loop do not grow the heap without bound.
        if state.deadlines.len() > 2 * state.tasks.len() + 16 {
            let live = std::mem::take(&mut state.tasks);
            state
                .deadlines
                .retain(|Reverse((_, id))| live.contains_key(id));
            state.tasks = live;
        }
        drop(state);
        drop(task);
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_deadline_keeps_the_grid() {
        let at = Instant::now();
        let p = Duration::from_millis(20);
        // On time, or a little late: the next tick is one period after the last deadline.
        assert_eq!(next_deadline(at, p, at), Some(at + p));
        assert_eq!(
            next_deadline(at, p, at + Duration::from_millis(7)),
            Some(at + p)
        );
    }

    #[test]
    fn next_deadline_skips_ticks_a_callback_overran() {
        let at = Instant::now();
        let p = Duration::from_millis(20);
        // Ran for 65 ms: the ticks at 20, 40 and 60 ms are skipped, the next is at 80.
        assert_eq!(
            next_deadline(at, p, at + Duration::from_millis(65)),
            Some(at + 4 * p)
        );
        // Exactly on a tick counts as missed: the next one is strictly later than now.
        assert_eq!(next_deadline(at, p, at + 2 * p), Some(at + 3 * p));
    }

    #[test]
    fn next_deadline_past_the_clock_is_none() {
        assert_eq!(
            next_deadline(Instant::now(), Duration::MAX, Instant::now()),
            None
        );
    }
}
