//! The demo's chat server on the library API (issue 14): the `/demo` page and the
//! JavaScript client served by the binary, chat through the reserved `say` verb, plus
//! what a chat product adds on top: a message of the day on connect, nicknames, and a
//! `rooms` action listing the rooms with their member counts (for a room picker).
//!
//! ```text
//! cargo run --release -p stellar-server --example chat -- --port 3000
//! # open http://127.0.0.1:3000/demo in two tabs
//! ```
//! Every `stellar` option works here (`--help`); `demo` is always on.

use serde_json::{Value, json};
use stellar_server::config::Args;
use stellar_server::{AckError, Server};

fn main() -> Result<(), String> {
    let mut config = Args::config_from_command_line()?;
    config.demo = true;
    let server = Server::builder()
        .config(config)
        .on_connection(|ctx| {
            let motd = json!({"message": "Welcome to Stellar chat: pick a room and say hi."});
            let _ = ctx.emit("motd", &motd);
        })
        .on_ack("nick", |ctx| {
            match ctx.data().get("nick").and_then(Value::as_str) {
                Some(nick) if (1..=24).contains(&nick.chars().count()) => {
                    ctx.set("nick", json!(nick));
                    Ok(json!({"nick": nick}))
                }
                _ => Err(AckError::new("bad_nick", "a nick is 1 to 24 characters")),
            }
        })
        .on_ack("rooms", |ctx| {
            let server = ctx.server();
            let mut rooms: Vec<Value> = server
                .rooms()
                .into_iter()
                .map(|room| json!({"room": room, "members": server.room_members(&room).len()}))
                .collect();
            rooms.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
            Ok(json!(rooms))
        })
        .start()
        .map_err(|e| e.to_string())?;
    println!("chat: http://127.0.0.1:{}/demo", server.handle().port());
    server.wait();
    Ok(())
}
