//! Several nodes as one server through Redis (SPEC §8), when `redis_url` is set.
//!
//! Two sides, neither of which ever makes a worker wait on Redis:
//!
//! - **The hot path, on the workers' loops** (`link`): each worker publishes its messages
//!   without history on its own RESP3 connection, and worker 0's connection holds the
//!   node's subscriptions, handing what arrives to the workers through their inboxes.
//! - **The cluster thread** (`engine`, the `redis` client on a tokio runtime of its own),
//!   handed work through a lock-free queue ([`Cluster::send`]): history, the directory,
//!   liveness, the outage, and every message while a worker's link is down.
//!
//! - **Channels**: `<prefix>:room:<room>` (subscribed while this node has members of the
//!   room, so a node receives a room message once, whatever its number of members),
//!   `<prefix>:all` (`broadcast`), `<prefix>:node:<node>` (`to_id`, `alert`), and
//!   `<prefix>:dir` (membership changes, for the cluster-wide directory). A message
//!   crosses Redis once per publish, as the bytes of `wire`.
//! - **Directory**: each node writes its clients and memberships to Redis hashes and
//!   announces each change on `<prefix>:dir`; every node keeps a replica of the others'
//!   memberships ([`Remote`]), so `room_members`, `rooms` and `room-view` answer for the
//!   whole cluster without a round trip.
//! - **Liveness**: each node refreshes its entry in `<prefix>:nodes` every
//!   `redis_refresh`, valid for twice that; every node sweeps entries past their time
//!   (`lua::SWEEP`, atomic, so one node wins), and the winner announces the dead node's
//!   departure and its clients' `presence-leave`. A dead node is out of every room within
//!   3x `redis_refresh`.
//! - **History** (rooms that keep it): the message goes to Redis first; a script gives it
//!   the room's next offset, stores it in a stream and publishes it, and every node, the
//!   sender's included, delivers it from its subscription, so all members see one order.
//! - **Redis down**: local delivery goes on (history rooms' messages too, without a
//!   position), what could not be published is counted, the thread and the links
//!   reconnect with backoff, worker 0 resubscribes, the thread writes its directory
//!   again, catches its history rooms up from Redis, and starts a new epoch for any
//!   history room whose messages missed Redis, so a recovery across the outage answers
//!   `recovered:false`, never a silent gap.

mod engine;
pub mod link;
mod lua;
mod resp;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::mesh::{Barrier, ClientId, Mesh};
use crate::outbound::Outbound;
use crate::recovery::Ask;
use crate::rooms::RoomName;
use crate::stats::WorkerStats;

/// Where a message goes in the cluster.
#[derive(Debug, Clone)]
pub enum Scope {
    Room(RoomName),
    All,
    Client(ClientId),
}

/// Work for the cluster thread.
pub enum Command {
    /// A message already delivered on this node, for the other nodes.
    Publish {
        scope: Scope,
        msg: Arc<Outbound>,
        exclude: Option<ClientId>,
    },
    /// A message of a room with history: positioned by Redis, then delivered by every
    /// node from its subscription (this one's included).
    PublishHistory {
        room: RoomName,
        msg: Arc<Outbound>,
        exclude: Option<ClientId>,
        /// `history_size` and `history_ttl` at the time of the publish.
        size: usize,
        ttl: Duration,
    },
    /// A worker gained its first (`joined`) or lost its last member of `room`: the node
    /// subscribes on its first, unsubscribes after its last, and arrives at `barrier`
    /// once the subscription is in place.
    Interest {
        room: RoomName,
        worker: usize,
        joined: bool,
        barrier: Option<Arc<Barrier>>,
    },
    /// A client joined or left a room (for the directory and presence).
    Member {
        room: RoomName,
        id: ClientId,
        user: Option<String>,
        joined: bool,
    },
    /// A client connected or went away.
    Client {
        id: ClientId,
        user: Option<String>,
        connected: bool,
    },
    /// Recover `room` for client `id` from `since`; answered through the client's inbox.
    Recover {
        id: ClientId,
        ask: Ask,
        ttl: Duration,
    },
    /// A room with history had a message delivered here without reaching Redis: its
    /// epoch ends once the link allows.
    Taint(RoomName),
    /// Every client id in the cluster.
    Clients(std::sync::mpsc::Sender<Vec<String>>),
    /// Worker 0's link read a message of `room` with history, to deliver in position
    /// order.
    Received {
        room: RoomName,
        payload: Vec<u8>,
    },
    /// Worker 0's link (re)subscribed the node's rooms: catch the rooms with history up
    /// on what the subscription may have missed.
    Resubscribed,
    Shutdown,
}

/// The key and channel names of one cluster (`redis_prefix`).
pub(crate) struct Keys {
    prefix: String,
    /// The two channels every message read is compared with, made once.
    all: String,
    dir: String,
}

impl Keys {
    fn new(config: &Config) -> Self {
        let prefix = &config.redis_prefix;
        Self {
            all: format!("{prefix}:all"),
            dir: format!("{prefix}:dir"),
            prefix: prefix.clone(),
        }
    }
    fn room(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }
    /// The channel of a message for `scope`, and the client it targets.
    fn channel(&self, scope: &Scope) -> (String, Option<ClientId>) {
        match scope {
            Scope::Room(room) => (self.room(room), None),
            Scope::All => (self.all.clone(), None),
            Scope::Client(id) => (self.node(id.node), Some(*id)),
        }
    }
    /// The room of a room channel.
    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix(":room:"))
    }
    fn all(&self) -> &str {
        &self.all
    }
    fn node(&self, node: u32) -> String {
        format!("{}:node:{node:08x}", self.prefix)
    }
    fn dir(&self) -> &str {
        &self.dir
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn node_stats(&self) -> String {
        format!("{}:nodestats", self.prefix)
    }
    fn members(&self, node: u32) -> String {
        format!("{}:members:{node:08x}", self.prefix)
    }
    fn clients(&self, node: u32) -> String {
        format!("{}:clients:{node:08x}", self.prefix)
    }
    fn history(&self, room: &str) -> [String; 2] {
        [
            format!("{}:histmeta:{room}", self.prefix),
            format!("{}:hist:{room}", self.prefix),
        ]
    }
}

/// Counters of the cluster link, for `/stats` and `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicBool,
    /// Messages this node published to Redis.
    pub published: AtomicU64,
    /// Messages this node received from Redis and delivered.
    pub received: AtomicU64,
    /// Messages that could not be published (Redis down): their other nodes' members
    /// missed them.
    pub unpublished: AtomicU64,
    /// Times the link to Redis was lost.
    pub outages: AtomicU64,
    /// Dead nodes this node removed.
    pub nodes_swept: AtomicU64,
}

/// The other nodes' room memberships, replicated from `<prefix>:dir`.
#[derive(Default)]
pub struct Remote {
    rooms: HashMap<String, BTreeMap<ClientId, String>>,
}

impl Remote {
    pub fn insert(&mut self, room: &str, id: ClientId, user: String) {
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .insert(id, user);
    }

    pub fn remove(&mut self, room: &str, id: ClientId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Forgets every member of `node`.
    pub fn remove_node(&mut self, node: u32) {
        self.rooms.retain(|_, members| {
            members.retain(|id, _| id.node != node);
            !members.is_empty()
        });
    }

    pub fn clear(&mut self) {
        self.rooms.clear();
    }
}

/// This node's side of the cluster: see the module docs.
pub struct Cluster {
    /// This node's id, the first part of its clients' ids (never 0).
    pub node: u32,
    commands: mpsc::UnboundedSender<Command>,
    /// Messages handed to the cluster thread and not yet taken, against `max_pending`.
    pending: AtomicUsize,
    max_pending: usize,
    pub counters: Counters,
    keys: Keys,
    /// Redis's address, as the cluster thread last resolved it, for the workers' links.
    addr: Mutex<Option<SocketAddr>>,
    /// The links' `AUTH` (username, password), from `redis_url`.
    auth: Option<(Option<String>, String)>,
    remote: Mutex<Remote>,
    /// The cluster section of `/stats`, refreshed by the cluster thread.
    summary: Mutex<Value>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Cluster {
    /// Starts the cluster thread for `config.redis_url`. It connects in the background:
    /// a node whose Redis is down serves its own clients and keeps trying.
    pub fn start(
        config: &Config,
        mesh: Arc<Mesh>,
        stats: Vec<Arc<WorkerStats>>,
    ) -> std::io::Result<Arc<Self>> {
        let url = config.redis_url.clone().unwrap_or_default();
        let (commands, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            node: new_node_id(),
            commands,
            pending: AtomicUsize::new(0),
            max_pending: config.redis_max_pending,
            counters: Counters::default(),
            keys: Keys::new(config),
            addr: Mutex::new(None),
            auth: auth_of(&url),
            remote: Mutex::default(),
            summary: Mutex::new(Value::Null),
            thread: Mutex::new(None),
        });
        let engine = engine::Engine::new(Arc::clone(&cluster), mesh, stats, config)
            .map_err(|e| std::io::Error::other(format!("redis_url `{url}`: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("stellar-cluster".into())
            .spawn(move || engine.run(rx))?;
        *lock(&cluster.thread) = Some(thread);
        tracing::info!(node = format!("{:08x}", cluster.node), %url, "cluster node");
        Ok(cluster)
    }

    /// Hands `command` to the cluster thread; never blocks.
    pub fn send(&self, command: Command) {
        // Fails only once the thread has stopped (shutdown): nothing is left to do.
        let _ = self.commands.send(command);
    }

    /// Hands a message (`Publish` or `PublishHistory`) to the cluster thread, unless
    /// `redis_max_pending` are waiting already (Redis slower than the publishers): then
    /// it is counted as unpublished and given back.
    pub fn publish(&self, command: Command) -> Option<Command> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.counters.unpublished.fetch_add(1, Ordering::Relaxed);
            return Some(command);
        }
        // A plain message goes out from this worker's own link when it is up.
        if let Command::Publish {
            scope,
            msg,
            exclude,
        } = &command
            && link::publish(scope, msg, *exclude)
        {
            return None;
        }
        self.send(command);
        None
    }

    /// The cluster thread took a message handed over by [`Cluster::publish`].
    fn taken(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// A worker's link settled messages it was handed: `published` answered by Redis,
    /// `lost` refused or dropped with its connection.
    fn settle(&self, published: usize, lost: usize) {
        if published + lost == 0 {
            return;
        }
        self.pending.fetch_sub(published + lost, Ordering::AcqRel);
        let counters = &self.counters;
        counters
            .published
            .fetch_add(published as u64, Ordering::Relaxed);
        counters
            .unpublished
            .fetch_add(lost as u64, Ordering::Relaxed);
    }

    /// Members of `room` on the other nodes.
    pub fn remote_members(&self, room: &str) -> Vec<ClientId> {
        lock(&self.remote)
            .rooms
            .get(room)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Rooms with members on the other nodes, with their member counts there.
    pub fn remote_rooms(&self) -> Vec<(String, usize)> {
        lock(&self.remote)
            .rooms
            .iter()
            .map(|(r, m)| (r.clone(), m.len()))
            .collect()
    }

    pub(crate) fn remote(&self) -> std::sync::MutexGuard<'_, Remote> {
        lock(&self.remote)
    }

    /// Every client id of the cluster, asked of Redis (at most `timeout`); `None` when
    /// Redis did not answer.
    pub fn clients(&self, timeout: Duration) -> Option<Vec<String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Command::Clients(tx));
        rx.recv_timeout(timeout).ok()
    }

    /// The `cluster` section of `/stats`.
    pub fn summary(&self) -> Value {
        let mut summary = lock(&self.summary).clone();
        let c = &self.counters;
        let link = json!({
            "node": format!("{:08x}", self.node),
            "redisConnected": c.connected.load(Ordering::Relaxed),
            "published": c.published.load(Ordering::Relaxed),
            "received": c.received.load(Ordering::Relaxed),
            "unpublished": c.unpublished.load(Ordering::Relaxed),
            "redisOutages": c.outages.load(Ordering::Relaxed),
            "nodesSwept": c.nodes_swept.load(Ordering::Relaxed),
        });
        match summary.as_object_mut() {
            Some(map) => {
                if let Some(link) = link.as_object() {
                    map.extend(link.clone());
                }
                summary
            }
            None => link,
        }
    }

    fn set_summary(&self, value: Value) {
        *lock(&self.summary) = value;
    }

    /// Stops the cluster thread (its node entry is removed from Redis on the way out).
    pub fn stop(&self) {
        self.send(Command::Shutdown);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// The data of `presence-join` / `presence-leave`: `{"room","id","userId"}`.
pub fn presence_data(room: &str, id: &ClientId, user: Option<&str>) -> String {
    json!({ "room": room, "id": id.to_string(), "userId": user }).to_string()
}

/// The `AUTH` of `redis_url`: (username, password), if it has a password.
fn auth_of(url: &str) -> Option<(Option<String>, String)> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).ok()?;
    let settings = info.redis_settings();
    let password = settings.password()?.to_owned();
    Some((settings.username().map(str::to_owned), password))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random node id, never 0 (0 is a single node's).
fn new_node_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        let id = h.finish() as u32;
        if id != 0 {
            return id;
        }
    }
}
