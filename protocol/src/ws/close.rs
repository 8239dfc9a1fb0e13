//! Close codes and the close-frame body (RFC 6455 §5.5.1, §7.4).
//!
//! A close body is empty, or a 2-byte big-endian code followed by a UTF-8 reason. Only
//! some codes may appear on the wire: 1000-1003, 1007-1011 (and 1012-1014, registered
//! later with IANA) and the application ranges 3000-4999. 1004-1006 and 1015 are
//! reserved for local use and must never be sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const INTERNAL_ERROR: Self = Self(1011);

    /// Whether an endpoint may put this code in a close frame (§7.4.1, §7.4.2).
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// The parsed body of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: CloseCode,
    /// Validated UTF-8, at most 123 bytes.
    pub reason: String,
}

impl CloseFrame {
    /// Parses and validates a close payload (already unmasked). `Ok(None)` is the empty
    /// body, which means "no status code" (1005 locally).
    pub fn parse(payload: &[u8]) -> Result<Option<Self>, ProtocolError> {
        match payload {
            [] => Ok(None),
            [_] => Err(ProtocolError::CloseBodyTooShort),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_allowed_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = simdutf8::basic::from_utf8(reason)
                    .map_err(|_| ProtocolError::InvalidCloseReason)?;
                Ok(Some(Self {
                    code,
                    reason: reason.to_owned(),
                }))
            }
        }
    }

    /// The close payload: code then reason, the reason cut on a char boundary so the
    /// whole body fits the 125-byte control-frame limit.
    pub fn payload(code: CloseCode, reason: &str) -> Bytes {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut body = BytesMut::with_capacity(2 + end);
        body.put_u16(code.0);
        body.put_slice(&reason.as_bytes()[..end]);
        body.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_has_no_code() {
        assert_eq!(CloseFrame::parse(&[]), Ok(None));
    }

    #[test]
    fn one_byte_body_is_a_protocol_error() {
        let err = CloseFrame::parse(&[3]).unwrap_err();
        assert_eq!(err, ProtocolError::CloseBodyTooShort);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn wire_codes_follow_rfc_ranges() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
        ] {
            assert!(CloseCode(code).is_allowed_on_wire(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!CloseCode(code).is_allowed_on_wire(), "{code}");
        }
    }

    #[test]
    fn reserved_code_is_rejected_with_1002() {
        let err = CloseFrame::parse(&1005u16.to_be_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidCloseCode(1005));
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn invalid_utf8_reason_closes_with_1007() {
        let err = CloseFrame::parse(&[0x03, 0xE8, 0xFF]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn code_and_reason_round_trip() {
        let body = CloseFrame::payload(CloseCode::GOING_AWAY, "Server shutting down");
        let frame = CloseFrame::parse(&body).unwrap().unwrap();
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
        assert_eq!(frame.reason, "Server shutting down");
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let body = CloseFrame::payload(CloseCode::NORMAL, &reason);
        assert!(body.len() <= 125);
        assert!(CloseFrame::parse(&body).is_ok());
    }
}
