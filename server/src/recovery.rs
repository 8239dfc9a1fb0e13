//! One client's recovery of a room with history (SPEC §8): `recover`, and `join-room`
//! with `since`. The client's live messages of the room are held while the history is
//! read, then it gets what it missed in order, the answer
//! `{"room","recovered","offset","epoch"}`, and the held messages that came after:
//! each message once, in the recovery or live, and none lost in between.
//!
//! On a single node the history is read here, under the room's lock; in a cluster the
//! cluster thread reads it from Redis and the answer comes back through the worker's
//! inbox ([`crate::mesh::MeshMsg::Recovered`]) to [`finish`].

use std::rc::Rc;
use std::sync::Arc;

use serde_json::json;
use stellar_protocol::event::reserved;
use stellar_protocol::{ErrorCode, EventName};

use crate::cluster::Command;
use crate::connection::Conn;
use crate::history::{self, Recovery, Since};
use crate::rooms::RoomName;
use crate::worker::Worker;

/// A recovery asked for: the room, the client's position (none for a plain join of a
/// room with history: the answer then only tells the client where it starts, so it has
/// a position to come back with even if no message reaches it before it drops), and the
/// request to answer when it was one (ack handler and correlation id).
#[derive(Debug)]
pub struct Ask {
    pub room: RoomName,
    pub since: Option<Since>,
    pub ack: Option<(EventName<'static>, Box<str>)>,
}

/// Starts `conn`'s recovery of a room it is a member of.
pub fn start(worker: &Rc<Worker>, conn: &Rc<Conn>, ask: Ask) {
    let config = worker.config();
    if !history::keeps_history(&config, &ask.room) {
        let message = format!("room `{}` keeps no history", ask.room);
        answer(worker, conn, &ask, Err((ErrorCode::InvalidRoom, &message)));
        return;
    }
    match &worker.shared.cluster {
        Some(cluster) => {
            worker.hold(conn, &ask.room);
            cluster.send(Command::Recover {
                id: conn.id,
                ask,
                ttl: config.history_ttl,
            });
        }
        None => {
            let recovery =
                worker
                    .shared
                    .history
                    .recover(&ask.room, ask.since.as_ref(), &config, || {
                        worker.hold(conn, &ask.room);
                    });
            finish(worker, conn, ask, recovery);
        }
    }
}

/// Sends the recovered messages the client does not have, the answer, and the live
/// messages held meanwhile that came after.
pub fn finish(worker: &Worker, conn: &Rc<Conn>, ask: Ask, recovery: Recovery) {
    let current = recovery.current().clone();
    let (first_live, held) = worker.release(conn, &ask.room, current.offset);
    let offset = |m: &Arc<crate::outbound::Outbound>| m.position().map_or(0, |p| p.offset);
    let recovered = match recovery {
        Recovery::Recovered { messages, .. } => {
            for msg in messages {
                // Messages from `first_live` on reached the client live already.
                if first_live == 0 || offset(&msg) < first_live {
                    conn.send_outbound(&msg, &worker.stats);
                }
            }
            true
        }
        Recovery::Lost { .. } => false,
    };
    let data = json!({
        "room": &*ask.room, "recovered": recovered,
        "offset": current.offset, "epoch": &*current.epoch,
    })
    .to_string();
    answer(worker, conn, &ask, Ok(&data));
    for msg in held {
        if offset(&msg) > current.offset {
            conn.send_outbound(&msg, &worker.stats);
        }
    }
}

fn answer(worker: &Worker, conn: &Rc<Conn>, ask: &Ask, result: Result<&str, (ErrorCode, &str)>) {
    match (&ask.ack, result) {
        (Some((name, correlation)), Ok(data)) => {
            conn.reply_ack(name, correlation, Ok(data), &worker.stats)
        }
        (Some((name, correlation)), Err((code, message))) => conn.reply_ack(
            name,
            correlation,
            Err((code.as_str(), message)),
            &worker.stats,
        ),
        (None, Ok(data)) => conn.emit_raw(&reserved::RECOVERED, data, &worker.stats),
        (None, Err((code, message))) => conn.send_error(code, message, &worker.stats),
    };
}
