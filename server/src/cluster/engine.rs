//! The cluster thread: a tokio runtime of its own running the Redis client, so no
//! worker ever waits on Redis (see the module docs of `cluster`). Three tasks share its
//! state: `commands` (what the workers hand over, pipelined to Redis a batch at a time),
//! `link` (the connections, the subscription stream, reconnection) and `refresh`
//! (liveness, dead-node sweeps, the cluster summary).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use serde_json::json;
use stellar_protocol::event::reserved;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::{Cluster, Command, Keys, lua, wire};
use crate::config::Config;
use crate::history::{self, Pos, Recovery};
use crate::mesh::{ClientId, Mesh, MeshMsg};
use crate::outbound::Outbound;
use crate::recovery::Ask;
use crate::rooms::RoomName;
use crate::stats::WorkerStats;

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Commands pipelined to Redis in one round trip, at most.
const BATCH: usize = 512;

/// What the tasks share (one thread: `Rc` and `RefCell`).
#[derive(Default)]
struct State {
    con: RefCell<Option<MultiplexedConnection>>,
    /// The directory subscription's sending half, kept while the link is up (nothing is
    /// subscribed after `connect`: the message channels are worker 0's).
    sink: RefCell<Option<PubSubSink>>,
    /// Whether the link is up (connected, subscribed, resynchronized).
    up: Cell<bool>,
    /// Told when a command finds the link broken.
    broken: Notify,
    stopping: Cell<bool>,
    /// Rooms this node is subscribed to, with its workers that have members (a bit per
    /// worker).
    rooms: RefCell<HashMap<RoomName, u64>>,
    /// This node's clients and memberships, written to Redis again after an outage.
    clients: RefCell<HashMap<ClientId, String>>,
    members: RefCell<HashMap<(RoomName, ClientId), String>>,
    /// The last position delivered of each subscribed room with history.
    positions: RefCell<HashMap<RoomName, Pos>>,
    /// Rooms with history whose messages could not reach Redis: their epoch is ended
    /// once the link is back.
    tainted: RefCell<HashSet<RoomName>>,
}

/// The cluster thread's side; see the module docs.
pub struct Engine {
    cluster: Arc<Cluster>,
    mesh: Arc<Mesh>,
    stats: Vec<Arc<WorkerStats>>,
    client: redis::Client,
    keys: Keys,
    refresh: Duration,
    presence_rooms: Vec<String>,
    publish_history: redis::Script,
    recover: redis::Script,
    sweep: redis::Script,
    state: State,
}

impl Engine {
    pub fn new(
        cluster: Arc<Cluster>,
        mesh: Arc<Mesh>,
        stats: Vec<Arc<WorkerStats>>,
        config: &Config,
    ) -> redis::RedisResult<Self> {
        let url = config.redis_url.as_deref().unwrap_or_default();
        let client = redis::Client::open(url)?;
        // The workers' links speak plain TCP.
        if !matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::Tcp(..)
        ) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "only redis://host:port[/db] is supported (no TLS, no Unix socket)",
            )));
        }
        Ok(Self {
            cluster,
            mesh,
            stats,
            client,
            keys: Keys::new(config),
            refresh: config.redis_refresh.max(Duration::from_millis(50)),
            presence_rooms: config.presence_rooms.clone(),
            publish_history: redis::Script::new(lua::PUBLISH_HISTORY),
            recover: redis::Script::new(lua::RECOVER),
            sweep: redis::Script::new(lua::SWEEP),
            state: State::default(),
        })
    }

    /// Runs until [`Command::Shutdown`].
    pub fn run(self, rx: mpsc::UnboundedReceiver<Command>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                warn!(error = %e, "cluster: no runtime; this node runs alone");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let engine = Rc::new(self);
            tokio::task::spawn_local(Rc::clone(&engine).link());
            tokio::task::spawn_local(Rc::clone(&engine).refresh());
            engine.commands(rx).await;
        });
    }

    fn me(&self) -> u32 {
        self.cluster.node
    }

    fn con(&self) -> Option<MultiplexedConnection> {
        if !self.state.up.get() {
            return None;
        }
        self.state.con.borrow().clone()
    }

    // ----- the link ------------------------------------------------------------------

    /// Connects, subscribes, resynchronizes, and reads the subscription until the link
    /// breaks; then again, with backoff. Logs once per change of state.
    async fn link(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut logged_failure = false;
        while !self.state.stopping.get() {
            match self.connect().await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    logged_failure = false;
                    self.state.up.set(true);
                    self.cluster
                        .counters
                        .connected
                        .store(true, Ordering::Relaxed);
                    info!("cluster: connected to Redis");
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => self.on_message(&msg),
                                None => break,
                            },
                            () = self.state.broken.notified() => break,
                        }
                    }
                    self.state.up.set(false);
                    self.cluster
                        .counters
                        .connected
                        .store(false, Ordering::Relaxed);
                    *self.state.con.borrow_mut() = None;
                    *self.state.sink.borrow_mut() = None;
                    if self.state.stopping.get() {
                        return;
                    }
                    self.cluster
                        .counters
                        .outages
                        .fetch_add(1, Ordering::Relaxed);
                    warn!("cluster: lost Redis; serving local clients, reconnecting");
                }
                Err(e) => {
                    if !logged_failure {
                        warn!(error = %e, "cluster: cannot reach Redis; serving local clients, retrying");
                        logged_failure = true;
                    } else {
                        debug!(error = %e, "cluster: Redis still unreachable");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> redis::RedisResult<PubSubStream> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let mut con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        for script in [&self.publish_history, &self.recover, &self.sweep] {
            script.load_async(&mut con).await?;
        }
        // The workers' links connect to where this thread found Redis.
        if let redis::ConnectionAddr::Tcp(host, port) = self.client.get_connection_info().addr()
            && let Some(addr) = tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .next()
        {
            *super::lock(&self.cluster.addr) = Some(addr);
        }
        // The message channels are worker 0's (`link`); the directory is this thread's.
        let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
        sink.subscribe(self.keys.dir()).await?;
        self.resync(&mut con).await?;
        *self.state.con.borrow_mut() = Some(con);
        *self.state.sink.borrow_mut() = Some(sink);
        Ok(stream)
    }

    /// After (re)connecting: this node's entries written again, the epochs of rooms whose
    /// messages missed Redis ended, and the other nodes' memberships read afresh. (Rooms
    /// with history are caught up once worker 0 has subscribed them again: `catch_up`.)
    async fn resync(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        self.register(con, false).await?;
        let me = self.me();
        let nodes: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.keys.nodes())
            .query_async(con)
            .await?;
        let mut snapshot = Vec::new();
        for node in nodes.keys().filter_map(|n| u32::from_str_radix(n, 16).ok()) {
            if node == me {
                continue;
            }
            let members: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.keys.members(node))
                .query_async(con)
                .await?;
            snapshot.extend(members);
        }
        {
            let mut remote = self.cluster.remote();
            remote.clear();
            for (field, user) in snapshot {
                if let Some((id, room)) = parse_member_field(&field) {
                    remote.insert(room, id, user);
                }
            }
        }

        Ok(())
    }

    /// Delivers what this node's rooms with history missed since the last position it
    /// delivered (after worker 0's link subscribed them again), or tells their members
    /// `recovered:false` when it is gone. Later messages that were already read arrive
    /// after this (the command queue keeps the order) and are skipped by position.
    async fn catch_up(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let behind: Vec<(RoomName, Pos)> = self
            .state
            .positions
            .borrow()
            .iter()
            .map(|(r, p)| (Arc::clone(r), p.clone()))
            .collect();
        for (room, pos) in behind {
            let since = history::Since {
                offset: pos.offset,
                epoch: pos.epoch.to_string(),
            };
            match self.read_history(con, &room, Some(&since), None).await? {
                Recovery::Recovered { messages, .. } => {
                    for msg in messages {
                        self.deliver_room(&room, msg, None);
                    }
                }
                Recovery::Lost { current } => {
                    // Members here missed messages that are gone: they are told, as a
                    // recovery would tell them, and can resync.
                    let data = json!({
                        "room": &*room, "recovered": false,
                        "offset": current.offset, "epoch": &*current.epoch,
                    });
                    let notice = Outbound::event(&reserved::RECOVERED, &data.to_string(), None);
                    self.state
                        .positions
                        .borrow_mut()
                        .insert(Arc::clone(&room), current);
                    self.deliver_room(&room, notice, None);
                }
            }
        }
        Ok(())
    }

    /// Writes this node's liveness, clients and memberships to Redis afresh, and ends
    /// the epochs of rooms whose messages missed Redis. With `announce`, the memberships
    /// are also announced to the other nodes (after this node was taken for dead).
    async fn register(
        &self,
        con: &mut MultiplexedConnection,
        announce: bool,
    ) -> redis::RedisResult<()> {
        let me = self.me();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.members(me))
            .arg(self.keys.clients(me))
            .ignore();
        for (id, user) in self.state.clients.borrow().iter() {
            pipe.cmd("HSET")
                .arg(self.keys.clients(me))
                .arg(id.to_string())
                .arg(user)
                .ignore();
        }
        for ((room, id), user) in self.state.members.borrow().iter() {
            pipe.cmd("HSET")
                .arg(self.keys.members(me))
                .arg(member_field(*id, room))
                .arg(user)
                .ignore();
            if announce {
                pipe.cmd("PUBLISH")
                    .arg(self.keys.dir())
                    .arg(json!(["+", id.to_string(), &**room, user]).to_string())
                    .ignore();
            }
        }
        for room in self.state.tainted.borrow_mut().drain() {
            let [meta, stream] = self.keys.history(&room);
            pipe.cmd("DEL").arg(meta).arg(stream).ignore();
        }
        pipe.cmd("HSET")
            .arg(self.keys.nodes())
            .arg(format!("{me:08x}"))
            .arg(now_ms() + 2 * self.refresh.as_millis() as u64)
            .ignore();
        pipe.query_async::<()>(con).await
    }

    /// A message of a room with history, from worker 0's subscription.
    fn on_room(&self, room: &str, payload: &[u8]) {
        let Some(decoded) = wire::decode(payload) else {
            debug!(room, "cluster: a message that is not Stellar's, ignored");
            return;
        };
        let name = self
            .state
            .rooms
            .borrow()
            .get_key_value(room)
            .map(|(n, _)| Arc::clone(n));
        if let Some(name) = name {
            self.cluster
                .counters
                .received
                .fetch_add(1, Ordering::Relaxed);
            self.deliver_room(&name, decoded.msg, decoded.exclude);
        }
    }

    /// A message of this thread's subscription: a change of the directory.
    fn on_message(&self, msg: &redis::Msg) {
        if msg.get_channel_name() == self.keys.dir() {
            self.apply_dir(msg.get_payload_bytes());
        }
    }

    /// Hands a room message to this node's workers with members; a message of a room
    /// with history only once per position.
    fn deliver_room(&self, room: &RoomName, msg: Arc<Outbound>, exclude: Option<ClientId>) {
        if let Some(pos) = msg.position() {
            let mut positions = self.state.positions.borrow_mut();
            if let Some(last) = positions.get(room)
                && last.epoch == pos.epoch
                && pos.offset <= last.offset
            {
                return;
            }
            positions.insert(Arc::clone(room), pos.clone());
        }
        let workers = self.state.rooms.borrow().get(room).copied().unwrap_or(0);
        self.mesh.send_room(workers, room, &msg, exclude);
    }

    /// Applies another node's membership change (`["+", id, room, user]`,
    /// `["-", id, room]`, `["x", node]`).
    fn apply_dir(&self, payload: &[u8]) {
        let Ok(change) = serde_json::from_slice::<Vec<String>>(payload) else {
            return;
        };
        let mut remote = self.cluster.remote();
        match change.as_slice() {
            [op, id, room, rest @ ..] if op != "x" => {
                let Ok(id) = id.parse::<ClientId>() else {
                    return;
                };
                if id.node == self.me() {
                    return;
                }
                if op == "+" {
                    remote.insert(room, id, rest.first().cloned().unwrap_or_default());
                } else {
                    remote.remove(room, id);
                }
            }
            [op, node] if op == "x" => {
                if let Ok(node) = u32::from_str_radix(node, 16) {
                    remote.remove_node(node);
                }
            }
            _ => {}
        }
    }

    // ----- commands --------------------------------------------------------------------

    /// Takes the workers' commands a batch at a time: one pipeline to Redis per batch.
    async fn commands(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let mut out = Outgoing::default();
            for command in batch.drain(..) {
                match command {
                    Command::Shutdown => {
                        self.flush(out).await;
                        self.leave_cluster().await;
                        return;
                    }
                    Command::Interest {
                        room,
                        worker,
                        joined,
                        barrier,
                    } => self.interest(room, worker, joined, barrier),
                    Command::Received { room, payload } => self.on_room(&room, &payload),
                    Command::Resubscribed => {
                        // What came before it is out first: in order with the catch-up.
                        self.flush(std::mem::take(&mut out)).await;
                        if let Some(mut con) = self.con()
                            && let Err(e) = self.catch_up(&mut con).await
                        {
                            debug!(error = %e, "cluster: catching up failed");
                            self.state.broken.notify_one();
                        }
                    }
                    Command::Recover { id, ask, ttl } => {
                        tokio::task::spawn_local(Rc::clone(&self).recover_for(id, ask, ttl));
                    }
                    Command::Clients(reply) => {
                        tokio::task::spawn_local(Rc::clone(&self).all_clients(reply));
                    }
                    Command::Taint(room) => {
                        self.state.tainted.borrow_mut().insert(room);
                    }
                    other => {
                        if matches!(
                            other,
                            Command::Publish { .. } | Command::PublishHistory { .. }
                        ) {
                            self.cluster.taken();
                        }
                        self.queue(other, &mut out);
                    }
                }
            }
            self.flush(out).await;
        }
    }

    /// Adds a command to the batch's pipeline.
    fn queue(&self, command: Command, out: &mut Outgoing) {
        let me = self.me();
        match command {
            Command::Publish {
                scope,
                msg,
                exclude,
            } => {
                let (channel, target) = self.keys.channel(&scope);
                let payload = wire::encode(me, &msg, exclude, target);
                out.pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                out.published += 1;
            }
            Command::PublishHistory {
                room,
                msg,
                exclude,
                size,
                ttl,
            } => {
                // Origin 0: every node delivers it from its subscription, this one too.
                let encoded = wire::encode(0, &msg, exclude, None);
                let [meta, stream] = self.keys.history(&room);
                out.pipe
                    .cmd("EVALSHA")
                    .arg(self.publish_history.get_hash())
                    .arg(2)
                    .arg(meta)
                    .arg(stream)
                    .arg(wire::body(&encoded))
                    .arg(self.keys.room(&room))
                    .arg(size.max(1))
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(&*history::new_epoch())
                    .ignore();
                out.published += 1;
                out.history.push((room, msg, exclude));
            }
            Command::Member {
                room,
                id,
                user,
                joined,
            } => {
                let field = member_field(id, &room);
                let change = if joined {
                    let user = user.unwrap_or_default();
                    out.pipe
                        .cmd("HSET")
                        .arg(self.keys.members(me))
                        .arg(field)
                        .arg(&user)
                        .ignore();
                    let change = json!(["+", id.to_string(), &*room, &user]);
                    self.state.members.borrow_mut().insert((room, id), user);
                    change
                } else {
                    out.pipe
                        .cmd("HDEL")
                        .arg(self.keys.members(me))
                        .arg(field)
                        .ignore();
                    let change = json!(["-", id.to_string(), &*room]);
                    self.state.members.borrow_mut().remove(&(room, id));
                    change
                };
                out.pipe
                    .cmd("PUBLISH")
                    .arg(self.keys.dir())
                    .arg(change.to_string())
                    .ignore();
            }
            Command::Client {
                id,
                user,
                connected,
            } => {
                if connected {
                    let user = user.unwrap_or_default();
                    out.pipe
                        .cmd("HSET")
                        .arg(self.keys.clients(me))
                        .arg(id.to_string())
                        .arg(&user)
                        .ignore();
                    self.state.clients.borrow_mut().insert(id, user);
                } else {
                    out.pipe
                        .cmd("HDEL")
                        .arg(self.keys.clients(me))
                        .arg(id.to_string())
                        .ignore();
                    self.state.clients.borrow_mut().remove(&id);
                }
            }
            Command::Interest { .. }
            | Command::Received { .. }
            | Command::Resubscribed
            | Command::Recover { .. }
            | Command::Clients(_)
            | Command::Taint(_)
            | Command::Shutdown => {}
        }
    }

    /// Sends a batch's pipeline. When Redis is down (or the write fails), the messages
    /// are counted as unpublished, and those of rooms with history are delivered here
    /// without a position (their room's epoch ends once Redis is back).
    async fn flush(&self, out: Outgoing) {
        if out.pipe.cmd_iter().next().is_none() {
            return;
        }
        if let Some(mut con) = self.con() {
            match out.pipe.query_async::<()>(&mut con).await {
                Ok(()) => {
                    self.cluster
                        .counters
                        .published
                        .fetch_add(out.published, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "cluster: publishing failed");
                    self.state.broken.notify_one();
                }
            }
        }
        self.cluster
            .counters
            .unpublished
            .fetch_add(out.published, Ordering::Relaxed);
        for (room, msg, exclude) in out.history {
            self.state.tainted.borrow_mut().insert(Arc::clone(&room));
            // Not positioned: delivered as is to this node's workers with members.
            self.deliver_room(&room, msg, exclude);
        }
    }

    /// A worker's first or last member of `room`: the node subscribes to the room on its
    /// first worker with members and unsubscribes after its last.
    fn interest(
        &self,
        room: RoomName,
        worker: usize,
        joined: bool,
        barrier: Option<Arc<crate::mesh::Barrier>>,
    ) {
        let bit = 1u64 << worker;
        let workers = {
            let mut rooms = self.state.rooms.borrow_mut();
            let mask = rooms.entry(Arc::clone(&room)).or_default();
            if joined {
                *mask |= bit;
            } else {
                *mask &= !bit;
            }
            let workers = *mask;
            if workers == 0 {
                rooms.remove(&room);
                self.state.positions.borrow_mut().remove(&room);
            }
            workers
        };
        // Worker 0's link holds the subscription, and arrives at the barrier once Redis
        // confirmed it.
        self.mesh.send(
            0,
            MeshMsg::Subscription {
                room,
                workers,
                barrier,
            },
        );
    }

    /// Reads a recovery from Redis for client `id` and hands it to its worker.
    async fn recover_for(self: Rc<Self>, id: ClientId, ask: Ask, ttl: Duration) {
        let recovery = match self.con() {
            Some(mut con) => match self
                .read_history(&mut con, &ask.room, ask.since.as_ref(), Some(ttl))
                .await
            {
                Ok(recovery) => Some(recovery),
                Err(e) => {
                    debug!(error = %e, "cluster: recovery read failed");
                    None
                }
            },
            None => None,
        };
        // Redis unreachable: the client is told it could not recover, with the last
        // position this node saw.
        let recovery = recovery.unwrap_or_else(|| Recovery::Lost {
            current: self
                .state
                .positions
                .borrow()
                .get(&ask.room)
                .cloned()
                .unwrap_or(Pos {
                    offset: 0,
                    epoch: Arc::from(""),
                }),
        });
        self.mesh
            .send(id.worker as usize, MeshMsg::Recovered { id, ask, recovery });
    }

    /// What follows `since` in `room`'s history in Redis (`lua::RECOVER`).
    async fn read_history(
        &self,
        con: &mut MultiplexedConnection,
        room: &str,
        since: Option<&history::Since>,
        ttl: Option<Duration>,
    ) -> redis::RedisResult<Recovery> {
        let [meta, stream] = self.keys.history(room);
        let ttl = ttl.unwrap_or(Duration::from_secs(300));
        let (epoch, offset, first, entries): (String, u64, u64, Vec<Vec<u8>>) = self
            .recover
            .key(meta)
            .key(stream)
            // No position: nothing to read after, only where the room stands.
            .arg(since.map_or(u64::MAX, |s| s.offset))
            .arg(ttl.as_millis().max(1) as u64)
            .arg(&*history::new_epoch())
            .invoke_async(con)
            .await?;
        let epoch: Arc<str> = Arc::from(epoch);
        let current = Pos {
            offset,
            epoch: Arc::clone(&epoch),
        };
        Ok(history::recover_from(since, current, first, |_| {
            entries
                .chunks_exact(2)
                .filter_map(|pair| {
                    let offset = std::str::from_utf8(&pair[0]).ok()?.parse().ok()?;
                    let pos = Pos {
                        offset,
                        epoch: Arc::clone(&epoch),
                    };
                    Some(wire::decode_body(&pair[1], Some(pos))?.msg)
                })
                .collect()
        }))
    }

    /// Every client id of the cluster, for `ServerHandle::clients`.
    async fn all_clients(self: Rc<Self>, reply: std::sync::mpsc::Sender<Vec<String>>) {
        let Some(mut con) = self.con() else {
            return;
        };
        let Ok(nodes) = redis::cmd("HKEYS")
            .arg(self.keys.nodes())
            .query_async::<Vec<String>>(&mut con)
            .await
        else {
            return;
        };
        let mut all = Vec::new();
        for node in nodes.iter().filter_map(|n| u32::from_str_radix(n, 16).ok()) {
            match redis::cmd("HKEYS")
                .arg(self.keys.clients(node))
                .query_async::<Vec<String>>(&mut con)
                .await
            {
                Ok(ids) => all.extend(ids),
                Err(_) => return,
            }
        }
        all.sort_unstable();
        let _ = reply.send(all);
    }

    // ----- liveness --------------------------------------------------------------------

    /// Every `redis_refresh`: this node's liveness and counts, a sweep of dead nodes, and
    /// the cluster summary for `/stats`.
    async fn refresh(self: Rc<Self>) {
        loop {
            tokio::time::sleep(jittered(self.refresh, self.me())).await;
            if self.state.stopping.get() {
                return;
            }
            let Some(mut con) = self.con() else {
                continue;
            };
            if let Err(e) = self.refresh_once(&mut con).await {
                debug!(error = %e, "cluster: refresh failed");
                self.state.broken.notify_one();
            }
        }
    }

    async fn refresh_once(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let me = format!("{:08x}", self.me());
        let now = now_ms();
        let connections: u64 = self
            .stats
            .iter()
            .map(|s| s.snapshot(0).active_connections)
            .sum();
        let (added, kept): (u64, usize) = redis::pipe()
            .cmd("HSET")
            .arg(self.keys.nodes())
            .arg(&me)
            .arg(now + 2 * self.refresh.as_millis() as u64)
            .cmd("HSET")
            .arg(self.keys.node_stats())
            .arg(&me)
            .arg(json!({ "connections": connections }).to_string())
            .ignore()
            .cmd("HLEN")
            .arg(self.keys.members(self.me()))
            .query_async(con)
            .await?;
        if added == 1 || kept != self.state.members.borrow().len() {
            // Another node took this one for dead (it was silent past twice the refresh,
            // e.g. stalled) and removed its clients: they are written and announced again.
            // (A count off for a moment while a batch is in flight is answered the same
            // way: rewriting is idempotent.)
            warn!("cluster: this node's entries were removed as dead; registering again");
            self.register(con, true).await?;
        }

        let nodes: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.keys.nodes())
            .query_async(con)
            .await?;
        for (node, expiry) in &nodes {
            if *expiry < now && *node != me {
                self.sweep_node(con, node, now).await?;
            }
        }

        let stats: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.node_stats())
            .query_async(con)
            .await?;
        let alive = |n: &String| nodes.get(n).is_some_and(|e| *e >= now);
        let connections: u64 = stats
            .iter()
            .filter(|(n, _)| alive(n))
            .filter_map(|(_, s)| serde_json::from_str::<serde_json::Value>(s).ok())
            .filter_map(|v| v.get("connections").and_then(serde_json::Value::as_u64))
            .sum();
        let alive_nodes = nodes.keys().filter(|n| alive(n)).count();
        self.cluster
            .set_summary(json!({ "nodes": alive_nodes, "connections": connections }));
        Ok(())
    }

    /// Removes a dead node (if no other node did first), tells every node, and sends
    /// its members' `presence-leave` to the presence rooms they were in.
    async fn sweep_node(
        &self,
        con: &mut MultiplexedConnection,
        node: &str,
        now: u64,
    ) -> redis::RedisResult<()> {
        let members: Option<Vec<String>> = self
            .sweep
            .key(self.keys.nodes())
            .arg(&self.keys.prefix)
            .arg(node)
            .arg(now)
            .arg(json!(["x", node]).to_string())
            .invoke_async(con)
            .await?;
        // Alive after all, or removed by another node first.
        let Some(members) = members else {
            return Ok(());
        };
        if let Ok(dead) = u32::from_str_radix(node, 16) {
            self.cluster.remote().remove_node(dead);
        }
        let mut pipe = redis::pipe();
        let mut removed = 0;
        for pair in members.chunks_exact(2) {
            let Some((id, room)) = parse_member_field(&pair[0]) else {
                continue;
            };
            removed += 1;
            if !history::matches_any(&self.presence_rooms, room) {
                continue;
            }
            let user = (!pair[1].is_empty()).then_some(pair[1].as_str());
            let data = super::presence_data(room, &id, user);
            let msg = Outbound::event(&reserved::PRESENCE_LEAVE, &data, None);
            // Origin 0: every node's members get it, this node's too.
            pipe.cmd("PUBLISH")
                .arg(self.keys.room(room))
                .arg(wire::encode(0, &msg, None, None))
                .ignore();
        }
        if pipe.cmd_iter().next().is_some() {
            pipe.query_async::<()>(con).await?;
        }
        self.cluster
            .counters
            .nodes_swept
            .fetch_add(1, Ordering::Relaxed);
        info!(node, memberships = removed, "cluster: removed a dead node");
        Ok(())
    }

    /// On shutdown: this node leaves the cluster at once rather than by expiry.
    async fn leave_cluster(&self) {
        self.state.stopping.set(true);
        self.state.broken.notify_one();
        let Some(mut con) = self.con() else {
            return;
        };
        let me = self.me();
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(self.keys.nodes())
            .arg(format!("{me:08x}"))
            .ignore()
            .cmd("HDEL")
            .arg(self.keys.node_stats())
            .arg(format!("{me:08x}"))
            .ignore()
            .cmd("DEL")
            .arg(self.keys.members(me))
            .arg(self.keys.clients(me))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.keys.dir())
            .arg(json!(["x", format!("{me:08x}")]).to_string())
            .ignore();
        let _ = pipe.query_async::<()>(&mut con).await;
    }
}

/// A batch's pipeline and what it carries.
#[derive(Default)]
struct Outgoing {
    pipe: redis::Pipeline,
    /// Messages in it (PUBLISH and history appends).
    published: u64,
    /// The history appends, delivered here if the pipeline fails.
    history: Vec<(RoomName, Arc<Outbound>, Option<ClientId>)>,
}

/// A membership's field in a node's members hash: the id, a newline, the room (room
/// names may hold anything; ids never hold a newline).
fn member_field(id: ClientId, room: &str) -> String {
    format!("{id}\n{room}")
}

fn parse_member_field(field: &str) -> Option<(ClientId, &str)> {
    let (id, room) = field.split_once('\n')?;
    Some((id.parse().ok()?, room))
}

/// `period` shortened by up to a fifth, differently each time and on each node: nodes
/// started together would otherwise refresh in step forever, loading Redis at the same
/// instant each period, and one node's sweep would always land the same few
/// milliseconds after another's refresh (a stalled node's expired entry could then be
/// refreshed before every sweep). Never longer than `period`, so a dead node is still
/// out within three periods.
fn jittered(period: Duration, node: u32) -> Duration {
    // A multiplicative hash of the clock and the node id: spread enough for this, and no
    // random-number generator to carry.
    let mixed = (now_ms() ^ u64::from(node).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let fraction = (mixed >> 11) as f64 / (1u64 << 53) as f64;
    period - (period / 5).mul_f64(fraction)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_are_spread_over_the_last_fifth_of_the_period_and_never_later() {
        let period = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..200u32)
            .map(|node| {
                // Each millisecond of the clock and each node id gives another wait.
                std::thread::sleep(Duration::from_micros(50));
                jittered(period, node)
            })
            .collect();
        assert!(
            waits.iter().all(|w| *w <= period && *w >= period * 4 / 5),
            "{waits:?}"
        );
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_millis(100),
            "spread: {min:?}..{max:?}"
        );
    }
}
