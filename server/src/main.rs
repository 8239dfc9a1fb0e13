//! The `stellar` binary: parses the configuration and runs the server until SIGINT or
//! SIGTERM, then shuts down gracefully within `shutdown_timeout`.
//!
//! Besides the reserved verbs it registers `echo` (event and ack), so the bench client's
//! echo and ack scenarios have something to call.

use std::sync::mpsc;

use clap::FromArgMatches;
use serde_json::Value;
use stellar_server::Server;
use stellar_server::config::Args;
use tracing_subscriber::EnvFilter;

/// mimalloc, unless built with `--features system-alloc` (for heap profilers such as
/// heaptrack, which see only the system allocator).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let matches = Args::command_with_defaults().get_matches();
    let config = match Args::from_arg_matches(&matches)
        .map_err(|e| e.to_string())
        .and_then(|a| a.resolve().map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stellar: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown_timeout = config.shutdown_timeout;
    let server = Server::builder()
        .config(config)
        .on("echo", |ctx| ctx.emit_raw("echo", &ctx.data_raw()))
        .on_ack("echo", |ctx| Ok::<Value, _>(ctx.data().clone()))
        .start();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stellar: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let handle = server.handle();
    let (tx, rx) = mpsc::channel();
    let signals = ctrlc_channel(tx);
    if signals.is_ok() && rx.recv().is_ok() {
        handle.shutdown_with_signal(shutdown_timeout, "SIGTERM");
    }
    server.wait();
    std::process::ExitCode::SUCCESS
}

/// Sends on `tx` at the first SIGINT or SIGTERM.
fn ctrlc_channel(tx: mpsc::Sender<()>) -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
}
