//! A client message right after decoding, whatever protocol it came in on (SPEC §3.1,
//! §3.2): [`Inbound`].
//!
//! WebSocket messages and TCP frames meet here, so every rule after this point (rate
//! limits, auth, verbs, handlers, relay) is written once. Nothing is copied: an
//! [`Inbound`] borrows from the decoded message, event names are already checked
//! ([`EventName`]), and text is already known to be UTF-8 (the WebSocket decoder
//! validated it once; TCP payloads are validated here, once).

use std::borrow::Cow;

use stellar_protocol::binary::BinaryMessage;
use stellar_protocol::envelope::Envelope;
use stellar_protocol::event::reserved;
use stellar_protocol::tcp::{AckPayload, FrameType, JsonPayload, TcpFrame};
use stellar_protocol::ws::{CloseCode, Message};
use stellar_protocol::{EnvelopeError, ErrorCode, EventName};

/// An event or a request, reduced to its routing fields.
pub struct Request<'a> {
    pub event: EventName<'a>,
    /// The room a client event is relayed to.
    pub room: Option<Cow<'a, str>>,
    /// Raw JSON text of `data`; `None` when absent or `null`.
    pub data: Option<Cow<'a, str>>,
    /// For a request: the handler's name and the correlation id.
    pub ack: Option<(EventName<'a>, Cow<'a, str>)>,
}

/// What a client sent.
pub enum Inbound<'a> {
    /// A JSON event, a request or a reserved verb.
    Request(Request<'a>),
    /// A binary event, relayed to `room` when it names one.
    Binary {
        event: EventName<'a>,
        room: Option<Cow<'a, str>>,
        payload: &'a [u8],
    },
    /// A heartbeat to answer (WebSocket ping payload, empty for TCP).
    Ping(&'a [u8]),
    Pong,
    /// The client is closing.
    Close(CloseCode),
    /// A message the server refuses without closing: answered with `error`.
    Refused(ErrorCode, String),
}

impl Inbound<'_> {
    /// Whether the message counts against the rate limits (what a client sends, not
    /// heartbeats and closes).
    pub fn is_limited(&self) -> bool {
        matches!(
            self,
            Self::Request(_) | Self::Binary { .. } | Self::Refused(..)
        )
    }

    /// The event name the rate limits are keyed by (empty when there is none).
    pub fn event(&self) -> &str {
        match self {
            Self::Request(r) => &r.event,
            Self::Binary { event, .. } => event,
            _ => "",
        }
    }
}

impl<'a> From<EnvelopeError> for Inbound<'a> {
    fn from(e: EnvelopeError) -> Self {
        Self::Refused(e.code(), e.to_string())
    }
}

/// A WebSocket message.
pub fn from_ws(msg: &Message) -> Inbound<'_> {
    match msg {
        Message::Text(text) => match Envelope::parse_str(text) {
            Ok(env) => {
                let ack = match (env.ack_handler().cloned(), env.correlation_id) {
                    (Some(handler), Some(correlation)) => Some((handler, correlation)),
                    _ => None,
                };
                Inbound::Request(Request {
                    event: env.event,
                    room: env.room,
                    data: env.data,
                    ack,
                })
            }
            Err(e) => e.into(),
        },
        Message::Binary(bytes) => binary(bytes, None),
        Message::Ping(payload) => Inbound::Ping(payload),
        Message::Pong(_) => Inbound::Pong,
        Message::Close(frame) => {
            Inbound::Close(frame.as_ref().map_or(CloseCode::NORMAL, |f| f.code))
        }
        // Only a decoder with deflate negotiated yields it; the server negotiates none.
        Message::CompressedText(_) | Message::CompressedBinary(_) => {
            Inbound::Close(CloseCode::PROTOCOL_ERROR)
        }
    }
}

/// A binary message (`[u32 header length][header JSON][bytes]`); from TCP, the frame's
/// event must be the header's.
fn binary<'a>(bytes: &'a [u8], frame_event: Option<&EventName<'_>>) -> Inbound<'a> {
    match BinaryMessage::parse(bytes) {
        Ok(msg) if frame_event.is_some_and(|e| *e != msg.event) => Inbound::Refused(
            ErrorCode::InvalidBinary,
            "the BINARY frame's event differs from its header's".to_owned(),
        ),
        Ok(msg) => Inbound::Binary {
            event: msg.event,
            room: msg.room,
            payload: msg.payload,
        },
        Err(e) => e.into(),
    }
}

/// A TCP frame.
pub fn from_tcp(frame: &TcpFrame) -> Inbound<'_> {
    let Some(event) = frame.event() else {
        return match frame.kind {
            FrameType::Ping => Inbound::Ping(&[]),
            FrameType::Pong => Inbound::Pong,
            _ => Inbound::Close(CloseCode::NORMAL),
        };
    };
    let text = || {
        simdutf8::basic::from_utf8(&frame.payload)
            .map_err(|_| EnvelopeError::InvalidJson("payload is not UTF-8".into()))
    };
    let result = match frame.kind {
        FrameType::Json => text().and_then(JsonPayload::parse).map(|p| {
            Inbound::Request(Request {
                event: event.clone(),
                room: p.room,
                data: Some(Cow::Borrowed(p.data)),
                ack: None,
            })
        }),
        FrameType::AckReq => text().and_then(AckPayload::parse).map(|p| {
            Inbound::Request(Request {
                event: event.clone(),
                room: None,
                data: p.data.map(Cow::Borrowed),
                ack: Some((event.clone(), p.correlation_id)),
            })
        }),
        FrameType::Join | FrameType::Leave => match std::str::from_utf8(&frame.payload) {
            // The room as the JSON string a WebSocket `join-room` carries.
            Ok(room) => Ok(Inbound::Request(Request {
                event: if frame.kind == FrameType::Join {
                    reserved::JOIN_ROOM
                } else {
                    reserved::LEAVE_ROOM
                },
                room: None,
                data: Some(Cow::Owned(serde_json::Value::from(room).to_string())),
                ack: None,
            })),
            Err(_) => Ok(Inbound::Refused(
                ErrorCode::InvalidRoom,
                "room name is not UTF-8".to_owned(),
            )),
        },
        FrameType::Binary => Ok(binary(&frame.payload, Some(&event))),
        FrameType::Connect | FrameType::AckRes | FrameType::Error => Ok(Inbound::Refused(
            ErrorCode::UnexpectedFrame,
            "this frame type is sent by servers only".to_owned(),
        )),
        // Types without an event never get here (the decoder refuses a name on them).
        FrameType::Ping | FrameType::Pong | FrameType::Disconnect => Ok(Inbound::Pong),
    };
    result.unwrap_or_else(Inbound::from)
}
