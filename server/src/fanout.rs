//! Where a message meets its recipients: this worker's members by refcount, the other
//! workers through the mesh, the other nodes through the cluster, and a room's history
//! on the way (SPEC §2, §8). Workers (`Worker::publish_room`, `publish_all`) and the
//! server handle (`to`, `broadcast`, `to_id`) both send through here, so each rule is
//! written once.

use std::sync::Arc;

use crate::cluster::{Command, Scope};
use crate::config::Config;
use crate::history;
use crate::mesh::{ClientId, MeshMsg};
use crate::outbound::Outbound;
use crate::shared::Shared;
use crate::worker::Worker;

/// Sends `msg` to every member of `room` but `exclude`, from `worker` (or from a handle
/// on another thread).
///
/// A room with history gives the message its position first: in memory on a single
/// node, delivering while the room is locked so every worker sees offset order; in
/// Redis in a cluster, where every node (this one too) delivers it from its
/// subscription, so all members see the order Redis gave.
pub fn room(
    shared: &Shared,
    worker: Option<&Worker>,
    config: &Config,
    room: &str,
    msg: Arc<Outbound>,
    exclude: Option<ClientId>,
) {
    if history::keeps_history(config, room) {
        match &shared.cluster {
            Some(cluster) => {
                let name: Arc<str> = Arc::from(room);
                let refused = cluster.publish(Command::PublishHistory {
                    room: Arc::clone(&name),
                    msg,
                    exclude,
                    size: config.history_size,
                    ttl: config.history_ttl,
                });
                // Over `redis_max_pending`: delivered here without a position, like
                // when Redis is down, and the room's epoch ends.
                if let Some(Command::PublishHistory { msg, .. }) = refused {
                    deliver_room(shared, worker, room, &msg, exclude);
                    cluster.send(Command::Taint(name));
                }
            }
            None => shared.history.append(room, msg, config, |msg| {
                deliver_room(shared, worker, room, msg, exclude);
            }),
        }
        return;
    }
    deliver_room(shared, worker, room, &msg, exclude);
    if let Some(cluster) = &shared.cluster {
        cluster.publish(Command::Publish {
            scope: Scope::Room(Arc::from(room)),
            msg,
            exclude,
        });
    }
}

/// This node's members of `room`: from a worker, its own by refcount and the workers
/// with members through the mesh; from a handle, every worker through the mesh.
fn deliver_room(
    shared: &Shared,
    worker: Option<&Worker>,
    room: &str,
    msg: &Arc<Outbound>,
    exclude: Option<ClientId>,
) {
    match worker {
        Some(worker) => worker.fan_room(room, msg, exclude),
        None => {
            let room: Arc<str> = Arc::from(room);
            for w in 0..shared.mesh.workers() {
                shared.mesh.send(
                    w,
                    MeshMsg::Room {
                        room: Arc::clone(&room),
                        msg: Arc::clone(msg),
                        exclude,
                    },
                );
            }
        }
    }
}

/// Sends `msg` to every client of every node but `exclude`.
pub fn all(
    shared: &Shared,
    worker: Option<&Worker>,
    msg: Arc<Outbound>,
    exclude: Option<ClientId>,
) {
    for w in 0..shared.mesh.workers() {
        match worker {
            Some(worker) if worker.index == w => worker.deliver_all(&msg, exclude),
            _ => shared.mesh.send(
                w,
                MeshMsg::All {
                    msg: Arc::clone(&msg),
                    exclude,
                },
            ),
        }
    }
    if let Some(cluster) = &shared.cluster {
        cluster.publish(Command::Publish {
            scope: Scope::All,
            msg,
            exclude,
        });
    }
}

/// Sends `msg` to client `id`: through its worker's inbox on this node, through its
/// node's channel on another. An id of a node that is not in the cluster reaches no one.
pub fn client(shared: &Shared, id: ClientId, msg: Arc<Outbound>) {
    if id.node == shared.node() {
        shared
            .mesh
            .send(id.worker as usize, MeshMsg::Client { id, msg });
    } else if let Some(cluster) = &shared.cluster {
        cluster.publish(Command::Publish {
            scope: Scope::Client(id),
            msg,
            exclude: None,
        });
    }
}
