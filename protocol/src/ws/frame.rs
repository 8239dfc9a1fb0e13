//! Frame headers, opcodes and encoders (RFC 6455 §5.2).
//!
//! ```text
//!  0                   1                   2                   3
//! |F|R|R|R| opcode|M| len (7)   | extended len (16 or 64) ... | mask key (32) if M |
//! ```
//! [`FrameHeader::parse`] reads a header from any byte slice and answers `Ok(None)` when
//! it is not all there yet. The encoders build a whole frame once into `Bytes`, so a
//! broadcast is framed once and every recipient gets a refcounted clone.

use bytes::{BufMut, Bytes, BytesMut};

use super::mask::apply_mask;
use crate::error::ProtocolError;

/// A frame opcode (RFC 6455 §5.2). Reserved opcodes are refused at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Close, Ping and Pong: at most 125 bytes, never fragmented (§5.5).
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }
}

impl TryFrom<u8> for OpCode {
    type Error = ProtocolError;

    fn try_from(bits: u8) -> Result<Self, ProtocolError> {
        Ok(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(ProtocolError::ReservedOpCode(other)),
        })
    }
}

/// RSV1 in [`FrameHeader::rsv`]: with permessage-deflate, the first frame of a
/// compressed message (RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// Largest possible header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1-3 as the low three bits; nonzero only with a negotiated extension.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`: `Ok(Some((header, header_len)))`, or
    /// `Ok(None)` when `buf` holds only part of it. Checks only what the header alone
    /// breaks (reserved opcode, 64-bit length MSB); the decoder checks the rules that
    /// depend on the connection's state.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let opcode = OpCode::try_from(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if payload_len >> 63 != 0 {
            return Err(ProtocolError::InvalidLength);
        }
        let mask = if masked {
            match buf
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            {
                Some(key) => {
                    at += 4;
                    Some(key)
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        let header = Self {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, at)))
    }

    /// Appends this header's wire form to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.fin) << 7 | (self.rsv & 0x07) << 4 | self.opcode.bits());
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            len @ 0..=125 => buf.put_u8(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                buf.put_u8(mask_bit | 126);
                buf.put_u16(len as u16);
            }
            len => {
                buf.put_u8(mask_bit | 127);
                buf.put_u64(len);
            }
        }
        if let Some(key) = self.mask {
            buf.put_slice(&key);
        }
    }

    /// Header length on the wire.
    pub fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + len_bytes + if self.mask.is_some() { 4 } else { 0 }
    }
}

/// Appends an unmasked (server-to-client) frame with FIN set to `buf`.
pub fn encode_server_into(buf: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    buf.reserve(header.encoded_len() + payload.len());
    header.encode_into(buf);
    buf.put_slice(payload);
}

/// Builds one unmasked server frame: the bytes every recipient of a broadcast shares.
pub fn encode_server(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_server_with(opcode, payload.len(), |buf| buf.put_slice(payload))
}

/// Builds one unmasked server frame whose `len`-byte payload `write` appends, in one
/// buffer: the payload is written in place behind the header instead of being built
/// apart and copied in. `write` must append exactly `len` bytes.
pub fn encode_server_with(opcode: OpCode, len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: len as u64,
    };
    let mut buf = BytesMut::with_capacity(header.encoded_len() + len);
    header.encode_into(&mut buf);
    write(&mut buf);
    debug_assert_eq!(
        buf.len(),
        header.encoded_len() + len,
        "payload of the stated length"
    );
    buf.freeze()
}

/// Appends a masked (client-to-server) frame with FIN set to `buf`, as a client must
/// send it (§5.3). Used by the bench client and tests.
pub fn encode_client_into(buf: &mut BytesMut, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    buf.reserve(header.encoded_len() + payload.len());
    header.encode_into(buf);
    let start = buf.len();
    buf.put_slice(payload);
    if let Some(body) = buf.get_mut(start..) {
        apply_mask(body, key, 0);
    }
}

/// Builds one masked client frame.
pub fn encode_client(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Bytes {
    let mut buf = BytesMut::new();
    encode_client_into(&mut buf, opcode, payload, key);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_written_in_place_makes_the_same_frame() {
        for len in [0, 125, 126, 0xFFFF, 0x1_0000] {
            let payload = vec![b'x'; len];
            let built = encode_server_with(OpCode::Text, len, |buf| buf.put_slice(&payload));
            assert_eq!(built, encode_server(OpCode::Text, &payload), "len {len}");
        }
    }

    #[test]
    fn lengths_use_7_16_and_64_bit_forms() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = vec![b'x'; len];
            let frame = encode_server(OpCode::Binary, &payload);
            assert_eq!(frame.len(), header_len + len);
            let (header, at) = FrameHeader::parse(&frame).unwrap().unwrap();
            assert_eq!((header.payload_len, at), (len as u64, header_len));
            assert!(header.fin && header.mask.is_none());
        }
    }

    #[test]
    fn partial_header_needs_more_bytes() {
        let frame = encode_client(OpCode::Text, &[b'a'; 300], [1, 2, 3, 4]);
        for cut in 0..8 {
            assert_eq!(FrameHeader::parse(&frame[..cut]), Ok(None), "cut {cut}");
        }
        assert!(FrameHeader::parse(&frame[..8]).unwrap().is_some());
    }

    #[test]
    fn reserved_opcodes_are_refused() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpCode(op))
            );
        }
    }

    #[test]
    fn length_with_msb_set_is_refused() {
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            FrameHeader::parse(&frame),
            Err(ProtocolError::InvalidLength)
        );
    }

    #[test]
    fn rfc_masked_hello_parses() {
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (header, at) = FrameHeader::parse(&frame).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Text);
        assert_eq!(header.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(at, 6);
        assert_eq!(
            encode_client(OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]),
            &frame[..]
        );
    }
}
