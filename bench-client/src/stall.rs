//! Stalls injected into the server (`--stall-every`): its processes are stopped
//! (SIGSTOP) for `--stall-for` once a period through the measured window, then continued
//! (SIGCONT). Every server then meets the same stalls at the same moments, so the tail
//! shows how each recovers from one, not which stalls of the machine a run happened to
//! draw (`results/bench/tail-stalls.md`).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

/// What was injected, for the report.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stalls {
    pub every_s: f64,
    pub length_ms: f64,
    pub count: u32,
}

/// Stops every process of `pids` for `length` at the middle of each `every` from `from`
/// until `until`, on a thread of its own; the handle yields how many stalls it made.
pub fn inject(
    pids: &[String],
    every: Duration,
    length: Duration,
    from: Instant,
    until: Instant,
) -> Result<JoinHandle<u32>, String> {
    let pids = pids
        .iter()
        .map(|p| p.parse().map(Pid::from_raw))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--server-pid: {e}"))?;
    if length.is_zero() || length >= every {
        return Err("--stall-for must be above 0 and below --stall-every".into());
    }
    Ok(std::thread::spawn(move || {
        let mut count = 0;
        let mut at = from + every / 2;
        while at + length <= until {
            sleep_until(at);
            let stopped = Stopped::new(&pids);
            std::thread::sleep(length);
            drop(stopped);
            count += 1;
            at += every;
        }
        count
    }))
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The processes stopped; dropping it continues them, even while unwinding, so a
/// failed run never leaves a server stopped.
struct Stopped<'a>(&'a [Pid]);

impl<'a> Stopped<'a> {
    fn new(pids: &'a [Pid]) -> Self {
        for &pid in pids {
            let _ = kill(pid, Signal::SIGSTOP);
        }
        Self(pids)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        for &pid in self.0 {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process is really stopped for each stall and running again after it:
    /// its state in /proc is `T` inside a stall and not after the last.
    #[test]
    fn stalls_stop_the_process_and_continue_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().to_string();
        let state = |pid: &str| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned)
                .expect("state field")
        };
        let start = Instant::now();
        let handle = inject(
            std::slice::from_ref(&pid),
            Duration::from_millis(200),
            Duration::from_millis(80),
            start,
            start + Duration::from_millis(600),
        )
        .expect("plan");
        // The first stall runs from 100 to 180 ms.
        std::thread::sleep(Duration::from_millis(140));
        assert_eq!(state(&pid), "T", "stopped inside a stall");
        let count = handle.join().expect("injector");
        assert_eq!(count, 3);
        assert_ne!(state(&pid), "T", "continued after the last stall");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_stall_must_be_shorter_than_its_period() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        assert!(inject(&[], second, second, now, now).is_err());
        assert!(inject(&[], second, Duration::ZERO, now, now).is_err());
        assert!(inject(&["x".into()], second, second / 10, now, now).is_err());
    }
}
