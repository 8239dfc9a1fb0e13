//! Incremental UTF-8 validation of text messages (RFC 6455 §8.1).
//!
//! A text message may arrive in many frames and each frame in many reads; the RFC wants
//! the connection failed as soon as the bytes cannot be UTF-8, not once the message is
//! whole. [`Utf8Validator`] checks the bytes appended to a growing message buffer with
//! simdutf8, remembering how far the buffer is known good. A sequence cut by the end of
//! the bytes so far (at most 3 bytes) is re-checked when more arrive; it only counts as
//! invalid if the message ends there.

/// Bytes known to be UTF-8: a text message's payload, validated once by the decoder
/// and never again (the envelope parser and handlers read it as `&str` for free).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(bytes::Bytes);

impl Utf8Bytes {
    /// Takes `bytes` after the decoder's validator accepted all of them.
    pub(crate) fn from_validated(bytes: bytes::Bytes) -> Self {
        debug_assert!(simdutf8::basic::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the only constructors are `from_validated`, called by the decoder after
        // `Utf8Validator::finish` (or the in-place path's whole-payload check) accepted
        // exactly these bytes, and `TryFrom<Bytes>`/`From<&'static str>`, which check
        // or are `str`; the bytes are immutable afterwards (`Bytes` is never mutated).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &bytes::Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<bytes::Bytes> for Utf8Bytes {
    type Error = InvalidUtf8;

    fn try_from(bytes: bytes::Bytes) -> Result<Self, InvalidUtf8> {
        simdutf8::basic::from_utf8(&bytes).map_err(|_| InvalidUtf8)?;
        Ok(Self(bytes))
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(s: &'static str) -> Self {
        Self(bytes::Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(bytes::Bytes::from(s))
    }
}

/// Tracks how much of a growing text message is known to be valid UTF-8.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    checked: usize,
}

/// The bytes cannot be the prefix of any valid UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates what `message` gained since the last call. Fails at the first byte
    /// that no continuation could make valid; an incomplete trailing sequence passes.
    pub fn feed(&mut self, message: &[u8]) -> Result<(), InvalidUtf8> {
        let fresh = message.get(self.checked..).ok_or(InvalidUtf8)?;
        match simdutf8::compat::from_utf8(fresh) {
            Ok(_) => {
                self.checked = message.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Call once the message is complete: fails if it ends inside a sequence.
    pub fn finish(&mut self, message: &[u8]) -> Result<(), InvalidUtf8> {
        self.feed(message)?;
        let complete = self.checked == message.len();
        self.checked = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Forgets the current message.
    pub fn reset(&mut self) {
        self.checked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_bytes_refuse_what_is_not_utf8_and_read_back_what_is() {
        // Every slice of mixed-width text, at every offset and length: accepted exactly
        // when std accepts it, and then read back unchanged (the oracle for `as_str`).
        let text = "a wörld 𝄞 clef €x".repeat(3).into_bytes();
        for start in 0..text.len() {
            for end in start..=text.len().min(start + 64) {
                let slice = &text[start..end];
                let ours = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(slice));
                match std::str::from_utf8(slice) {
                    Ok(s) => assert_eq!(ours.unwrap().as_str(), s),
                    Err(_) => assert_eq!(ours, Err(InvalidUtf8)),
                }
            }
        }
    }

    fn feed_bytewise(bytes: &[u8]) -> Result<(), (usize, InvalidUtf8)> {
        let mut v = Utf8Validator::default();
        for end in 1..=bytes.len() {
            v.feed(&bytes[..end]).map_err(|e| (end, e))?;
        }
        v.finish(bytes).map_err(|e| (bytes.len(), e))
    }

    #[test]
    fn multibyte_sequences_split_anywhere_pass() {
        assert_eq!(feed_bytewise("κόσμε 𝄞 €".as_bytes()), Ok(()));
    }

    #[test]
    fn fails_at_the_first_impossible_byte() {
        // "κόσμε" then 0xED 0xA0 0x80, a UTF-16 surrogate: 0xA0 after 0xED is impossible.
        let mut bytes = "κόσμε".as_bytes().to_vec();
        let bad_at = bytes.len() + 2;
        bytes.extend_from_slice(&[0xED, 0xA0, 0x80, b'e', b'd', b'i', b't', b'e', b'd']);
        assert_eq!(feed_bytewise(&bytes), Err((bad_at, InvalidUtf8)));
    }

    #[test]
    fn truncated_sequence_at_the_end_fails_on_finish() {
        let bytes = [b'a', 0xF0, 0x9D];
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&bytes), Ok(()));
        assert_eq!(v.finish(&bytes), Err(InvalidUtf8));
    }

    #[test]
    fn overlong_and_out_of_range_fail() {
        for bad in [&[0xC0, 0x80][..], &[0xF4, 0x90, 0x80, 0x80], &[0xFF]] {
            assert!(feed_bytewise(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_std_for_any_chunking(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                            cuts in proptest::collection::vec(0usize..64, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut v = Utf8Validator::default();
            let mut ok = true;
            for &c in &cuts {
                if v.feed(&bytes[..c]).is_err() { ok = false; break; }
            }
            if ok { ok = v.finish(&bytes).is_ok(); }
            prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
        }
    }
}
