//! Incremental UTF-8 validation of text messages (RFC 6455 §8.1).
//!
//! A text message may arrive in many frames and each frame in many reads; the RFC wants
//! the connection failed as soon as the bytes cannot be UTF-8, not once the message is
//! whole. [`Utf8Validator`] checks the bytes appended to a growing message buffer with
//! simdutf8, remembering how far the buffer is known good. A sequence cut by the end of
//! the bytes so far (at most 3 bytes) is re-checked when more arrive; it only counts as
//! invalid if the message ends there.

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
