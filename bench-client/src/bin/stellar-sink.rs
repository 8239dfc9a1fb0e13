//! `stellar-sink`: the trivial server the generator's own ceiling is measured against.
//!
//! It speaks just enough of the envelope for the WebSocket scenarios (welcome,
//! join-room, room relay of text and binary events, the `echo` event and ack) and does
//! as little as a server can per message: one thread, no limits, no authentication, a
//! relayed frame built once and appended to each member's output buffer, and each
//! buffer written whole once per loop turn, so many frames leave in one write. Whatever
//! rate `stellar-bench` reaches against it is the generator's ceiling for that scenario
//! on this machine: a real server can only be measured up to that rate.
//!
//! Usage: `stellar-sink [PORT]` (default 23999), pinned to its own core with `taskset`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use stellar_protocol::binary::BinaryMessage;
use stellar_protocol::envelope::{Envelope, encode_ack_ok, encode_event};
use stellar_protocol::event::reserved;
use stellar_protocol::ws::frame::{encode_server, encode_server_into};
use stellar_protocol::ws::handshake::{HeadLimits, Request, reject};
use stellar_protocol::ws::{DecoderConfig, Message, MessageDecoder, OpCode};

/// One connection's pending output and the waker of its writer task.
#[derive(Default)]
struct Outbox {
    buf: BytesMut,
    waiting: Option<std::task::Waker>,
    closed: bool,
}

type Peer = Rc<RefCell<Outbox>>;

#[derive(Default)]
struct Rooms {
    members: HashMap<String, Vec<(u64, Peer)>>,
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(23999);
    // The ring Stellar's workers use (cooperative task work, server/src/event_loop.rs),
    // so that the floor is measured on the same runtime as the server.
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .build()
    };
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun();
    let mut rt = build(coop).or_else(|_| build(io_uring::IoUring::builder()))?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        eprintln!("stellar-sink on ws://127.0.0.1:{port}/");
        let rooms = Rc::new(RefCell::new(Rooms::default()));
        let mut next = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            next += 1;
            monoio::spawn(serve(stream, next, Rc::clone(&rooms)));
        }
    })
}

/// Queues a message to one connection.
fn push(peer: &Peer, opcode: OpCode, payload: &[u8]) {
    let mut frame = BytesMut::new();
    encode_server_into(&mut frame, opcode, payload);
    push_frame(peer, &frame);
}

/// Appends an encoded frame to a connection's buffer and wakes its writer.
fn push_frame(peer: &Peer, frame: &[u8]) {
    let mut out = peer.borrow_mut();
    if out.closed {
        return;
    }
    out.buf.extend_from_slice(frame);
    if let Some(w) = out.waiting.take() {
        w.wake();
    }
}

async fn serve(mut stream: TcpStream, id: u64, rooms: Rc<RefCell<Rooms>>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let request = loop {
        let Some(got) = read_more(&mut stream, buf).await else {
            return;
        };
        buf = got;
        match Request::parse(&buf, &HeadLimits::default()) {
            Ok(Some(req)) => break req,
            Ok(None) => {}
            Err(e) => {
                let _ = stream.write_all(reject(&e)).await;
                return;
            }
        }
    };
    let response = match request.websocket_upgrade() {
        Ok(up) => up.response(),
        Err(e) => reject(&e),
    };
    let head_len = request.head_len;
    drop(request);
    if stream.write_all(response).await.0.is_err() {
        return;
    }
    let _ = buf.split_to(head_len);
    let (mut reader, mut writer) = stream.into_split();
    let me: Peer = Rc::default();
    let welcome = format!(r#"{{"id":"s-{id}","message":"Connected","context":"api"}}"#);
    push(
        &me,
        OpCode::Text,
        &encode_event(&reserved::WELCOME, &welcome, None),
    );
    let out = Rc::clone(&me);
    monoio::spawn(async move {
        loop {
            let chunk = std::future::poll_fn(|cx| {
                let mut o = out.borrow_mut();
                if o.closed {
                    return std::task::Poll::Ready(None);
                }
                if o.buf.is_empty() {
                    o.waiting = Some(cx.waker().clone());
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Some(o.buf.split().freeze()))
            })
            .await;
            let Some(chunk) = chunk else { return };
            if writer.write_all(chunk).await.0.is_err() {
                out.borrow_mut().closed = true;
                return;
            }
        }
    });
    let mut joined: Vec<String> = Vec::new();
    let mut decoder = MessageDecoder::new(DecoderConfig::default());
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::Text(text))) => {
                    on_text(&rooms, id, &me, &mut joined, text.as_bytes())
                }
                Ok(Some(Message::Binary(bin))) => {
                    if let Ok(msg) = BinaryMessage::parse(&bin)
                        && let Some(room) = msg.room.as_deref()
                        && joined.iter().any(|r| r == room)
                    {
                        relay(&rooms, room, id, OpCode::Binary, &bin);
                    }
                }
                Ok(Some(Message::Ping(p))) => push(&me, OpCode::Pong, &p),
                Ok(Some(Message::Pong(_))) => {}
                // Compressed: never negotiated, so never decoded.
                Ok(Some(
                    Message::Close(_) | Message::CompressedText(_) | Message::CompressedBinary(_),
                ))
                | Err(_) => break 'conn,
                Ok(None) => break,
            }
        }
        match read_more(&mut reader, buf).await {
            Some(got) => buf = got,
            None => break,
        }
    }
    {
        let mut o = me.borrow_mut();
        o.closed = true;
        if let Some(w) = o.waiting.take() {
            w.wake();
        }
    }
    let mut rooms = rooms.borrow_mut();
    for room in joined {
        if let Some(m) = rooms.members.get_mut(&room) {
            m.retain(|(member, _)| *member != id);
        }
    }
}

fn on_text(rooms: &RefCell<Rooms>, id: u64, me: &Peer, joined: &mut Vec<String>, text: &[u8]) {
    let Ok(env) = Envelope::parse(text) else {
        return;
    };
    let data = env.data.as_deref().unwrap_or("null");
    if let Some(handler) = env.ack_handler() {
        if let Some(correlation) = env.correlation_id.as_deref() {
            push(me, OpCode::Text, &encode_ack_ok(handler, correlation, data));
        }
        return;
    }
    match (env.event.as_ref(), env.room.as_deref()) {
        ("join-room", _) => {
            let name = data.trim_matches('"').to_owned();
            rooms
                .borrow_mut()
                .members
                .entry(name.clone())
                .or_default()
                .push((id, Rc::clone(me)));
            push(
                me,
                OpCode::Text,
                &encode_event(&reserved::JOINED_ROOM, data, None),
            );
            joined.push(name);
        }
        ("echo", None) => push(me, OpCode::Text, &encode_event(&env.event, data, None)),
        (_, Some(room)) if joined.iter().any(|r| r == room) => {
            let frame = encode_event(&env.event, data, Some(room));
            relay(rooms, room, id, OpCode::Text, &frame);
        }
        _ => {}
    }
}

/// Encodes the frame once and appends it to every other member's buffer (each buffer's
/// writer sends whatever accumulated in one write).
fn relay(rooms: &RefCell<Rooms>, room: &str, from: u64, opcode: OpCode, payload: &[u8]) {
    let rooms = rooms.borrow();
    let Some(members) = rooms.members.get(room) else {
        return;
    };
    let frame = encode_server(opcode, payload);
    for (member, peer) in members {
        if *member != from {
            push_frame(peer, &frame);
        }
    }
}

/// Reads more bytes after what `buf` holds; `None` at end of stream or on error.
async fn read_more<R: AsyncReadRent>(stream: &mut R, mut buf: BytesMut) -> Option<BytesMut> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice_mut(len..)).await;
    buf = slice.into_inner();
    match res {
        Ok(n) if n > 0 => Some(buf),
        _ => None,
    }
}
