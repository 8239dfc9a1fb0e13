//! What the workers and every handle share: the registered handlers ([`Handlers`]) and
//! the server-wide state ([`Shared`]: configuration, mesh, directories, counters,
//! admission). Kept apart from the public API so the workers depend on this, not on
//! `api`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;
use stellar_protocol::ws::handshake::Request;

use crate::auth::AuthUser;
use crate::config::Config;
use crate::connection::ClientInfo;
use crate::ctx::Ctx;
use crate::mesh::Mesh;
use crate::rate_limit::RateLimits;
use crate::rooms::Directories;
use crate::stats::WorkerStats;
use crate::timers::Timers;

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
type BinaryFn = dyn Fn(&Ctx<'_>, &[u8]) + Send + Sync;
type AckFn = dyn Fn(&Ctx<'_>) -> Result<Value, AckError> + Send + Sync;
type RawAckFn = dyn Fn(&Ctx<'_>) -> Result<String, AckError> + Send + Sync;
type MiddlewareFn = dyn Fn(&ClientInfo) -> Result<(), String> + Send + Sync;
type RoomEventFn = dyn Fn(&ClientInfo, &str, &str) -> bool + Send + Sync;
type ShutdownFn = dyn Fn(&str, bool) + Send + Sync;
type RateLimitFn = dyn Fn(&ClientInfo, &str) -> bool + Send + Sync;
type AuthFn = dyn Fn(&Request) -> Result<AuthUser, String> + Send + Sync;
type AuthorizeJoinFn = dyn Fn(&ClientInfo, Option<&AuthUser>, &str) -> bool + Send + Sync;

/// A request handler: one that answers a value (`on_ack`), or one that answers JSON
/// text written into the reply as is (`on_ack_raw`: no tree built, none serialized).
pub(crate) enum Ack {
    Value(Arc<AckFn>),
    Raw(Arc<RawAckFn>),
}

impl Ack {
    /// Runs the handler: its result as JSON text, or its error.
    pub(crate) fn answer(&self, ctx: &Ctx<'_>) -> Result<String, AckError> {
        match self {
            Self::Value(f) => f(ctx).map(|value| value.to_string()),
            Self::Raw(f) => f(ctx),
        }
    }
}

/// Every registered handler, shared read-only by the workers.
#[derive(Default)]
pub struct Handlers {
    pub(crate) events: ahash::HashMap<String, Vec<Arc<EventFn>>>,
    pub(crate) all: Vec<Arc<EventFn>>,
    /// Binary events (SPEC §3.1 binary frames), given their payload bytes.
    pub(crate) binary: ahash::HashMap<String, Vec<Arc<BinaryFn>>>,
    pub(crate) connection: Vec<Arc<EventFn>>,
    pub(crate) disconnect: Vec<Arc<EventFn>>,
    pub(crate) acks: ahash::HashMap<String, Ack>,
    pub(crate) middleware: Vec<Arc<MiddlewareFn>>,
    pub(crate) room_event: Option<Arc<RoomEventFn>>,
    pub(crate) shutdown: Vec<Arc<ShutdownFn>>,
    pub(crate) rate_limit_exceeded: Option<Arc<RateLimitFn>>,
    pub(crate) auth: Option<Arc<AuthFn>>,
    pub(crate) authorize_join: Option<Arc<AuthorizeJoinFn>>,
}

/// State shared by the workers and every handle.
pub struct Shared {
    pub(crate) config: RwLock<Arc<Config>>,
    pub(crate) handlers: Handlers,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) dirs: Arc<Directories>,
    pub(crate) stats: Vec<Arc<WorkerStats>>,
    /// Connections admitted, against `max_connections` (changes on connect and close
    /// only, never per message).
    pub(crate) admitted: AtomicUsize,
    pub(crate) port: u16,
    pub(crate) tcp_port: u16,
    pub(crate) started: Instant,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    /// The `every` timers: one thread for all of them, stopped with the server.
    pub(crate) timers: Timers,
    /// The current overrides; workers hold a copy, replaced through the mesh.
    pub(crate) rate_limits: RwLock<Arc<RateLimits>>,
    /// Open connections per remote address, against `max_connections_per_ip`
    /// (touched on connect and close only).
    pub(crate) per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// The TLS setup when `tls_cert` and `tls_key` are set.
    pub(crate) tls: Option<crate::tls::Tls>,
    /// The other nodes, when `redis_url` is set.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Room history of a single node (a cluster keeps it in Redis).
    pub(crate) history: crate::history::Local,
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

    /// This node's id in the cluster; 0 for a single node.
    pub(crate) fn node(&self) -> u32 {
        self.cluster.as_ref().map_or(0, |c| c.node)
    }

    /// The members of `room` on every worker and every node.
    pub(crate) fn room_members(&self, room: &str) -> Vec<crate::mesh::ClientId> {
        let mut members = self.dirs.members(room);
        if let Some(cluster) = &self.cluster {
            members.extend(cluster.remote_members(room));
            members.sort_unstable();
        }
        members
    }

    /// Every room with members anywhere, with its member count, by name.
    pub(crate) fn rooms(&self) -> Vec<(String, usize)> {
        let mut rooms = self.dirs.rooms();
        if let Some(cluster) = &self.cluster {
            let mut all: HashMap<String, usize> = rooms.into_iter().collect();
            for (room, n) in cluster.remote_rooms() {
                *all.entry(room).or_default() += n;
            }
            rooms = all.into_iter().collect();
            rooms.sort_unstable();
        }
        rooms
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
