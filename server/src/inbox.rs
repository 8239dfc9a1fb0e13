//! A worker's inbox loop: applies what other threads sent it through the mesh
//! (deliveries, interest changes, configuration, rate limits, shutdown), a batch per
//! wake-up (SPEC §2).

use std::rc::Rc;
use std::time::{Duration, Instant};

use stellar_protocol::ws::CloseCode;

use crate::mesh::MeshMsg;
use crate::worker::Worker;

/// Runs until a shutdown has drained the worker's connections.
pub async fn run(worker: &Rc<Worker>, listen_fds: &[i32]) {
    let mut batch = Vec::new();
    loop {
        worker.shared.mesh.inboxes[worker.index]
            .recv_batch(&mut batch)
            .await;
        for msg in batch.drain(..) {
            if let MeshMsg::Shutdown { graceful, timeout } = msg {
                worker.begin_shutdown();
                for fd in listen_fds {
                    let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Both);
                }
                drain(worker, graceful, timeout).await;
                return;
            }
            apply(worker, msg);
        }
    }
}

fn apply(worker: &Worker, msg: MeshMsg) {
    match msg {
        MeshMsg::Room { room, msg, exclude } => worker.deliver_room(&room, &msg, exclude),
        MeshMsg::All { msg, exclude } => worker.deliver_all(&msg, exclude),
        MeshMsg::Client { id, msg } => worker.deliver_to(id, &msg),
        MeshMsg::Interest {
            room,
            worker: from,
            joined,
            barrier,
        } => {
            worker.apply_interest(&room, from, joined);
            if let Some(b) = barrier {
                b.arrive();
            }
        }
        MeshMsg::Subscription {
            room,
            workers,
            barrier,
        } => crate::cluster::link::subscription(room, workers, barrier),
        MeshMsg::Recovered { id, ask, recovery } => {
            if let Some(conn) = worker.conn(id) {
                crate::recovery::finish(worker, &conn, ask, recovery);
            }
        }
        MeshMsg::Config(config) => worker.set_config(config),
        MeshMsg::RateLimits(table) => worker.set_rate_limits(table),
        MeshMsg::Shutdown { .. } => {}
    }
}

/// Graceful: every client gets 1001 and the worker waits (up to `shutdown_timeout`) for
/// them to go. Forced: sockets are shut at once.
async fn drain(worker: &Worker, graceful: bool, timeout: Duration) {
    for conn in worker.all_conns() {
        if graceful {
            conn.close(CloseCode::GOING_AWAY, "Server shutting down");
        } else {
            conn.kill();
        }
    }
    let deadline = Instant::now() + timeout;
    while worker.has_conns() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    for conn in worker.all_conns() {
        conn.kill();
    }
    // Let readers observe the shutdown and run their disconnect hooks.
    let settle = Instant::now() + Duration::from_millis(200);
    while worker.has_conns() && Instant::now() < settle {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}
