//! socket.io's wire for `--proto socketio`, sans IO: engine.io v4 packets carried in
//! WebSocket text frames (WebSocket transport only, no long-polling), with socket.io v5
//! packets inside engine.io's message packet. Only what the scenarios use: CONNECT to the
//! main namespace, EVENT (`42["name",data,…]`), ACK (`43id[…]`), engine.io ping/pong and
//! close. A separate module because it is a different envelope, not a different frame:
//! `conn.rs` frames the text and answers pings, this file reads and writes the text.
//!
//! A room event is `42["event",data,"room"]`, the envelope's optional `"room"` as a third
//! argument; a socket.io server relays it to the room as the same three arguments, so the
//! stamp at the front of `data` is read as from Stellar's envelope.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use stellar_protocol::envelope;

/// The upgrade request's target: engine.io v4 over WebSocket from the first byte.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// Engine.io message + socket.io CONNECT to the main namespace, sent right after the
/// upgrade; the server's CONNECT answer (`40{"sid":…}`) stands for Stellar's `welcome`.
pub const CONNECT: &[u8] = b"40";

/// Engine.io packet types (the first byte of each text frame).
const OPEN: u8 = b'0';
const CLOSE: u8 = b'1';
const PING: u8 = b'2';
const MESSAGE: u8 = b'4';
/// Socket.io packet types (the byte after engine.io's MESSAGE).
const SIO_CONNECT: u8 = b'0';
const SIO_DISCONNECT: u8 = b'1';
const SIO_EVENT: u8 = b'2';
const SIO_ACK: u8 = b'3';
const SIO_CONNECT_ERROR: u8 = b'4';

/// One text frame read as socket.io, as ranges of that text.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// An EVENT: its name and the arguments after it (`data` and whatever follows).
    Event {
        event: Range<usize>,
        data: Range<usize>,
    },
    /// A packet with no event name of its own: CONNECT (`connect`, data = the
    /// handshake object), ACK (`ack`, data = the first reply argument) or CONNECT_ERROR
    /// (`error`).
    Named {
        event: &'static [u8],
        data: Range<usize>,
    },
    /// Engine.io PING: must be answered with PONG and the same payload within the
    /// server's `pingTimeout`, or the server closes the connection.
    Ping { payload: Range<usize> },
    /// Engine.io CLOSE or socket.io DISCONNECT.
    Closed,
    /// OPEN, NOOP, PONG, or anything the scenarios do not read.
    Other,
}

/// Reads one text frame.
pub fn parse(text: &[u8]) -> Packet {
    match text.first() {
        Some(&PING) => Packet::Ping {
            payload: 1..text.len(),
        },
        Some(&CLOSE) => Packet::Closed,
        Some(&MESSAGE) => parse_message(text),
        Some(&OPEN) | Some(_) | None => Packet::Other,
    }
}

fn parse_message(text: &[u8]) -> Packet {
    let Some(&kind) = text.get(1) else {
        return Packet::Other;
    };
    // Namespace (`/chat,`) and ack id digits come before the JSON, in that order.
    let mut at = 2;
    if text.get(at) == Some(&b'/') {
        at += memchr::memchr(b',', &text[at..]).map_or(text.len() - at, |comma| comma + 1);
    }
    while text.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    // The JSON arguments array, without its closing bracket.
    let end = if text.last() == Some(&b']') {
        text.len() - 1
    } else {
        text.len()
    };
    match kind {
        SIO_CONNECT => Packet::Named {
            event: b"connect",
            data: at..text.len(),
        },
        SIO_CONNECT_ERROR => Packet::Named {
            event: b"error",
            data: at..text.len(),
        },
        SIO_DISCONNECT => Packet::Closed,
        SIO_ACK if text.get(at) == Some(&b'[') => Packet::Named {
            event: b"ack",
            data: (at + 1).min(end)..end,
        },
        SIO_EVENT => parse_event(text, at, end),
        _ => Packet::Other,
    }
}

/// `["name"` then `,data…` or `]`. Event names are plain identifiers: the name ends at
/// the first quote (a name with an escaped quote is not one the bench reads anyway).
fn parse_event(text: &[u8], at: usize, end: usize) -> Packet {
    if text.get(at..at + 2) != Some(b"[\"") {
        return Packet::Other;
    }
    let start = at + 2;
    let Some(len) = memchr::memchr(b'"', &text[start..]) else {
        return Packet::Other;
    };
    let event = start..start + len;
    let after = start + len + 1;
    let data = if text.get(after) == Some(&b',') {
        (after + 1).min(end)..end
    } else {
        end..end
    };
    Packet::Event { event, data }
}

/// Appends the text of an EVENT: `42["event",data]`, or `42["event",data,"room"]` for a
/// room event.
pub fn event_into(out: &mut BytesMut, event: &str, data: &str, room: Option<&str>) {
    out.put_slice(b"42[");
    envelope::write_json_string(out, event);
    out.put_u8(b',');
    out.put_slice(data.as_bytes());
    if let Some(room) = room {
        out.put_u8(b',');
        envelope::write_json_string(out, room);
    }
    out.put_u8(b']');
}

/// Appends the text of an EVENT that asks for an ack: `42id["name",data]`, with the
/// decimal digits of `correlation` as the id (socket.io's ack ids are integers).
pub fn request_into(out: &mut BytesMut, name: &str, data: &str, correlation: &str) {
    out.put_slice(b"42");
    out.extend(correlation.bytes().filter(u8::is_ascii_digit));
    out.put_u8(b'[');
    envelope::write_json_string(out, name);
    out.put_u8(b',');
    out.put_slice(data.as_bytes());
    out.put_u8(b']');
}

/// Appends the text of the PONG answering a PING with `payload`.
pub fn pong_into(out: &mut BytesMut, payload: &[u8]) {
    out.put_u8(b'3');
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_of(text: &[u8]) -> Option<(String, String)> {
        let show = |r: Range<usize>| String::from_utf8_lossy(&text[r]).into_owned();
        match parse(text) {
            Packet::Event { event, data } => Some((show(event), show(data))),
            Packet::Named { event, data } => {
                Some((String::from_utf8_lossy(event).into_owned(), show(data)))
            }
            _ => None,
        }
    }

    #[test]
    fn events_name_and_arguments_are_read() {
        let cases: [(&[u8], &str, &str); 7] = [
            (
                br#"42["joined-room","room-1"]"#,
                "joined-room",
                r#""room-1""#,
            ),
            (
                br#"42["b",{"p":1,"s":2,"t":3},"room-1"]"#,
                "b",
                r#"{"p":1,"s":2,"t":3},"room-1""#,
            ),
            (br#"42["bare"]"#, "bare", ""),
            (br#"42/chat,7["x",5]"#, "x", "5"),
            (br#"431[{"p":1}]"#, "ack", r#"{"p":1}"#),
            (br#"40{"sid":"abc"}"#, "connect", r#"{"sid":"abc"}"#),
            (br#"44{"message":"no"}"#, "error", r#"{"message":"no"}"#),
        ];
        for (text, event, data) in cases {
            assert_eq!(
                event_of(text),
                Some((event.to_owned(), data.to_owned())),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn engine_packets_are_told_apart() {
        assert_eq!(parse(b"2"), Packet::Ping { payload: 1..1 });
        assert_eq!(parse(b"2probe"), Packet::Ping { payload: 1..6 });
        assert_eq!(parse(b"1"), Packet::Closed);
        assert_eq!(parse(b"41"), Packet::Closed);
        assert_eq!(
            parse(br#"0{"sid":"x","pingInterval":25000}"#),
            Packet::Other
        );
        assert_eq!(parse(b"6"), Packet::Other);
    }

    #[test]
    fn malformed_text_never_panics() {
        for text in [
            &b""[..],
            b"4",
            b"42",
            b"42[",
            b"42[\"",
            b"42[\"x",
            b"43",
            b"43]",
            b"43[",
            b"42/",
            b"42/ns",
            b"42123",
            b"]",
        ] {
            let _ = parse(text);
            let _ = event_of(text);
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut out = BytesMut::new();
        event_into(&mut out, "b", r#"{"p":1}"#, Some("room-\"2\""));
        assert_eq!(&out[..], br#"42["b",{"p":1},"room-\"2\""]"#);
        out.clear();
        request_into(&mut out, "echo", "7", "c42");
        assert_eq!(&out[..], br#"4242["echo",7]"#);
        assert_eq!(event_of(&out), Some(("echo".to_owned(), "7".to_owned())));
        out.clear();
        pong_into(&mut out, b"probe");
        assert_eq!(&out[..], b"3probe");
    }
}
