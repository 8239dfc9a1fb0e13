//! Room membership, with one owner per worker (SPEC §3.3): [`Membership`].
//!
//! A membership is seen four ways, and [`Membership`] is the only code that changes any
//! of them, so they cannot drift apart:
//! - each room's members on this worker, in join order, for fan-out (an `IndexMap` by
//!   client sequence number: a broadcast walks a dense array, and a join or a leave is
//!   O(1));
//! - each client's rooms, for `details`, `rooms()` and cleanup on disconnect;
//! - which workers have members of each room ([`Interest`]), replicated on every worker
//!   through the mesh when a worker gains its first or loses its last member, so a
//!   broadcast sends a mesh message only to workers that have members;
//! - the [`Directory`], the one shared, locked view, read by queries (`clients`,
//!   `room_members`, `rooms`) and never per message.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use ahash::HashMap;
use indexmap::IndexMap;

use crate::cluster::{Cluster, Command};
use crate::connection::Conn;
use crate::mesh::{Barrier, ClientId, Mesh, MeshMsg};
use crate::outbound::Outbound;
use crate::stats::WorkerStats;

/// A room name, shared between the maps and mesh messages.
pub type RoomName = Arc<str>;

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The client is in `max_rooms_per_client` rooms already.
    TooManyRooms,
    /// The server holds `max_rooms` rooms already.
    ServerRoomsFull,
}

/// The room limits a join is checked against (from `Config`, which can change at run
/// time, so they are passed in rather than kept).
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub per_client: usize,
    pub server: usize,
}

/// One worker's memberships; see the module docs.
///
/// The maps read for every message hash with aHash, whose keys are drawn at random when
/// the process starts, so room names a client picks cannot be made to collide; SipHash,
/// the standard library's, was 2 % of the server's core in the closed-loop broadcast.
pub struct Membership {
    worker: usize,
    mesh: Arc<Mesh>,
    dirs: Arc<Directories>,
    stats: Arc<WorkerStats>,
    /// This worker's members of each room, by client sequence number.
    members: HashMap<RoomName, IndexMap<u64, Rc<Conn>, ahash::RandomState>>,
    /// Each client's rooms, for clients in at least one.
    joined: HashMap<u64, Vec<RoomName>>,
    interest: Interest,
    /// The cluster, told of every membership change (the fifth view: the cluster-wide
    /// directory) and of this worker's first and last member of each room.
    cluster: Option<Arc<Cluster>>,
    /// Members of rooms with history, by client sequence number: where their live
    /// messages started, and those held while a recovery is read (see [`Track`]).
    tracks: RefCell<HashMap<u64, Vec<Track>>>,
}

/// One member's place in a room with history.
struct Track {
    room: RoomName,
    /// The offset of the first live message delivered to the member (0: none yet).
    first_live: u64,
    /// Live messages held while a recovery is being read, released after it.
    held: Option<Vec<Arc<Outbound>>>,
}

impl Membership {
    pub fn new(
        worker: usize,
        mesh: Arc<Mesh>,
        dirs: Arc<Directories>,
        stats: Arc<WorkerStats>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            worker,
            mesh,
            dirs,
            stats,
            members: HashMap::default(),
            joined: HashMap::default(),
            interest: Interest::default(),
            cluster,
            tracks: RefCell::default(),
        }
    }

    /// Joins `conn` to `room`. When this worker gains its first member, the other
    /// workers are told, and the returned barrier opens once all of them know: only then
    /// may the join be confirmed to the client. Joining a room twice changes nothing.
    pub fn join(
        &mut self,
        conn: &Rc<Conn>,
        room: &str,
        limits: RoomLimits,
    ) -> Result<Option<Arc<Barrier>>, JoinError> {
        let rooms = self.joined.get(&conn.id.seq).map_or(&[][..], Vec::as_slice);
        if rooms.iter().any(|r| &**r == room) {
            return Ok(None);
        }
        if rooms.len() >= limits.per_client {
            return Err(JoinError::TooManyRooms);
        }
        if !self.interest.contains(room) && self.interest.len() >= limits.server {
            return Err(JoinError::ServerRoomsFull);
        }
        let room: RoomName = match self.members.get_key_value(room) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(room),
        };
        let members = self.members.entry(Arc::clone(&room)).or_default();
        let first = members.is_empty();
        members.insert(conn.id.seq, Rc::clone(conn));
        self.joined
            .entry(conn.id.seq)
            .or_default()
            .push(Arc::clone(&room));
        if let Some(mut dir) = self.dirs.lock(self.worker) {
            dir.rooms
                .entry(Arc::clone(&room))
                .or_default()
                .insert(conn.id);
        }
        if let Some(cluster) = &self.cluster {
            cluster.send(Command::Member {
                room: Arc::clone(&room),
                id: conn.id,
                user: conn.user_id(),
                joined: true,
            });
        }
        if !first {
            return Ok(None);
        }
        self.stats.local_rooms.add(1);
        self.interest.set(&room, self.worker, true);
        // The other workers, and the cluster (which subscribes the node to the room).
        let others = self.mesh.workers() - 1 + usize::from(self.cluster.is_some());
        if others == 0 {
            return Ok(None);
        }
        let barrier = Barrier::new(others);
        self.tell_others(|| MeshMsg::Interest {
            room: Arc::clone(&room),
            worker: self.worker,
            joined: true,
            barrier: Some(Arc::clone(&barrier)),
        });
        if let Some(cluster) = &self.cluster {
            cluster.send(Command::Interest {
                room: Arc::clone(&room),
                worker: self.worker,
                joined: true,
                barrier: Some(Arc::clone(&barrier)),
            });
        }
        Ok(Some(barrier))
    }

    /// Removes `conn` from `room`; false if it was not a member.
    pub fn leave(&mut self, conn: &Conn, room: &str) -> bool {
        let Some(rooms) = self.joined.get_mut(&conn.id.seq) else {
            return false;
        };
        let Some(at) = rooms.iter().position(|r| &**r == room) else {
            return false;
        };
        let room = rooms.swap_remove(at);
        if rooms.is_empty() {
            self.joined.remove(&conn.id.seq);
        }
        self.remove_member(conn.id, &room);
        true
    }

    /// Removes `conn` from every room it is in (it is going away); returns those rooms.
    pub fn drop_conn(&mut self, conn: &Conn) -> Vec<RoomName> {
        let rooms = self.joined.remove(&conn.id.seq).unwrap_or_default();
        for room in &rooms {
            self.remove_member(conn.id, room);
        }
        rooms
    }

    /// The other views of a leave; `joined` is already updated.
    fn remove_member(&mut self, id: ClientId, room: &RoomName) {
        if let Some(tracks) = self.tracks.get_mut().get_mut(&id.seq) {
            tracks.retain(|t| t.room != *room);
            if tracks.is_empty() {
                self.tracks.get_mut().remove(&id.seq);
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.send(Command::Member {
                room: Arc::clone(room),
                id,
                user: None,
                joined: false,
            });
        }
        let last = match self.members.get_mut(room) {
            Some(members) => {
                members.swap_remove(&id.seq);
                members.is_empty()
            }
            None => false,
        };
        if let Some(mut dir) = self.dirs.lock(self.worker)
            && let Some(members) = dir.rooms.get_mut(room)
        {
            members.remove(&id);
            if members.is_empty() {
                dir.rooms.remove(room);
            }
        }
        if !last {
            return;
        }
        self.members.remove(room);
        self.stats.local_rooms.sub(1);
        self.interest.set(room, self.worker, false);
        self.tell_others(|| MeshMsg::Interest {
            room: Arc::clone(room),
            worker: self.worker,
            joined: false,
            barrier: None,
        });
        if let Some(cluster) = &self.cluster {
            cluster.send(Command::Interest {
                room: Arc::clone(room),
                worker: self.worker,
                joined: false,
                barrier: None,
            });
        }
    }

    /// Whether a live message of a room with history goes to member `seq` now: false
    /// when it is held for a recovery in progress. Notes where its live messages began.
    pub fn take_live(&self, seq: u64, room: &str, msg: &Arc<Outbound>) -> bool {
        let offset = msg.position().map_or(0, |p| p.offset);
        let mut tracks = self.tracks.borrow_mut();
        let tracks = tracks.entry(seq).or_default();
        let track = match tracks.iter_mut().position(|t| &*t.room == room) {
            Some(at) => &mut tracks[at],
            None => {
                let Some(name) = self.members.get_key_value(room).map(|(n, _)| Arc::clone(n))
                else {
                    return true;
                };
                tracks.push(Track {
                    room: name,
                    first_live: 0,
                    held: None,
                });
                tracks.last_mut().expect("pushed above")
            }
        };
        if let Some(held) = &mut track.held {
            held.push(Arc::clone(msg));
            return false;
        }
        if track.first_live == 0 {
            track.first_live = offset;
        }
        // Below where live delivery began: a recovery brought it already.
        offset >= track.first_live
    }

    /// Holds member `seq`'s live messages of `room` until [`Membership::release`].
    pub fn hold(&self, seq: u64, room: &str) {
        let Some(name) = self.members.get_key_value(room).map(|(n, _)| Arc::clone(n)) else {
            return;
        };
        let mut tracks = self.tracks.borrow_mut();
        let tracks = tracks.entry(seq).or_default();
        match tracks.iter_mut().find(|t| &*t.room == room) {
            Some(track) => {
                track.held.get_or_insert_with(Vec::new);
            }
            None => tracks.push(Track {
                room: name,
                first_live: 0,
                held: Some(Vec::new()),
            }),
        }
    }

    /// Ends a hold: the offset of the first live message delivered before it (0: none)
    /// and the messages held. From now on the member's live messages start after
    /// `through`, what the recovery brought it up to.
    pub fn release(&self, seq: u64, room: &str, through: u64) -> (u64, Vec<Arc<Outbound>>) {
        let mut tracks = self.tracks.borrow_mut();
        let Some(track) = tracks
            .get_mut(&seq)
            .and_then(|t| t.iter_mut().find(|t| &*t.room == room))
        else {
            return (0, Vec::new());
        };
        let first_live = track.first_live;
        track.first_live = through + 1;
        (first_live, track.held.take().unwrap_or_default())
    }

    fn tell_others(&self, msg: impl Fn() -> MeshMsg) {
        for w in (0..self.mesh.workers()).filter(|w| *w != self.worker) {
            self.mesh.send(w, msg());
        }
    }

    /// This worker's members of `room`, in join order.
    pub fn members(&self, room: &str) -> impl Iterator<Item = &Rc<Conn>> {
        self.members
            .get(room)
            .into_iter()
            .flat_map(IndexMap::values)
    }

    pub fn is_member(&self, conn: &Conn, room: &str) -> bool {
        self.members
            .get(room)
            .is_some_and(|m| m.contains_key(&conn.id.seq))
    }

    /// The rooms `conn` is in, in no particular order.
    pub fn rooms_of(&self, conn: &Conn) -> &[RoomName] {
        self.joined.get(&conn.id.seq).map_or(&[], Vec::as_slice)
    }

    /// Workers other than this one with members of `room`, as a bit per worker.
    pub fn other_workers(&self, room: &str) -> u64 {
        self.interest.others(room, self.worker)
    }

    /// Another worker gained its first or lost its last member of `room`.
    pub fn apply_interest(&mut self, room: &RoomName, worker: usize, joined: bool) {
        self.interest.set(room, worker, joined);
    }
}

/// Which workers have members of each room, as a bit per worker (at most 64 workers).
#[derive(Default)]
struct Interest {
    rooms: HashMap<RoomName, u64>,
}

impl Interest {
    fn set(&mut self, room: &RoomName, worker: usize, joined: bool) {
        let bit = 1u64 << worker;
        if joined {
            *self.rooms.entry(Arc::clone(room)).or_default() |= bit;
        } else if let Some(mask) = self.rooms.get_mut(room) {
            *mask &= !bit;
            if *mask == 0 {
                self.rooms.remove(room);
            }
        }
    }

    /// Workers other than `me` with members of `room`.
    fn others(&self, room: &str, me: usize) -> u64 {
        self.rooms.get(room).copied().unwrap_or(0) & !(1u64 << me)
    }

    fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with members anywhere.
    fn len(&self) -> usize {
        self.rooms.len()
    }
}

/// One worker's clients and memberships, for queries from any thread.
#[derive(Default)]
pub struct Directory {
    /// Its clients by `seq`: they all share this node and this worker, and the table
    /// is one entry per connection, so each is 8 bytes rather than a `ClientId`'s 16.
    pub clients: HashSet<u64>,
    pub rooms: HashMap<RoomName, HashSet<ClientId>>,
}

/// The directories of every worker.
#[derive(Default)]
pub struct Directories(Vec<Mutex<Directory>>);

impl Directories {
    pub fn new(workers: usize) -> Self {
        Self((0..workers).map(|_| Mutex::default()).collect())
    }

    /// Locks one worker's directory. A poisoned lock still holds consistent sets (each
    /// update is a single insert or remove), so it is used as is.
    pub fn lock(&self, worker: usize) -> Option<MutexGuard<'_, Directory>> {
        self.0
            .get(worker)
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Every client of this node (`node` is its id), across workers.
    pub fn clients(&self, node: u32) -> Vec<ClientId> {
        self.gather(|worker, dir, out| {
            out.extend(
                dir.clients
                    .iter()
                    .map(|&seq| ClientId { node, worker, seq }),
            );
        })
    }

    /// The members of `room` on this node, across workers.
    pub fn members(&self, room: &str) -> Vec<ClientId> {
        self.gather(|_, dir, out| out.extend(dir.rooms.get(room).into_iter().flatten().copied()))
    }

    /// The ids `add` takes from each worker's directory (given the worker's index),
    /// sorted.
    fn gather(&self, add: impl Fn(u16, &Directory, &mut Vec<ClientId>)) -> Vec<ClientId> {
        let mut out = Vec::new();
        for worker in 0..self.0.len() {
            if let Some(dir) = self.lock(worker) {
                add(worker as u16, &dir, &mut out);
            }
        }
        out.sort_unstable();
        out
    }

    /// Every room with members, with its member count.
    pub fn rooms(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<RoomName, usize> = HashMap::default();
        for worker in 0..self.0.len() {
            if let Some(dir) = self.lock(worker) {
                for (room, members) in &dir.rooms {
                    *counts.entry(Arc::clone(room)).or_default() += members.len();
                }
            }
        }
        let mut out: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests;
