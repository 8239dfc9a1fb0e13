//! The JSON envelope of SPEC §3.1, read without building a tree and written without
//! re-serializing one.
//!
//! Inbound, [`Envelope::parse`] deserializes with sonic-rs (SIMD) into borrowed fields:
//! `event` and the routing fields as strings, and `data` as the raw JSON text exactly as
//! sent, so a relayed message forwards it untouched. Outbound, the `encode_*` builders
//! write escaped strings and raw `data` bytes straight into one buffer.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{EnvelopeError, ErrorCode};
use crate::event::EventName;

/// A client message: `{"event","data","room","_ackName","_correlationId"}`. Unknown
/// fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Checked against SPEC §3.2 like every name that enters.
    pub event: EventName<'a>,
    pub room: Option<Cow<'a, str>>,
    /// A handler name is an event name and obeys the same rule.
    pub ack_name: Option<EventName<'a>>,
    pub correlation_id: Option<Cow<'a, str>>,
    /// The raw JSON text of `data`, or `None` when absent or `null`. Borrowed from the
    /// message.
    pub data: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// Parses an envelope from bytes, validating them as UTF-8 on the way.
    pub fn parse(text: &'a [u8]) -> Result<Self, EnvelopeError> {
        let text = simdutf8::basic::from_utf8(text)
            .map_err(|_| EnvelopeError::InvalidJson("not UTF-8".into()))?;
        Self::parse_str(text)
    }

    /// Parses an envelope from text already known to be UTF-8 (a WebSocket text message
    /// is validated by the decoder), skipping a second validation pass.
    pub fn parse_str(text: &'a str) -> Result<Self, EnvelopeError> {
        if !is_object(text) {
            // Valid JSON that is not an object is its own error; check it is JSON at all.
            validate(text)?;
            return Err(EnvelopeError::NotAnObject);
        }
        let (mut event, mut room, mut ack_name, mut correlation_id, mut data) =
            (None, None, None, None, None);
        // One pass over the top-level members; values are skipped (and validated)
        // without being built, and only the routing fields are looked at.
        walk_object(text, |key, value| match key {
            "event" => event = Some(value),
            "room" => room = Some(value),
            "_ackName" => ack_name = Some(value),
            "_correlationId" => correlation_id = Some(value),
            "data" => data = Some(value),
            _ => {}
        })?;
        let event = string_field(event, "event")
            .map_err(|_| EnvelopeError::MissingEvent)?
            .ok_or(EnvelopeError::MissingEvent)?;
        let ack_name = string_field(ack_name, "_ackName")?
            .map(EventName::new)
            .transpose()?;
        Ok(Self {
            event: EventName::new(event)?,
            room: string_field(room, "room")?,
            ack_name,
            correlation_id: string_field(correlation_id, "_correlationId")?,
            data: data.map(|raw| raw.as_raw_cow()).filter(|d| d != "null"),
        })
    }

    /// For a request (one with `_correlationId`): the handler, `_ackName` or else
    /// `event`. `None` for a plain event.
    pub fn ack_handler(&self) -> Option<&EventName<'a>> {
        self.correlation_id.as_ref()?;
        Some(self.ack_name.as_ref().unwrap_or(&self.event))
    }
}

/// Walks the members of the JSON object `text` in one pass, handing each key and value
/// to `f`: every key and value is validated, none is built, and a key or value without
/// escapes is lent from `text`, not copied. What follows the object may only be
/// whitespace, as RFC 8259 allows around a value.
///
/// This reads the object through sonic-rs's serde deserializer rather than its object
/// iterator (`to_object_iter`): the iterator copies every key into a new `String`
/// (sonic-rs 0.5 turns a borrowed key into `Cow::Owned`), three or four allocations
/// for each message, where the deserializer hands borrowed keys to [`Key`].
pub(crate) fn walk_object<'a>(
    text: &'a str,
    f: impl FnMut(&str, sonic_rs::LazyValue<'a>),
) -> Result<(), EnvelopeError> {
    let mut de = sonic_rs::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Members(f))
        .and_then(|()| de.end())
        .map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
}

/// The visitor of [`walk_object`]: each member in order, to the caller's closure.
struct Members<F>(F);

impl<'de, F: FnMut(&str, sonic_rs::LazyValue<'de>)> serde::de::Visitor<'de> for Members<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            let value: sonic_rs::LazyValue<'de> = map.next_value()?;
            (self.0)(&key, value);
        }
        Ok(())
    }
}

/// A member's name: lent from the text, or unescaped into a `String` when it has
/// escapes (rare: no field the envelope reads needs one).
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Whether the first byte of `text` past any blank is `{`: an object, to be read with
/// [`walk_object`].
pub(crate) fn is_object(text: &str) -> bool {
    text.bytes().find(|b| !b.is_ascii_whitespace()) == Some(b'{')
}

/// Validates `text` as one JSON value, nothing built.
pub(crate) fn validate(text: &str) -> Result<(), EnvelopeError> {
    sonic_rs::from_str::<sonic_rs::LazyValue<'_>>(text)
        .map(drop)
        .map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
}

/// A string field: borrowed when it has no escapes, unescaped into an owned string
/// otherwise; `null` counts as absent.
pub(crate) fn string_field<'a>(
    raw: Option<sonic_rs::LazyValue<'a>>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, EnvelopeError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.as_raw_cow();
    if text == "null" {
        return Ok(None);
    }
    if let Cow::Borrowed(text) = text {
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or(EnvelopeError::FieldNotString(name))?;
        if !inner.contains('\\') {
            return Ok(Some(Cow::Borrowed(inner)));
        }
    }
    sonic_rs::from_str::<String>(&text)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| EnvelopeError::FieldNotString(name))
}

/// Appends `s` as a JSON string literal, quotes included (RFC 8259 §7).
pub fn write_json_string(buf: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.reserve(s.len() + 2);
    buf.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        buf.put_slice(&bytes[start..i]);
        if escape.is_empty() {
            buf.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
        } else {
            buf.put_slice(escape);
        }
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'"');
}

/// Where a message of a room with history stands in it (SPEC §8): relayed events carry
/// `"offset":N,"epoch":"e"`, which a client sends back to recover what it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

impl Position<'_> {
    /// `,"offset":N,"epoch":"e"` appended to `buf`.
    pub fn write_fields(&self, buf: &mut BytesMut) {
        buf.put_slice(b",\"offset\":");
        buf.put_slice(self.offset.to_string().as_bytes());
        buf.put_slice(b",\"epoch\":");
        write_json_string(buf, self.epoch);
    }

    /// The length of [`Position::write_fields`]'s output.
    pub fn fields_len(&self) -> usize {
        const OFFSET: usize = br#","offset":"#.len();
        const EPOCH: usize = br#","epoch":"#.len();
        let digits = self.offset.checked_ilog10().map_or(1, |d| d as usize + 1);
        OFFSET + digits + EPOCH + json_string_len(self.epoch)
    }
}

/// `{"event":event,"data":data}` with `,"room":room` when given. `data` is raw JSON.
pub fn encode_event(event: &EventName<'_>, data: &str, room: Option<&str>) -> Bytes {
    let mut buf = BytesMut::with_capacity(event_len(event, data, room));
    encode_event_into(&mut buf, event, data, room);
    buf.freeze()
}

/// The length of [`encode_event`]'s output, known before it is written: a frame header
/// can then go in front of it in the same buffer.
pub fn event_len(event: &EventName<'_>, data: &str, room: Option<&str>) -> usize {
    const EVENT: usize = br#"{"event":"#.len();
    const DATA: usize = br#","data":"#.len();
    const ROOM: usize = br#","room":"#.len();
    EVENT
        + json_string_len(event)
        + DATA
        + data.len()
        + room.map_or(0, |r| ROOM + json_string_len(r))
        + 1
}

/// What [`write_json_string`] appends for `s`, quotes included.
pub fn json_string_len(s: &str) -> usize {
    let escaped: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0C => 1,
            0x00..=0x1F => 5,
            _ => 0,
        })
        .sum();
    2 + s.len() + escaped
}

/// [`encode_event`] appended to `buf`, for callers that reuse one buffer.
pub fn encode_event_into(
    buf: &mut BytesMut,
    event: &EventName<'_>,
    data: &str,
    room: Option<&str>,
) {
    encode_event_at(buf, event, data, room, None);
}

/// [`encode_event_into`] with the message's place in its room's history, when it has one.
pub fn encode_event_at(
    buf: &mut BytesMut,
    event: &EventName<'_>,
    data: &str,
    room: Option<&str>,
    position: Option<Position<'_>>,
) {
    buf.put_slice(b"{\"event\":");
    write_json_string(buf, event);
    buf.put_slice(b",\"data\":");
    buf.put_slice(data.as_bytes());
    if let Some(room) = room {
        buf.put_slice(b",\"room\":");
        write_json_string(buf, room);
    }
    if let Some(position) = position {
        position.write_fields(buf);
    }
    buf.put_u8(b'}');
}

/// A successful ack reply: `{"event","data","_isAck":true,"_correlationId"}`.
pub fn encode_ack_ok(event: &EventName<'_>, correlation_id: &str, result: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(ack_ok_len(event, correlation_id, result));
    encode_ack_ok_into(&mut buf, event, correlation_id, result);
    buf.freeze()
}

/// The length of [`encode_ack_ok`]'s envelope, so a frame can be built around it in
/// one buffer.
pub fn ack_ok_len(event: &EventName<'_>, correlation_id: &str, result: &str) -> usize {
    const EVENT: usize = br#"{"event":"#.len();
    const DATA: usize = br#","data":"#.len();
    const TAIL: usize = br#","_isAck":true,"_correlationId":"#.len();
    EVENT
        + json_string_len(event)
        + DATA
        + result.len()
        + TAIL
        + json_string_len(correlation_id)
        + 1
}

/// [`encode_ack_ok`] appended to `buf`.
pub fn encode_ack_ok_into(
    buf: &mut BytesMut,
    event: &EventName<'_>,
    correlation_id: &str,
    result: &str,
) {
    buf.put_slice(b"{\"event\":");
    write_json_string(buf, event);
    buf.put_slice(b",\"data\":");
    buf.put_slice(result.as_bytes());
    buf.put_slice(b",\"_isAck\":true,\"_correlationId\":");
    write_json_string(buf, correlation_id);
    buf.put_u8(b'}');
}

/// A failed ack reply: `{"event","error":{"code","message"},"_isAck":true,"_correlationId"}`.
pub fn encode_ack_err(
    event: &EventName<'_>,
    correlation_id: &str,
    code: &str,
    message: &str,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(80 + event.len() + code.len() + message.len());
    buf.put_slice(b"{\"event\":");
    write_json_string(&mut buf, event);
    buf.put_slice(b",\"error\":");
    write_error_object(&mut buf, code, message);
    buf.put_slice(b",\"_isAck\":true,\"_correlationId\":");
    write_json_string(&mut buf, correlation_id);
    buf.put_u8(b'}');
    buf.freeze()
}

/// An `error` event: `{"event":"error","data":{"code","message"}}`.
pub fn encode_error(code: ErrorCode, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(48 + code.as_str().len() + message.len());
    buf.put_slice(b"{\"event\":\"error\",\"data\":");
    write_error_object(&mut buf, code.as_str(), message);
    buf.put_u8(b'}');
    buf.freeze()
}

/// `{"code":code,"message":message}`, the body of errors on every wire.
pub fn write_error_object(buf: &mut BytesMut, code: &str, message: &str) {
    buf.put_slice(b"{\"code\":");
    write_json_string(buf, code);
    buf.put_slice(b",\"message\":");
    write_json_string(buf, message);
    buf.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn chat_envelope_parses_with_raw_data() {
        let text = br#"{"event":"chat","room":"lobby","data": {"a": [1, 2.50, "x"]}}"#;
        let env = Envelope::parse(text).unwrap();
        assert_eq!(env.event, "chat");
        assert_eq!(env.room.as_deref(), Some("lobby"));
        assert_eq!(env.data.as_deref(), Some(r#"{"a": [1, 2.50, "x"]}"#));
        assert_eq!(env.ack_handler(), None);
    }

    #[test]
    fn ack_handler_is_ack_name_or_event() {
        let env =
            Envelope::parse(br#"{"event":"e","_ackName":"getUser","_correlationId":"getUser#1"}"#)
                .unwrap();
        assert_eq!(env.ack_handler().map(EventName::as_str), Some("getUser"));
        let env = Envelope::parse(br#"{"event":"getUser","_correlationId":"c"}"#).unwrap();
        assert_eq!(env.ack_handler().map(EventName::as_str), Some("getUser"));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let env = Envelope::parse(br#"{"event":"ch\u0061t","room":"a\"b\u00e9"}"#).unwrap();
        assert_eq!(env.event, "chat");
        assert_eq!(env.room.as_deref(), Some("a\"bé"));
    }

    #[test]
    fn member_names_may_be_escaped_and_the_last_of_a_name_wins() {
        let env = Envelope::parse(
            br#"{"ev\u0065nt":"a","event":"b","r\u006fom":"x","data":{"s":"q\"uote"}}"#,
        )
        .unwrap();
        assert_eq!(env.event, "b");
        assert_eq!(env.room.as_deref(), Some("x"));
        // Data with escapes is still the text as sent, not unescaped.
        assert_eq!(env.data.as_deref(), Some(r#"{"s":"q\"uote"}"#));
    }

    #[test]
    fn event_and_handler_names_obey_the_rule_of_spec_3_2() {
        for bad in [
            r#"{"event":""}"#.to_owned(),
            r#"{"event":"a b"}"#.to_owned(),
            r#"{"event":"a\"b"}"#.to_owned(),
            format!(r#"{{"event":"{}"}}"#, "x".repeat(257)),
            r#"{"event":"e","_ackName":"no way","_correlationId":"1"}"#.to_owned(),
        ] {
            let refused = Envelope::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::InvalidEvent, "{bad}");
        }
        let longest = format!(r#"{{"event":"{}"}}"#, "x".repeat(256));
        assert!(Envelope::parse(longest.as_bytes()).is_ok());
    }

    #[test]
    fn each_violation_has_its_error() {
        assert!(matches!(
            Envelope::parse(b"{nope"),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b"[1,2"),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert_eq!(Envelope::parse(b"[1,2]"), Err(EnvelopeError::NotAnObject));
        assert_eq!(
            Envelope::parse(b"\"chat\""),
            Err(EnvelopeError::NotAnObject)
        );
        assert_eq!(
            Envelope::parse(br#"{"data":1}"#),
            Err(EnvelopeError::MissingEvent)
        );
        assert_eq!(
            Envelope::parse(br#"{"event":""}"#),
            Err(EnvelopeError::InvalidEvent(crate::InvalidEvent { len: 0 }))
        );
        assert_eq!(
            Envelope::parse(br#"{"event":3}"#),
            Err(EnvelopeError::MissingEvent)
        );
        assert_eq!(
            Envelope::parse(br#"{"event":"e","room":5}"#),
            Err(EnvelopeError::FieldNotString("room"))
        );
        assert_eq!(
            Envelope::parse(br#"{"event":"e","_correlationId":{}}"#),
            Err(EnvelopeError::FieldNotString("_correlationId"))
        );
        assert_eq!(EnvelopeError::NotAnObject.code(), ErrorCode::BadJson);
        assert_eq!(
            EnvelopeError::MissingEvent.code(),
            ErrorCode::InvalidEnvelope
        );
    }

    #[test]
    fn every_control_character_is_escaped() {
        for c in 0u8..0x20 {
            let s = format!("a{}b", c as char);
            let mut buf = BytesMut::new();
            write_json_string(&mut buf, &s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(back, s);
        }
        let mut buf = BytesMut::new();
        write_json_string(&mut buf, "q\"\\/é😀");
        assert_eq!(&buf[..], "\"q\\\"\\\\/é😀\"".as_bytes());
    }

    #[test]
    fn builders_produce_the_documented_shapes() {
        let v: Value = serde_json::from_slice(&encode_event(
            &EventName::from_static("chat"),
            r#"{"t":"hi"}"#,
            Some("r"),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"event": "chat", "data": {"t": "hi"}, "room": "r"})
        );
        let v: Value = serde_json::from_slice(&encode_ack_ok(
            &EventName::from_static("getUser"),
            "getUser#1",
            "[1]",
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"event": "getUser", "data": [1], "_isAck": true, "_correlationId": "getUser#1"})
        );
        let v: Value = serde_json::from_slice(&encode_ack_err(
            &EventName::from_static("g"),
            "c",
            "unknown_action",
            "no \"g\"",
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"event": "g", "error": {"code": "unknown_action", "message": "no \"g\""}, "_isAck": true, "_correlationId": "c"})
        );
        let v: Value = serde_json::from_slice(&encode_error(ErrorCode::NotMember, "m")).unwrap();
        assert_eq!(
            v,
            json!({"event": "error", "data": {"code": "not_member", "message": "m"}})
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(event in "[A-Za-z0-9./:_-]{1,20}", room in proptest::option::of(".{0,20}"), data in arb_json()) {
            let raw = data.to_string();
            let bytes = encode_event(&EventName::new(event.as_str()).unwrap(), &raw, room.as_deref());
            let env = Envelope::parse(&bytes).unwrap();
            prop_assert_eq!(env.event.as_ref(), event.as_str());
            prop_assert_eq!(env.room.as_deref(), room.as_deref());
            let back: Value = serde_json::from_str(env.data.as_deref().unwrap_or("null")).unwrap();
            prop_assert_eq!(back, data);
        }

        #[test]
        fn event_len_is_what_encode_event_writes(event in "[A-Za-z0-9./:_-]{1,256}", data in ".{0,40}", room in proptest::option::of(any::<String>())) {
            let event = EventName::new(event.as_str()).unwrap();
            let json = encode_event(&event, &data, room.as_deref());
            prop_assert_eq!(event_len(&event, &data, room.as_deref()), json.len());
        }

        #[test]
        fn ack_ok_len_is_what_encode_ack_ok_writes(event in "[A-Za-z0-9./:_-]{1,256}", correlation in any::<String>(), data in ".{0,40}") {
            let event = EventName::new(event.as_str()).unwrap();
            let json = encode_ack_ok(&event, &correlation, &data);
            prop_assert_eq!(ack_ok_len(&event, &correlation, &data), json.len());
        }

        /// Whatever follows an envelope's closing brace: accepted only when it is JSON
        /// whitespace, as serde_json decides for the same text.
        #[test]
        fn bytes_after_the_object_are_judged_as_json_does(suffix in "[ \t\r\n\u{a0}\u{2028}x},\\]0\"]{0,6}") {
            let text = format!(r#"{{"event":"e","data":{{"a":[1]}}}}{suffix}"#);
            let ours = Envelope::parse_str(&text).is_ok();
            let theirs = serde_json::from_str::<Value>(&text).is_ok();
            prop_assert_eq!(ours, theirs, "{:?}", text);
            let empty = format!("{{}}{suffix}");
            prop_assert_eq!(
                crate::tcp::JsonPayload::parse(&empty).is_ok(),
                serde_json::from_str::<Value>(&empty).is_ok(),
                "{:?}", empty
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::parse(&bytes);
        }
    }
}
