//! What a TCP JSON frame's payload means (SPEC §3.2, with the rule the contract leaves
//! open written down in the README): the payload is the event's `data`, except an object
//! whose only two members are a `"room"` string and `"data"`, which is a room event
//! carrying that `data` (the TCP form of a WebSocket envelope's `"room"`).
//!
//! The payload is validated and split by sonic-rs (SIMD) in one pass with nothing built.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use crate::envelope::{
    is_object, json_string_len, string_field, validate, walk_object, write_error_object,
    write_json_string,
};
use crate::error::EnvelopeError;

/// A JSON frame's payload, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPayload<'a> {
    /// The room, for a room event.
    pub room: Option<Cow<'a, str>>,
    /// The event's `data` as raw JSON text.
    pub data: &'a str,
}

impl<'a> JsonPayload<'a> {
    /// Validates `text` as one JSON value and applies the room rule.
    pub fn parse(text: &'a str) -> Result<Self, EnvelopeError> {
        if !is_object(text) {
            // Not an object: plain data, validated whole.
            validate(text)?;
            return Ok(Self {
                room: None,
                data: text,
            });
        }
        let (mut members, mut room, mut data) = (0, None, None);
        walk_object(text, |key, value| {
            members += 1;
            match key {
                "room" => room = Some(value),
                "data" => data = Some(value),
                _ => {}
            }
        })?;
        let routed = match (members, room, data) {
            // A room that is not a string makes the payload plain data, not an error.
            (2, Some(room), Some(data)) => string_field(Some(room), "room")
                .ok()
                .flatten()
                .map(|r| (r, data)),
            _ => None,
        };
        Ok(match routed {
            Some((room, data)) => Self {
                room: Some(room),
                data: match data.as_raw_cow() {
                    Cow::Borrowed(raw) => raw,
                    // Raw text of a value borrowed from `text` is always borrowed.
                    Cow::Owned(_) => text,
                },
            },
            None => Self {
                room: None,
                data: text,
            },
        })
    }
}

/// An ACK_REQ frame's payload: `{"data":…,"_correlationId":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPayload<'a> {
    /// Raw JSON text of `data`; `None` when absent or `null`.
    pub data: Option<&'a str>,
    pub correlation_id: Cow<'a, str>,
}

impl<'a> AckPayload<'a> {
    /// Reads the payload; `_correlationId` must be a string.
    pub fn parse(text: &'a str) -> Result<Self, EnvelopeError> {
        if !is_object(text) {
            validate(text)?;
            return Err(EnvelopeError::NotAnObject);
        }
        let (mut data, mut correlation_id) = (None, None);
        walk_object(text, |key, value| match key {
            "data" => data = Some(value),
            "_correlationId" => correlation_id = Some(value),
            _ => {}
        })?;
        let correlation_id = string_field(correlation_id, "_correlationId")?
            .ok_or(EnvelopeError::FieldNotString("_correlationId"))?;
        let data = data.and_then(|d| match d.as_raw_cow() {
            Cow::Borrowed(raw) if raw != "null" => Some(raw),
            _ => None,
        });
        Ok(Self {
            data,
            correlation_id,
        })
    }
}

/// The length of [`write_ack_payload`]'s output, so a frame can be built around it in
/// one buffer.
pub fn ack_payload_len(correlation_id: &str, data: &str) -> usize {
    const DATA: usize = br#"{"data":"#.len();
    const CORRELATION: usize = br#","_correlationId":"#.len();
    DATA + data.len() + CORRELATION + json_string_len(correlation_id) + 1
}

/// `{"data":…,"_correlationId":"…"}`: the payload of an ACK_REQ and of a successful
/// ACK_RES alike, the shape [`AckPayload`] reads. `data` is raw JSON text.
pub fn write_ack_payload(buf: &mut BytesMut, correlation_id: &str, data: &str) {
    buf.put_slice(br#"{"data":"#);
    buf.put_slice(data.as_bytes());
    buf.put_slice(br#","_correlationId":"#);
    write_json_string(buf, correlation_id);
    buf.put_u8(b'}');
}

/// An ACK_RES frame's payload for a failure:
/// `{"error":{"code","message"},"_correlationId":"…"}`.
pub fn write_ack_err(buf: &mut BytesMut, correlation_id: &str, code: &str, message: &str) {
    buf.put_slice(br#"{"error":"#);
    write_error_object(buf, code, message);
    buf.put_slice(br#","_correlationId":"#);
    write_json_string(buf, correlation_id);
    buf.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_replies_read_back_as_what_they_answer() {
        let mut ok = BytesMut::new();
        write_ack_payload(&mut ok, "c\"1\n", r#"{"got":[1,2]}"#);
        assert_eq!(ok.len(), ack_payload_len("c\"1\n", r#"{"got":[1,2]}"#));
        let read = AckPayload::parse(std::str::from_utf8(&ok).unwrap()).unwrap();
        assert_eq!(
            (read.data, read.correlation_id.as_ref()),
            (Some(r#"{"got":[1,2]}"#), "c\"1\n")
        );

        let mut err = BytesMut::new();
        write_ack_err(&mut err, "c2", "bad_request", "id \"x\" is required");
        let json: serde_json::Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "bad_request", "message": "id \"x\" is required"}, "_correlationId": "c2"})
        );
    }

    #[test]
    fn an_object_of_room_and_data_alone_is_a_room_event() {
        let p = JsonPayload::parse(r#"{"room":"lobby","data":{"t":1}}"#).unwrap();
        assert_eq!((p.room.as_deref(), p.data), (Some("lobby"), r#"{"t":1}"#));
        let escaped = JsonPayload::parse(r#" {"data":[1],"room":"a\"b"} "#).unwrap();
        assert_eq!(
            (escaped.room.as_deref(), escaped.data),
            (Some("a\"b"), "[1]")
        );
    }

    #[test]
    fn anything_else_is_the_data_itself() {
        for text in [
            r#"{"room":"lobby","data":1,"x":2}"#,
            r#"{"room":"lobby"}"#,
            r#"{"room":5,"data":1}"#,
            r#"{"a":1,"b":2}"#,
            "[1,2]",
            "\"text\"",
            "42",
        ] {
            assert_eq!(
                JsonPayload::parse(text).unwrap(),
                JsonPayload {
                    room: None,
                    data: text
                },
                "{text}"
            );
        }
    }

    #[test]
    fn ack_requests_need_a_correlation_id_string() {
        let ack = AckPayload::parse(r#"{"data":{"id":1},"_correlationId":"c#1"}"#).unwrap();
        assert_eq!(
            (ack.data, &*ack.correlation_id),
            (Some(r#"{"id":1}"#), "c#1")
        );
        let bare = AckPayload::parse(r#"{"_correlationId":"x"}"#).unwrap();
        assert_eq!(bare.data, None);
        for bad in [r#"{"data":1}"#, r#"{"_correlationId":5}"#, "[]"] {
            assert!(AckPayload::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_json_is_refused() {
        for text in ["", "{", r#"{"room":"r","data":}"#, "[1,", "nul", "{} x"] {
            assert!(
                matches!(JsonPayload::parse(text), Err(EnvelopeError::InvalidJson(_))),
                "{text:?}"
            );
        }
    }
}
