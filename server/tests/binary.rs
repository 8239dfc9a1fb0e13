//! The `stellar` binary itself: it starts on its defaults, turns transparent huge pages
//! off unless told otherwise, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `stellar` on ephemeral ports with `env` and waits until it is listening.
fn start(env: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stellar"))
        .args(["--host", "127.0.0.1", "--port", "0", "--workers", "1"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stellar starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("stellar listening"));
    assert!(listening, "stellar logged that it listens");
    // Keep reading its log, so it never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// The `THP_enabled` line of the process's status: whether transparent huge pages may
/// back its memory.
fn thp_enabled(child: &Child) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled")
        .trim()
        .to_owned()
}

/// SIGTERM, then the exit status.
fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    child.wait().expect("exit")
}

#[test]
fn transparent_huge_pages_are_off_by_default() {
    let child = start(&[]);
    assert_eq!(thp_enabled(&child), "0");
    assert!(terminate(child).success());
}

#[test]
fn mimalloc_allow_thp_leaves_them_to_the_allocator() {
    let child = start(&[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(thp_enabled(&child), "1");
    assert!(terminate(child).success());
}

/// The signal handler was installed only after the server had started, so a SIGTERM
/// right after "listening" killed the process instead of shutting it down.
#[test]
fn regression_sigterm_as_soon_as_it_listens_shuts_down_gracefully() {
    for _ in 0..30 {
        assert!(terminate(start(&[])).success());
    }
}
