//! One worker: one pinned thread, one event loop (io_uring or epoll), its own listeners,
//! connections, room shares and inbox (SPEC §2).
//!
//! The driver is chosen here, at start-up, and nowhere else: code above this file never
//! asks which one it runs on. The worker's state is `!Send` and lives in an `Rc`; other
//! threads reach it only through its [`Inbox`](crate::mesh::Inbox).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::{TcpListener, TcpStream};
use stellar_protocol::tcp::{FrameType, TcpDecoder};
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::handshake::{HeadLimits, Request, reject};
use stellar_protocol::ws::{CloseCode, DecoderConfig, MessageDecoder, OpCode};
use stellar_protocol::{HandshakeError, tcp};
use tracing::{debug, info, warn};

use crate::api::{Ctx, Shared};
use crate::auth::{self, AuthError, AuthUser};
use crate::config::{Config, Driver};
use crate::connection::Conn;
use crate::files;
use crate::http;
use crate::mesh::{Barrier, ClientId, MeshMsg};
use crate::outbound::{Outbound, Proto};
use crate::rate_limit::{Buckets, Limit, RateLimits};
use crate::rooms::{Interest, LocalRooms, RoomName};
use crate::router::{self, Decoder, Flow};
use crate::stats::WorkerStats;

/// Bytes asked of the kernel per read while a connection is busy (its last read
/// filled the buffer).
const READ_CHUNK: usize = 16 * 1024;
/// The read buffer of an idle connection. With io_uring the buffer is lent to the
/// kernel for as long as the read is pending, so an idle connection holds exactly this
/// much: it is what keeps idle connections cheap.
const IDLE_READ: usize = 128;

/// Addresses whose HTTP rate-limit buckets a worker keeps at most.
const MAX_HTTP_BUCKETS: usize = 65_536;

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The client is in `max_rooms_per_client` rooms already.
    TooManyRooms,
    /// The server holds `max_rooms` rooms already.
    ServerRoomsFull,
}

/// Why a connection was not admitted (SPEC §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `max_connections` reached, or shutting down.
    ServerFull,
    /// `max_connections_per_ip` reached for the client's address.
    TooManyFromIp,
}

impl Refusal {
    /// The close reason (WebSocket 1008) or ERROR message (TCP).
    fn reason(self) -> &'static str {
        match self {
            Self::ServerFull => "Server full",
            Self::TooManyFromIp => "Too many connections",
        }
    }

    /// The TCP ERROR frame's code.
    fn code(self) -> &'static str {
        match self {
            Self::ServerFull => "server_full",
            Self::TooManyFromIp => "too_many_connections",
        }
    }
}

/// A worker's state, shared by its tasks.
pub struct Worker {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    config: RefCell<Arc<Config>>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    rooms: RefCell<LocalRooms>,
    interest: RefCell<Interest>,
    next_seq: Cell<u64>,
    shutting_down: Cell<bool>,
    rate_limits: RefCell<Arc<RateLimits>>,
    /// Rate-limit buckets of HTTP action callers, by address (HTTP has no connection
    /// to keep them in); dropped wholesale past [`MAX_HTTP_BUCKETS`] addresses.
    http_buckets: RefCell<HashMap<std::net::IpAddr, Buckets>>,
    /// Handler metadata (`Ctx::set`) of the clients that have any, by client sequence
    /// number: most have none, so it is kept here rather than in every connection.
    meta: RefCell<HashMap<u64, HashMap<String, serde_json::Value>>>,
}

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
    let result = match driver {
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(files::pool())
            .build()
            .map(|mut rt| rt.block_on(main("epoll"))),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .attach_thread_pool(files::pool())
            .build()
            .map(|mut rt| rt.block_on(main("uring"))),
        Driver::Auto => match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .attach_thread_pool(files::pool())
            .build()
        {
            Ok(monoio::FusionRuntime::Uring(mut rt)) => {
                rt.block_on(main("uring"));
                Ok(())
            }
            Ok(monoio::FusionRuntime::Legacy(mut rt)) => {
                rt.block_on(main("epoll"));
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        warn!(worker = index, error = %e, "worker could not start its event loop");
    }
}

async fn serve(
    index: usize,
    shared: Arc<Shared>,
    ws: std::net::TcpListener,
    tcp: std::net::TcpListener,
) {
    let worker = Rc::new(Worker {
        index,
        stats: Arc::clone(shared.worker_stats_arc(index)),
        config: RefCell::new(shared.config()),
        shared,
        conns: RefCell::default(),
        rooms: RefCell::default(),
        interest: RefCell::default(),
        next_seq: Cell::new(0),
        shutting_down: Cell::new(false),
        rate_limits: RefCell::new(Arc::default()),
        http_buckets: RefCell::default(),
        meta: RefCell::default(),
    });
    *worker.rate_limits.borrow_mut() = worker.shared.rate_limits();
    let listeners = [(ws, Proto::Ws), (tcp, Proto::Tcp)];
    let mut listen_fds = Vec::new();
    for (listener, proto) in listeners {
        listen_fds.push(listener.as_raw_fd());
        match TcpListener::from_std(listener) {
            Ok(l) => {
                monoio::spawn(accept_loop(Rc::clone(&worker), l, proto));
            }
            Err(e) => warn!(worker = index, error = %e, "listener not usable"),
        }
    }
    monoio::spawn(heartbeat_loop(Rc::clone(&worker)));
    worker.run_inbox(&listen_fds).await;
    info!(worker = index, "worker stopped");
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, proto: Proto) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) if worker.shutting_down.get() => {
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
        if worker.shutting_down.get() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let w = Rc::clone(&worker);
        match proto {
            Proto::Ws => monoio::spawn(w.serve_http(stream, remote)),
            Proto::Tcp => monoio::spawn(w.serve_tcp(stream, remote)),
        };
    }
}

async fn heartbeat_loop(worker: Rc<Worker>) {
    loop {
        let interval = worker.config().heartbeat_interval;
        monoio::time::sleep(interval).await;
        worker.heartbeat();
    }
}

/// The reading side of a session. It lives in a box the session task points to: an
/// async fn keeps its arguments twice and every local of every await point, so state
/// held by value would make each idle connection's task several hundred bytes larger.
struct ReadSide {
    reader: OwnedReadHalf<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    /// The last read filled its buffer.
    busy: bool,
}

/// Reads once into the spare capacity of `buf`, after the bytes it holds. (monoio's
/// `read` on a `BytesMut` writes from the start of the buffer, hence the slice.)
pub async fn read_append(
    reader: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    let start = buf.len();
    let (result, slice) = reader.read(std::mem::take(buf).slice_mut(start..)).await;
    *buf = slice.into_inner();
    result
}

/// Reads until a whole request head is buffered: the head and the bytes after it, or
/// the handshake error (`None` when the peer went away first).
async fn read_head(
    stream: &mut TcpStream,
    limits: HeadLimits,
) -> Result<(Request, BytesMut), Option<HandshakeError>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(request) = Request::parse(&buf, &limits)? {
            return Ok((request, buf));
        }
        buf.reserve(1024);
        if !matches!(read_append(stream, &mut buf).await, Ok(n) if n > 0) {
            return Err(None);
        }
    }
}

impl Worker {
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
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

    /// Whether clients must authenticate (an `auth` hook or a `jwt_secret`).
    pub fn is_auth_on(&self) -> bool {
        self.shared.handlers.auth.is_some() || self.config.borrow().jwt_secret.is_some()
    }

    /// Authenticates an upgrade (or HTTP) request: the `auth` hook if set, else the
    /// JWT it carries. `Ok(None)`: no credentials yet (an `auth` message may follow).
    pub fn authenticate_upgrade(&self, request: &Request) -> Result<Option<AuthUser>, AuthError> {
        if let Some(hook) = &self.shared.handlers.auth {
            return hook(request).map(Some).map_err(AuthError::Invalid);
        }
        let Some(secret) = self.config.borrow().jwt_secret.clone() else {
            return Ok(None);
        };
        match auth::token_from(request) {
            Some(token) => auth::verify(&secret, token).map(Some),
            None => Ok(None),
        }
    }

    /// Closes `conn` with 1008 "Authentication required" unless it authenticates
    /// within `connect_timeout`.
    fn require_auth_in_time(&self, conn: &Rc<Conn>) {
        let conn = Rc::clone(conn);
        let timeout = self.config().connect_timeout;
        monoio::spawn(async move {
            monoio::time::sleep(timeout).await;
            if !conn.is_authenticated() {
                conn.close(CloseCode::POLICY_VIOLATION, "Authentication required");
            }
        });
    }

    /// Whether `conn` may join `room`: the `authorize_join` hook, else the user's grant
    /// when auth is on, else yes.
    pub fn may_join(&self, conn: &Conn, room: &str) -> bool {
        let user = conn.user.borrow();
        if let Some(hook) = &self.shared.handlers.authorize_join {
            return hook(&conn.client_info(), user.as_deref(), room);
        }
        !self.is_auth_on() || user.as_ref().is_some_and(|u| u.is_granted(room))
    }

    /// Whether the HTTP caller at `ip` may call action `name` once more.
    pub fn allow_http(&self, ip: std::net::IpAddr, name: &str) -> bool {
        let Some((table, global)) = self.limits_in_force() else {
            return true;
        };
        let mut buckets = self.http_buckets.borrow_mut();
        if buckets.len() >= MAX_HTTP_BUCKETS && !buckets.contains_key(&ip) {
            buckets.clear();
        }
        buckets.entry(ip).or_default().allow(
            || ip.to_string(),
            name,
            &table,
            global,
            Instant::now(),
        )
    }

    /// The override table and the global limit, or `None` when no limit is configured
    /// at all and nothing needs checking (nor the clock reading).
    fn limits_in_force(&self) -> Option<(std::cell::Ref<'_, Arc<RateLimits>>, Limit)> {
        let config = self.config.borrow();
        let global = Limit::new(config.rate_limit, config.rate_limit_window);
        let table = self.rate_limits.borrow();
        table.applies(global).then_some((table, global))
    }

    /// Whether `conn` may send one more `event` under the rate limits.
    pub fn allow(&self, conn: &Conn, event: &str) -> bool {
        let Some((table, global)) = self.limits_in_force() else {
            return true;
        };
        conn.buckets
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .allow(|| conn.id.text(), event, &table, global, Instant::now())
    }

    /// The mesh loop: runs until shutdown has drained.
    async fn run_inbox(self: &Rc<Self>, listen_fds: &[i32]) {
        let mut batch = Vec::new();
        loop {
            self.shared.mesh.inboxes[self.index]
                .recv_batch(&mut batch)
                .await;
            for msg in batch.drain(..) {
                if let MeshMsg::Shutdown { graceful, timeout } = msg {
                    self.shutting_down.set(true);
                    for fd in listen_fds {
                        let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Both);
                    }
                    self.drain(graceful, timeout).await;
                    return;
                }
                self.handle_mesh(msg);
            }
        }
    }

    fn handle_mesh(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Room { room, msg, exclude } => self.deliver_local(&room, &msg, exclude),
            MeshMsg::All { msg, exclude } => self.deliver_all_local(&msg, exclude),
            MeshMsg::Client { id, msg } => {
                if let Some(conn) = self.conns.borrow().get(&id.seq) {
                    conn.send_outbound(&msg, &self.stats);
                }
            }
            MeshMsg::Interest {
                room,
                worker,
                joined,
                barrier,
            } => {
                self.interest.borrow_mut().set(&room, worker, joined);
                if let Some(b) = barrier {
                    b.arrive();
                }
            }
            MeshMsg::Config(config) => {
                for conn in self.conns.borrow().values() {
                    conn.set_limits(config.max_backpressure, config.slow_consumer);
                }
                *self.config.borrow_mut() = config;
            }
            MeshMsg::RateLimits(table) => *self.rate_limits.borrow_mut() = table,
            MeshMsg::Shutdown { .. } => {}
        }
    }

    /// Graceful: every client gets 1001 and the worker waits (up to `shutdown_timeout`)
    /// for them to go. Forced: sockets are shut at once.
    async fn drain(&self, graceful: bool, timeout: Duration) {
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in &conns {
            if graceful {
                conn.close(CloseCode::GOING_AWAY, "Server shutting down");
            } else {
                conn.kill();
            }
        }
        drop(conns);
        let deadline = Instant::now() + timeout;
        while !self.conns.borrow().is_empty() && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        for conn in self.conns.borrow().values() {
            conn.kill();
        }
        // Let readers observe the shutdown and run their disconnect hooks.
        let settle = Instant::now() + Duration::from_millis(200);
        while !self.conns.borrow().is_empty() && Instant::now() < settle {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Pings idle clients and drops the ones silent past `heartbeat_timeout`.
    fn heartbeat(self: &Rc<Self>) {
        let config = self.config();
        let now = Instant::now();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in conns {
            let idle = now.duration_since(conn.last_seen.get());
            if idle >= config.heartbeat_timeout {
                debug!(worker = self.index, client = %conn.id, "heartbeat timeout");
                conn.close(CloseCode::GOING_AWAY, "Heartbeat timeout");
            } else if idle >= config.heartbeat_interval {
                let ping = match conn.proto {
                    Proto::Ws => encode_server(OpCode::Ping, b""),
                    Proto::Tcp => tcp::frame::encode(FrameType::Ping, "", &[]),
                };
                conn.send(ping, &self.stats);
            }
        }
    }

    // ----- connections -------------------------------------------------------------

    /// Admits a connection, or says why not.
    fn register(
        self: &Rc<Self>,
        proto: Proto,
        remote: SocketAddr,
        fd: i32,
        user: Option<AuthUser>,
    ) -> Result<Rc<Conn>, Refusal> {
        let config = self.config();
        if self.shutting_down.get() || !self.shared.try_admit(config.max_connections) {
            return Err(Refusal::ServerFull);
        }
        if !self
            .shared
            .admit_ip(remote.ip(), config.max_connections_per_ip)
        {
            self.shared.release_admission();
            return Err(Refusal::TooManyFromIp);
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let id = ClientId {
            worker: self.index as u16,
            seq,
        };
        let conn = Rc::new(
            Conn::new(
                id,
                proto,
                remote,
                fd,
                config.max_backpressure,
                config.slow_consumer,
                Arc::clone(&self.stats),
            )
            .with_auth(self.is_auth_on(), user),
        );
        self.conns.borrow_mut().insert(seq, Rc::clone(&conn));
        if let Some(mut dir) = self.shared.dirs.lock(self.index) {
            dir.clients.insert(id);
        }
        self.stats.total_connections.add(1);
        self.stats.active_connections.add(1);
        match proto {
            Proto::Ws => self.stats.ws_connections.add(1),
            Proto::Tcp => self.stats.tcp_connections.add(1),
        }
        Ok(conn)
    }

    /// Removes a connection: leaves its rooms, then runs `on_disconnect`.
    fn unregister(self: &Rc<Self>, conn: &Rc<Conn>) {
        let rooms: Vec<RoomName> = conn.rooms.borrow().clone();
        for room in rooms {
            self.leave(conn, &room);
        }
        self.conns.borrow_mut().remove(&conn.id.seq);
        self.meta.borrow_mut().remove(&conn.id.seq);
        if let Some(mut dir) = self.shared.dirs.lock(self.index) {
            dir.clients.remove(&conn.id);
        }
        self.shared.release_admission();
        self.shared.release_ip(conn.remote.ip());
        self.stats.active_connections.sub(1);
        match conn.proto {
            Proto::Ws => self.stats.ws_connections.sub(1),
            Proto::Tcp => self.stats.tcp_connections.sub(1),
        }
        let ctx = Ctx::new(self, Some(conn), "disconnect", serde_json::Value::Null);
        for hook in &self.shared.handlers.disconnect {
            hook(&ctx);
        }
    }

    /// Runs middleware then `on_connection`; false when middleware refused the client.
    fn admit_hooks(self: &Rc<Self>, conn: &Rc<Conn>) -> bool {
        for middleware in &self.shared.handlers.middleware {
            if let Err(reason) = middleware(&conn.client_info()) {
                conn.close(CloseCode::POLICY_VIOLATION, &reason);
                return false;
            }
        }
        let ctx = Ctx::new(self, Some(conn), "connection", serde_json::Value::Null);
        for hook in &self.shared.handlers.connection {
            hook(&ctx);
        }
        true
    }

    // ----- rooms -------------------------------------------------------------------

    /// Joins `conn` to `room`. When this worker gains its first member, the other
    /// workers are told, and the returned barrier opens once all of them know.
    pub fn join(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        room: &str,
    ) -> Result<Option<Arc<Barrier>>, JoinError> {
        if conn.in_room(room) {
            return Ok(None);
        }
        let config = self.config();
        if conn.rooms.borrow().len() >= config.max_rooms_per_client {
            return Err(JoinError::TooManyRooms);
        }
        if !self.interest.borrow().contains(room)
            && self.interest.borrow().len() >= config.max_rooms
        {
            return Err(JoinError::ServerRoomsFull);
        }
        let room: RoomName = Arc::from(room);
        let first = self.rooms.borrow_mut().join(&room, conn);
        conn.rooms.borrow_mut().push(Arc::clone(&room));
        if let Some(mut dir) = self.shared.dirs.lock(self.index) {
            dir.rooms
                .entry(Arc::clone(&room))
                .or_default()
                .insert(conn.id);
        }
        if !first {
            return Ok(None);
        }
        self.stats.local_rooms.add(1);
        self.interest.borrow_mut().set(&room, self.index, true);
        let others = self.shared.mesh.workers() - 1;
        if others == 0 {
            return Ok(None);
        }
        let barrier = Barrier::new(others);
        self.tell_others(|| MeshMsg::Interest {
            room: Arc::clone(&room),
            worker: self.index,
            joined: true,
            barrier: Some(Arc::clone(&barrier)),
        });
        Ok(Some(barrier))
    }

    /// Removes `conn` from `room`; false if it was not a member.
    pub fn leave(self: &Rc<Self>, conn: &Rc<Conn>, room: &str) -> bool {
        let Some(at) = conn.rooms.borrow().iter().position(|r| &**r == room) else {
            return false;
        };
        let room = conn.rooms.borrow_mut().swap_remove(at);
        let last = self.rooms.borrow_mut().leave(&room, conn);
        if let Some(mut dir) = self.shared.dirs.lock(self.index)
            && let Some(members) = dir.rooms.get_mut(&room)
        {
            members.remove(&conn.id);
            if members.is_empty() {
                dir.rooms.remove(&room);
            }
        }
        if last {
            self.stats.local_rooms.sub(1);
            self.interest.borrow_mut().set(&room, self.index, false);
            self.tell_others(|| MeshMsg::Interest {
                room: Arc::clone(&room),
                worker: self.index,
                joined: false,
                barrier: None,
            });
        }
        true
    }

    fn tell_others(&self, msg: impl Fn() -> MeshMsg) {
        for w in (0..self.shared.mesh.workers()).filter(|w| *w != self.index) {
            self.shared.mesh.send(w, msg());
        }
    }

    /// Delivers to this worker's members of `room`.
    pub fn deliver_local(&self, room: &str, msg: &Outbound, exclude: Option<ClientId>) {
        let rooms = self.rooms.borrow();
        for member in rooms.members(room) {
            if Some(member.id) != exclude {
                member.send_outbound(msg, &self.stats);
            }
        }
    }

    /// Delivers to every connection of this worker.
    pub fn deliver_all_local(&self, msg: &Outbound, exclude: Option<ClientId>) {
        for conn in self.conns.borrow().values() {
            if Some(conn.id) != exclude {
                conn.send_outbound(msg, &self.stats);
            }
        }
    }

    /// Sends to every member of `room` on every worker: local members by refcount, and
    /// one mesh message to each other worker that has members.
    pub fn publish_room(&self, room: &str, msg: Arc<Outbound>, exclude: Option<ClientId>) {
        self.deliver_local(room, &msg, exclude);
        let mut others = self.interest.borrow().others(room, self.index);
        if others == 0 {
            return;
        }
        let name: RoomName = Arc::from(room);
        while others != 0 {
            let w = others.trailing_zeros() as usize;
            others &= others - 1;
            self.shared.mesh.send(
                w,
                MeshMsg::Room {
                    room: Arc::clone(&name),
                    msg: Arc::clone(&msg),
                    exclude,
                },
            );
        }
    }

    // ----- sessions ----------------------------------------------------------------

    /// A connection on the WebSocket/HTTP port: read the request head within
    /// `connect_timeout`, then upgrade or answer as HTTP.
    async fn serve_http(self: Rc<Self>, stream: TcpStream, remote: SocketAddr) {
        // The session runs as a task of its own and this one ends: a long-lived
        // connection then keeps only the session's state, not the handshake's.
        if let Some((stream, conn, leftover)) = self.handshake(stream, remote).await {
            self.start_session(stream, conn, leftover);
        }
    }

    /// Reads the request head; answers plain HTTP, refusals and a full server itself;
    /// on a valid upgrade returns the admitted connection and any bytes after the head.
    async fn handshake(
        self: &Rc<Self>,
        mut stream: TcpStream,
        remote: SocketAddr,
    ) -> Option<(TcpStream, Rc<Conn>, BytesMut)> {
        let config = self.config();
        let limits = HeadLimits {
            max_head_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
        };
        let head =
            monoio::time::timeout(config.connect_timeout, read_head(&mut stream, limits)).await;
        let (request, mut buf) = match head {
            Ok(Ok(pair)) => pair,
            Ok(Err(Some(e))) => {
                let _ = stream.write_all(reject(&e)).await;
                return None;
            }
            Ok(Err(None)) => return None,
            Err(_) => {
                let _ = stream
                    .write_all(http::status_only(408, "Request Timeout"))
                    .await;
                return None;
            }
        };
        let _ = buf.split_to(request.head_len);
        let is_ws_path = request.path == "/" || request.path == "/ws";
        if !(is_ws_path && request.is_websocket_upgrade()) {
            http::serve(self, stream, remote.ip(), request, buf).await;
            return None;
        }
        let upgrade = match request.websocket_upgrade() {
            Ok(u) => u,
            Err(e) => {
                let _ = stream.write_all(reject(&e)).await;
                return None;
            }
        };
        if !config.allowed_origins.is_empty() {
            let allowed = upgrade
                .origin
                .as_deref()
                .is_some_and(|o| config.allowed_origins.iter().any(|a| a == o));
            if !allowed {
                let _ = stream
                    .write_all(reject(&HandshakeError::OriginNotAllowed))
                    .await;
                return None;
            }
        }
        let user = match self.authenticate_upgrade(&request) {
            Ok(user) => user,
            Err(e) => {
                let _ = stream.write_all(http::unauthorized(&e.to_string())).await;
                return None;
            }
        };
        let conn = match self.register(Proto::Ws, remote, stream.as_raw_fd(), user) {
            Ok(conn) => conn,
            Err(refusal) => {
                // Upgrade, then close with 1008 so WebSocket clients see why.
                let _ = stream.write_all(upgrade.response()).await;
                let close = stellar_protocol::ws::CloseFrame::payload(
                    CloseCode::POLICY_VIOLATION,
                    refusal.reason(),
                );
                let _ = stream.write_all(encode_server(OpCode::Close, &close)).await;
                return None;
            }
        };
        // Queued, not written: the 101 and the welcome leave in one write (one packet
        // instead of two per connection). A failed write ends the session as usual.
        conn.queue_handshake_response(upgrade.response());
        // The head's buffer goes unless the client already sent frames behind it.
        let leftover = if buf.is_empty() { BytesMut::new() } else { buf };
        Some((stream, conn, leftover))
    }

    /// A connection on the TCP-protocol port.
    async fn serve_tcp(self: Rc<Self>, stream: TcpStream, remote: SocketAddr) {
        let conn = match self.register(Proto::Tcp, remote, stream.as_raw_fd(), None) {
            Ok(conn) => conn,
            Err(refusal) => {
                let mut stream = stream;
                let error = crate::connection::error_data(refusal.code(), refusal.reason());
                let _ = stream
                    .write_all(tcp::frame::encode(FrameType::Error, "error", &error))
                    .await;
                return;
            }
        };
        self.start_session(stream, conn, BytesMut::new());
    }

    /// Starts an admitted connection: writer, welcome, hooks, then the read loop as a
    /// task of its own, which cleans up when the peer goes away.
    fn start_session(self: Rc<Self>, stream: TcpStream, conn: Rc<Conn>, leftover: BytesMut) {
        let (reader, writer) = stream.into_split();
        conn.attach_writer(writer);
        match conn.proto {
            Proto::Ws if self.config().echo => {}
            Proto::Ws if conn.is_authenticated() => router::send_welcome(&self, &conn),
            Proto::Ws => self.require_auth_in_time(&conn),
            Proto::Tcp => {
                if !conn.is_authenticated() {
                    self.require_auth_in_time(&conn);
                }
                conn.send(
                    tcp::frame::encode(FrameType::Connect, "connect", conn.id.text().as_bytes()),
                    &self.stats,
                );
            }
        }
        if !self.admit_hooks(&conn) {
            drop(reader);
            self.end_session(&conn);
            return;
        }
        let max_payload = self.config().max_payload;
        let decoder = match conn.proto {
            Proto::Ws => Decoder::Ws(MessageDecoder::new(DecoderConfig {
                max_message_size: max_payload,
                ..DecoderConfig::default()
            })),
            Proto::Tcp => Decoder::Tcp(TcpDecoder::new(max_payload)),
        };
        let mut side = Box::new(ReadSide {
            reader,
            buf: leftover,
            decoder,
            busy: false,
        });
        monoio::spawn(async move {
            self.read_loop(&conn, &mut side).await;
            drop(side);
            self.end_session(&conn);
        });
    }

    fn end_session(self: &Rc<Self>, conn: &Rc<Conn>) {
        self.unregister(conn);
        conn.finish();
        conn.release_half();
    }

    /// Decodes and routes until the peer goes away. After a close, keeps reading (and
    /// discarding) until the peer closes or the grace period shuts the socket, so our
    /// close frame is not lost to a reset.
    async fn read_loop(self: &Rc<Self>, conn: &Rc<Conn>, side: &mut ReadSide) {
        let mut open = true;
        loop {
            while open {
                match side.decoder.route_next(self, conn, &mut side.buf) {
                    None => break,
                    Some(Flow::Continue) => {}
                    Some(Flow::Wait(barrier, replies)) => {
                        barrier.wait().await;
                        for reply in replies {
                            conn.send(reply, &self.stats);
                        }
                    }
                    Some(Flow::Stop) => open = false,
                }
            }
            if !open {
                side.buf.clear();
            }
            // An idle connection waits on a small buffer; a full chunk is offered
            // while the last read filled its buffer (more is likely waiting).
            if side.buf.is_empty() && !side.busy {
                side.buf = BytesMut::with_capacity(IDLE_READ);
            } else {
                side.buf.reserve(READ_CHUNK);
            }
            let spare = side.buf.capacity() - side.buf.len();
            match read_append(&mut side.reader, &mut side.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    side.busy = n == spare;
                    self.stats.bytes_in.add(n as u64);
                    conn.last_seen.set(Instant::now());
                }
            }
        }
    }
}
