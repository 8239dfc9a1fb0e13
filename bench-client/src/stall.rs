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

/// What to inject: the processes, the period and each stall's length. Checked before
/// any client connects.
#[derive(Debug, Clone)]
pub struct Plan {
    pids: Vec<Pid>,
    every: Duration,
    length: Duration,
}

impl Plan {
    /// `every` and `length` in seconds; a stall must be shorter than its period.
    pub fn new(pids: &[String], every: f64, length: f64) -> Result<Self, String> {
        let pids = pids
            .iter()
            .map(|p| p.parse().map(Pid::from_raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--server-pid: {e}"))?;
        if !(every.is_finite() && length.is_finite() && length > 0.0 && length < every) {
            return Err("--stall-for must be above 0 and below --stall-every".into());
        }
        Ok(Self {
            pids,
            every: Duration::from_secs_f64(every),
            length: Duration::from_secs_f64(length),
        })
    }

    /// Stops the processes for the stall's length at the middle of each period from
    /// `from` until `until`, on a thread of its own; the handle yields the report.
    pub fn inject(self, from: Instant, until: Instant) -> JoinHandle<Stalls> {
        std::thread::spawn(move || {
            let mut count = 0;
            let mut at = from + self.every / 2;
            while at + self.length <= until {
                sleep_until(at);
                let stopped = Stopped::new(&self.pids);
                std::thread::sleep(self.length);
                drop(stopped);
                count += 1;
                at += self.every;
            }
            Stalls {
                every_s: self.every.as_secs_f64(),
                length_ms: self.length.as_secs_f64() * 1e3,
                count,
            }
        })
    }
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
        let plan = Plan::new(std::slice::from_ref(&pid), 0.2, 0.08).expect("plan");
        let handle = plan.inject(start, start + Duration::from_millis(600));
        // The first stall runs from 100 to 180 ms.
        std::thread::sleep(Duration::from_millis(140));
        assert_eq!(state(&pid), "T", "stopped inside a stall");
        let stalls = handle.join().expect("injector");
        assert_eq!(stalls.count, 3);
        assert_eq!(stalls.length_ms, 80.0);
        assert_ne!(state(&pid), "T", "continued after the last stall");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_stall_must_be_shorter_than_its_period() {
        assert!(Plan::new(&[], 1.0, 1.0).is_err());
        assert!(Plan::new(&[], 1.0, 0.0).is_err());
        assert!(Plan::new(&[], -1.0, 0.04).is_err());
        assert!(Plan::new(&[], f64::INFINITY, 0.04).is_err());
        assert!(Plan::new(&["x".into()], 1.0, 0.1).is_err());
        assert!(Plan::new(&["1".into()], 1.0, 0.1).is_ok());
    }
}
