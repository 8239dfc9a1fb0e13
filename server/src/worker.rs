//! One worker's state and the actions on it: its connections, its [`Membership`], its
//! rate limiter, and the fan-out every sender shares (SPEC §2).
//!
//! This is the narrow interface the router, handlers (`Ctx`) and the inbox loop act
//! through; none of them reaches into the fields. The state is `!Send` and lives in an
//! `Rc` on the worker's thread; other threads reach it only through its inbox
//! ([`crate::mesh::Inbox`]). Its loops live in `event_loop` (listeners, heartbeat),
//! `session` (one connection) and `inbox` (cross-core work).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use ahash::HashMap;
use stellar_protocol::EventName;
use stellar_protocol::event::reserved;

use crate::cluster::Command;
use crate::config::Config;
use crate::connection::Conn;
use crate::fanout;
use crate::mesh::{Barrier, ClientId};
use crate::outbound::Outbound;
use crate::rate_limit::Limiter;
use crate::rooms::{JoinError, Membership, RoomLimits, RoomName};
use crate::shared::{Handlers, Shared};
use crate::stats::WorkerStats;

/// A worker's state, shared by its tasks.
pub struct Worker {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    config: RefCell<Arc<Config>>,
    /// Every admitted connection, by sequence number.
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    rooms: RefCell<Membership>,
    limiter: Limiter,
    next_seq: Cell<u64>,
    shutting_down: Cell<bool>,
    /// Handler metadata (`Ctx::set`) of the clients that have any, by client sequence
    /// number: most have none, so it is kept here rather than in every connection.
    meta: RefCell<HashMap<u64, HashMap<String, serde_json::Value>>>,
}

impl Worker {
    pub fn new(index: usize, shared: Arc<Shared>) -> Rc<Self> {
        let stats = Arc::clone(shared.worker_stats_arc(index));
        let rooms = Membership::new(
            index,
            Arc::clone(&shared.mesh),
            Arc::clone(&shared.dirs),
            Arc::clone(&stats),
            shared.cluster.clone(),
        );
        let config = shared.config();
        crate::connection::configure(&config);
        crate::connection::count_into(Arc::clone(&stats));
        crate::compression::configure(&config);
        Rc::new(Self {
            index,
            config: RefCell::new(config),
            limiter: Limiter::new(shared.rate_limits()),
            shared,
            stats,
            conns: RefCell::default(),
            rooms: RefCell::new(rooms),
            next_seq: Cell::new(0),
            shutting_down: Cell::new(false),
            meta: RefCell::default(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
    }

    /// Applies a configuration changed at run time to the worker and its connections.
    pub fn set_config(&self, config: Arc<Config>) {
        crate::connection::configure(&config);
        crate::compression::configure(&config);
        *self.config.borrow_mut() = config;
    }

    /// A handle on the whole server, for handlers and HTTP routes.
    pub fn handle(&self) -> crate::api::ServerHandle {
        crate::api::ServerHandle(Arc::clone(&self.shared))
    }

    /// The members of `room` on every worker and node (from the shared directory and
    /// the cluster's replica: a query, never per message).
    pub fn room_members(&self, room: &str) -> Vec<ClientId> {
        self.shared.room_members(room)
    }

    /// Whether `conn` may send one more `event` under the rate limits. Reads the
    /// configuration in place: this runs for every message.
    pub fn allow(&self, conn: &Conn, event: &str) -> bool {
        let config = self.config.borrow();
        self.limiter
            .allow(&config, || conn.buckets(), || conn.id.text(), event)
    }

    /// Whether the HTTP caller at `ip` may call action `name` once more.
    pub fn allow_http(&self, ip: std::net::IpAddr, name: &str) -> bool {
        self.limiter.allow_http(&self.config.borrow(), ip, name)
    }

    /// The rate-limit overrides changed at run time.
    pub fn set_rate_limits(&self, table: Arc<crate::rate_limit::RateLimits>) {
        self.limiter.set_table(table);
    }

    /// Conformance-test mode (`echo`), read in place for every message.
    pub fn is_echo(&self) -> bool {
        self.config.borrow().echo
    }

    pub fn handlers(&self) -> &Handlers {
        &self.shared.handlers
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
    }

    // ----- connections -------------------------------------------------------------

    /// The next client id of this worker.
    pub fn next_id(&self) -> ClientId {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        ClientId {
            node: self.shared.node(),
            worker: self.index as u16,
            seq,
        }
    }

    pub fn add_conn(&self, conn: &Rc<Conn>) {
        self.conns.borrow_mut().insert(conn.id.seq, Rc::clone(conn));
        if let Some(cluster) = &self.shared.cluster {
            cluster.send(Command::Client {
                id: conn.id,
                user: conn.user_id(),
                connected: true,
            });
        }
    }

    /// Forgets `conn`: its rooms (members of presence rooms are told), its metadata,
    /// its place in the table.
    pub fn remove_conn(&self, conn: &Conn) {
        let rooms = self.rooms.borrow_mut().drop_conn(conn);
        for room in rooms {
            self.announce(&reserved::PRESENCE_LEAVE, conn, &room);
        }
        self.conns.borrow_mut().remove(&conn.id.seq);
        self.meta.borrow_mut().remove(&conn.id.seq);
        if let Some(cluster) = &self.shared.cluster {
            cluster.send(Command::Client {
                id: conn.id,
                user: None,
                connected: false,
            });
        }
    }

    /// A snapshot of every connection (for shutdown and heartbeat sweeps).
    pub fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }

    pub fn has_conns(&self) -> bool {
        !self.conns.borrow().is_empty()
    }

    /// Stores handler metadata for `conn`.
    pub fn set_meta(&self, conn: &Conn, key: &str, value: serde_json::Value) {
        self.meta
            .borrow_mut()
            .entry(conn.id.seq)
            .or_default()
            .insert(key.to_owned(), value);
    }

    /// Reads handler metadata of `conn`.
    pub fn meta(&self, conn: &Conn, key: &str) -> Option<serde_json::Value> {
        self.meta.borrow().get(&conn.id.seq)?.get(key).cloned()
    }

    // ----- rooms -------------------------------------------------------------------

    /// Joins `conn` to `room` under the configured limits; see [`Membership::join`].
    /// The other members of a presence room are told.
    pub fn join(&self, conn: &Rc<Conn>, room: &str) -> Result<Option<Arc<Barrier>>, JoinError> {
        let limits = {
            let config = self.config.borrow();
            RoomLimits {
                per_client: config.max_rooms_per_client,
                server: config.max_rooms,
            }
        };
        let already = self.is_member(conn, room);
        let joined = self.rooms.borrow_mut().join(conn, room, limits)?;
        if !already {
            self.announce(&reserved::PRESENCE_JOIN, conn, room);
        }
        Ok(joined)
    }

    /// Removes `conn` from `room`; false if it was not a member. The other members of a
    /// presence room are told.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        let left = self.rooms.borrow_mut().leave(conn, room);
        if left {
            self.announce(&reserved::PRESENCE_LEAVE, conn, room);
        }
        left
    }

    /// `presence-join` / `presence-leave` `{room, id, userId}` to the other members of
    /// `room`, when it is a presence room (SPEC §8).
    fn announce(&self, event: &EventName<'static>, conn: &Conn, room: &str) {
        if !crate::history::matches_any(&self.config.borrow().presence_rooms, room) {
            return;
        }
        let data = crate::cluster::presence_data(room, &conn.id, conn.user_id().as_deref());
        self.publish_room(room, Outbound::event(event, &data, None), Some(conn.id));
    }

    /// Holds `conn`'s live messages of `room` while a recovery is read.
    pub fn hold(&self, conn: &Conn, room: &str) {
        self.rooms.borrow().hold(conn.id.seq, room);
    }

    /// Ends a hold; see [`Membership::release`].
    pub fn release(&self, conn: &Conn, room: &str, through: u64) -> (u64, Vec<Arc<Outbound>>) {
        self.rooms.borrow().release(conn.id.seq, room, through)
    }

    /// A connection of this worker, if it is still here.
    pub fn conn(&self, id: ClientId) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id.seq).cloned()
    }

    pub fn is_member(&self, conn: &Conn, room: &str) -> bool {
        self.rooms.borrow().is_member(conn, room)
    }

    pub fn rooms_of(&self, conn: &Conn) -> Vec<RoomName> {
        self.rooms.borrow().rooms_of(conn).to_vec()
    }

    /// Another worker gained its first or lost its last member of `room`.
    pub fn apply_interest(&self, room: &RoomName, worker: usize, joined: bool) {
        self.rooms.borrow_mut().apply_interest(room, worker, joined);
    }

    // ----- fan-out -----------------------------------------------------------------

    /// Delivers to this worker's members of `room`. A message of a room with history
    /// goes only to members not holding it for a recovery (and not to one a recovery
    /// brought it to already).
    pub fn deliver_room(&self, room: &str, msg: &Arc<Outbound>, exclude: Option<ClientId>) {
        let rooms = self.rooms.borrow();
        let positioned = msg.position().is_some();
        for member in rooms.members(room) {
            if Some(member.id) != exclude
                && (!positioned || rooms.take_live(member.id.seq, room, msg))
            {
                member.send_outbound(msg, &self.stats);
            }
        }
    }

    /// Delivers to every connection of this worker.
    pub fn deliver_all(&self, msg: &Outbound, exclude: Option<ClientId>) {
        for conn in self.conns.borrow().values() {
            if Some(conn.id) != exclude {
                conn.send_outbound(msg, &self.stats);
            }
        }
    }

    /// Delivers to one connection of this worker, if it is still here.
    pub fn deliver_to(&self, id: ClientId, msg: &Outbound) {
        if let Some(conn) = self.conns.borrow().get(&id.seq) {
            conn.send_outbound(msg, &self.stats);
        }
    }

    /// Sends to every member of `room`, on every worker and node (`fanout::room`). The
    /// one room fan-out of a worker: relays, `say`, presence and `Ctx::to` come here.
    pub fn publish_room(&self, room: &str, msg: Arc<Outbound>, exclude: Option<ClientId>) {
        // Borrowed, not cloned: this runs for every relay, and nothing in the fan-out
        // changes the configuration.
        let config = self.config.borrow();
        fanout::room(&self.shared, Some(self), &config, room, msg, exclude);
    }

    /// This worker's members by refcount, and one mesh message to each other worker
    /// that has members.
    pub fn fan_room(&self, room: &str, msg: &Arc<Outbound>, exclude: Option<ClientId>) {
        self.deliver_room(room, msg, exclude);
        let others = self.rooms.borrow().other_workers(room);
        if others != 0 {
            self.shared
                .mesh
                .send_room(others, &Arc::from(room), msg, exclude);
        }
    }

    /// Sends to every client on every worker and node (`Ctx::broadcast`).
    pub fn publish_all(&self, msg: Arc<Outbound>, exclude: Option<ClientId>) {
        fanout::all(&self.shared, Some(self), msg, exclude);
    }
}
