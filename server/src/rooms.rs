//! Room membership, owned per worker (SPEC §3.3).
//!
//! A worker keeps its own members of each room ([`LocalRooms`]) and a replica of which
//! workers have members of which room ([`Interest`]), updated through the mesh when a
//! worker gains its first or loses its last member. A broadcast reads both without a
//! lock: local members get the frame by refcount, and only workers whose bit is set get
//! a mesh message. [`Directory`] is the one shared, locked view, written on membership
//! changes and read by queries (`clients`, `room_members`, `rooms`), never per message.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::connection::Conn;
use crate::mesh::ClientId;

/// A room name, shared between the maps and mesh messages.
pub type RoomName = Arc<str>;

/// This worker's members of each room.
#[derive(Default)]
pub struct LocalRooms {
    rooms: HashMap<RoomName, Vec<Rc<Conn>>>,
}

impl LocalRooms {
    /// Adds `conn`; true when it is the worker's first member of the room.
    pub fn join(&mut self, room: &RoomName, conn: &Rc<Conn>) -> bool {
        let members = self.rooms.entry(Arc::clone(room)).or_default();
        let first = members.is_empty();
        if !members.iter().any(|m| Rc::ptr_eq(m, conn)) {
            members.push(Rc::clone(conn));
        }
        first
    }

    /// Removes `conn`; true when the worker has no member of the room left.
    pub fn leave(&mut self, room: &str, conn: &Conn) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        members.retain(|m| m.id != conn.id);
        if members.is_empty() {
            self.rooms.remove(room);
            return true;
        }
        false
    }

    pub fn members(&self, room: &str) -> &[Rc<Conn>] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }
}

/// Which workers have members of each room, as a bit per worker (at most 64 workers).
#[derive(Default)]
pub struct Interest {
    rooms: HashMap<RoomName, u64>,
}

impl Interest {
    pub fn set(&mut self, room: &RoomName, worker: usize, joined: bool) {
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
    pub fn others(&self, room: &str, me: usize) -> u64 {
        self.rooms.get(room).copied().unwrap_or(0) & !(1u64 << me)
    }

    pub fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with members anywhere.
    pub fn len(&self) -> usize {
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
mod tests {
    use super::*;

    #[test]
    fn interest_tracks_other_workers_only() {
        let mut interest = Interest::default();
        let room: RoomName = "lobby".into();
        interest.set(&room, 0, true);
        interest.set(&room, 2, true);
        assert_eq!(interest.others("lobby", 0), 0b100);
        assert_eq!(interest.others("lobby", 2), 0b001);
        interest.set(&room, 2, false);
        assert_eq!(interest.others("lobby", 0), 0);
        interest.set(&room, 0, false);
        assert!(!interest.contains("lobby"));
    }
}
