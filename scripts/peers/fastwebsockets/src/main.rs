//! The fastest Rust peer Stellar is measured against: a multi-threaded tokio runtime,
//! `fastwebsockets` upgraded through hyper 1, one reader task per connection plus a
//! writer task fed by an mpsc channel, and a shared `RwLock` room map of senders.
//!
//! The writer drains everything queued into a `BufWriter` and flushes once, so a burst
//! of frames costs one `write` syscall. A relay is serialized once (a binary relay is
//! not copied at all: the received payload is frozen into `Bytes`) and the same `Bytes`
//! is cloned into each member's channel. JSON is parsed into borrowed `RawValue`s so
//! `data` is passed through verbatim instead of being rebuilt.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One outgoing frame; the payload is shared between every recipient of a relay.
#[derive(Clone)]
struct Out {
    opcode: OpCode,
    payload: Bytes,
}

impl Out {
    fn text(payload: impl Into<Bytes>) -> Self {
        Self {
            opcode: OpCode::Text,
            payload: payload.into(),
        }
    }
}

type Tx = mpsc::UnboundedSender<Out>;

/// Room name -> members (connection id -> its writer's channel).
#[derive(Default)]
struct State {
    rooms: RwLock<HashMap<String, HashMap<u64, Tx>>>,
}

/// The envelope fields, borrowed from the frame. Each is kept raw (a JSON `null` is
/// `Some("null")`, like `Value::get`) and interpreted where used.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    room: Option<&'a RawValue>,
    #[serde(rename = "_ackName", borrow, default, deserialize_with = "raw")]
    ack_name: Option<&'a RawValue>,
    #[serde(rename = "_correlationId", borrow, default, deserialize_with = "raw")]
    correlation: Option<&'a RawValue>,
}

/// The JSON header of a binary message.
#[derive(Deserialize)]
struct BinaryHeader<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    room: Option<&'a RawValue>,
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The value of a raw JSON string (borrowed unless it has escapes); `None` otherwise.
fn as_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    if text.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        text.get(1..text.len() - 1).map(Cow::Borrowed)
    }
}

/// `s` as a quoted JSON string.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    eprintln!("fastwebsockets peer on ws://127.0.0.1:{port}/");
    let state = Arc::new(State::default());
    let next = Arc::new(AtomicU64::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (state, next) = (Arc::clone(&state), Arc::clone(&next));
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let id = next.fetch_add(1, Ordering::Relaxed);
                accept(req, id, Arc::clone(&state))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers the HTTP upgrade and spawns the connection once hyper hands the socket over.
async fn accept(
    mut req: Request<Incoming>,
    id: u64,
    state: Arc<State>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgrade) = upgrade::upgrade(&mut req)?;
    tokio::spawn(serve(upgrade, id, state));
    Ok(response)
}

async fn serve(upgrade: UpgradeFut, id: u64, state: Arc<State>) {
    let Ok(ws) = upgrade.await else { return };
    let (read, mut write) = ws.split(|io| {
        let (read, write) = tokio::io::split(io);
        (read, BufWriter::new(write))
    });
    let mut read = FragmentCollectorRead::new(read);
    // Every frame (header and payload) is copied into the BufWriter as is: no
    // per-frame syscall, one write when the queue is drained and flushed.
    write.set_writev_threshold(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if send(&mut write, first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if send(&mut write, more).await.is_err() {
                    return;
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    let welcome = format!(
        r#"{{"event":"welcome","data":{{"id":"f-{id}","message":"Connected","context":"api"}}}}"#
    );
    let _ = tx.send(Out::text(welcome));
    // Pongs and the close reply go through the writer, in order with everything else.
    let mut obligated = |frame: Frame<'_>| {
        let _ = tx.send(Out {
            opcode: frame.opcode,
            payload: into_bytes(frame.payload),
        });
        std::future::ready(Ok::<(), Infallible>(()))
    };
    let mut joined: HashSet<String> = HashSet::new();
    while let Ok(frame) = read.read_frame(&mut obligated).await {
        match frame.opcode {
            OpCode::Text => on_text(&state, id, &tx, &mut joined, &frame.payload),
            OpCode::Binary => {
                let bytes = into_bytes(frame.payload);
                if let Some(room) = binary_room(&bytes)
                    && joined.contains(room.as_ref())
                {
                    let out = Out {
                        opcode: OpCode::Binary,
                        payload: bytes.clone(),
                    };
                    relay(&state, &room, id, out);
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    let mut rooms = state.rooms.write().unwrap();
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    // The writer ends once the last sender (ours; the rooms' are gone) is dropped.
}

/// Writes one frame into the writer's buffer.
async fn send<S>(write: &mut WebSocketWrite<S>, out: Out) -> Result<(), WebSocketError>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    write
        .write_frame(Frame::new(
            true,
            out.opcode,
            None,
            Payload::Borrowed(&out.payload),
        ))
        .await
}

/// The payload without copying when it is a slice of the read buffer.
fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(bytes) => bytes.freeze(),
        other => Bytes::from(Vec::from(other)),
    }
}

/// The room named by a binary message's header: `[u32 BE header len][header JSON][bytes]`.
fn binary_room(message: &[u8]) -> Option<Cow<'_, str>> {
    let len = u32::from_be_bytes(message.get(..4)?.try_into().ok()?) as usize;
    let header = message.get(4..4usize.checked_add(len)?)?;
    let header: BinaryHeader = serde_json::from_slice(header).ok()?;
    as_str(header.room)
}

fn on_text(state: &State, id: u64, tx: &Tx, joined: &mut HashSet<String>, text: &[u8]) {
    let msg: Inbound = match serde_json::from_slice(text) {
        Ok(msg) => msg,
        // Valid JSON that is not an envelope (an array, a string...) is ignored.
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() => return,
        Err(_) => {
            let _ = tx.send(Out::text(
                r#"{"event":"error","data":{"code":"bad_json","message":"invalid JSON"}}"#,
            ));
            return;
        }
    };
    let event = as_str(msg.event).unwrap_or_default();
    let data = msg.data.unwrap_or(RawValue::NULL).get();
    if let Some(correlation) = msg.correlation {
        let name = as_str(msg.ack_name).unwrap_or_else(|| event.clone());
        let (name, correlation) = (quote(&name), correlation.get());
        let reply = if name == r#""echo""# {
            format!(
                r#"{{"event":{name},"data":{data},"_isAck":true,"_correlationId":{correlation}}}"#
            )
        } else {
            format!(
                r#"{{"event":{name},"error":{{"code":"unknown_action","message":"no handler"}},"_isAck":true,"_correlationId":{correlation}}}"#
            )
        };
        let _ = tx.send(Out::text(reply));
        return;
    }
    let room = as_str(msg.room);
    match (event.as_ref(), room) {
        ("join-room", _) => {
            let name = as_str(msg.data).unwrap_or_default().into_owned();
            let mut rooms = state.rooms.write().unwrap();
            rooms
                .entry(name.clone())
                .or_default()
                .insert(id, tx.clone());
            drop(rooms);
            let _ = tx.send(Out::text(format!(
                r#"{{"event":"joined-room","data":{}}}"#,
                quote(&name)
            )));
            joined.insert(name);
        }
        ("leave-room", _) => {
            let name = as_str(msg.data).unwrap_or_default();
            let mut rooms = state.rooms.write().unwrap();
            if let Some(members) = rooms.get_mut(name.as_ref()) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.remove(name.as_ref());
                }
            }
            drop(rooms);
            joined.remove(name.as_ref());
            let _ = tx.send(Out::text(format!(
                r#"{{"event":"left-room","data":{}}}"#,
                quote(&name)
            )));
        }
        ("ping", _) => {
            let _ = tx.send(Out::text(format!(r#"{{"event":"pong","data":{data}}}"#)));
        }
        ("echo", None) => {
            let _ = tx.send(Out::text(format!(r#"{{"event":"echo","data":{data}}}"#)));
        }
        (_, Some(room)) if joined.contains(room.as_ref()) => {
            let out = format!(
                r#"{{"event":{},"data":{data},"room":{}}}"#,
                quote(&event),
                quote(&room)
            );
            relay(state, &room, id, Out::text(out));
        }
        (_, Some(room)) => {
            let err = format!(
                r#"{{"event":"error","data":{{"code":"not_member","message":{}}}}}"#,
                quote(&room)
            );
            let _ = tx.send(Out::text(err));
        }
        _ => {}
    }
}

/// Sends the same frame to every other member of `room`.
fn relay(state: &State, room: &str, from: u64, out: Out) {
    let rooms = state.rooms.read().unwrap();
    let Some(members) = rooms.get(room) else {
        return;
    };
    for (_, tx) in members.iter().filter(|(member, _)| **member != from) {
        let _ = tx.send(out.clone());
    }
}
