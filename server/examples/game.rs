//! An authoritative game loop on the library API (issue 14): players join `arena:*`
//! rooms and send their inputs as binary events; the server owns the world, moves every
//! player 20 times a second and sends each arena its state with `to_binary`.
//!
//! Wire format (both binary events, SPEC §3.1 binary frames):
//! - `input` (client → server, no room): 2 bytes, the direction `dx`, `dy` as `i8`.
//! - `state` (server → each arena, 20 Hz): `u32` tick, `u16` player count, then per
//!   player a `u8` id length, the id (UTF-8), and `x`, `y` as `f32`, all big-endian.
//!
//! ```text
//! cargo run --release -p stellar-server --example game -- --port 3000
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use stellar_server::Server;
use stellar_server::config::Args;

/// Ticks per second of the world.
const TICK_HZ: u32 = 20;
/// Distance a player moves per tick at full input.
const SPEED: f32 = 0.5;

#[derive(Default)]
struct Player {
    arena: String,
    x: f32,
    y: f32,
    dx: f32,
    dy: f32,
}

/// The world: players by client id. Touched by the input handlers and the tick, both
/// briefly; a game with more players would keep one world per worker.
type World = Arc<Mutex<HashMap<String, Player>>>;

fn main() -> Result<(), String> {
    let config = Args::config_from_command_line()?;
    let world: World = World::default();
    let inputs = Arc::clone(&world);
    let gone = Arc::clone(&world);
    let server = Server::builder()
        .config(config)
        .on_binary("input", move |ctx, bytes| {
            let &[dx, dy, ..] = bytes else {
                return;
            };
            let Some(arena) = ctx.rooms().into_iter().find(|r| r.starts_with("arena:")) else {
                return;
            };
            let mut players = inputs.lock().unwrap_or_else(PoisonError::into_inner);
            let player = players.entry(ctx.id().to_owned()).or_default();
            player.arena = arena;
            player.dx = f32::from(dx as i8).clamp(-1.0, 1.0);
            player.dy = f32::from(dy as i8).clamp(-1.0, 1.0);
        })
        .on_disconnect(move |ctx| {
            gone.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(ctx.id());
        })
        .start()
        .map_err(|e| e.to_string())?;
    let ticks = AtomicU32::new(0);
    let _loop = server
        .handle()
        .every(Duration::from_secs(1) / TICK_HZ, move |handle| {
            let tick = ticks.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            for (arena, state) in step(&world, tick) {
                let _ = handle.to_binary(&arena, "state", state.freeze());
            }
        });
    println!("game: ws://127.0.0.1:{}/ws", server.handle().port());
    server.wait();
    Ok(())
}

/// Moves every player one tick and encodes each arena's state.
fn step(world: &World, tick: u32) -> HashMap<String, BytesMut> {
    let mut players = world.lock().unwrap_or_else(PoisonError::into_inner);
    let mut arenas: HashMap<String, Vec<(&String, &Player)>> = HashMap::new();
    for player in players.values_mut() {
        player.x += player.dx * SPEED;
        player.y += player.dy * SPEED;
    }
    for (id, player) in players.iter() {
        arenas
            .entry(player.arena.clone())
            .or_default()
            .push((id, player));
    }
    arenas
        .into_iter()
        .map(|(arena, members)| {
            let mut out = BytesMut::with_capacity(6 + members.len() * 24);
            out.put_u32(tick);
            out.put_u16(u16::try_from(members.len()).unwrap_or(u16::MAX));
            for (id, player) in members.iter().take(usize::from(u16::MAX)) {
                let id = &id.as_bytes()[..id.len().min(255)];
                out.put_u8(id.len() as u8);
                out.put_slice(id);
                out.put_f32(player.x);
                out.put_f32(player.y);
            }
            (arena, out)
        })
        .collect()
}
