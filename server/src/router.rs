//! Where an inbound message goes: a reserved verb, a handler, or a room relay
//! (SPEC §3.1-§3.3).
//!
//! WebSocket messages and TCP frames are brought to one shape ([`Inbound`]) and routed
//! the same way, so both kinds of client share rooms, ids and handlers. Only `event`
//! and the routing fields are looked at; `data` stays raw JSON text unless a handler or
//! a verb needs its value.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use stellar_protocol::binary::BinaryMessage;
use stellar_protocol::envelope::Envelope;
use stellar_protocol::tcp;
use stellar_protocol::tcp::{FrameType, TcpDecoder, TcpFrame};
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::{CloseCode, Message, MessageDecoder, OpCode};
use tracing::debug;

use crate::api::Ctx;
use crate::connection::Conn;
use crate::mesh::Barrier;
use crate::outbound::Outbound;
use crate::worker::{JoinError, Worker};

/// What the reader does after a message.
pub enum Flow {
    Continue,
    /// Wait until every worker knows about a join, then send these replies and read
    /// on: a `joined-room` means the room's messages will reach the client from any
    /// worker.
    Wait(Arc<Barrier>, Vec<Bytes>),
    /// The connection is closing: stop routing.
    Stop,
}

/// Event names the server owns; a handler cannot take them.
const SERVER_EVENTS: &[&str] = &[
    "welcome",
    "auth_success",
    "auth_error",
    "joined-room",
    "left-room",
    "subscribed",
    "unsubscribed",
    "pong",
    "alert",
    "error",
];

/// A client message reduced to its routing fields.
struct Inbound<'a> {
    event: &'a str,
    room: Option<&'a str>,
    /// Raw JSON text of `data`.
    data: Option<&'a str>,
    /// `(handler, correlation id)` for a request.
    ack: Option<(&'a str, &'a str)>,
}

/// A connection's inbound decoder, by protocol.
pub enum Decoder {
    Ws(MessageDecoder),
    Tcp(TcpDecoder),
}

impl Decoder {
    /// Decodes the next message from `buf` and routes it; `None` when `buf` holds no
    /// whole message. A framing violation closes the connection (`Flow::Stop`).
    pub fn route_next(
        &mut self,
        worker: &Rc<Worker>,
        conn: &Rc<Conn>,
        buf: &mut BytesMut,
    ) -> Option<Flow> {
        match self {
            Self::Ws(decoder) => match decoder.decode(buf) {
                Ok(Some(msg)) => Some(on_ws_message(worker, conn, msg)),
                Ok(None) => None,
                Err(e) => {
                    debug!(client = %conn.id, error = %e, "protocol violation");
                    conn.close(e.close_code(), &e.to_string());
                    Some(Flow::Stop)
                }
            },
            Self::Tcp(decoder) => match decoder.decode(buf) {
                Ok(Some(frame)) => Some(on_tcp_frame(worker, conn, frame)),
                Ok(None) => None,
                Err(e) => {
                    debug!(client = %conn.id, error = %e, "tcp frame refused");
                    conn.send_error(e.code(), &e.to_string(), &worker.stats);
                    conn.close(CloseCode::NORMAL, "");
                    Some(Flow::Stop)
                }
            },
        }
    }
}

/// Sends `welcome` `{"id","message","context"}`: once after the handshake, or after
/// `auth_success` when the client authenticates by message.
pub fn send_welcome(worker: &Worker, conn: &Rc<Conn>) {
    let welcome = json!({"id": &*conn.id.text(), "message": "Connected", "context": "api"});
    conn.emit_raw("welcome", &welcome.to_string(), &worker.stats);
}

/// Events an unauthenticated client may still send.
const BEFORE_AUTH: &[&str] = &["auth", "ping"];

/// Refuses anything but `auth` and `ping` until the client is authenticated.
fn unauthenticated(worker: &Worker, conn: &Rc<Conn>, event: &str) -> Option<Flow> {
    if conn.is_authenticated() || BEFORE_AUTH.contains(&event) {
        return None;
    }
    conn.send_error(
        "unauthorized",
        "authenticate first (send `auth` with a token)",
        &worker.stats,
    );
    Some(Flow::Continue)
}

/// The `auth` verb: `{"token"}` checked against `jwt_secret`.
fn authenticate(worker: &Rc<Worker>, conn: &Rc<Conn>, data: Option<&str>) -> Flow {
    let secret = worker.config().jwt_secret.clone();
    let token = data
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned));
    let verdict = match (secret, token) {
        (None, _) => Err("authentication by message is not enabled on this server".to_owned()),
        (Some(_), None) => Err("`auth` needs {\"token\"}".to_owned()),
        (Some(secret), Some(token)) => {
            crate::auth::verify(&secret, &token).map_err(|e| e.to_string())
        }
    };
    match verdict {
        Ok(user) => {
            let first = !conn.is_authenticated();
            let data = json!({ "userId": user.id }).to_string();
            *conn.user.borrow_mut() = Some(Box::new(user));
            conn.emit_raw("auth_success", &data, &worker.stats);
            if first && conn.proto == crate::outbound::Proto::Ws {
                send_welcome(worker, conn);
            }
        }
        Err(error) => {
            conn.emit_raw(
                "auth_error",
                &json!({ "error": error }).to_string(),
                &worker.stats,
            );
        }
    }
    Flow::Continue
}

fn on_ws_message(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: Message) -> Flow {
    if worker.config().echo {
        return echo(worker, conn, msg);
    }
    match msg {
        Message::Text(text) => {
            worker.stats.messages_received.add(1);
            let parsed = Envelope::parse(&text);
            let event = parsed.as_ref().map_or("", |env| &env.event);
            if let Some(refused) = over_limit(worker, conn, event) {
                return refused;
            }
            match parsed {
                Ok(env) => {
                    let inbound = Inbound {
                        event: &env.event,
                        room: env.room.as_deref(),
                        data: env.data.as_deref(),
                        ack: env
                            .correlation_id
                            .as_deref()
                            .map(|c| (env.ack_handler().unwrap_or(&env.event), c)),
                    };
                    route(worker, conn, &inbound)
                }
                Err(e) => {
                    conn.send_error(e.code(), &e.to_string(), &worker.stats);
                    Flow::Continue
                }
            }
        }
        Message::Binary(bytes) => {
            worker.stats.messages_received.add(1);
            on_binary(worker, conn, &bytes)
        }
        Message::Ping(payload) => {
            conn.send(encode_server(OpCode::Pong, &payload), &worker.stats);
            Flow::Continue
        }
        Message::Pong(_) => Flow::Continue,
        Message::Close(frame) => {
            let code = frame.map_or(CloseCode::NORMAL, |f| f.code);
            conn.close(code, "");
            Flow::Stop
        }
    }
}

fn on_tcp_frame(worker: &Rc<Worker>, conn: &Rc<Conn>, frame: TcpFrame) -> Flow {
    worker.stats.messages_received.add(1);
    if !matches!(
        frame.kind,
        FrameType::Ping | FrameType::Pong | FrameType::Disconnect
    ) && let Some(refused) = over_limit(worker, conn, &frame.event)
    {
        return refused;
    }
    let payload = frame.payload;
    match frame.kind {
        FrameType::Json => {
            let Ok(text) = std::str::from_utf8(&payload) else {
                conn.send_error("bad_json", "payload is not UTF-8", &worker.stats);
                return Flow::Continue;
            };
            // The payload is the event's `data`, passed on as JSON text (to handlers as
            // `data_raw`, to rooms verbatim), so it must be one valid JSON value.
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                conn.send_error("bad_json", "payload is not valid JSON", &worker.stats);
                return Flow::Continue;
            }
            let routed = tcp_room_event(text);
            let inbound = Inbound {
                event: &frame.event,
                room: routed.as_ref().map(|(r, _)| r.as_str()),
                data: Some(routed.as_ref().map_or(text, |(_, d)| d.as_str())),
                ack: None,
            };
            route(worker, conn, &inbound)
        }
        FrameType::AckReq => {
            let request: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            let Some(correlation) = request.get("_correlationId").and_then(Value::as_str) else {
                conn.send_error(
                    "invalid_envelope",
                    "ACK_REQ needs `_correlationId`",
                    &worker.stats,
                );
                return Flow::Continue;
            };
            let data = request.get("data").map(Value::to_string);
            let inbound = Inbound {
                event: &frame.event,
                room: None,
                data: data.as_deref(),
                ack: Some((&frame.event, correlation)),
            };
            route(worker, conn, &inbound)
        }
        FrameType::Join | FrameType::Leave => {
            let Ok(room) = std::str::from_utf8(&payload) else {
                conn.send_error("invalid_room", "room name is not UTF-8", &worker.stats);
                return Flow::Continue;
            };
            if let Some(refused) = unauthenticated(worker, conn, &frame.event) {
                return refused;
            }
            if frame.kind == FrameType::Join {
                join(worker, conn, room, "joined-room", None)
            } else {
                leave(worker, conn, room, "left-room", None)
            }
        }
        FrameType::Ping => {
            conn.send(tcp::frame::encode(FrameType::Pong, "", &[]), &worker.stats);
            Flow::Continue
        }
        FrameType::Pong => Flow::Continue,
        FrameType::Disconnect => {
            conn.close(CloseCode::NORMAL, "");
            Flow::Stop
        }
        FrameType::Binary => Flow::Continue,
        FrameType::Connect | FrameType::AckRes | FrameType::Error => {
            conn.send_error(
                "unexpected_frame",
                "this frame type is sent by servers only",
                &worker.stats,
            );
            Flow::Continue
        }
    }
}

/// Conformance-test mode (`echo`): messages come back verbatim, pings are answered,
/// a close is echoed; nothing is parsed or routed.
fn echo(worker: &Worker, conn: &Rc<Conn>, msg: Message) -> Flow {
    let reply = match msg {
        Message::Text(t) => encode_server(OpCode::Text, &t),
        Message::Binary(b) => encode_server(OpCode::Binary, &b),
        Message::Ping(p) => encode_server(OpCode::Pong, &p),
        Message::Pong(_) => return Flow::Continue,
        Message::Close(frame) => {
            conn.close(frame.map_or(CloseCode::NORMAL, |f| f.code), "");
            return Flow::Stop;
        }
    };
    conn.send(reply, &worker.stats);
    Flow::Continue
}

/// A TCP JSON payload `{"room":"r","data":D}` is a room event with data `D`.
fn tcp_room_event(text: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    if object.len() != 2 {
        return None;
    }
    let room = object.get("room")?.as_str()?.to_owned();
    Some((room, object.get("data")?.to_string()))
}

fn on_binary(worker: &Rc<Worker>, conn: &Rc<Conn>, bytes: &Bytes) -> Flow {
    let parsed = BinaryMessage::parse(bytes);
    let event = parsed.as_ref().map_or("", |m| &m.event);
    if let Some(refused) = over_limit(worker, conn, event) {
        return refused;
    }
    if let Some(refused) = unauthenticated(worker, conn, event) {
        return refused;
    }
    let msg = match parsed {
        Ok(m) => m,
        Err(e) => {
            conn.send_error(e.code(), &e.to_string(), &worker.stats);
            return Flow::Continue;
        }
    };
    if let Some(room) = msg.room.as_deref() {
        if !conn.in_room(room) {
            conn.send_error(
                "not_member",
                &format!("not a member of room `{room}`"),
                &worker.stats,
            );
            return Flow::Continue;
        }
        let out = Outbound::binary(&msg.event, Some(room), Bytes::copy_from_slice(msg.payload));
        worker.publish_room(room, out, Some(conn.id));
    }
    Flow::Continue
}

/// Applies the rate limits to one message: `None` when it may pass, else what the
/// reader does (by default the client is closed with 1008 "Rate limit exceeded"; an
/// `on_rate_limit_exceeded` hook returning false keeps it, and the message is refused
/// with an `error` event `rate_limited`).
fn over_limit(worker: &Rc<Worker>, conn: &Rc<Conn>, event: &str) -> Option<Flow> {
    if worker.allow(conn, event) {
        return None;
    }
    worker.stats.rate_limited.add(1);
    let close = worker
        .shared
        .handlers
        .rate_limit_exceeded
        .as_ref()
        .is_none_or(|hook| hook(&conn.client_info(), event));
    if close {
        conn.close(CloseCode::POLICY_VIOLATION, "Rate limit exceeded");
        return Some(Flow::Stop);
    }
    conn.send_error(
        "rate_limited",
        &format!("rate limit exceeded for `{event}`"),
        &worker.stats,
    );
    Some(Flow::Continue)
}

fn route(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: &Inbound<'_>) -> Flow {
    if let Some(refused) = unauthenticated(worker, conn, msg.event) {
        return refused;
    }
    let data_str = || {
        msg.data
            .and_then(|d| serde_json::from_str::<String>(d).ok())
    };
    match msg.event {
        "join-room" => join(
            worker,
            conn,
            &data_str().unwrap_or_default(),
            "joined-room",
            msg.ack,
        ),
        "subscribe" => join(
            worker,
            conn,
            &data_str().unwrap_or_default(),
            "subscribed",
            msg.ack,
        ),
        "leave-room" => leave(
            worker,
            conn,
            &data_str().unwrap_or_default(),
            "left-room",
            msg.ack,
        ),
        "unsubscribe" => leave(
            worker,
            conn,
            &data_str().unwrap_or_default(),
            "unsubscribed",
            msg.ack,
        ),
        "say" => say(worker, conn, msg.data),
        "room-view" => {
            let room = data_str().unwrap_or_default();
            let members: Vec<String> = worker
                .shared
                .dirs
                .clients(Some(&room))
                .iter()
                .map(ToString::to_string)
                .collect();
            let view = json!({"room": room, "membersCount": members.len(), "members": members});
            reply(worker, conn, "room-view", msg.ack, Ok(view.to_string()))
        }
        "details" => {
            let rooms: Vec<String> = conn
                .rooms
                .borrow()
                .iter()
                .map(ToString::to_string)
                .collect();
            let info = conn.client_info();
            let details = json!({
                "id": info.id, "remoteAddress": info.remote_address.to_string(),
                "protocol": info.protocol, "connectedAt": info.connected_at, "rooms": rooms,
            });
            reply(worker, conn, "details", msg.ack, Ok(details.to_string()))
        }
        "file" => crate::files::answer_verb(worker, conn, data_str().unwrap_or_default(), msg.ack),
        "ping" => {
            conn.emit_raw("pong", msg.data.unwrap_or("null"), &worker.stats);
            Flow::Continue
        }
        "auth" => authenticate(worker, conn, msg.data),
        name if SERVER_EVENTS.contains(&name) => {
            conn.send_error(
                "reserved_event",
                &format!("`{name}` is sent by the server only"),
                &worker.stats,
            );
            Flow::Continue
        }
        _ => user_event(worker, conn, msg),
    }
}

/// Replies to a verb: an ack reply when it was a request, else an event of that name.
fn reply(
    worker: &Worker,
    conn: &Rc<Conn>,
    event: &str,
    ack: Option<(&str, &str)>,
    answer: Result<String, (&str, String)>,
) -> Flow {
    match (ack, &answer) {
        (Some((name, correlation)), Ok(data)) => {
            conn.reply_ack(name, correlation, Ok(data), &worker.stats)
        }
        (Some((name, correlation)), Err((code, message))) => {
            conn.reply_ack(name, correlation, Err((code, message)), &worker.stats)
        }
        (None, Ok(data)) => conn.emit_raw(event, data, &worker.stats),
        (None, Err((code, message))) => conn.send_error(code, message, &worker.stats),
    };
    Flow::Continue
}

fn join(
    worker: &Rc<Worker>,
    conn: &Rc<Conn>,
    room: &str,
    answer: &str,
    ack: Option<(&str, &str)>,
) -> Flow {
    if room.is_empty() {
        conn.send_error(
            "invalid_room",
            "room name must be a non-empty string",
            &worker.stats,
        );
        return Flow::Continue;
    }
    if !worker.may_join(conn, room) {
        conn.send_error(
            "forbidden",
            &format!("not allowed to join `{room}`"),
            &worker.stats,
        );
        return Flow::Continue;
    }
    let name = serde_json::to_string(room).unwrap_or_default();
    match worker.join(conn, room) {
        Ok(barrier) => {
            let mut replies = vec![conn.event_frame(answer, &name)];
            if let Some((handler, correlation)) = ack {
                replies.push(conn.ack_frame(handler, correlation, Ok(&name)));
            }
            match barrier {
                Some(barrier) => Flow::Wait(barrier, replies),
                None => {
                    for reply in replies {
                        conn.send(reply, &worker.stats);
                    }
                    Flow::Continue
                }
            }
        }
        Err(JoinError::TooManyRooms) => {
            conn.send_error(
                "too_many_rooms",
                "max_rooms_per_client reached",
                &worker.stats,
            );
            Flow::Continue
        }
        Err(JoinError::ServerRoomsFull) => {
            conn.send_error(
                "max_rooms",
                "the server holds max_rooms rooms",
                &worker.stats,
            );
            Flow::Continue
        }
    }
}

fn leave(
    worker: &Rc<Worker>,
    conn: &Rc<Conn>,
    room: &str,
    answer: &str,
    ack: Option<(&str, &str)>,
) -> Flow {
    worker.leave(conn, room);
    let name = serde_json::to_string(room).unwrap_or_default();
    conn.emit_raw(answer, &name, &worker.stats);
    if let Some((handler, correlation)) = ack {
        conn.reply_ack(handler, correlation, Ok(&name), &worker.stats);
    }
    Flow::Continue
}

fn say(worker: &Rc<Worker>, conn: &Rc<Conn>, data: Option<&str>) -> Flow {
    let parsed: Value = data
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let (Some(room), Some(message)) = (
        parsed.get("room").and_then(Value::as_str),
        parsed.get("message"),
    ) else {
        conn.send_error(
            "invalid_envelope",
            "say needs {\"room\",\"message\"}",
            &worker.stats,
        );
        return Flow::Continue;
    };
    if !conn.in_room(room) {
        conn.send_error(
            "not_member",
            &format!("not a member of room `{room}`"),
            &worker.stats,
        );
        return Flow::Continue;
    }
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let body =
        json!({"room": room, "from": &*conn.id.text(), "message": message, "sentAt": sent_at});
    worker.publish_room(
        room,
        Outbound::event("say", &body.to_string(), None),
        Some(conn.id),
    );
    Flow::Continue
}

fn user_event(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: &Inbound<'_>) -> Flow {
    let handlers = &worker.shared.handlers;
    if let Some((name, correlation)) = msg.ack {
        let Some(handler) = handlers.acks.get(name) else {
            conn.reply_ack(
                name,
                correlation,
                Err(("unknown_action", &format!("no handler named `{name}`"))),
                &worker.stats,
            );
            return Flow::Continue;
        };
        let ctx = Ctx::from_raw(worker, Some(conn), name, msg.data);
        match handler(&ctx) {
            Ok(result) => conn.reply_ack(name, correlation, Ok(&result.to_string()), &worker.stats),
            Err(e) => conn.reply_ack(name, correlation, Err((&e.code, &e.message)), &worker.stats),
        };
        return ctx.into_flow();
    }
    if let Some(room) = msg.room {
        if !conn.in_room(room) {
            conn.send_error(
                "not_member",
                &format!("not a member of room `{room}`"),
                &worker.stats,
            );
            return Flow::Continue;
        }
        let allowed = handlers
            .room_event
            .as_ref()
            .is_none_or(|hook| hook(&conn.client_info(), room, msg.event));
        if allowed {
            let out = Outbound::event(msg.event, msg.data.unwrap_or("null"), Some(room));
            worker.publish_room(room, out, Some(conn.id));
        }
    }
    let specific = handlers.events.get(msg.event);
    if specific.is_none() && handlers.all.is_empty() {
        return Flow::Continue;
    }
    let ctx = Ctx::from_raw(worker, Some(conn), msg.event, msg.data);
    for handler in specific.into_iter().flatten() {
        handler(&ctx);
    }
    for handler in &handlers.all {
        handler(&ctx);
    }
    ctx.into_flow()
}

pub(crate) fn parse_data(data: Option<&str>) -> Value {
    data.and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null)
}
