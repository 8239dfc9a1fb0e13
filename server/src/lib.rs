//! Stellar: a thread-per-core real-time messaging server (WebSocket and a binary TCP
//! protocol on one instance), as a library.
//!
//! - [`api`]: the public API: [`Server::builder`], [`ServerHandle`], [`Ctx`].
//! - [`auth`]: JWT verification and issuing, room grants.
//! - [`config`]: the one [`Config`] struct, from TOML, `STELLAR_*` and flags.
//! - `worker`: one pinned thread with its own io_uring (or epoll) loop and listeners.
//! - `connection`: a client's identity, bounded write queue and writer task.
//! - `router`: envelope to reserved verb, handler or room relay.
//! - `rooms`: per-worker room membership and the cross-worker interest replica.
//! - `mesh`: the lock-free cross-core queues and their once-per-batch wake-up.
//! - `outbound`: a message to many, framed once per protocol and shared.
//! - `http`: health, stats, metrics, static files and HTTP actions on the same port.
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
//!     .on("chat", |ctx| ctx.to("lobby", "chat", ctx.data()))
//!     .on_ack("getUser", |ctx| match ctx.data().get("id") {
//!         Some(id) => Ok(json!({ "id": id, "name": "Ada" })),
//!         None => Err(AckError::new("bad_request", "id is required")),
//!     })
//!     .start()
//!     .expect("ports are free");
//! server.wait();
//! ```

pub mod api;
pub mod auth;
pub mod config;
mod connection;
mod http;
mod mesh;
mod outbound;
pub mod rate_limit;
mod rooms;
mod router;
pub mod stats;
mod timers;
mod worker;

pub use api::{AckError, Ctx, Server, ServerBuilder, ServerHandle, StartError, Timer};
pub use auth::AuthUser;
pub use config::{Config, Driver, SlowConsumerPolicy};
pub use connection::ClientInfo;
pub use stats::Stats;
pub use stellar_protocol::ws::handshake::Request;
