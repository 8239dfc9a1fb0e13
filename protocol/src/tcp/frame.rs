//! TCP frames (SPEC §3.2): `[u32 BE total length incl. the 7-byte header][u8 type]
//! [u16 BE event length][event UTF-8][payload]`.
//!
//! [`TcpDecoder`] takes bytes in any chunking and splits whole frames off the buffer
//! without copying the payload. Limits are checked as soon as the bytes that break them
//! are in: the declared length against `max_payload` (before any payload is buffered),
//! then the type byte, then the event name.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::TcpError;
use crate::event::EventName;

/// Bytes before the event name: length (4), type (1), event length (2).
pub const HEADER_LEN: usize = 7;

/// The 11 frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Json = 0x01,
    Binary = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    AckReq = 0x05,
    AckRes = 0x06,
    Connect = 0x07,
    Disconnect = 0x08,
    Join = 0x09,
    Leave = 0x0A,
    Error = 0x0B,
}

impl FrameType {
    /// PING, PONG and DISCONNECT carry an empty event; every other type needs a name.
    pub fn has_event(self) -> bool {
        !matches!(self, Self::Ping | Self::Pong | Self::Disconnect)
    }
}

impl TryFrom<u8> for FrameType {
    type Error = TcpError;

    fn try_from(b: u8) -> Result<Self, TcpError> {
        Ok(match b {
            0x01 => Self::Json,
            0x02 => Self::Binary,
            0x03 => Self::Ping,
            0x04 => Self::Pong,
            0x05 => Self::AckReq,
            0x06 => Self::AckRes,
            0x07 => Self::Connect,
            0x08 => Self::Disconnect,
            0x09 => Self::Join,
            0x0A => Self::Leave,
            0x0B => Self::Error,
            other => return Err(TcpError::UnknownType(other)),
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpFrame {
    pub kind: FrameType,
    /// The event name's bytes, checked; empty exactly for the types without one. Split
    /// off the buffer like the payload: decoding a frame allocates nothing.
    name: Bytes,
    pub payload: Bytes,
}

impl TcpFrame {
    /// The event name; `None` exactly for the types without one
    /// ([`FrameType::has_event`]).
    pub fn event(&self) -> Option<EventName<'_>> {
        if self.name.is_empty() {
            return None;
        }
        // Checked by the decoder, and a valid name is ASCII: this is always `Some`.
        std::str::from_utf8(&self.name).ok().map(EventName::checked)
    }
}

/// Decodes frames from a growing buffer.
#[derive(Debug, Clone)]
pub struct TcpDecoder {
    max_payload: usize,
}

impl TcpDecoder {
    /// `max_payload` caps a frame's body (event name and payload).
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// Splits the next whole frame off `buf`; `Ok(None)` when it is not all there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<TcpFrame>, TcpError> {
        let Some(prefix) = buf.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
            return Ok(None);
        };
        let total = u32::from_be_bytes(prefix);
        if (total as usize) < HEADER_LEN {
            return Err(TcpError::FrameTooShort(total));
        }
        if total as usize - HEADER_LEN > self.max_payload {
            return Err(TcpError::FrameTooBig {
                len: total,
                max: self.max_payload,
            });
        }
        let Some(&type_byte) = buf.get(4) else {
            return Ok(None);
        };
        let kind = FrameType::try_from(type_byte)?;
        let Some(event_len) = buf.get(5..7).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return Ok(None);
        };
        let body_len = total - HEADER_LEN as u32;
        if u32::from(event_len) > body_len {
            return Err(TcpError::EventOverrun {
                event_len,
                body_len,
            });
        }
        if buf.len() < total as usize {
            buf.reserve(total as usize - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total as usize);
        frame.advance(HEADER_LEN);
        let name = frame.split_to(event_len as usize);
        let valid = if kind.has_event() {
            crate::event::is_valid(&name)
        } else {
            name.is_empty()
        };
        if !valid {
            return Err(TcpError::InvalidEventName);
        }
        Ok(Some(TcpFrame {
            kind,
            name: name.freeze(),
            payload: frame.freeze(),
        }))
    }
}

/// Appends one frame to `buf`. The name is checked ([`EventName`]), so its length
/// always fits the `u16` field.
pub fn encode_into(buf: &mut BytesMut, kind: FrameType, event: &EventName<'_>, payload: &[u8]) {
    write_frame(buf, kind, event.as_bytes(), payload);
}

/// Builds one frame.
pub fn encode(kind: FrameType, event: &EventName<'_>, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(&mut buf, kind, event, payload);
    buf.freeze()
}

/// Builds one frame whose `len`-byte payload `write` appends, in one buffer: the
/// payload is written in place behind the header instead of being built apart and
/// copied in. `write` must append exactly `len` bytes.
pub fn encode_with(
    kind: FrameType,
    event: &EventName<'_>,
    len: usize,
    write: impl FnOnce(&mut BytesMut),
) -> Bytes {
    let mut buf = BytesMut::new();
    write_header(&mut buf, kind, event.as_bytes(), len);
    write(&mut buf);
    debug_assert_eq!(
        buf.len(),
        HEADER_LEN + event.len() + len,
        "payload of the stated length"
    );
    buf.freeze()
}

/// Builds a frame of a type that carries no event (PING, PONG, DISCONNECT).
pub fn encode_control(kind: FrameType) -> Bytes {
    debug_assert!(!kind.has_event(), "{kind:?} frames carry an event name");
    let mut buf = BytesMut::new();
    write_frame(&mut buf, kind, b"", b"");
    buf.freeze()
}

fn write_frame(buf: &mut BytesMut, kind: FrameType, event: &[u8], payload: &[u8]) {
    write_header(buf, kind, event, payload.len());
    buf.put_slice(payload);
}

/// Appends the header and name of a frame with a `len`-byte payload, room reserved for
/// the payload.
fn write_header(buf: &mut BytesMut, kind: FrameType, event: &[u8], len: usize) {
    let total = HEADER_LEN + event.len() + len;
    buf.reserve(total);
    buf.put_u32(total as u32);
    buf.put_u8(kind as u8);
    buf.put_u16(event.len() as u16);
    buf.put_slice(event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [FrameType; 11] = [
        FrameType::Json,
        FrameType::Binary,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::AckReq,
        FrameType::AckRes,
        FrameType::Connect,
        FrameType::Disconnect,
        FrameType::Join,
        FrameType::Leave,
        FrameType::Error,
    ];

    /// A frame with any name, checked or not: what a hostile peer can send.
    fn raw(kind: FrameType, event: &str, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        write_frame(&mut buf, kind, event.as_bytes(), payload);
        buf.freeze()
    }

    fn decode_one(bytes: &[u8], max: usize) -> Result<Option<TcpFrame>, TcpError> {
        TcpDecoder::new(max).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn every_type_round_trips() {
        for kind in ALL {
            let event = if kind.has_event() { "room:join" } else { "" };
            let bytes = raw(kind, event, b"{\"x\":1}");
            let frame = decode_one(&bytes, 1024).unwrap().unwrap();
            assert_eq!(
                (
                    frame.kind,
                    frame.event().as_deref().unwrap_or(""),
                    &frame.payload[..]
                ),
                (kind, event, &b"{\"x\":1}"[..])
            );
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_length_prefix_alone() {
        let max = 100;
        let at_limit = raw(FrameType::Binary, "e", &[0; 99]);
        assert!(decode_one(&at_limit, max).unwrap().is_some());
        let over = raw(FrameType::Binary, "e", &[0; 100]);
        assert_eq!(
            decode_one(&over[..4], max),
            Err(TcpError::FrameTooBig { len: 108, max })
        );
    }

    #[test]
    fn each_violation_has_its_error() {
        assert_eq!(
            decode_one(&[0, 0, 0, 6], 10),
            Err(TcpError::FrameTooShort(6))
        );
        assert_eq!(
            decode_one(&[0, 0, 0, 7, 0x0C], 10),
            Err(TcpError::UnknownType(0x0C))
        );
        assert_eq!(
            decode_one(&[0, 0, 0, 8, 0x01, 0, 2], 10),
            Err(TcpError::EventOverrun {
                event_len: 2,
                body_len: 1
            })
        );
        assert_eq!(
            decode_one(&raw(FrameType::Json, "", b"{}"), 10),
            Err(TcpError::InvalidEventName)
        );
        assert_eq!(
            decode_one(&raw(FrameType::Json, "a b", b""), 10),
            Err(TcpError::InvalidEventName)
        );
        assert_eq!(
            decode_one(&raw(FrameType::Ping, "x", b""), 10),
            Err(TcpError::InvalidEventName)
        );
        let long = "a".repeat(257);
        assert_eq!(
            decode_one(&raw(FrameType::Json, &long, b""), 1000),
            Err(TcpError::InvalidEventName)
        );
        assert!(
            decode_one(&raw(FrameType::Json, &long[..256], b""), 1000)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            TcpError::UnknownType(9).code(),
            crate::ErrorCode::UnknownType
        );
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let bytes = raw(FrameType::Json, "chat", b"{\"t\":1}");
        for cut in 0..bytes.len() {
            assert_eq!(decode_one(&bytes[..cut], 100), Ok(None), "cut {cut}");
        }
    }

    fn arb_frame() -> impl Strategy<Value = (FrameType, String, Vec<u8>)> {
        (
            0usize..11,
            "[A-Za-z0-9./:_-]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(i, e, p)| {
                let kind = ALL[i];
                (kind, if kind.has_event() { e } else { String::new() }, p)
            })
    }

    proptest! {
        #[test]
        fn encode_with_writes_what_encode_does(event in "[A-Za-z0-9./:_-]{1,256}", payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let event = EventName::new(event.as_str()).unwrap();
            let built = encode_with(FrameType::AckRes, &event, payload.len(), |buf| buf.put_slice(&payload));
            prop_assert_eq!(built, encode(FrameType::AckRes, &event, &payload));
        }

        #[test]
        fn any_chunking_gives_the_same_frames(frames in proptest::collection::vec(arb_frame(), 1..6),
                                              cuts in proptest::collection::vec(1usize..20, 1..10)) {
            let mut wire = Vec::new();
            for (k, e, p) in &frames {
                wire.extend_from_slice(&raw(*k, e, p));
            }
            let mut decoder = TcpDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    got.push((f.kind, f.event().map_or_else(String::new, |e| e.to_string()), f.payload.to_vec()));
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoder = TcpDecoder::new(64);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }
}
