//! Event names (SPEC §3.2): 1-256 bytes of `[A-Za-z0-9\-./:_]`, on every protocol.
//!
//! An [`EventName`] can only be made by checking the rule, and every encoder in this
//! crate takes one, so no frame can carry a name that was not checked where it entered.
//! The rule is what keeps the protocols consistent with each other: a TCP frame stores
//! the name's length in a `u16`, and a WebSocket client must not be able to send a name
//! that a TCP member would read back as another event and a payload of the sender's
//! choosing.

use std::borrow::Cow;
use std::fmt;

/// Longest event name in bytes.
pub const MAX_EVENT_LEN: usize = 256;

/// A name that breaks the rule of SPEC §3.2. Answered with an `error` event (or a TCP
/// ERROR frame) whose code is `invalid_event`; nothing is relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid event name ({len} bytes): names are 1-256 bytes of [A-Za-z0-9-./:_]")]
pub struct InvalidEvent {
    /// Length in bytes of the refused name.
    pub len: usize,
}

/// An event name that passed the rule; borrowed from the message it was read from, or
/// owned (`EventName<'static>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName<'a>(Cow<'a, str>);

/// Whether `b` may appear in an event name.
const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b':' | b'_')
}

/// 1-256 bytes of `[A-Za-z0-9\-./:_]`.
pub const fn is_valid(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > MAX_EVENT_LEN {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        if !is_name_byte(name[i]) {
            return false;
        }
        i += 1;
    }
    true
}

impl<'a> EventName<'a> {
    /// Checks `name` against the rule.
    pub fn new(name: impl Into<Cow<'a, str>>) -> Result<Self, InvalidEvent> {
        let name = name.into();
        if is_valid(name.as_bytes()) {
            Ok(Self(name))
        } else {
            Err(InvalidEvent { len: name.len() })
        }
    }

    /// Checks a name read as bytes (a TCP frame's event field) and owns it.
    pub fn from_bytes(name: &[u8]) -> Result<EventName<'static>, InvalidEvent> {
        let invalid = InvalidEvent { len: name.len() };
        if !is_valid(name) {
            return Err(invalid);
        }
        // Valid names are ASCII, so this cannot fail.
        let text = std::str::from_utf8(name).map_err(|_| invalid)?;
        Ok(EventName(Cow::Owned(text.to_owned())))
    }

    /// A name known when the program is written; the rule is checked at compile time
    /// when used in a `const`.
    ///
    /// # Panics
    /// When `name` breaks the rule (at compile time in a `const` item).
    pub const fn from_static(name: &'static str) -> EventName<'static> {
        assert!(is_valid(name.as_bytes()), "invalid event name");
        EventName(Cow::Borrowed(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name, borrowed from `self`.
    /// A name already checked against the rule (debug builds check again).
    pub(crate) fn checked(name: &'a str) -> Self {
        debug_assert!(is_valid(name.as_bytes()), "unchecked event name {name:?}");
        EventName(Cow::Borrowed(name))
    }

    pub fn borrowed(&self) -> EventName<'_> {
        EventName(Cow::Borrowed(&self.0))
    }

    /// The same name with no borrow left.
    pub fn into_owned(self) -> EventName<'static> {
        EventName(Cow::Owned(self.0.into_owned()))
    }
}

impl std::ops::Deref for EventName<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EventName<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for EventName<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for EventName<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl<'a> TryFrom<&'a str> for EventName<'a> {
    type Error = InvalidEvent;

    fn try_from(name: &'a str) -> Result<Self, InvalidEvent> {
        Self::new(name)
    }
}

impl TryFrom<String> for EventName<'static> {
    type Error = InvalidEvent;

    fn try_from(name: String) -> Result<Self, InvalidEvent> {
        Self::new(name)
    }
}

/// The events the server itself sends or answers (SPEC §3.1), named once.
pub mod reserved {
    use super::EventName;

    pub const WELCOME: EventName<'static> = EventName::from_static("welcome");
    pub const AUTH: EventName<'static> = EventName::from_static("auth");
    pub const AUTH_SUCCESS: EventName<'static> = EventName::from_static("auth_success");
    pub const AUTH_ERROR: EventName<'static> = EventName::from_static("auth_error");
    pub const JOIN_ROOM: EventName<'static> = EventName::from_static("join-room");
    pub const JOINED_ROOM: EventName<'static> = EventName::from_static("joined-room");
    pub const LEAVE_ROOM: EventName<'static> = EventName::from_static("leave-room");
    pub const LEFT_ROOM: EventName<'static> = EventName::from_static("left-room");
    pub const SUBSCRIBE: EventName<'static> = EventName::from_static("subscribe");
    pub const SUBSCRIBED: EventName<'static> = EventName::from_static("subscribed");
    pub const UNSUBSCRIBE: EventName<'static> = EventName::from_static("unsubscribe");
    pub const UNSUBSCRIBED: EventName<'static> = EventName::from_static("unsubscribed");
    pub const SAY: EventName<'static> = EventName::from_static("say");
    pub const ROOM_VIEW: EventName<'static> = EventName::from_static("room-view");
    pub const DETAILS: EventName<'static> = EventName::from_static("details");
    pub const FILE: EventName<'static> = EventName::from_static("file");
    pub const PING: EventName<'static> = EventName::from_static("ping");
    pub const PONG: EventName<'static> = EventName::from_static("pong");
    pub const ALERT: EventName<'static> = EventName::from_static("alert");
    pub const ERROR: EventName<'static> = EventName::from_static("error");
    pub const CONNECT: EventName<'static> = EventName::from_static("connect");
    pub const DISCONNECT: EventName<'static> = EventName::from_static("disconnect");
    pub const CONNECTION: EventName<'static> = EventName::from_static("connection");
    /// Recover a room's missed messages from a position (SPEC §8).
    pub const RECOVER: EventName<'static> = EventName::from_static("recover");
    /// The end of a recovery: `{"room","recovered","offset","epoch"}`.
    pub const RECOVERED: EventName<'static> = EventName::from_static("recovered");
    /// A client joined a presence room: `{"room","id","userId"}`.
    pub const PRESENCE_JOIN: EventName<'static> = EventName::from_static("presence-join");
    /// A client left a presence room (or disconnected, or its node died).
    pub const PRESENCE_LEAVE: EventName<'static> = EventName::from_static("presence-leave");

    /// Events only the server sends: a client may not send them, nor a handler take them.
    pub const SERVER_ONLY: [EventName<'static>; 13] = [
        WELCOME,
        AUTH_SUCCESS,
        AUTH_ERROR,
        JOINED_ROOM,
        LEFT_ROOM,
        SUBSCRIBED,
        UNSUBSCRIBED,
        PONG,
        ALERT,
        ERROR,
        RECOVERED,
        PRESENCE_JOIN,
        PRESENCE_LEAVE,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rule_of_spec_3_2() {
        for good in [
            "a",
            "chat",
            "room:join",
            "a-b.c/d:e_f",
            "Z9",
            &"x".repeat(256),
        ] {
            assert!(EventName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "é", "chat\n", "a\"b", "{", &"x".repeat(257)] {
            assert_eq!(
                EventName::new(bad),
                Err(InvalidEvent { len: bad.len() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn static_names_are_checked_in_const_context() {
        const WELCOME: EventName<'static> = EventName::from_static("welcome");
        assert_eq!(WELCOME, "welcome");
        assert!(std::panic::catch_unwind(|| EventName::from_static("no spaces")).is_err());
    }

    proptest! {
        #[test]
        fn a_name_is_valid_exactly_when_every_byte_and_the_length_are(name in any::<String>()) {
            let by_rule = (1..=256).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || "-./:_".contains(b as char));
            prop_assert_eq!(EventName::new(name.as_str()).is_ok(), by_rule);
        }
    }
}
