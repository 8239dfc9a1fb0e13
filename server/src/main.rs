//! The `stellar` binary: parses the configuration and runs the server until SIGINT or
//! SIGTERM, then shuts down gracefully within `shutdown_timeout`. SIGHUP reloads the
//! TLS certificate and key.
//!
//! Besides the reserved verbs it registers `echo` (event and ack), so the bench client's
//! echo and ack scenarios have something to call.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use stellar_server::config::Args;
use stellar_server::{ReloadTlsError, Server};
use tracing_subscriber::EnvFilter;

/// mimalloc, unless built with `--features system-alloc` (for heap profilers such as
/// heaptrack, which see only the system allocator).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let thp = disable_transparent_huge_pages();
    #[cfg(not(feature = "system-alloc"))]
    keep_freed_memory(PURGE_DELAY_MS);
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Args::config_from_command_line() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stellar: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = thp {
        tracing::warn!(error = %e, "transparent huge pages stay on");
    }
    let shutdown_timeout = config.shutdown_timeout;
    // Signals are caught from before the server starts: one that arrives while it starts
    // shuts it down gracefully as soon as it is up.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP]);
    let server = Server::builder()
        .config(config)
        .on("echo", |ctx| {
            let _ = ctx.emit_raw("echo", &ctx.data_raw());
        })
        .on_ack_raw("echo", |ctx| Ok(ctx.data_raw().into_owned()))
        .start();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stellar: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let handle = server.handle();
    match signals {
        Ok(mut signals) => {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match handle.reload_tls() {
                        Ok(()) => {}
                        Err(ReloadTlsError::Off) => tracing::info!("SIGHUP: TLS is off"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: certificate kept"),
                    }
                    continue;
                }
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                handle.shutdown_with_signal(shutdown_timeout, name);
                break;
            }
        }
        Err(e) => tracing::warn!(error = %e, "signals are not handled"),
    }
    server.wait();
    std::process::ExitCode::SUCCESS
}

/// How long memory mimalloc no longer uses stays with the process before it is given
/// back to the kernel (mimalloc's `purge_delay`; its default is 1 s): 10 s, jemalloc's
/// default decay for the same purpose.
///
/// A burst (the backlog after the worker was stalled: at 45 000 deliveries/s, 40 ms of
/// messages relayed at once) needs more write queues and writer tasks than the steady
/// state, on pages mimalloc had given back since the last one. Each first touch of such
/// a page is a fault and a zeroed page: a third of the worker's time between waking
/// from a stall and its first write (`results/bench/stalls-purge-ab.md`). The cost is
/// that a burst's memory stays resident for 10 s after it.
#[cfg(not(feature = "system-alloc"))]
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay`'s place in mimalloc's `mi_option_t` (v2 and v3 alike;
/// `libmimalloc-sys` names no constant for it).
#[cfg(not(feature = "system-alloc"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's purge delay to `ms`, unless `MIMALLOC_PURGE_DELAY` (which mimalloc
/// reads itself) says otherwise.
#[cfg(not(feature = "system-alloc"))]
fn keep_freed_memory(ms: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores one integer in mimalloc's option table, which
    // mimalloc reads each time it decides whether to purge; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asks for them on its arenas, and each first touch of a 2 MiB page
/// then zeroes all of it: idle connections cost about a quarter more memory (1.9 KiB
/// against 1.4 KiB each at 19 000), and a connection storm spends a quarter of its CPU
/// zeroing pages, while room broadcast gains nothing measurable from them.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and the unused ones as 0; it
    // only sets a flag on this process's memory map and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(all(test, not(feature = "system-alloc")))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn faults() -> i64 {
        // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_THREAD is this thread's own usage.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0, "getrusage");
        usage.ru_minflt
    }

    /// Touches 32 MiB in 1 MiB blocks (each its own span of mimalloc's arena, given
    /// back to it when freed), frees them, and counts the page faults of touching as
    /// much again `after` later (mimalloc collected before and after the wait, so that
    /// what is due to be purged is).
    fn faults_of_reuse(after: std::time::Duration) -> i64 {
        let touch = || {
            let blocks: Vec<Vec<u8>> = (0..32).map(|_| vec![1u8; 1 << 20]).collect();
            std::hint::black_box(&blocks);
        };
        touch();
        // SAFETY: mi_collect only frees mimalloc's own empty pages.
        unsafe { libmimalloc_sys::mi_collect(false) };
        std::thread::sleep(after);
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_collect(false) };
        let before = faults();
        touch();
        faults() - before
    }

    /// Memory freed after a burst is still resident for the next one 1.5 s later,
    /// where mimalloc's default (1 s) would have given it back: 32 MiB again costs
    /// about a dozen page faults, against about 700 with `MIMALLOC_PURGE_DELAY=1000`
    /// and 2 300 with 0.
    #[test]
    fn freed_memory_is_reused_without_page_faults_after_mimallocs_default_delay() {
        let got = std::thread::spawn(|| {
            keep_freed_memory(PURGE_DELAY_MS);
            faults_of_reuse(std::time::Duration::from_millis(1500))
        })
        .join()
        .expect("thread");
        assert!(got < 200, "{got} page faults reusing 32 MiB");
    }
}
