//! Who gets in and what they may do (SPEC §3.4, §3.5): connection caps, authentication,
//! room grants, middleware and the connect/disconnect hooks.
//!
//! Kept apart from the session (which only asks) and the worker (which only holds
//! state): every admission rule is here, for both protocols.

use std::net::SocketAddr;
use std::rc::Rc;

use stellar_protocol::ErrorCode;
use stellar_protocol::event::reserved;
use stellar_protocol::ws::CloseCode;
use stellar_protocol::ws::handshake::Request;

use crate::auth::{self, AuthError, AuthUser};
use crate::connection::Conn;
use crate::ctx::Ctx;
use crate::outbound::Proto;
use crate::worker::Worker;

/// Why a connection was not admitted (SPEC §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached, or shutting down.
    ServerFull,
    /// `max_connections_per_ip` reached for the client's address.
    TooManyFromIp,
}

impl Refusal {
    /// The close reason (WebSocket 1008) or ERROR message (TCP).
    pub fn reason(self) -> &'static str {
        match self {
            Self::ServerFull => "Server full",
            Self::TooManyFromIp => "Too many connections",
        }
    }

    /// The TCP ERROR frame's code.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::ServerFull => ErrorCode::ServerFull,
            Self::TooManyFromIp => ErrorCode::TooManyConnections,
        }
    }
}

/// Whether clients must authenticate (an `auth` hook or a `jwt_secret`).
pub fn is_auth_on(worker: &Worker) -> bool {
    worker.handlers().auth.is_some() || worker.config().jwt_secret.is_some()
}

/// Authenticates an upgrade (or HTTP) request: the `auth` hook if set, else the JWT it
/// carries. `Ok(None)`: no credentials yet (an `auth` message may follow).
pub fn authenticate(worker: &Worker, request: &Request) -> Result<Option<AuthUser>, AuthError> {
    if let Some(hook) = &worker.handlers().auth {
        return hook(request).map(Some).map_err(AuthError::Invalid);
    }
    let Some(secret) = worker.config().jwt_secret.clone() else {
        return Ok(None);
    };
    match auth::token_from(request) {
        Some(token) => auth::verify(&secret, &token).map(Some),
        None => Ok(None),
    }
}

/// Whether `conn` may join `room`: the `authorize_join` hook, else the user's grant when
/// auth is on, else yes.
pub fn may_join(worker: &Worker, conn: &Conn, room: &str) -> bool {
    let user = conn.user();
    if let Some(hook) = &worker.handlers().authorize_join {
        return hook(&conn.client_info(), user.as_deref(), room);
    }
    !is_auth_on(worker) || user.as_ref().is_some_and(|u| u.is_granted(room))
}

/// Admits a connection under `max_connections` and `max_connections_per_ip`, or says
/// why not.
pub fn register(
    worker: &Rc<Worker>,
    proto: Proto,
    remote: SocketAddr,
    fd: i32,
    user: Option<AuthUser>,
) -> Result<Rc<Conn>, Refusal> {
    let config = worker.config();
    let shared = &worker.shared;
    if worker.is_shutting_down() || !shared.try_admit(config.max_connections) {
        return Err(Refusal::ServerFull);
    }
    if !shared.admit_ip(remote.ip(), config.max_connections_per_ip) {
        shared.release_admission();
        return Err(Refusal::TooManyFromIp);
    }
    let id = worker.next_id();
    let conn = Rc::new(Conn::new(id, proto, remote, fd).with_auth(is_auth_on(worker), user));
    worker.add_conn(&conn);
    if let Some(mut dir) = shared.dirs.lock(worker.index) {
        dir.clients.insert(id.seq);
    }
    let stats = &worker.stats;
    stats.total_connections.add(1);
    stats.active_connections.add(1);
    match proto {
        Proto::Ws => stats.ws_connections.add(1),
        Proto::Tcp => stats.tcp_connections.add(1),
    }
    Ok(conn)
}

/// Removes a connection: its rooms, its admission, then `on_disconnect` (SPEC §4: rooms
/// are already cleaned when the hook runs).
pub fn unregister(worker: &Rc<Worker>, conn: &Rc<Conn>) {
    worker.remove_conn(conn);
    let shared = &worker.shared;
    if let Some(mut dir) = shared.dirs.lock(worker.index) {
        dir.clients.remove(&conn.id.seq);
    }
    shared.release_admission();
    shared.release_ip(conn.remote().ip());
    let stats = &worker.stats;
    stats.active_connections.sub(1);
    match conn.proto {
        Proto::Ws => stats.ws_connections.sub(1),
        Proto::Tcp => stats.tcp_connections.sub(1),
    }
    let event = reserved::DISCONNECT;
    let ctx = Ctx::new(worker, Some(conn), &event, serde_json::Value::Null);
    for hook in &worker.handlers().disconnect {
        hook(&ctx);
    }
}

/// Runs middleware then `on_connection`; false when middleware refused the client (it
/// is then being closed with 1008 and the reason).
pub fn run_hooks(worker: &Rc<Worker>, conn: &Rc<Conn>) -> bool {
    for middleware in &worker.handlers().middleware {
        if let Err(reason) = middleware(&conn.client_info()) {
            conn.close(CloseCode::POLICY_VIOLATION, &reason);
            return false;
        }
    }
    let event = reserved::CONNECTION;
    let ctx = Ctx::new(worker, Some(conn), &event, serde_json::Value::Null);
    for hook in &worker.handlers().connection {
        hook(&ctx);
    }
    true
}

/// Closes `conn` with 1008 "Authentication required" unless it authenticates within
/// `connect_timeout`.
pub fn require_auth_in_time(worker: &Worker, conn: &Rc<Conn>) {
    let conn = Rc::clone(conn);
    let timeout = worker.config().connect_timeout;
    monoio::spawn(async move {
        monoio::time::sleep(timeout).await;
        if !conn.is_authenticated() {
            conn.close(CloseCode::POLICY_VIOLATION, "Authentication required");
        }
    });
}
