//! A worker's thread: the driver (io_uring or epoll) chosen at start-up and nowhere
//! else, the worker's own `SO_REUSEPORT` listeners, and its periodic heartbeat (SPEC §2).
//!
//! Code above this file never asks which driver it runs on.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use stellar_protocol::tcp::{self, FrameType};
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::{CloseCode, OpCode};
use tracing::{debug, info, warn};

use crate::config::Driver;
use crate::files;
use crate::inbox;
use crate::outbound::Proto;
use crate::session;
use crate::shared::Shared;
use crate::worker::Worker;

/// Starts worker `index` on the current thread and runs it until shutdown.
pub fn run(
    index: usize,
    shared: Arc<Shared>,
    ws: std::net::TcpListener,
    tcp: std::net::TcpListener,
) {
    let driver = shared.config().driver;
    let main = move |driver_name: &'static str| {
        info!(worker = index, driver = driver_name, "worker started");
        serve(index, shared, ws, tcp)
    };
    let uring = match driver {
        Driver::Uring => true,
        Driver::Epoll => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let result = if uring {
        uring_runtime().map(|(mut rt, name)| rt.block_on(main(name)))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(files::pool())
            .build()
            .map(|mut rt| rt.block_on(main("epoll")))
    };
    if let Err(e) = result {
        warn!(worker = index, error = %e, "worker could not start its event loop");
    }
}

/// The worker's io_uring runtime, with cooperative task work where the kernel has it
/// (5.19+), else plain io_uring; the name says which.
///
/// By default io_uring interrupts a thread each time one of its sockets becomes readable:
/// when the client writing to it runs on another core, that is an inter-processor
/// interrupt, paid for by the writer and breaking into the worker's loop. With
/// `COOP_TASKRUN` the completion instead waits for the worker's next system call, which
/// its loop makes at every turn (monoio reaps completions only when it parks, so none
/// is seen later than before). A/B, 5 runs each: WebSocket acks 223 572 against 199 231
/// round trips/s, connection storm 44 against 52 µs per connection
/// (`results/bench/*-coop-ab.md`).
///
/// Not `DEFER_TASKRUN`, which measured level with this to 10 % ahead of it
/// (`results/bench/ack-coop-defer.md`): it runs the waiting completions only when the
/// loop parks to wait, and monoio's park does not wait while other threads keep waking
/// the worker, so a steady stream of mesh messages (a cluster link's, say) could hold
/// back its sockets for as long as it lasts.
fn uring_runtime() -> std::io::Result<(UringRuntime, &'static str)> {
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .attach_thread_pool(files::pool())
            .build()
    };
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun();
    match build(coop) {
        Ok(rt) => Ok((rt, "uring")),
        Err(_) => {
            build(io_uring::IoUring::builder()).map(|rt| (rt, "uring, interrupting task work"))
        }
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

async fn serve(
    index: usize,
    shared: Arc<Shared>,
    ws: std::net::TcpListener,
    tcp: std::net::TcpListener,
) {
    let worker = Worker::new(index, shared);
    let mut listen_fds = Vec::new();
    for (listener, proto) in [(ws, Proto::Ws), (tcp, Proto::Tcp)] {
        listen_fds.push(listener.as_raw_fd());
        match TcpListener::from_std(listener) {
            Ok(l) => {
                monoio::spawn(accept_loop(Rc::clone(&worker), l, proto));
            }
            Err(e) => warn!(worker = index, error = %e, "listener not usable"),
        }
    }
    monoio::spawn(heartbeat_loop(Rc::clone(&worker)));
    if let Some(cluster) = &worker.shared.cluster {
        crate::cluster::link::attach(cluster, &worker.shared.mesh, index);
    }
    inbox::run(&worker, &listen_fds).await;
    info!(worker = index, "worker stopped");
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, proto: Proto) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) if worker.is_shutting_down() => {
                debug!(worker = worker.index, error = %e, "listener closed");
                return;
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(worker = worker.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if worker.is_shutting_down() {
            return;
        }
        let w = Rc::clone(&worker);
        match proto {
            Proto::Ws => monoio::spawn(session::serve_http(w, stream, remote)),
            Proto::Tcp => monoio::spawn(session::serve_tcp(w, stream, remote)),
        };
    }
}

async fn heartbeat_loop(worker: Rc<Worker>) {
    loop {
        let interval = worker.config().heartbeat_interval;
        monoio::time::sleep(interval).await;
        heartbeat(&worker);
        // One worker drops the history of rooms idle past `history_ttl`.
        if worker.index == 0 {
            worker.shared.history.expire(worker.config().history_ttl);
        }
    }
}

/// Pings idle clients and drops the ones silent past `heartbeat_timeout`.
fn heartbeat(worker: &Worker) {
    let config = worker.config();
    let now = Instant::now();
    for conn in worker.all_conns() {
        let idle = conn.silent_for(now);
        if idle >= config.heartbeat_timeout {
            debug!(worker = worker.index, client = %conn.id, "heartbeat timeout");
            conn.close(CloseCode::GOING_AWAY, "Heartbeat timeout");
        } else if idle >= config.heartbeat_interval {
            let ping = match conn.proto {
                Proto::Ws => encode_server(OpCode::Ping, b""),
                Proto::Tcp => tcp::frame::encode_control(FrameType::Ping),
            };
            conn.send(ping, &worker.stats);
        }
    }
}
