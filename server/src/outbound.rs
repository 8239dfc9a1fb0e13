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
use stellar_protocol::tcp::FrameType;
use stellar_protocol::ws::OpCode;
use stellar_protocol::ws::frame::{encode_server, encode_server_with};
use stellar_protocol::{EventName, binary, envelope, tcp};

use crate::compression;

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

/// A message shared by its recipients; see the module docs.
#[derive(Debug)]
pub struct Outbound {
    body: Body,
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

    fn new(body: Body) -> Arc<Self> {
        Arc::new(Self {
            body,
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
                let json = envelope::encode_event(event, data, room.as_deref());
                compression::frame(compression::BROADCAST_WINDOW_BITS, OpCode::Text, &json)
            }
            Body::Binary {
                event,
                room,
                payload,
            } => {
                let msg = binary::encode(event, room.as_deref(), payload);
                compression::frame(compression::BROADCAST_WINDOW_BITS, OpCode::Binary, &msg)
            }
        }
    }

    fn encode_ws(&self) -> Bytes {
        match &self.body {
            Body::Event { event, data, room } => {
                let room = room.as_deref();
                let len = envelope::event_len(event, data, room);
                encode_server_with(OpCode::Text, len, |buf| {
                    envelope::encode_event_into(buf, event, data, room);
                })
            }
            Body::Binary {
                event,
                room,
                payload,
            } => {
                let msg = binary::encode(event, room.as_deref(), payload);
                encode_server(OpCode::Binary, &msg)
            }
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
