//! StellarStack's real-time flow on the library API (issue 14): the page's session
//! cookie buys a short-lived JWT at `GET /api/ws/token` (the `auth` hook reads the
//! cookie; the server signs with `jwt_secret`), the client connects with that token
//! (`tokenUrl` in the JavaScript client), `subscribe`s to the game servers it may see
//! (the token's `rooms` claim), pings, and every subscriber gets a `server:sync`
//! snapshot of its server every 5 s.
//!
//! ```text
//! cargo run --release -p stellar-server --example stellarstack -- --port 3000 --jwt-secret change-me
//! ```
//! The sessions are a fixed table here (`SESSIONS`); a real panel looks them up in its
//! session store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use stellar_server::auth::{self, AuthUser};
use stellar_server::config::Args;
use stellar_server::{Request, Server};

/// Session cookie → user id and the game servers (rooms) the user may subscribe to.
const SESSIONS: &[(&str, &str, &[&str])] = &[
    ("session-ada", "ada", &["server:1", "server:2"]),
    ("session-bob", "bob", &["server:2"]),
];

/// How often subscribers get a `server:sync` snapshot.
const SYNC_PERIOD: Duration = Duration::from_secs(5);

/// The `auth` hook: a token (query, `Authorization: Bearer` or cookie) on the socket, or
/// the session cookie for `GET /api/ws/token`.
fn authenticate(secret: &str, request: &Request) -> Result<AuthUser, String> {
    if let Some(token) = auth::token_from(request) {
        return auth::verify(secret, &token).map_err(|e| e.to_string());
    }
    let session = request.cookie("session").ok_or("no session cookie")?;
    let (_, user, rooms) = SESSIONS
        .iter()
        .find(|(cookie, _, _)| *cookie == session)
        .ok_or("unknown session")?;
    Ok(AuthUser {
        id: (*user).to_owned(),
        claims: json!({ "sub": user, "rooms": rooms }),
    })
}

fn main() -> Result<(), String> {
    let config = Args::config_from_command_line()?;
    let secret = config
        .jwt_secret
        .clone()
        .ok_or("stellarstack needs --jwt-secret (or STELLAR_JWT_SECRET)")?;
    let server = Server::builder()
        .config(config)
        .auth(move |request| authenticate(&secret, request))
        .start()
        .map_err(|e| e.to_string())?;
    let _sync = server.handle().every(SYNC_PERIOD, |handle| {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for room in handle.rooms().iter().filter(|r| r.starts_with("server:")) {
            let snapshot = json!({
                "server": room, "status": "running", "subscribers": handle.room_members(room).len(),
                "at": at,
            });
            let _ = handle.to(room, "server:sync", &snapshot);
        }
    });
    println!(
        "stellarstack: ws://127.0.0.1:{}/ws, token at /api/ws/token",
        server.handle().port()
    );
    server.wait();
    Ok(())
}
