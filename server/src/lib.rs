//! Stellar: a thread-per-core real-time messaging server (WebSocket and a binary TCP
//! protocol on one instance), as a library.
//!
//! - [`api`]: the public API: [`Server::builder`], [`ServerHandle`].
//! - [`ctx`]: [`Ctx`], what a handler gets and acts through.
//! - [`auth`]: JWT verification and issuing, room grants.
//! - [`config`]: the one [`Config`] struct, from TOML, `STELLAR_*` and flags.
//! - `event_loop`: one pinned thread: driver choice, listeners, heartbeat.
//! - `worker`: a worker's state and the narrow interface every sender acts through.
//! - `session`: one connection's life: handshake, admission, read loop, cleanup.
//! - `admission`: connection caps, authentication, room grants, connect hooks.
//! - `inbox`: the loop applying cross-core work from the mesh.
//! - `shared`: the handlers and server-wide state the workers and handles share.
//! - `connection`: a client's identity, bounded write queue and writer task.
//! - `inbound`: WebSocket messages and TCP frames brought to one shape.
//! - `router`: an inbound message to reserved verb, handler or room relay.
//! - `rooms`: [`Membership`](rooms::Membership), the one owner of who is in which room.
//! - `write_queue`: frames waiting for a connection's writer and the batch it writes
//!   (public, hidden, for `benches/benches/queue.rs`).
//! - `mesh`: the lock-free cross-core queues and their once-per-batch wake-up.
//! - `outbound`: a message to many, framed once per protocol and shared.
//! - `http`: health, stats, metrics, static files and HTTP actions on the same port.
//! - `assets`: the JavaScript client and the demo page, built into the binary.
//! - `files`: `public_dir` files for `/public/` and `file`, capped and read off the loop.
//! - [`rate_limit`]: token buckets and the run-time table of overrides.
//! - [`stats`]: per-worker counters summed on read.
//! - `timers`: the one timer thread behind `every`, a heap of deadlines.
//!
//! ```no_run
//! use stellar_server::{Config, Server, AckError};
//! use serde_json::json;
//!
//! let server = Server::builder()
//!     .config(Config { port: 3000, ..Config::default() })
//!     .on("chat", |ctx| {
//!         // `Err` only for an event name outside SPEC §3.2's rule.
//!         let _ = ctx.to("lobby", "chat", ctx.data());
//!     })
//!     .on_ack("getUser", |ctx| match ctx.data().get("id") {
//!         Some(id) => Ok(json!({ "id": id, "name": "Ada" })),
//!         None => Err(AckError::new("bad_request", "id is required")),
//!     })
//!     .start()
//!     .expect("ports are free");
//! server.wait();
//! ```

mod admission;
pub mod api;
mod assets;
pub mod auth;
pub(crate) mod cluster;
mod compression;
pub mod config;
mod connection;
pub mod ctx;
mod event_loop;
mod fanout;
mod files;
pub(crate) mod history;
mod http;
mod idle;
mod inbound;
mod inbox;
mod mesh;
mod origin;
mod outbound;
pub mod rate_limit;
mod recovery;
mod rooms;
mod router;
mod session;
mod shared;
pub mod stats;
mod timers;
pub mod tls;
mod worker;
#[doc(hidden)]
pub mod write_queue;

pub use api::{
    AckError, ReloadTlsError, SendError, Server, ServerBuilder, ServerHandle, StartError, Timer,
};
pub use auth::AuthUser;
pub use config::{Config, Driver, SlowConsumerPolicy};
pub use connection::ClientInfo;
pub use ctx::Ctx;
pub use stats::Stats;
pub use stellar_protocol::ws::handshake::Request;
pub use stellar_protocol::{EventName, InvalidEvent};
