//! The public library API (SPEC §4): the builder, the running [`Server`], the
//! thread-safe [`ServerHandle`] and the per-client [`Ctx`] handlers receive.
//!
//! Handlers are `Fn` closures shared by every worker; each call runs on the worker that
//! owns the client. The handle works from any thread: it only pushes finished messages
//! into the workers' inboxes and reads their counters and directories.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use stellar_protocol::ws::handshake::Request;
use tracing::info;

use crate::auth::AuthUser;
use crate::config::{Config, ConfigError};
use crate::connection::{ClientInfo, Conn};
use crate::mesh::{ClientId, Mesh, MeshMsg};
use crate::outbound::Outbound;
use crate::rate_limit::{Limit, RateLimits};
use crate::rooms::Directories;
use crate::router::Flow;
use crate::stats::{Stats, WorkerStats};
pub use crate::timers::Timer;
use crate::timers::Timers;
use crate::worker::{self, Worker};

/// A failed request: answered as `{"error":{"code","message"}}` (HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AckError {
    pub code: String,
    pub message: String,
}

impl AckError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

type EventFn = dyn Fn(&Ctx<'_>) + Send + Sync;
type AckFn = dyn Fn(&Ctx<'_>) -> Result<Value, AckError> + Send + Sync;
type MiddlewareFn = dyn Fn(&ClientInfo) -> Result<(), String> + Send + Sync;
type RoomEventFn = dyn Fn(&ClientInfo, &str, &str) -> bool + Send + Sync;
type ShutdownFn = dyn Fn(&str, bool) + Send + Sync;
type RateLimitFn = dyn Fn(&ClientInfo, &str) -> bool + Send + Sync;
type AuthFn = dyn Fn(&Request) -> Result<AuthUser, String> + Send + Sync;
type AuthorizeJoinFn = dyn Fn(&ClientInfo, Option<&AuthUser>, &str) -> bool + Send + Sync;

/// Every registered handler, shared read-only by the workers.
#[derive(Default)]
pub struct Handlers {
    pub(crate) events: HashMap<String, Vec<Arc<EventFn>>>,
    pub(crate) all: Vec<Arc<EventFn>>,
    pub(crate) connection: Vec<Arc<EventFn>>,
    pub(crate) disconnect: Vec<Arc<EventFn>>,
    pub(crate) acks: HashMap<String, Arc<AckFn>>,
    pub(crate) middleware: Vec<Arc<MiddlewareFn>>,
    pub(crate) room_event: Option<Arc<RoomEventFn>>,
    pub(crate) shutdown: Vec<Arc<ShutdownFn>>,
    pub(crate) rate_limit_exceeded: Option<Arc<RateLimitFn>>,
    pub(crate) auth: Option<Arc<AuthFn>>,
    pub(crate) authorize_join: Option<Arc<AuthorizeJoinFn>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid listen address: {0}")]
    Address(String),
    #[error("starting the timer thread: {0}")]
    Timers(std::io::Error),
}

/// Builds a server: configuration and handlers, then [`ServerBuilder::start`].
#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    handlers: Handlers,
}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Runs `f` for every `event` a client emits.
    pub fn on(mut self, event: &str, f: impl Fn(&Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.handlers
            .events
            .entry(event.to_owned())
            .or_default()
            .push(Arc::new(f));
        self
    }

    /// Runs `f` for every client event (after the specific handlers).
    pub fn on_all(mut self, f: impl Fn(&Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.handlers.all.push(Arc::new(f));
        self
    }

    /// Runs `f` when a client has connected (after the welcome and middleware).
    pub fn on_connection(mut self, f: impl Fn(&Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.handlers.connection.push(Arc::new(f));
        self
    }

    /// Runs `f` when a client has gone; its rooms are already cleaned up.
    pub fn on_disconnect(mut self, f: impl Fn(&Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.handlers.disconnect.push(Arc::new(f));
        self
    }

    /// Answers requests named `name` (WebSocket ack, TCP ACK_REQ, HTTP action).
    pub fn on_ack(
        mut self,
        name: &str,
        f: impl Fn(&Ctx<'_>) -> Result<Value, AckError> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.acks.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Runs before `on_connection`, in order; an `Err(reason)` closes the client with
    /// 1008 and that reason.
    pub fn use_middleware(
        mut self,
        f: impl Fn(&ClientInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.middleware.push(Arc::new(f));
        self
    }

    /// Decides whether a member may relay `event` to `room` (default: yes).
    pub fn on_room_event(
        mut self,
        f: impl Fn(&ClientInfo, &str, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handlers.room_event = Some(Arc::new(f));
        self
    }

    /// Authenticates an upgrade request (headers, cookies, query): `Ok(user)` accepts,
    /// `Err(reason)` answers HTTP 401 before the upgrade. With this hook every client
    /// must be authenticated; it also backs `GET /api/ws/token` and HTTP actions.
    pub fn auth(
        mut self,
        f: impl Fn(&Request) -> Result<AuthUser, String> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.auth = Some(Arc::new(f));
        self
    }

    /// Decides whether a client may join a room (default: the `rooms` claim when auth is
    /// on, everyone when it is off). A refusal answers `error` `forbidden`.
    pub fn authorize_join(
        mut self,
        f: impl Fn(&ClientInfo, Option<&AuthUser>, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handlers.authorize_join = Some(Arc::new(f));
        self
    }

    /// Decides what happens to a client over its rate limit: `true` closes it with 1008
    /// "Rate limit exceeded" (the default), `false` refuses just that message with an
    /// `error` event `rate_limited`.
    pub fn on_rate_limit_exceeded(
        mut self,
        f: impl Fn(&ClientInfo, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.handlers.rate_limit_exceeded = Some(Arc::new(f));
        self
    }

    /// Runs after a shutdown, with the signal name (or "api") and whether it was forced.
    pub fn on_shutdown(mut self, f: impl Fn(&str, bool) + Send + Sync + 'static) -> Self {
        self.handlers.shutdown.push(Arc::new(f));
        self
    }

    /// Binds the ports and starts one pinned worker per configured core.
    pub fn start(self) -> Result<Server, StartError> {
        self.config.validate()?;
        let workers = self.config.worker_count();
        let ip: std::net::IpAddr = self
            .config
            .host
            .parse()
            .map_err(|_| StartError::Address(self.config.host.clone()))?;
        let ws = bind_group(SocketAddr::new(ip, self.config.port), workers)?;
        let tcp = bind_group(SocketAddr::new(ip, self.config.tcp_port()), workers)?;
        let port = ws
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port());
        let tcp_port = tcp
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port());
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(self.config)),
            handlers: self.handlers,
            mesh: Mesh::new(workers),
            dirs: Directories::new(workers),
            stats: (0..workers)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            admitted: AtomicUsize::new(0),
            port,
            tcp_port,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            rate_limits: RwLock::default(),
            per_ip: Mutex::default(),
            threads: Mutex::new(Vec::new()),
            timers: Timers::new(),
        });
        shared
            .timers
            .spawn(Arc::downgrade(&shared))
            .map_err(StartError::Timers)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::new();
        for (index, (ws, tcp)) in ws.into_iter().zip(tcp).enumerate() {
            let shared = Arc::clone(&shared);
            let core = cores.get(index % cores.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("stellar-worker-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker::run(index, shared, ws, tcp);
                })
                .map_err(|source| StartError::Bind {
                    addr: SocketAddr::new(ip, port),
                    source,
                })?;
            threads.push(thread);
        }
        *shared
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = threads;
        info!(port, tcp_port, workers, "stellar listening");
        Ok(Server {
            handle: ServerHandle(shared),
        })
    }
}

/// One listener per worker on the same address with `SO_REUSEPORT`, so the kernel
/// spreads connections. Port 0 is resolved by the first bind and reused by the rest.
fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_reuseport(addr).map_err(|source| StartError::Bind { addr, source })?;
        addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        out.push(listener);
    }
    Ok(out)
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(fd, sockopt::ReusePort, &true)?;
    socket::bind(fd, &SockaddrStorage::from(addr))?;
    socket::listen(fd, 4096)?;
    // SAFETY: `fd` was just created by socket(2) above, is open, and is owned by no
    // other object; the listener takes sole ownership of it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// State shared by the workers and every handle.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub(crate) handlers: Handlers,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) dirs: Directories,
    stats: Vec<Arc<WorkerStats>>,
    /// Connections admitted, against `max_connections` (changes on connect and close
    /// only, never per message).
    admitted: AtomicUsize,
    port: u16,
    tcp_port: u16,
    started: Instant,
    shutting_down: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The `every` timers: one thread for all of them, stopped with the server.
    timers: Timers,
    /// The current overrides; workers hold a copy, replaced through the mesh.
    rate_limits: RwLock<Arc<RateLimits>>,
    /// Open connections per remote address, against `max_connections_per_ip`
    /// (touched on connect and close only).
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(
            &self
                .config
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(crate) fn worker_stats_arc(&self, worker: usize) -> &Arc<WorkerStats> {
        &self.stats[worker]
    }

    pub(crate) fn try_admit(&self, max: usize) -> bool {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_admission(&self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn rate_limits(&self) -> Arc<RateLimits> {
        Arc::clone(
            &self
                .rate_limits
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Counts a connection from `ip`; false when `max` are open already.
    pub(crate) fn admit_ip(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let mut per_ip = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = per_ip.entry(ip).or_default();
        if *open >= max {
            return false;
        }
        *open += 1;
        true
    }

    pub(crate) fn release_ip(&self, ip: std::net::IpAddr) {
        let mut per_ip = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = per_ip.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`] or
/// [`ServerHandle::stop`], then [`Server::wait`].
pub struct Server {
    handle: ServerHandle,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Blocks until every worker has stopped.
    pub fn wait(self) {
        self.handle.join_workers();
    }
}

/// A cloneable handle usable from any thread.
#[derive(Clone)]
pub struct ServerHandle(pub(crate) Arc<Shared>);

impl ServerHandle {
    /// Sends `event` with `data` to every client.
    pub fn broadcast(&self, event: &str, data: &Value) {
        let msg = Outbound::event(event, &data.to_string(), None);
        self.each_worker(|| MeshMsg::All {
            msg: Arc::clone(&msg),
            exclude: None,
        });
    }

    /// Sends `event` with `data` to every member of `room`.
    pub fn to(&self, room: &str, event: &str, data: &Value) {
        let msg = Outbound::event(event, &data.to_string(), Some(room));
        let room: Arc<str> = Arc::from(room);
        self.each_worker(|| MeshMsg::Room {
            room: Arc::clone(&room),
            msg: Arc::clone(&msg),
            exclude: None,
        });
    }

    /// Sends `event` with `data` to one client; false when the id is malformed.
    pub fn to_id(&self, id: &str, event: &str, data: &Value) -> bool {
        let Ok(client) = id.parse::<ClientId>() else {
            return false;
        };
        let msg = Outbound::event(event, &data.to_string(), None);
        self.0
            .mesh
            .send(client.worker as usize, MeshMsg::Client { id: client, msg });
        true
    }

    /// Sends a binary event to every client.
    pub fn broadcast_binary(&self, event: &str, bytes: Bytes) {
        let msg = Outbound::binary(event, None, bytes);
        self.each_worker(|| MeshMsg::All {
            msg: Arc::clone(&msg),
            exclude: None,
        });
    }

    /// Sends a binary event to every member of `room`.
    pub fn to_binary(&self, room: &str, event: &str, bytes: Bytes) {
        let msg = Outbound::binary(event, Some(room), bytes);
        let room: Arc<str> = Arc::from(room);
        self.each_worker(|| MeshMsg::Room {
            room: Arc::clone(&room),
            msg: Arc::clone(&msg),
            exclude: None,
        });
    }

    /// Sends an `alert` `{"message"}` to one client.
    pub fn alert(&self, id: &str, message: &str) -> bool {
        self.to_id(id, "alert", &serde_json::json!({ "message": message }))
    }

    /// Ids of every client, or of the members of `room`.
    pub fn clients(&self, room: Option<&str>) -> Vec<String> {
        self.0
            .dirs
            .clients(room)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn room_members(&self, room: &str) -> Vec<String> {
        self.clients(Some(room))
    }

    /// Every room with at least one member.
    pub fn rooms(&self) -> Vec<String> {
        self.0.dirs.rooms().into_iter().map(|(r, _)| r).collect()
    }

    pub fn stats(&self) -> Stats {
        let workers = self
            .0
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| s.snapshot(i))
            .collect();
        let uptime = self.0.started.elapsed().as_millis() as u64;
        Stats::from_workers(workers, self.0.dirs.rooms().len() as u64, uptime)
    }

    /// The WebSocket/HTTP port actually bound.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The TCP-protocol port actually bound.
    pub fn tcp_port(&self) -> u16 {
        self.0.tcp_port
    }

    pub fn config(&self) -> Config {
        (*self.0.config()).clone()
    }

    /// Changes options at run time from a partial TOML table. Limits apply to new
    /// messages and connections; ports, workers and driver need a restart.
    pub fn update_config(&self, partial: toml::Table) -> Result<(), ConfigError> {
        let merged = Arc::new(self.0.config().merged(partial)?);
        *self
            .0
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&merged);
        self.each_worker(|| MeshMsg::Config(Arc::clone(&merged)));
        Ok(())
    }

    /// Limits `event` to `count` per `window` for every client (unless a client has its
    /// own override). Applies to the next message.
    pub fn set_event_rate_limit(&self, event: &str, count: u32, window: Duration) {
        self.edit_rate_limits(|t| {
            t.events.insert(event.to_owned(), Limit::new(count, window));
        });
    }

    pub fn remove_event_rate_limit(&self, event: &str) {
        self.edit_rate_limits(|t| {
            t.events.remove(event);
        });
    }

    /// Gives client `id` its own limit, which beats per-event and global limits.
    pub fn set_client_rate_limit(&self, id: &str, count: u32, window: Duration) {
        self.edit_rate_limits(|t| {
            t.clients.insert(id.to_owned(), Limit::new(count, window));
        });
    }

    pub fn remove_client_rate_limit(&self, id: &str) {
        self.edit_rate_limits(|t| {
            t.clients.remove(id);
        });
    }

    fn edit_rate_limits(&self, edit: impl FnOnce(&mut RateLimits)) {
        let mut current = self
            .0
            .rate_limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut table = (**current).clone();
        edit(&mut table);
        let table = Arc::new(table);
        *current = Arc::clone(&table);
        drop(current);
        self.each_worker(|| MeshMsg::RateLimits(Arc::clone(&table)));
    }

    /// Runs `f` every `period` on the server's timer thread until the returned [`Timer`]
    /// is dropped or the server shuts down. Ticks follow the grid `start + n·period`
    /// without drift; ticks missed while a callback overran are skipped, not fired in a
    /// burst. A zero period is clamped to 1 ms. All timers share one thread, so a slow
    /// callback delays the others. See the `timers` module for the exact guarantees.
    pub fn every(&self, period: Duration, f: impl Fn(&ServerHandle) + Send + 'static) -> Timer {
        self.0.timers.add(period, Box::new(f))
    }

    /// Stops at once: sockets are shut without a close handshake.
    pub fn stop(&self) {
        self.begin_shutdown(false, Duration::ZERO, "api");
    }

    /// Graceful shutdown: stop accepting, send 1001 "Server shutting down" to every
    /// client, drain for at most `timeout`, then run the `on_shutdown` callbacks.
    /// Blocks until the workers have stopped.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutdown_with_signal(timeout, "api");
    }

    /// [`ServerHandle::shutdown`] naming the signal that caused it (for `on_shutdown`).
    pub fn shutdown_with_signal(&self, timeout: Duration, signal: &str) {
        let started = Instant::now();
        self.begin_shutdown(true, timeout, signal);
        self.join_workers();
        let forced = started.elapsed() >= timeout;
        for hook in &self.0.handlers.shutdown {
            hook(signal, forced);
        }
    }

    fn begin_shutdown(&self, graceful: bool, timeout: Duration, signal: &str) {
        if self.0.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(signal, graceful, "shutting down");
        self.0.timers.stop();
        self.each_worker(|| MeshMsg::Shutdown { graceful, timeout });
    }

    fn join_workers(&self) {
        let threads = std::mem::take(
            &mut *self
                .0
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in threads {
            let _ = t.join();
        }
        self.0.timers.join();
    }

    /// Whether a shutdown has begun (`/health` answers 503 from then on).
    pub fn is_shutting_down(&self) -> bool {
        self.0.is_shutting_down()
    }

    fn each_worker(&self, msg: impl Fn() -> MeshMsg) {
        for w in 0..self.0.mesh.workers() {
            self.0.mesh.send(w, msg());
        }
    }
}

/// What a handler gets: the client, the event and its data, and ways to answer.
pub struct Ctx<'a> {
    worker: &'a Rc<Worker>,
    conn: Option<&'a Rc<Conn>>,
    event: &'a str,
    /// The message's `data` as it arrived (JSON text), when it came from a client.
    raw: Option<&'a str>,
    /// `data` as a value, parsed on first use: a handler that only passes `data` on
    /// (`data_raw`) never pays for a parse and a re-serialization.
    data: std::cell::OnceCell<Value>,
    /// The client's id as text (connections keep only the numeric id).
    id: Option<crate::mesh::IdText>,
    /// A join made by the handler that other workers must learn before reading on.
    pending: std::cell::RefCell<Option<Arc<crate::mesh::Barrier>>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        worker: &'a Rc<Worker>,
        conn: Option<&'a Rc<Conn>>,
        event: &'a str,
        data: Value,
    ) -> Self {
        let ctx = Self::from_raw(worker, conn, event, None);
        let _ = ctx.data.set(data);
        ctx
    }

    /// A context whose `data` is the JSON text `raw` (absent: `null`), parsed only if a
    /// handler asks for it as a value.
    pub(crate) fn from_raw(
        worker: &'a Rc<Worker>,
        conn: Option<&'a Rc<Conn>>,
        event: &'a str,
        raw: Option<&'a str>,
    ) -> Self {
        Self {
            worker,
            conn,
            event,
            raw,
            data: std::cell::OnceCell::new(),
            id: conn.map(|c| c.id.text()),
            pending: std::cell::RefCell::new(None),
        }
    }

    pub(crate) fn into_flow(self) -> Flow {
        self.pending
            .into_inner()
            .map_or(Flow::Continue, |b| Flow::Wait(b, Vec::new()))
    }

    /// The client's id (`"http"` for an HTTP action).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("http")
    }

    pub fn event(&self) -> &str {
        self.event
    }

    /// The message's `data` (`null` when absent or not valid JSON).
    pub fn data(&self) -> &Value {
        self.data
            .get_or_init(|| crate::router::parse_data(self.raw))
    }

    /// The message's `data` as JSON text, exactly as the client sent it when it came
    /// from a client (no parse); otherwise `data()` serialized.
    pub fn data_raw(&self) -> std::borrow::Cow<'_, str> {
        match (self.raw, self.data.get()) {
            (Some(raw), _) => raw.into(),
            (None, Some(value)) => value.to_string().into(),
            (None, None) => "null".into(),
        }
    }

    /// The client, with its user id once authenticated (`None` for an HTTP action).
    pub fn client_info(&self) -> Option<ClientInfo> {
        self.conn.map(|c| c.client_info())
    }

    /// The authenticated user and claims, if any.
    pub fn user(&self) -> Option<AuthUser> {
        self.conn.and_then(|c| c.user.borrow().as_deref().cloned())
    }

    /// Sends `event` to this client.
    pub fn emit(&self, event: &str, data: &Value) {
        if let Some(conn) = self.conn {
            conn.emit_raw(event, &data.to_string(), &self.worker.stats);
        }
    }

    /// Sends `event` to this client with `json` as its `data`, written as is: `json`
    /// must be one valid JSON value (such as `data_raw()`), or the client gets a broken
    /// envelope.
    pub fn emit_raw(&self, event: &str, json: &str) {
        if let Some(conn) = self.conn {
            conn.emit_raw(event, json, &self.worker.stats);
        }
    }

    /// Joins a room; `false` when a limit refused it.
    pub fn join(&self, room: &str) -> bool {
        let Some(conn) = self.conn else { return false };
        match self.worker.join(conn, room) {
            Ok(barrier) => {
                if barrier.is_some() {
                    *self.pending.borrow_mut() = barrier;
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn leave(&self, room: &str) -> bool {
        self.conn.is_some_and(|conn| self.worker.leave(conn, room))
    }

    pub fn rooms(&self) -> Vec<String> {
        self.conn
            .map(|c| c.rooms.borrow().iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Sends to every client, this one too unless `exclude_self`.
    pub fn broadcast(&self, event: &str, data: &Value, exclude_self: bool) {
        let msg = Outbound::event(event, &data.to_string(), None);
        let exclude = if exclude_self {
            self.conn.map(|c| c.id)
        } else {
            None
        };
        for w in 0..self.worker.shared.mesh.workers() {
            if w == self.worker.index {
                self.worker.deliver_all_local(&msg, exclude);
            } else {
                self.worker.shared.mesh.send(
                    w,
                    MeshMsg::All {
                        msg: Arc::clone(&msg),
                        exclude,
                    },
                );
            }
        }
    }

    /// Sends to every member of `room` (this client too, if a member).
    pub fn to(&self, room: &str, event: &str, data: &Value) {
        self.worker.publish_room(
            room,
            Outbound::event(event, &data.to_string(), Some(room)),
            None,
        );
    }

    pub fn set(&self, key: &str, value: Value) {
        if let Some(conn) = self.conn {
            self.worker.set_meta(conn, key, value);
        }
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.conn.and_then(|c| self.worker.meta(c, key))
    }

    /// The server handle, for anything beyond this client.
    pub fn server(&self) -> ServerHandle {
        ServerHandle(Arc::clone(&self.worker.shared))
    }
}
