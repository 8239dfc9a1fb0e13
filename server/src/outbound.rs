//! A message on its way to many connections, framed at most once per wire.
//!
//! This is where a message becomes "to many" (STYLE §2): the WebSocket frame, its
//! permessage-deflate form and the TCP frame are each built the first time a recipient
//! on that wire needs them, then
//! every recipient's write queue gets the same bytes, whichever worker it lives on (a
//! copy onto its open buffer when small, a refcounted clone when large; see
//! `connection`).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use stellar_protocol::envelope::Position;
use stellar_protocol::tcp::FrameType;
use stellar_protocol::ws::OpCode;
use stellar_protocol::ws::frame::{encode_server, encode_server_with};
use stellar_protocol::{EventName, binary, envelope, tcp};

use crate::compression;
use crate::history::Pos;

/// Which wire a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Ws,
    Tcp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "websocket",
            Self::Tcp => "tcp",
        }
    }
}

/// The bytes a connection takes: its protocol, and for WebSocket whether it agreed on
/// permessage-deflate (and takes the worker's shared compressed frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Ws,
    WsDeflate,
    Tcp,
}

/// What is being sent, before framing.
#[derive(Debug)]
enum Body {
    /// A JSON event; `data` is raw JSON text.
    Event {
        event: EventName<'static>,
        data: Box<str>,
        room: Option<Box<str>>,
    },
    /// A binary event.
    Binary {
        event: EventName<'static>,
        room: Option<Box<str>>,
        payload: Bytes,
    },
}

/// What a message is, for the cluster wire (`cluster::wire`), which carries it to other
/// nodes as is and rebuilds it there with [`Outbound::from_parts`].
#[derive(Debug, Clone, Copy)]
pub enum Parts<'a> {
    Event {
        event: &'a EventName<'static>,
        data: &'a str,
        room: Option<&'a str>,
    },
    Binary {
        event: &'a EventName<'static>,
        room: Option<&'a str>,
        payload: &'a Bytes,
    },
}

/// A message shared by its recipients; see the module docs.
#[derive(Debug)]
pub struct Outbound {
    body: Body,
    /// Its place in its room's history, when the room keeps one (SPEC §8).
    position: Option<Pos>,
    ws: OnceLock<Bytes>,
    ws_deflate: OnceLock<Bytes>,
    tcp: OnceLock<Bytes>,
}

impl Outbound {
    /// `{"event":event,"data":data[,"room":room]}`; `data` must be valid JSON text.
    pub fn event(event: &EventName<'_>, data: &str, room: Option<&str>) -> Arc<Self> {
        Self::new(Body::Event {
            event: event.clone().into_owned(),
            data: data.into(),
            room: room.map(Into::into),
        })
    }

    /// A binary event (`[u32 header length][header JSON][payload]` on WebSocket).
    pub fn binary(event: &EventName<'_>, room: Option<&str>, payload: Bytes) -> Arc<Self> {
        Self::new(Body::Binary {
            event: event.clone().into_owned(),
            room: room.map(Into::into),
            payload,
        })
    }

    /// A message as another node sent it (see [`Parts`]), at its place in history.
    pub fn from_parts(parts: Parts<'_>, position: Option<Pos>) -> Arc<Self> {
        let body = match parts {
            Parts::Event { event, data, room } => Body::Event {
                event: event.clone(),
                data: data.into(),
                room: room.map(Into::into),
            },
            Parts::Binary {
                event,
                room,
                payload,
            } => Body::Binary {
                event: event.clone(),
                room: room.map(Into::into),
                payload: payload.clone(),
            },
        };
        Self::build(body, position)
    }

    pub fn parts(&self) -> Parts<'_> {
        match &self.body {
            Body::Event { event, data, room } => Parts::Event {
                event,
                data,
                room: room.as_deref(),
            },
            Body::Binary {
                event,
                room,
                payload,
            } => Parts::Binary {
                event,
                room: room.as_deref(),
                payload,
            },
        }
    }

    pub fn position(&self) -> Option<&Pos> {
        self.position.as_ref()
    }

    /// This message at `position` in its room's history: the same body, not yet framed
    /// (taken over without a copy when nobody else holds it).
    pub fn at(msg: Arc<Self>, position: Pos) -> Arc<Self> {
        match Arc::try_unwrap(msg) {
            Ok(msg) => Self::build(msg.body, Some(position)),
            Err(shared) => Self::from_parts(shared.parts(), Some(position)),
        }
    }

    fn new(body: Body) -> Arc<Self> {
        Self::build(body, None)
    }

    fn build(body: Body, position: Option<Pos>) -> Arc<Self> {
        Arc::new(Self {
            body,
            position,
            ws: OnceLock::new(),
            ws_deflate: OnceLock::new(),
            tcp: OnceLock::new(),
        })
    }

    /// The frame for `wire`, built on first use and shared afterwards.
    pub fn frame(&self, wire: Wire) -> &Bytes {
        match wire {
            Wire::Ws => self.ws.get_or_init(|| self.encode_ws()),
            Wire::WsDeflate => self.ws_deflate.get_or_init(|| self.encode_ws_deflate()),
            Wire::Tcp => self.tcp.get_or_init(|| self.encode_tcp()),
        }
    }

    /// The WebSocket message compressed once by this thread's shared compressor (or
    /// plain, as the same bytes as [`Wire::Ws`], under the threshold).
    fn encode_ws_deflate(&self) -> Bytes {
        match &self.body {
            Body::Event { event, data, room } => {
                let mut json = bytes::BytesMut::with_capacity(self.event_len());
                let room = room.as_deref();
                envelope::encode_event_at(&mut json, event, data, room, self.wire_position());
                compression::frame(compression::BROADCAST_WINDOW_BITS, OpCode::Text, &json)
            }
            Body::Binary {
                event,
                room,
                payload,
            } => {
                let msg = binary::encode_at(event, room.as_deref(), self.wire_position(), payload);
                compression::frame(compression::BROADCAST_WINDOW_BITS, OpCode::Binary, &msg)
            }
        }
    }

    fn encode_ws(&self) -> Bytes {
        match &self.body {
            Body::Event { event, data, room } => {
                let room = room.as_deref();
                let position = self.wire_position();
                encode_server_with(OpCode::Text, self.event_len(), |buf| {
                    envelope::encode_event_at(buf, event, data, room, position);
                })
            }
            Body::Binary {
                event,
                room,
                payload,
            } => {
                let msg = binary::encode_at(event, room.as_deref(), self.wire_position(), payload);
                encode_server(OpCode::Binary, &msg)
            }
        }
    }

    fn wire_position(&self) -> Option<Position<'_>> {
        self.position.as_ref().map(|p| Position {
            offset: p.offset,
            epoch: &p.epoch,
        })
    }

    /// The length of the JSON envelope of an event.
    fn event_len(&self) -> usize {
        match &self.body {
            Body::Event { event, data, room } => {
                envelope::event_len(event, data, room.as_deref())
                    + self.wire_position().map_or(0, |p| p.fields_len())
            }
            Body::Binary { .. } => 0,
        }
    }

    fn encode_tcp(&self) -> Bytes {
        match &self.body {
            Body::Event { event, data, .. } => {
                tcp::frame::encode(FrameType::Json, event, data.as_bytes())
            }
            Body::Binary { event, payload, .. } => {
                tcp::frame::encode(FrameType::Binary, event, payload)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_is_framed_once_and_shared() {
        let chat = EventName::from_static("chat");
        let msg = Outbound::event(&chat, r#"{"text":"hi"}"#, Some("lobby"));
        let a = msg.frame(Wire::Ws);
        let b = msg.frame(Wire::Ws);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second encoding"
        );
        let json = envelope::encode_event(&chat, r#"{"text":"hi"}"#, Some("lobby"));
        assert_eq!(
            a,
            &encode_server(OpCode::Text, &json),
            "one frame of the envelope"
        );
        let tcp = msg.frame(Wire::Tcp);
        assert_eq!(&tcp[4..5], &[FrameType::Json as u8]);
        assert!(tcp.ends_with(br#"{"text":"hi"}"#));
    }
}
