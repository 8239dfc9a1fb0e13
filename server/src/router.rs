//! Where a client message goes: a reserved verb, a handler, or a room relay
//! (SPEC §3.1-§3.3).
//!
//! Messages arrive already brought to one shape ([`Inbound`]), so both kinds of client
//! share rooms, ids and handlers and each rule is written once. The router decides; it
//! acts only through the worker's narrow interface (join, leave, publish) and the
//! connection's send methods. Only `event` and the routing fields are looked at; `data`
//! stays raw JSON text unless a handler or a verb needs its value.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use stellar_protocol::event::reserved;
use stellar_protocol::tcp::{self, FrameType, TcpDecoder};
use stellar_protocol::ws::frame::{RSV1, encode_server};
use stellar_protocol::ws::{CloseCode, Decompressor, Message, MessageDecoder, OpCode};
use stellar_protocol::{ErrorCode, EventName, ProtocolError};
use tracing::debug;

use crate::admission;
use crate::connection::Conn;
use crate::ctx::Ctx;
use crate::history::Since;
use crate::inbound::{self, Inbound, Request};
use crate::mesh::Barrier;
use crate::outbound::{Outbound, Proto};
use crate::recovery;
use crate::rooms::JoinError;
use crate::worker::Worker;

/// What the reader does after a message.
pub enum Flow {
    Continue,
    /// Wait until every worker (and the cluster) knows about a join, then send these
    /// replies, start the recovery a `join-room` with `since` asked for, and read on: a
    /// `joined-room` means the room's messages will reach the client from any worker.
    Wait(Arc<Barrier>, Vec<Bytes>, Option<recovery::Ask>),
    /// The connection is closing: stop routing.
    Stop,
}

impl Flow {
    /// Continue, or wait for a join a handler made.
    fn after(pending: Option<Arc<Barrier>>) -> Self {
        pending.map_or(Self::Continue, |b| Self::Wait(b, Vec::new(), None))
    }
}

/// A connection's inbound decoder, by protocol; a WebSocket client that agreed on
/// permessage-deflate has its inflater beside the decoder.
pub enum Decoder {
    Ws(MessageDecoder, Option<Box<Decompressor>>),
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
            Self::Ws(decoder, inflater) => match decoder.decode(buf).and_then(|msg| match msg {
                Some(msg) if msg.is_compressed() => match inflater {
                    Some(inflater) => inflater.inflate_message(msg).map(Some),
                    // The decoder yields compressed messages only when deflate was agreed.
                    None => Err(ProtocolError::ReservedBits(RSV1)),
                },
                other => Ok(other),
            }) {
                Ok(Some(msg)) if worker.is_echo() => Some(echo(worker, conn, msg)),
                Ok(Some(msg)) => Some(route(worker, conn, inbound::from_ws(&msg))),
                Ok(None) => None,
                Err(e) => {
                    debug!(client = %conn.id, error = %e, "protocol violation");
                    conn.close(e.close_code(), &e.to_string());
                    Some(Flow::Stop)
                }
            },
            Self::Tcp(decoder) => match decoder.decode(buf) {
                Ok(Some(frame)) => Some(route(worker, conn, inbound::from_tcp(&frame))),
                Ok(None) => None,
                Err(e) => {
                    debug!(client = %conn.id, error = %e, "tcp frame refused");
                    // A TLS handshake record (0x16 0x03) reads as a frame hundreds of MB
                    // long: a TLS client on the plaintext TCP port.
                    if buf.starts_with(&[0x16, 0x03]) {
                        worker.stats.tls_on_plain_port.add(1);
                    }
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
    // Written out, not built as a JSON value (a map and its strings per connection): an
    // id is decimal digits, hex digits and dashes, so nothing in it needs escaping.
    let welcome = format!(
        r#"{{"id":"{}","message":"Connected","context":"api"}}"#,
        conn.id
    );
    conn.emit_raw(&reserved::WELCOME, &welcome, &worker.stats);
}

/// Conformance-test mode (`echo`): messages come back verbatim, pings are answered, a
/// close is echoed; nothing is parsed or routed.
fn echo(worker: &Worker, conn: &Rc<Conn>, msg: Message) -> Flow {
    let reply = match msg {
        Message::Text(t) => conn.ws_frame(OpCode::Text, t.as_bytes()),
        Message::Binary(b) => conn.ws_frame(OpCode::Binary, &b),
        Message::Ping(p) => encode_server(OpCode::Pong, &p),
        Message::Pong(_) => return Flow::Continue,
        Message::Close(frame) => {
            conn.close(frame.map_or(CloseCode::NORMAL, |f| f.code), "");
            return Flow::Stop;
        }
        // Inflated before routing (`Decoder::route_next`).
        Message::CompressedText(_) | Message::CompressedBinary(_) => {
            conn.close(CloseCode::PROTOCOL_ERROR, "");
            return Flow::Stop;
        }
    };
    conn.send(reply, &worker.stats);
    Flow::Continue
}

fn route(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: Inbound<'_>) -> Flow {
    worker.stats.messages_received.add(1);
    if msg.is_limited()
        && let Some(refused) = over_limit(worker, conn, msg.event())
    {
        return refused;
    }
    match msg {
        Inbound::Request(request) => {
            if let Some(refused) = unauthenticated(worker, conn, &request.event) {
                return refused;
            }
            verb(worker, conn, &request)
        }
        Inbound::Binary {
            event,
            room,
            payload,
        } => {
            if let Some(refused) = unauthenticated(worker, conn, &event) {
                return refused;
            }
            if let Some(room) = room.as_deref()
                && is_member(worker, conn, room)
            {
                let out = Outbound::binary(&event, Some(room), Bytes::copy_from_slice(payload));
                worker.publish_room(room, out, Some(conn.id));
            }
            let Some(handlers) = worker.handlers().binary.get(event.as_str()) else {
                return Flow::Continue;
            };
            let ctx = Ctx::from_raw(worker, Some(conn), &event, None);
            for handler in handlers {
                handler(&ctx, payload);
            }
            Flow::after(ctx.take_pending())
        }
        Inbound::Ping(payload) => {
            let pong = match conn.proto {
                Proto::Ws => encode_server(OpCode::Pong, payload),
                Proto::Tcp => tcp::frame::encode_control(FrameType::Pong),
            };
            conn.send(pong, &worker.stats);
            Flow::Continue
        }
        Inbound::Pong => Flow::Continue,
        Inbound::Close(code) => {
            conn.close(code, "");
            Flow::Stop
        }
        Inbound::Refused(code, message) => {
            conn.send_error(code, &message, &worker.stats);
            Flow::Continue
        }
    }
}

/// Events an unauthenticated client may still send.
const BEFORE_AUTH: [EventName<'static>; 2] = [reserved::AUTH, reserved::PING];

/// Refuses anything but `auth` and `ping` until the client is authenticated.
fn unauthenticated(worker: &Worker, conn: &Rc<Conn>, event: &EventName<'_>) -> Option<Flow> {
    if conn.is_authenticated() || BEFORE_AUTH.contains(event) {
        return None;
    }
    conn.send_error(
        ErrorCode::Unauthorized,
        "authenticate first (send `auth` with a token)",
        &worker.stats,
    );
    Some(Flow::Continue)
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
        .handlers()
        .rate_limit_exceeded
        .as_ref()
        .is_none_or(|hook| hook(&conn.client_info(), event));
    if close {
        conn.close(CloseCode::POLICY_VIOLATION, "Rate limit exceeded");
        return Some(Flow::Stop);
    }
    conn.send_error(
        ErrorCode::RateLimited,
        &format!("rate limit exceeded for `{event}`"),
        &worker.stats,
    );
    Some(Flow::Continue)
}

/// Whether `conn` is in `room`; answers `not_member` when it is not.
fn is_member(worker: &Worker, conn: &Rc<Conn>, room: &str) -> bool {
    let member = worker.is_member(conn, room);
    if !member {
        conn.send_error(
            ErrorCode::NotMember,
            &format!("not a member of room `{room}`"),
            &worker.stats,
        );
    }
    member
}

/// The reserved verbs (SPEC §3.1 table), else a client event or request.
fn verb(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: &Request<'_>) -> Flow {
    let data_str = || {
        msg.data
            .as_deref()
            .and_then(|d| serde_json::from_str::<String>(d).ok())
            .unwrap_or_default()
    };
    let ack = msg.ack.as_ref().map(|(name, c)| (name, &**c));
    match msg.event.as_str() {
        "join-room" => join(
            worker,
            conn,
            msg.data.as_deref(),
            &reserved::JOINED_ROOM,
            ack,
        ),
        "subscribe" => join(
            worker,
            conn,
            msg.data.as_deref(),
            &reserved::SUBSCRIBED,
            ack,
        ),
        "recover" => recover(worker, conn, msg.data.as_deref(), ack),
        "leave-room" => leave(worker, conn, &data_str(), &reserved::LEFT_ROOM, ack),
        "unsubscribe" => leave(worker, conn, &data_str(), &reserved::UNSUBSCRIBED, ack),
        "say" => say(worker, conn, msg.data.as_deref()),
        "room-view" => {
            let room = data_str();
            let members: Vec<String> = worker
                .room_members(&room)
                .iter()
                .map(ToString::to_string)
                .collect();
            let view = json!({"room": room, "membersCount": members.len(), "members": members});
            reply(
                worker,
                conn,
                &reserved::ROOM_VIEW,
                ack,
                Ok(view.to_string()),
            )
        }
        "details" => {
            let rooms: Vec<String> = worker
                .rooms_of(conn)
                .iter()
                .map(ToString::to_string)
                .collect();
            let info = conn.client_info();
            let details = json!({
                "id": info.id, "remoteAddress": info.remote_address.to_string(),
                "protocol": info.protocol, "connectedAt": info.connected_at, "rooms": rooms,
            });
            reply(
                worker,
                conn,
                &reserved::DETAILS,
                ack,
                Ok(details.to_string()),
            )
        }
        "file" => crate::files::answer_verb(worker, conn, data_str(), ack),
        "ping" => {
            let data = msg.data.as_deref().unwrap_or("null");
            conn.emit_raw(&reserved::PONG, data, &worker.stats);
            Flow::Continue
        }
        "auth" => authenticate(worker, conn, msg.data.as_deref()),
        _ if reserved::SERVER_ONLY.contains(&msg.event) => {
            conn.send_error(
                ErrorCode::ReservedEvent,
                &format!("`{}` is sent by the server only", msg.event),
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
    event: &EventName<'_>,
    ack: Option<(&EventName<'_>, &str)>,
    answer: Result<String, (ErrorCode, String)>,
) -> Flow {
    match (ack, answer) {
        (Some((name, correlation)), Ok(data)) => {
            conn.reply_ack(name, correlation, Ok(&data), &worker.stats)
        }
        (Some((name, correlation)), Err((code, message))) => conn.reply_ack(
            name,
            correlation,
            Err((code.as_str(), &message)),
            &worker.stats,
        ),
        (None, Ok(data)) => conn.emit_raw(event, &data, &worker.stats),
        (None, Err((code, message))) => conn.send_error(code, &message, &worker.stats),
    };
    Flow::Continue
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
            conn.set_user(user);
            conn.emit_raw(&reserved::AUTH_SUCCESS, &data, &worker.stats);
            if first && conn.proto == Proto::Ws {
                send_welcome(worker, conn);
            }
        }
        Err(error) => {
            let data = json!({ "error": error }).to_string();
            conn.emit_raw(&reserved::AUTH_ERROR, &data, &worker.stats);
        }
    }
    Flow::Continue
}

/// `join-room` `"room"`, or `{"room","since":{"offset","epoch"}}` to join and recover
/// in one step.
fn join(
    worker: &Rc<Worker>,
    conn: &Rc<Conn>,
    data: Option<&str>,
    answer: &EventName<'_>,
    ack: Option<(&EventName<'_>, &str)>,
) -> Flow {
    // A refusal answers the request when the join was one (so a client awaiting its ack
    // learns why), else it is an `error` event.
    let refuse =
        |code, message: &str| reply(worker, conn, answer, ack, Err((code, message.into())));
    let value: Value = data
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let (room, since) = match &value {
        Value::String(room) => (room.as_str(), None),
        Value::Object(fields) => match fields.get("room").and_then(Value::as_str) {
            Some(room) => match fields.get("since") {
                None => (room, None),
                Some(since) => match Since::from_json(since) {
                    Some(since) => (room, Some(since)),
                    None => {
                        return refuse(
                            ErrorCode::InvalidEnvelope,
                            "`since` needs {\"offset\",\"epoch\"}",
                        );
                    }
                },
            },
            None => ("", None),
        },
        _ => ("", None),
    };
    if room.is_empty() {
        return refuse(
            ErrorCode::InvalidRoom,
            "room name must be a non-empty string",
        );
    }
    if !admission::may_join(worker, conn, room) {
        return refuse(
            ErrorCode::Forbidden,
            &format!("not allowed to join `{room}`"),
        );
    }
    let name = serde_json::to_string(room).unwrap_or_default();
    match worker.join(conn, room) {
        Ok(barrier) => {
            let mut replies = vec![conn.event_frame(answer, &name)];
            if let Some((handler, correlation)) = ack {
                replies.push(conn.ack_frame(handler, correlation, Ok(&name)));
            }
            // In a room with history, the recovery (or, without `since`, the position the
            // client starts from) is read once the join is known everywhere, and the
            // client's live messages are held from now until it is answered.
            let keeps = crate::history::keeps_history(&worker.config(), room);
            let ask = (since.is_some() || keeps).then(|| {
                worker.hold(conn, room);
                recovery::Ask {
                    room: Arc::from(room),
                    since,
                    ack: None,
                }
            });
            match barrier {
                Some(barrier) => Flow::Wait(barrier, replies, ask),
                None => {
                    for reply in replies {
                        conn.send(reply, &worker.stats);
                    }
                    if let Some(ask) = ask {
                        recovery::start(worker, conn, ask);
                    }
                    Flow::Continue
                }
            }
        }
        Err(JoinError::TooManyRooms) => {
            refuse(ErrorCode::TooManyRooms, "max_rooms_per_client reached")
        }
        Err(JoinError::ServerRoomsFull) => {
            refuse(ErrorCode::MaxRooms, "the server holds max_rooms rooms")
        }
    }
}

/// `recover` `{"room","offset","epoch"}`: what a member missed of a room with history.
fn recover(
    worker: &Rc<Worker>,
    conn: &Rc<Conn>,
    data: Option<&str>,
    ack: Option<(&EventName<'_>, &str)>,
) -> Flow {
    let value: Value = data
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let (Some(room), Some(since)) = (
        value.get("room").and_then(Value::as_str),
        Since::from_json(&value),
    ) else {
        let message = "recover needs {\"room\",\"offset\",\"epoch\"}";
        return reply(
            worker,
            conn,
            &reserved::RECOVERED,
            ack,
            Err((ErrorCode::InvalidEnvelope, message.into())),
        );
    };
    if !is_member(worker, conn, room) {
        return Flow::Continue;
    }
    let ask = recovery::Ask {
        room: Arc::from(room),
        since: Some(since),
        ack: ack.map(|(name, correlation)| (name.clone().into_owned(), correlation.into())),
    };
    recovery::start(worker, conn, ask);
    Flow::Continue
}

fn leave(
    worker: &Rc<Worker>,
    conn: &Rc<Conn>,
    room: &str,
    answer: &EventName<'_>,
    ack: Option<(&EventName<'_>, &str)>,
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
            ErrorCode::InvalidEnvelope,
            "say needs {\"room\",\"message\"}",
            &worker.stats,
        );
        return Flow::Continue;
    };
    if !is_member(worker, conn, room) {
        return Flow::Continue;
    }
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let body =
        json!({"room": room, "from": &*conn.id.text(), "message": message, "sentAt": sent_at});
    let out = Outbound::event(&reserved::SAY, &body.to_string(), None);
    worker.publish_room(room, out, Some(conn.id));
    Flow::Continue
}

fn user_event(worker: &Rc<Worker>, conn: &Rc<Conn>, msg: &Request<'_>) -> Flow {
    let handlers = worker.handlers();
    let data = msg.data.as_deref();
    if let Some((name, correlation)) = &msg.ack {
        let Some(handler) = handlers.acks.get(name.as_str()) else {
            let message = format!("no handler named `{name}`");
            let error = Err((ErrorCode::UnknownAction.as_str(), message.as_str()));
            conn.reply_ack(name, correlation, error, &worker.stats);
            return Flow::Continue;
        };
        let ctx = Ctx::from_raw(worker, Some(conn), name, data);
        match handler.answer(&ctx) {
            Ok(result) => conn.reply_ack(name, correlation, Ok(&result), &worker.stats),
            Err(e) => conn.reply_ack(name, correlation, Err((&e.code, &e.message)), &worker.stats),
        };
        return Flow::after(ctx.take_pending());
    }
    if let Some(room) = msg.room.as_deref() {
        if !is_member(worker, conn, room) {
            return Flow::Continue;
        }
        let allowed = handlers
            .room_event
            .as_ref()
            .is_none_or(|hook| hook(&conn.client_info(), room, &msg.event));
        if allowed {
            let out = Outbound::event(&msg.event, data.unwrap_or("null"), Some(room));
            worker.publish_room(room, out, Some(conn.id));
        }
    }
    let specific = handlers.events.get(msg.event.as_str());
    if specific.is_none() && handlers.all.is_empty() {
        return Flow::Continue;
    }
    let ctx = Ctx::from_raw(worker, Some(conn), &msg.event, data);
    for handler in specific.into_iter().flatten() {
        handler(&ctx);
    }
    for handler in &handlers.all {
        handler(&ctx);
    }
    Flow::after(ctx.take_pending())
}
