//! Binary events over WebSocket (SPEC §3.1): `[u32 BE header length][header JSON][bytes]`,
//! the header being `{"event":"audio","_binary":true}` plus an optional `"room"`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::envelope::{Envelope, Position, write_json_string};
use crate::error::EnvelopeError;
use crate::event::EventName;

/// A parsed binary message; everything borrows from the message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage<'a> {
    pub event: EventName<'a>,
    pub room: Option<Cow<'a, str>>,
    /// The header JSON as sent.
    pub header: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> BinaryMessage<'a> {
    pub fn parse(msg: &'a [u8]) -> Result<Self, EnvelopeError> {
        let truncated = |declared| EnvelopeError::BinaryHeaderTruncated {
            declared,
            len: msg.len(),
        };
        let prefix: [u8; 4] = msg
            .get(..4)
            .and_then(|p| p.try_into().ok())
            .ok_or(truncated(4))?;
        let header_len = u32::from_be_bytes(prefix) as usize;
        let header = msg
            .get(4..4 + header_len)
            .ok_or(truncated(header_len as u64 + 4))?;
        simdutf8::basic::from_utf8(header)
            .map_err(|_| EnvelopeError::InvalidJson("header is not UTF-8".into()))?;
        let envelope = Envelope::parse(header)?;
        Ok(Self {
            event: envelope.event,
            room: envelope.room,
            header,
            payload: msg.get(4 + header_len..).unwrap_or_default(),
        })
    }
}

/// Builds a binary message: header `{"event":..,"_binary":true[,"room":..]}` then `payload`.
pub fn encode(event: &EventName<'_>, room: Option<&str>, payload: &[u8]) -> Bytes {
    encode_at(event, room, None, payload)
}

/// [`encode`] with the message's place in its room's history in the header, when it has
/// one.
pub fn encode_at(
    event: &EventName<'_>,
    room: Option<&str>,
    position: Option<Position<'_>>,
    payload: &[u8],
) -> Bytes {
    let mut header = BytesMut::with_capacity(40 + event.len());
    header.put_slice(b"{\"event\":");
    write_json_string(&mut header, event);
    header.put_slice(b",\"_binary\":true");
    if let Some(room) = room {
        header.put_slice(b",\"room\":");
        write_json_string(&mut header, room);
    }
    if let Some(position) = position {
        position.write_fields(&mut header);
    }
    header.put_u8(b'}');
    let mut out = BytesMut::with_capacity(4 + header.len() + payload.len());
    out.put_u32(header.len() as u32);
    out.put_slice(&header);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use proptest::prelude::*;

    #[test]
    fn header_and_payload_are_split() {
        let msg = encode(&EventName::from_static("audio"), Some("voice"), &[1, 2, 3]);
        let parsed = BinaryMessage::parse(&msg).unwrap();
        assert_eq!(parsed.event, "audio");
        assert_eq!(parsed.room.as_deref(), Some("voice"));
        assert_eq!(parsed.payload, &[1, 2, 3]);
        let header: serde_json::Value = serde_json::from_slice(parsed.header).unwrap();
        assert_eq!(header["_binary"], true);
    }

    #[test]
    fn truncated_messages_are_refused() {
        assert!(matches!(
            BinaryMessage::parse(&[0, 0]),
            Err(EnvelopeError::BinaryHeaderTruncated { .. })
        ));
        let mut msg = 100u32.to_be_bytes().to_vec();
        msg.extend_from_slice(b"{}");
        assert_eq!(
            BinaryMessage::parse(&msg),
            Err(EnvelopeError::BinaryHeaderTruncated {
                declared: 104,
                len: 6
            })
        );
        assert_eq!(
            EnvelopeError::BinaryHeaderTruncated {
                declared: 0,
                len: 0
            }
            .code(),
            ErrorCode::InvalidBinary
        );
    }

    #[test]
    fn header_without_event_is_refused() {
        let mut msg = 2u32.to_be_bytes().to_vec();
        msg.extend_from_slice(b"{}xyz");
        assert_eq!(BinaryMessage::parse(&msg), Err(EnvelopeError::MissingEvent));
    }

    #[test]
    fn header_with_an_invalid_event_name_is_refused() {
        let header = br#"{"event":"a b","_binary":true}"#;
        let mut msg = (header.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(header);
        let refused = BinaryMessage::parse(&msg).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidEvent);
    }

    proptest! {
        #[test]
        fn round_trip(event in "[A-Za-z0-9./:_-]{1,20}", room in proptest::option::of(".{0,10}"), payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let msg = encode(&EventName::new(event.as_str()).unwrap(), room.as_deref(), &payload);
            let parsed = BinaryMessage::parse(&msg).unwrap();
            prop_assert_eq!(parsed.event.as_ref(), event.as_str());
            prop_assert_eq!(parsed.room.as_deref(), room.as_deref());
            prop_assert_eq!(parsed.payload, &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = BinaryMessage::parse(&bytes);
        }
    }
}
