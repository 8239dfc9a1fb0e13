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

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use indexmap::IndexMap;

use crate::connection::Conn;
use crate::mesh::{Barrier, ClientId, Mesh, MeshMsg};
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
pub struct Membership {
    worker: usize,
    mesh: Arc<Mesh>,
    dirs: Arc<Directories>,
    stats: Arc<WorkerStats>,
    /// This worker's members of each room, by client sequence number.
    members: HashMap<RoomName, IndexMap<u64, Rc<Conn>>>,
    /// Each client's rooms, for clients in at least one.
    joined: HashMap<u64, Vec<RoomName>>,
    interest: Interest,
}

impl Membership {
    pub fn new(
        worker: usize,
        mesh: Arc<Mesh>,
        dirs: Arc<Directories>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        Self {
            worker,
            mesh,
            dirs,
            stats,
            members: HashMap::new(),
            joined: HashMap::new(),
            interest: Interest::default(),
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
        if !first {
            return Ok(None);
        }
        self.stats.local_rooms.add(1);
        self.interest.set(&room, self.worker, true);
        let others = self.mesh.workers() - 1;
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

    /// Removes `conn` from every room it is in (it is going away).
    pub fn drop_conn(&mut self, conn: &Conn) {
        for room in self.joined.remove(&conn.id.seq).unwrap_or_default() {
            self.remove_member(conn.id, &room);
        }
    }

    /// The other three views of a leave; `joined` is already updated.
    fn remove_member(&mut self, id: ClientId, room: &RoomName) {
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
    pub clients: HashSet<ClientId>,
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

    /// Every client, or the members of `room`, across workers.
    pub fn clients(&self, room: Option<&str>) -> Vec<ClientId> {
        let mut out = Vec::new();
        for worker in 0..self.0.len() {
            if let Some(dir) = self.lock(worker) {
                match room {
                    None => out.extend(dir.clients.iter().copied()),
                    Some(r) => out.extend(dir.rooms.get(r).into_iter().flatten().copied()),
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Every room with members, with its member count.
    pub fn rooms(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<RoomName, usize> = HashMap::new();
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
