//! `ServerHandle::every` on a real server: ticks on schedule without drift, many timers
//! on one thread, cancellation by drop, and no timer left after shutdown.
//!
//! The tests take a lock so they run one at a time: they measure timing and count the
//! process's threads, and a neighbour starting servers would disturb both.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use stellar_server::Driver;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `Threads:` line of /proc/self/status.
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("the kernel reports Threads")
}

/// Whether a thread of this process is named `name` (/proc/self/task/*/comm).
fn has_thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("task dir")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .any(|comm| comm.trim() == name)
}

/// Polls `done` until it holds or `TIMEOUT` passes.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

/// A counter a timer callback bumps.
fn counting() -> (
    Arc<AtomicUsize>,
    impl Fn(&stellar_server::ServerHandle) + Send + 'static,
) {
    let count = Arc::new(AtomicUsize::new(0));
    let bump = Arc::clone(&count);
    (count, move |_: &stellar_server::ServerHandle| {
        bump.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn timer_fires_on_its_schedule_without_drift() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let period = Duration::from_millis(20);
    let ticks = 50;
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    let timer = s.handle.every(period, move |_| {
        let _ = tx.send(Instant::now());
    });
    let fired: Vec<Instant> = (0..ticks)
        .map(|_| rx.recv_timeout(TIMEOUT).expect("tick"))
        .collect();
    drop(timer);
    // Lateness of tick n against the ideal grid start + n·period: a timer that slept
    // "period" after each call would drift by its own overhead every tick, and one
    // polling every 50 ms would be up to 50 ms late.
    let lateness: Vec<Duration> = fired
        .iter()
        .zip(1u32..)
        .map(|(at, n)| at.saturating_duration_since(start + period * n))
        .collect();
    for (n, (at, late)) in fired.iter().zip(&lateness).enumerate() {
        let scheduled = start + period * (n as u32 + 1);
        assert!(*at >= scheduled, "tick {n} fired early");
        assert!(
            *late <= Duration::from_millis(10),
            "tick {n} was {late:?} late; all: {lateness:?}"
        );
    }
    let total = fired[ticks - 1].duration_since(start);
    assert!(
        total < period * ticks as u32 + Duration::from_millis(10),
        "{ticks} ticks took {total:?}: the schedule drifted"
    );
}

#[test]
fn a_hundred_timers_share_one_thread() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let before = thread_count();
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let counts: Vec<Arc<AtomicUsize>> = (0..100).map(|_| Arc::default()).collect();
    let timers: Vec<_> = counts
        .iter()
        .map(|count| {
            let (count, threads) = (Arc::clone(count), Arc::clone(&threads));
            s.handle.every(Duration::from_millis(10), move |_| {
                threads.lock().unwrap().insert(std::thread::current().id());
                count.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    assert!(
        wait_until(|| counts.iter().all(|c| c.load(Ordering::SeqCst) >= 3)),
        "every timer fired three times"
    );
    let grown = thread_count().saturating_sub(before);
    assert!(grown < 5, "100 timers added {grown} threads");
    let threads = threads.lock().unwrap();
    assert_eq!(
        threads.len(),
        1,
        "every callback ran on the one timer thread"
    );
    assert!(!threads.contains(&std::thread::current().id()));
    drop(timers);
}

#[test]
fn dropping_the_timer_cancels_it() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let (count, bump) = counting();
    let timer = s.handle.every(Duration::from_millis(5), bump);
    assert!(wait_until(|| count.load(Ordering::SeqCst) >= 3), "it fired");
    drop(timer);
    // A call that had begun when drop began may still finish; none starts after.
    let at_drop = count.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    let later = count.load(Ordering::SeqCst);
    assert!(later <= at_drop + 1, "{} calls after drop", later - at_drop);
}

#[test]
fn a_timer_may_drop_itself_from_its_callback() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let slot: Arc<Mutex<Option<stellar_server::Timer>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let (inner_slot, inner_count) = (Arc::clone(&slot), Arc::clone(&count));
    let timer = s.handle.every(Duration::from_millis(5), move |_| {
        if inner_count.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            inner_slot.lock().unwrap().take();
        }
    });
    slot.lock().unwrap().replace(timer);
    assert!(
        wait_until(|| slot.lock().unwrap().is_none()),
        "it dropped itself"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn zero_period_is_clamped_not_spun() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let (count, bump) = counting();
    let timer = s.handle.every(Duration::ZERO, bump);
    let start = Instant::now();
    assert!(
        wait_until(|| count.load(Ordering::SeqCst) >= 20),
        "it fires"
    );
    std::thread::sleep(Duration::from_millis(50));
    drop(timer);
    // Clamped to 1 ms: at most one call per millisecond (plus the first).
    let calls = count.load(Ordering::SeqCst);
    let millis = start.elapsed().as_millis() as usize;
    assert!(calls <= millis + 1, "{calls} calls in {millis} ms");
}

#[test]
fn stop_ends_the_timers_and_their_thread() {
    let _serial = serial();
    let mut s = TestServer::with(config(1, Driver::Auto));
    let (count, bump) = counting();
    let _timer = s.handle.every(Duration::from_millis(5), bump);
    assert!(wait_until(|| count.load(Ordering::SeqCst) >= 2), "it fired");
    assert!(has_thread_named("stellar-timers"));
    s.handle.stop();
    s.server.take().expect("server").wait();
    let at_stop = count.load(Ordering::SeqCst);
    assert!(
        !has_thread_named("stellar-timers"),
        "the timer thread exited"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count.load(Ordering::SeqCst), at_stop);
    // A timer asked for after the end never fires.
    let (late, bump) = counting();
    let _late = s.handle.every(Duration::from_millis(1), bump);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(late.load(Ordering::SeqCst), 0);
}

#[test]
fn graceful_shutdown_ends_the_timers_even_from_a_callback() {
    let _serial = serial();
    let s = TestServer::with(config(1, Driver::Auto));
    let (count, bump) = counting();
    let _timer = s.handle.every(Duration::from_millis(5), bump);
    // A timer that shuts the server down: shutdown must not wait on its own thread.
    let _shutdown = s.handle.every(Duration::from_millis(30), |h| {
        h.shutdown(Duration::from_secs(1));
    });
    assert!(
        wait_until(|| s.handle.is_shutting_down() && !has_thread_named("stellar-timers")),
        "the timer thread exited after the shutdown"
    );
    let at_end = count.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count.load(Ordering::SeqCst), at_end);
}
