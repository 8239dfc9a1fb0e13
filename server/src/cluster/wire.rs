//! A message as it crosses Redis: what the sending node had before framing, so the
//! receiving node frames it once for its own members with no JSON parsed or re-encoded.
//!
//! ```text
//! position  "P|" (no history) or "H<offset>:<epoch>|" (prepended by the history script)
//! u32       origin node (0: every node delivers it, the origin included)
//! u8        flags: 1 binary, 2 room field, 4 exclude, 8 target client
//! [u32 u16 u64]  exclude id     (flag 4)
//! [u32 u16 u64]  target id      (flag 8)
//! u16 + bytes    event name
//! [u16 + bytes]  room field     (flag 2)
//! rest           data (JSON text) or binary payload
//! ```
//!
//! Binary-safe (Redis strings are bytes). Nothing from Redis is trusted further than a
//! client's input: the event name is checked again and every length is bounded.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use stellar_protocol::EventName;

use crate::history::Pos;
use crate::mesh::ClientId;
use crate::outbound::{Outbound, Parts};

const BINARY: u8 = 1;
const ROOM: u8 = 2;
const EXCLUDE: u8 = 4;
const TARGET: u8 = 8;

/// A message decoded from Redis.
pub struct Message {
    pub exclude: Option<ClientId>,
    pub target: Option<ClientId>,
    pub msg: Arc<Outbound>,
}

/// Encodes `msg` from node `origin` with the "no history yet" position prefix; the
/// history script replaces the prefix with the message's position.
pub fn encode(
    origin: u32,
    msg: &Outbound,
    exclude: Option<ClientId>,
    target: Option<ClientId>,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, origin, msg, exclude, target);
    out
}

/// [`encode`], appended to `out`.
pub fn encode_into(
    out: &mut Vec<u8>,
    origin: u32,
    msg: &Outbound,
    exclude: Option<ClientId>,
    target: Option<ClientId>,
) {
    let (event, room, rest, mut flags): (&EventName<'_>, Option<&str>, &[u8], u8) =
        match msg.parts() {
            Parts::Event { event, data, room } => (event, room, data.as_bytes(), 0),
            Parts::Binary {
                event,
                room,
                payload,
            } => (event, room, payload, BINARY),
        };
    if room.is_some() {
        flags |= ROOM;
    }
    if exclude.is_some() {
        flags |= EXCLUDE;
    }
    if target.is_some() {
        flags |= TARGET;
    }
    out.reserve(40 + event.len() + rest.len());
    out.put_slice(b"P|");
    out.put_u32(origin);
    out.put_u8(flags);
    for id in [exclude, target].into_iter().flatten() {
        put_id(out, id);
    }
    out.put_u16(event.len() as u16);
    out.put_slice(event.as_bytes());
    if let Some(room) = room {
        out.put_u16(room.len() as u16);
        out.put_slice(room.as_bytes());
    }
    out.put_slice(rest);
}

/// The body of an encoded message, without its position prefix (what the history
/// script stores and prefixes with the position it gives).
pub fn body(encoded: &[u8]) -> &[u8] {
    encoded.strip_prefix(b"P|").unwrap_or(encoded)
}

fn put_id(out: &mut Vec<u8>, id: ClientId) {
    out.put_u32(id.node);
    out.put_u16(id.worker);
    out.put_u64(id.seq);
}

fn get_id(buf: &mut Bytes) -> Option<ClientId> {
    (buf.remaining() >= 14).then(|| ClientId {
        node: buf.get_u32(),
        worker: buf.get_u16(),
        seq: buf.get_u64(),
    })
}

fn get_str(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

/// Decodes a message as it came from Redis; `None` when it is not one of ours.
pub fn decode(payload: &[u8]) -> Option<Message> {
    let bar = payload.iter().position(|b| *b == b'|')?;
    let position = parse_position(&payload[..bar])?;
    decode_body(&payload[bar + 1..], position)
}

/// The node a message came from, read without decoding it (a node skips its own
/// messages that Redis sends back).
pub fn origin(payload: &[u8]) -> Option<u32> {
    let bar = payload.iter().position(|b| *b == b'|')?;
    let bytes = payload.get(bar + 1..bar + 5)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// `P` (none) or `H<offset>:<epoch>`.
fn parse_position(prefix: &[u8]) -> Option<Option<Pos>> {
    match prefix.split_first()? {
        (b'P', []) => Some(None),
        (b'H', rest) => {
            let text = std::str::from_utf8(rest).ok()?;
            let (offset, epoch) = text.split_once(':')?;
            Some(Some(Pos {
                offset: offset.parse().ok()?,
                epoch: Arc::from(epoch),
            }))
        }
        _ => None,
    }
}

/// Decodes a body (see the module docs) at `position`.
pub fn decode_body(body: &[u8], position: Option<Pos>) -> Option<Message> {
    let mut buf = Bytes::copy_from_slice(body);
    if buf.remaining() < 5 {
        return None;
    }
    buf.advance(4); // the origin: see `origin`
    let flags = buf.get_u8();
    let exclude = if flags & EXCLUDE != 0 {
        Some(get_id(&mut buf)?)
    } else {
        None
    };
    let target = if flags & TARGET != 0 {
        Some(get_id(&mut buf)?)
    } else {
        None
    };
    let event = EventName::new(&get_str(&mut buf)?).ok()?.into_owned();
    let room = if flags & ROOM != 0 {
        Some(get_str(&mut buf)?)
    } else {
        None
    };
    let parts = if flags & BINARY != 0 {
        Parts::Binary {
            event: &event,
            room: room.as_deref(),
            payload: &buf,
        }
    } else {
        Parts::Event {
            event: &event,
            data: std::str::from_utf8(&buf).ok()?,
            room: room.as_deref(),
        }
    };
    Some(Message {
        exclude,
        target,
        msg: Outbound::from_parts(parts, position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Wire;

    fn id(seq: u64) -> ClientId {
        ClientId {
            node: 7,
            worker: 1,
            seq,
        }
    }

    #[test]
    fn events_and_binary_cross_unchanged_and_frame_the_same() {
        let event = EventName::from_static("chat");
        let sent = Outbound::event(&event, r#"{"text":"héllo"}"#, Some("lobby"));
        let wire = encode(9, &sent, Some(id(3)), None);
        let got = decode(&wire).expect("decodes");
        assert_eq!(origin(&wire), Some(9));
        assert_eq!(got.exclude, Some(id(3)));
        assert_eq!(got.target, None);
        assert_eq!(got.msg.frame(Wire::Ws), sent.frame(Wire::Ws));
        assert_eq!(got.msg.frame(Wire::Tcp), sent.frame(Wire::Tcp));

        let payload = Bytes::from_static(&[0, 1, 2, 255, b'|']);
        let sent = Outbound::binary(&event, None, payload);
        let got = decode(&encode(0, &sent, None, Some(id(4)))).expect("decodes");
        assert_eq!(got.target, Some(id(4)));
        assert_eq!(got.msg.frame(Wire::Ws), sent.frame(Wire::Ws));
    }

    #[test]
    fn a_history_position_prefix_reaches_the_frame() {
        let event = EventName::from_static("m");
        let sent = Outbound::event(&event, "1", Some("r"));
        let mut wire = b"H42:abc|".to_vec();
        wire.extend_from_slice(body(&encode(0, &sent, None, None)));
        let got = decode(&wire).expect("decodes");
        let pos = got.msg.position().expect("positioned");
        assert_eq!((pos.offset, &*pos.epoch), (42, "abc"));
        let frame = got.msg.frame(Wire::Ws);
        assert!(
            frame.ends_with(br#""room":"r","offset":42,"epoch":"abc"}"#),
            "{frame:?}"
        );
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert!(decode(b"").is_none());
        assert!(decode(b"P|").is_none());
        assert!(decode(b"X|\0\0\0\0\0\0\x04ab").is_none());
        assert!(decode(b"Hx:e|\0\0\0\0\0\0\x01m").is_none());
        // An event name outside the rules of SPEC 3.2.
        assert!(decode(b"P|\0\0\0\0\0\0\x02a b").is_none());
        // A length past the end.
        assert!(decode(b"P|\0\0\0\0\0\0\xffm").is_none());
        // Text data that is not UTF-8.
        assert!(decode(b"P|\0\0\0\0\0\0\x01m\xff").is_none());
    }
}
