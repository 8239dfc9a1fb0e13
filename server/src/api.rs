//! The public library API (SPEC §4): the builder, the running [`Server`], the
//! thread-safe [`ServerHandle`] and the per-client [`Ctx`] handlers receive.
//!
//! Handlers are `Fn` closures shared by every worker; each call runs on the worker that
//! owns the client. The handle works from any thread: it only pushes finished messages
//! into the workers' inboxes and reads their counters and directories.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use stellar_protocol::event::reserved;
use stellar_protocol::ws::handshake::Request;
use stellar_protocol::{EventName, InvalidEvent};
use tracing::info;

use crate::auth::AuthUser;
use crate::config::{Config, ConfigError};
use crate::connection::ClientInfo;
use crate::ctx::Ctx;
use crate::event_loop;
use crate::fanout;
use crate::mesh::{ClientId, Mesh, MeshMsg};
use crate::outbound::Outbound;
use crate::rate_limit::{Limit, RateLimits};
use crate::rooms::Directories;
pub use crate::shared::AckError;
use crate::shared::{Ack, Handlers, Shared};
use crate::stats::{Stats, WorkerStats};
pub use crate::timers::Timer;
use crate::timers::Timers;
use crate::tls::Tls;

/// Why a message could not be sent (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The event name breaks the rule of SPEC §3.2 (1-256 bytes of `[A-Za-z0-9-./:_]`).
    #[error(transparent)]
    InvalidEvent(#[from] InvalidEvent),
    /// The id is not a client id (`<worker>-<seq>`).
    #[error("`{0}` is not a client id")]
    InvalidClientId(String),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A handler was registered under a name no client could send (SPEC §3.2).
    #[error("handler `{name}`: {source}")]
    InvalidEvent { name: String, source: InvalidEvent },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid listen address: {0}")]
    Address(String),
    #[error("starting the timer thread: {0}")]
    Timers(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("starting the cluster: {0}")]
    Cluster(std::io::Error),
}

/// Why [`ServerHandle::reload_tls`] kept the old certificate.
#[derive(Debug, thiserror::Error)]
pub enum ReloadTlsError {
    #[error("TLS is off (no `tls_cert` and `tls_key`)")]
    Off,
    #[error(transparent)]
    Load(#[from] crate::tls::TlsError),
}

/// Builds a server: configuration and handlers, then [`ServerBuilder::start`].
#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    handlers: Handlers,
    /// A handler name that breaks the rule, reported by `start`.
    invalid: Option<StartError>,
}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A handler name must be an event name; the first one that is not fails `start`.
    fn check_name(&mut self, name: &str) {
        if let (Err(source), None) = (EventName::new(name), &self.invalid) {
            self.invalid = Some(StartError::InvalidEvent {
                name: name.to_owned(),
                source,
            });
        }
    }

    /// Runs `f` for every `event` a client emits.
    pub fn on(mut self, event: &str, f: impl Fn(&Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.check_name(event);
        self.handlers
            .events
            .entry(event.to_owned())
            .or_default()
            .push(Arc::new(f));
        self
    }

    /// Runs `f` with the payload of every binary event `event` a client sends (SPEC
    /// §3.1 binary frames; game inputs, audio); one sent to a room is relayed too.
    pub fn on_binary(
        mut self,
        event: &str,
        f: impl Fn(&Ctx<'_>, &[u8]) + Send + Sync + 'static,
    ) -> Self {
        self.check_name(event);
        self.handlers
            .binary
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
        self,
        name: &str,
        f: impl Fn(&Ctx<'_>) -> Result<Value, AckError> + Send + Sync + 'static,
    ) -> Self {
        self.ack(name, Ack::Value(Arc::new(f)))
    }

    /// Answers requests named `name` with JSON text written into the reply as is, such
    /// as `ctx.data_raw()` passed back or a reply serialized by the handler itself: no
    /// value is built or serialized on the way. The text must be one valid JSON value
    /// (as for [`Ctx::emit_raw`]), or the client gets a broken envelope. Replaces an
    /// `on_ack` handler of the same name, and the other way round.
    pub fn on_ack_raw(
        self,
        name: &str,
        f: impl Fn(&Ctx<'_>) -> Result<String, AckError> + Send + Sync + 'static,
    ) -> Self {
        self.ack(name, Ack::Raw(Arc::new(f)))
    }

    /// Registers request handler `name`, replacing one of either kind.
    fn ack(mut self, name: &str, handler: Ack) -> Self {
        self.check_name(name);
        self.handlers.acks.insert(name.to_owned(), handler);
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
        if let Some(invalid) = self.invalid {
            return Err(invalid);
        }
        self.config.validate()?;
        let tls = Tls::from_paths(
            self.config.tls_cert.as_deref(),
            self.config.tls_key.as_deref(),
        )?;
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
        let mesh = Mesh::new(workers);
        let stats: Vec<Arc<WorkerStats>> = (0..workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let cluster = match self.config.redis_url {
            Some(_) => Some(
                crate::cluster::Cluster::start(&self.config, Arc::clone(&mesh), stats.clone())
                    .map_err(StartError::Cluster)?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(self.config)),
            handlers: self.handlers,
            mesh,
            dirs: Arc::new(Directories::new(workers)),
            stats,
            admitted: AtomicUsize::new(0),
            port,
            tcp_port,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            rate_limits: RwLock::default(),
            per_ip: Mutex::default(),
            threads: Mutex::new(Vec::new()),
            timers: Timers::new(),
            tls,
            cluster,
            history: crate::history::Local::default(),
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
                    event_loop::run(index, shared, ws, tcp);
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
    // Every accepted socket inherits it (Linux copies the listener's options into each
    // child): one setsockopt here instead of one per connection.
    socket::setsockopt(fd, sockopt::TcpNoDelay, &true)?;
    socket::bind(fd, &SockaddrStorage::from(addr))?;
    socket::listen(fd, 4096)?;
    // SAFETY: `fd` was just created by socket(2) above, is open, and is owned by no
    // other object; the listener takes sole ownership of it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    listener.set_nonblocking(true)?;
    Ok(listener)
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
    /// Sends `event` with `data` to every client (of every node).
    pub fn broadcast(&self, event: &str, data: &Value) -> Result<(), SendError> {
        let msg = Outbound::event(&EventName::new(event)?, &data.to_string(), None);
        fanout::all(&self.0, None, msg, None);
        Ok(())
    }

    /// Sends `event` with `data` to every member of `room`.
    pub fn to(&self, room: &str, event: &str, data: &Value) -> Result<(), SendError> {
        let msg = Outbound::event(&EventName::new(event)?, &data.to_string(), Some(room));
        self.to_room(room, msg);
        Ok(())
    }

    /// Sends `event` with `data` to one client.
    pub fn to_id(&self, id: &str, event: &str, data: &Value) -> Result<(), SendError> {
        let event = EventName::new(event)?;
        self.to_client(id, Outbound::event(&event, &data.to_string(), None))
    }

    /// Sends a binary event to every client (of every node).
    pub fn broadcast_binary(&self, event: &str, bytes: Bytes) -> Result<(), SendError> {
        let msg = Outbound::binary(&EventName::new(event)?, None, bytes);
        fanout::all(&self.0, None, msg, None);
        Ok(())
    }

    /// Sends a binary event to every member of `room`.
    pub fn to_binary(&self, room: &str, event: &str, bytes: Bytes) -> Result<(), SendError> {
        let msg = Outbound::binary(&EventName::new(event)?, Some(room), bytes);
        self.to_room(room, msg);
        Ok(())
    }

    /// Sends an `alert` `{"message"}` to one client.
    pub fn alert(&self, id: &str, message: &str) -> Result<(), SendError> {
        let data = serde_json::json!({ "message": message }).to_string();
        self.to_client(id, Outbound::event(&reserved::ALERT, &data, None))
    }

    fn to_room(&self, room: &str, msg: Arc<Outbound>) {
        let config = self.0.config();
        fanout::room(&self.0, None, &config, room, msg, None);
    }

    fn to_client(&self, id: &str, msg: Arc<Outbound>) -> Result<(), SendError> {
        let client = id
            .parse::<ClientId>()
            .map_err(|()| SendError::InvalidClientId(id.to_owned()))?;
        fanout::client(&self.0, client, msg);
        Ok(())
    }

    /// Ids of every client, or of the members of `room`, on every node. In a cluster,
    /// every client (`room` = `None`) is asked of Redis, blocking the caller for up to a
    /// second (this node's clients only when Redis does not answer): call it from a
    /// thread of your own, not from a handler. Room members come from the replica
    /// every node keeps, with no round trip.
    pub fn clients(&self, room: Option<&str>) -> Vec<String> {
        if let Some(room) = room {
            return self.room_members(room);
        }
        if let Some(all) = self
            .0
            .cluster
            .as_ref()
            .and_then(|c| c.clients(Duration::from_secs(1)))
        {
            return all;
        }
        self.0
            .dirs
            .clients(self.0.node())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn room_members(&self, room: &str) -> Vec<String> {
        self.0
            .room_members(room)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Every room with at least one member, on any node.
    pub fn rooms(&self) -> Vec<String> {
        self.0.rooms().into_iter().map(|(r, _)| r).collect()
    }

    /// Loads `tls_cert` and `tls_key` again (the `stellar` binary does on SIGHUP): new
    /// handshakes get the new certificate, established connections keep theirs, and a
    /// file that does not load leaves the old one in place.
    pub fn reload_tls(&self) -> Result<(), ReloadTlsError> {
        let tls = self.0.tls.as_ref().ok_or(ReloadTlsError::Off)?;
        tls.reload()?;
        tracing::info!("TLS certificate reloaded");
        Ok(())
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
        let mut stats = Stats::from_workers(workers, self.0.dirs.rooms().len() as u64, uptime);
        if let Some(cluster) = &self.0.cluster {
            let mut summary = cluster.summary();
            if let Some(map) = summary.as_object_mut() {
                map.insert("totalRooms".into(), self.0.rooms().len().into());
            }
            stats.cluster = Some(summary);
        }
        stats
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
    /// messages and connections; ports, workers, driver and the `redis_*` options need a
    /// restart, and a cluster's other nodes keep their own configuration.
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
        if let Some(cluster) = &self.0.cluster {
            cluster.stop();
        }
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{getsockopt, sockopt};

    /// The accept loop no longer sets TCP_NODELAY on each connection: it relies on the
    /// kernel handing the listener's setting on to every accepted socket.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
            let Ok(listener) = super::bind_reuseport(SocketAddr::new(ip, 0)) else {
                continue; // no IPv6 loopback on this machine
            };
            listener.set_nonblocking(false).expect("blocking accept");
            let addr = listener.local_addr().expect("bound");
            let _client = TcpStream::connect(addr).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            assert!(getsockopt(accepted.as_raw_fd(), sockopt::TcpNoDelay).expect("getsockopt"));
        }
    }
}
