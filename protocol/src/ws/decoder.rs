//! The message decoder: frames in, whole messages out (RFC 6455 §5.4-§5.5).
//!
//! [`MessageDecoder`] is a state machine fed whatever bytes the socket gave, down to one
//! byte at a time. It enforces every framing rule that depends on connection state:
//! masking direction, reserved bits, control-frame limits, fragmentation order with
//! control frames interleaved, the message size cap (checked on each header, before the
//! payload is buffered) and UTF-8 of text messages, checked as the bytes arrive so an
//! invalid message fails at its first bad byte even across fragments.
//!
//! A whole unfragmented frame already in the buffer takes the fast path,
//! [`MessageDecoder::decode_in_place`]: checked, unmasked and validated where it lies.
//! `decode` then splits its payload off as `Bytes`, with no copy; a reader that looks at
//! each message once and drops it can call `decode_in_place` itself and read the payload
//! in the buffer, so not even a refcount is touched.
//!
//! With permessage-deflate negotiated ([`DecoderConfig::deflate`]), RSV1 on the first
//! frame of a data message marks it compressed (RFC 7692 §6): its payload is assembled
//! as it came and handed out as [`Message::CompressedText`] or
//! [`Message::CompressedBinary`] for the connection's
//! [`Decompressor`](super::deflate::Decompressor), which inflates it and checks the
//! UTF-8 of text on the inflated bytes. `max_message_size` then bounds the compressed
//! bytes; the inflater bounds what they inflate to.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use super::close::CloseFrame;
use super::frame::{FrameHeader, OpCode, RSV1};
use super::mask::apply_mask;
use super::utf8::{Utf8Bytes, Utf8Validator};
use crate::error::ProtocolError;

/// Which side of the connection the decoder runs on; it decides the masking rule (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes client frames, which must be masked.
    Server,
    /// Decodes server frames, which must not be masked.
    Client,
}

/// Limits and role of a decoder.
#[derive(Debug, Clone, Copy)]
pub struct DecoderConfig {
    pub role: Role,
    /// Largest message (all fragments together) in bytes; larger ones fail with 1009.
    /// It bounds the memory one connection can make the server buffer.
    pub max_message_size: usize,
    /// permessage-deflate was negotiated: RSV1 is legal on the first frame of a data
    /// message and marks it compressed (RFC 7692 §6). Off by default: without a
    /// negotiated extension every RSV bit fails the connection (RFC 6455 §5.2).
    pub deflate: bool,
}

impl Default for DecoderConfig {
    /// Server role, 1 MiB messages (SPEC §5 `max_payload`).
    fn default() -> Self {
        Self {
            role: Role::Server,
            max_message_size: 1 << 20,
            deflate: false,
        }
    }
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, validated as UTF-8 by the decoder (once).
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame: `None` when it carried no status code.
    Close(Option<CloseFrame>),
    /// A text message sent compressed (RSV1, RFC 7692 §6), only with
    /// [`DecoderConfig::deflate`]: its payload as received, neither inflated nor checked
    /// as UTF-8. [`Decompressor::inflate_message`] makes it a `Text`. (Two variants
    /// rather than one with an `OpCode` field: the opcode's spare values would become
    /// the enum's tag, which costs the uncompressed path ~20 instructions a message.)
    ///
    /// [`Decompressor::inflate_message`]: super::deflate::Decompressor::inflate_message
    CompressedText(Bytes),
    /// A binary message sent compressed; see [`Message::CompressedText`].
    CompressedBinary(Bytes),
}

impl Message {
    /// The compressed message of a data `opcode` (Text, else Binary).
    fn compressed(opcode: OpCode, payload: Bytes) -> Self {
        match opcode {
            OpCode::Text => Self::CompressedText(payload),
            _ => Self::CompressedBinary(payload),
        }
    }

    /// A data message still to be inflated.
    pub fn is_compressed(&self) -> bool {
        matches!(self, Self::CompressedText(_) | Self::CompressedBinary(_))
    }
}

/// A whole unfragmented data frame at the front of a buffer, checked, unmasked and (text)
/// validated in place by [`MessageDecoder::decode_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    /// [`OpCode::Text`] or [`OpCode::Binary`].
    pub opcode: OpCode,
    /// Where the payload lies in the buffer.
    pub payload: Range<usize>,
    /// Bytes the whole frame takes at the front of the buffer (header and payload).
    pub len: usize,
    /// RSV1 was set (only legal with [`DecoderConfig::deflate`]): the payload is
    /// compressed, so it was not checked as UTF-8.
    pub compressed: bool,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    received: u64,
}

/// Decodes a stream of frames into messages. See the module docs.
#[derive(Debug)]
pub struct MessageDecoder {
    config: DecoderConfig,
    /// Opcode of the data message being assembled, if one is open.
    message: Option<OpCode>,
    /// The open message is compressed (its first frame had RSV1).
    compressed: bool,
    /// What a frame arriving over several reads, or a message over several frames,
    /// needs. Boxed at the first such frame: a connection whose messages each arrive
    /// whole (most of them, and every idle one) carries a pointer, not 100 bytes.
    partial: Option<Box<Partial>>,
}

/// The assembly state of [`MessageDecoder`] beyond a whole frame.
#[derive(Debug, Default)]
struct Partial {
    frame: Option<InFrame>,
    payload: BytesMut,
    control: BytesMut,
    utf8: Utf8Validator,
}

impl MessageDecoder {
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            message: None,
            compressed: false,
            partial: None,
        }
    }

    /// Changes the message size cap; applies from the next frame header on.
    pub fn set_max_message_size(&mut self, max: usize) {
        self.config.max_message_size = max;
    }

    /// Turns [`DecoderConfig::deflate`] on or off once the handshake has settled it;
    /// applies from the next frame header on.
    pub fn set_deflate(&mut self, deflate: bool) {
        self.config.deflate = deflate;
    }

    /// Consumes bytes from `src` and returns the next complete message, `Ok(None)` when
    /// `src` is exhausted first. After an error the connection must be failed with
    /// [`ProtocolError::close_code`]; the decoder is not usable any more.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if let Some(frame) = self.decode_in_place(src)? {
            // The fast path: the whole frame is here, unmasked and validated in place;
            // its payload is split off without a copy.
            src.advance(frame.payload.start);
            let payload = src.split_to(frame.payload.len()).freeze();
            return Ok(Some(match frame.opcode {
                opcode if frame.compressed => Message::compressed(opcode, payload),
                OpCode::Text => Message::Text(Utf8Bytes::from_validated(payload)),
                _ => Message::Binary(payload),
            }));
        }
        loop {
            let mut frame = match self.partial.as_ref().and_then(|p| p.frame) {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::parse(src)? else {
                        return Ok(None);
                    };
                    self.check(&header)?;
                    src.advance(header_len);
                    let partial = self.partial.get_or_insert_with(Box::default);
                    if matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                        self.message = Some(header.opcode);
                        self.compressed = header.rsv != 0;
                        partial.utf8.reset();
                    }
                    InFrame {
                        header,
                        received: 0,
                    }
                }
            };
            let wanted = frame.header.payload_len - frame.received;
            let n = usize::try_from(wanted).unwrap_or(usize::MAX).min(src.len());
            if n == 0 && wanted > 0 {
                self.set_frame(Some(frame));
                return Ok(None);
            }
            self.append(&frame, &mut src[..n])?;
            src.advance(n);
            frame.received += n as u64;
            if frame.received < frame.header.payload_len {
                self.set_frame(Some(frame));
                return Ok(None);
            }
            self.set_frame(None);
            if let Some(message) = self.complete(&frame.header)? {
                return Ok(Some(message));
            }
        }
    }

    /// The borrowing fast path: when no message is being assembled and `src` begins with
    /// a whole unfragmented text or binary frame, checks every rule [`Self::decode`]
    /// would, unmasks and validates the payload in place and says where it lies, without
    /// consuming anything. The caller reads the payload and then drops [`InPlace::len`]
    /// bytes from the front of `src` before the next call (a masked payload would
    /// otherwise be unmasked twice). `Ok(None)` means this frame needs
    /// [`Self::decode`]: it is partial, fragmented or a control frame, or a message is
    /// open. An error is the same error `decode` would return.
    pub fn decode_in_place(&mut self, src: &mut [u8]) -> Result<Option<InPlace>, ProtocolError> {
        if self.message.is_some() || self.partial.as_ref().is_some_and(|p| p.frame.is_some()) {
            return Ok(None);
        }
        let Some((header, header_len)) = FrameHeader::parse(src)? else {
            return Ok(None);
        };
        if !header.fin || !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
            return Ok(None);
        }
        let available = (src.len() - header_len) as u64;
        if available < header.payload_len {
            return Ok(None);
        }
        self.check(&header)?;
        // Fits: payload_len <= available, a usize.
        let payload = header_len..header_len + header.payload_len as usize;
        if let Some(key) = header.mask {
            apply_mask(&mut src[payload.clone()], key, 0);
        }
        // `check` passed, so a set RSV bit can only be RSV1 of a compressed message.
        let compressed = header.rsv != 0;
        if header.opcode == OpCode::Text && !compressed {
            simdutf8::basic::from_utf8(&src[payload.clone()])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(Some(InPlace {
            opcode: header.opcode,
            len: payload.end,
            payload,
            compressed,
        }))
    }

    /// Rules that depend on the decoder's state (§5.1, §5.2, §5.4, §5.5).
    fn check(&self, header: &FrameHeader) -> Result<(), ProtocolError> {
        if header.rsv != 0 && !self.is_compressed_start(header) {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        match (self.config.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if header.opcode.is_control() {
            if !header.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if header.payload_len > 125 {
                return Err(ProtocolError::ControlFrameTooLong(header.payload_len));
            }
            return Ok(());
        }
        match (header.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        let buffered = self.partial.as_ref().map_or(0, |p| p.payload.len());
        let size = (buffered as u64).saturating_add(header.payload_len);
        if size > self.config.max_message_size as u64 {
            return Err(ProtocolError::MessageTooBig {
                size,
                max: self.config.max_message_size,
            });
        }
        Ok(())
    }

    /// RSV1 alone on the first frame of a data message, with deflate negotiated
    /// (RFC 7692 §6.1: never on control frames or continuations).
    fn is_compressed_start(&self, header: &FrameHeader) -> bool {
        self.config.deflate
            && header.rsv == RSV1
            && matches!(header.opcode, OpCode::Text | OpCode::Binary)
    }

    /// Unmasks a piece of the current frame's payload and appends it to its message.
    fn append(&mut self, frame: &InFrame, chunk: &mut [u8]) -> Result<(), ProtocolError> {
        if let Some(key) = frame.header.mask {
            // `received` < payload_len < 2^63; only its low two bits matter to the mask.
            apply_mask(chunk, key, (frame.received & 3) as usize);
        }
        let partial = self.partial.get_or_insert_with(Box::default);
        if frame.header.opcode.is_control() {
            partial.control.extend_from_slice(chunk);
            return Ok(());
        }
        partial.payload.extend_from_slice(chunk);
        if self.message == Some(OpCode::Text) && !self.compressed {
            partial
                .utf8
                .feed(&partial.payload)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// The frame whose payload is arriving, kept between calls.
    fn set_frame(&mut self, frame: Option<InFrame>) {
        if frame.is_some() || self.partial.is_some() {
            self.partial.get_or_insert_with(Box::default).frame = frame;
        }
    }

    /// A frame's payload is complete: yields a message when one is whole.
    fn complete(&mut self, header: &FrameHeader) -> Result<Option<Message>, ProtocolError> {
        let partial = self.partial.get_or_insert_with(Box::default);
        match header.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(partial.control.split().freeze()))),
            OpCode::Pong => Ok(Some(Message::Pong(partial.control.split().freeze()))),
            OpCode::Close => {
                let body = partial.control.split();
                Ok(Some(Message::Close(CloseFrame::parse(&body)?)))
            }
            _ if !header.fin => Ok(None),
            _ => {
                let opcode = self.message.take();
                if let Some(opcode) = opcode.filter(|_| self.compressed) {
                    let payload = partial.payload.split().freeze();
                    return Ok(Some(Message::compressed(opcode, payload)));
                }
                if opcode == Some(OpCode::Text) {
                    partial
                        .utf8
                        .finish(&partial.payload)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                    let text = partial.payload.split().freeze();
                    return Ok(Some(Message::Text(Utf8Bytes::from_validated(text))));
                }
                Ok(Some(Message::Binary(partial.payload.split().freeze())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::CloseCode;
    use crate::ws::frame::encode_client;
    use bytes::BufMut;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [9, 8, 7, 6];

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        frame_rsv(fin, 0, opcode, payload)
    }

    fn frame_rsv(fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask: Some(KEY),
            payload_len: payload.len() as u64,
        };
        header.encode_into(&mut buf);
        let start = buf.len();
        buf.put_slice(payload);
        apply_mask(&mut buf[start..], KEY, 0);
        buf.to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
        decode_all_with(DecoderConfig::default(), bytes)
    }

    fn decode_all_with(config: DecoderConfig, bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
        let mut decoder = MessageDecoder::new(config);
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut src)? {
            out.push(m);
        }
        Ok(out)
    }

    /// With permessage-deflate negotiated.
    fn deflate() -> DecoderConfig {
        DecoderConfig {
            deflate: true,
            ..DecoderConfig::default()
        }
    }

    /// Feeds one byte at a time; returns messages and the first error.
    fn decode_bytewise(bytes: &[u8]) -> (Vec<Message>, Option<(usize, ProtocolError)>) {
        decode_bytewise_with(DecoderConfig::default(), bytes)
    }

    fn decode_bytewise_with(
        config: DecoderConfig,
        bytes: &[u8],
    ) -> (Vec<Message>, Option<(usize, ProtocolError)>) {
        let mut decoder = MessageDecoder::new(config);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            src.put_u8(*b);
            loop {
                match decoder.decode(&mut src) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Some((i, e))),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn single_text_frame() {
        let msgs = decode_all(&frame(true, OpCode::Text, b"hello")).unwrap();
        assert_eq!(msgs, vec![Message::Text(Utf8Bytes::from("hello"))]);
    }

    #[test]
    fn fragments_with_interleaved_ping_reassemble() {
        let mut bytes = frame(false, OpCode::Text, b"hel");
        bytes.extend(frame(true, OpCode::Ping, b"p"));
        bytes.extend(frame(false, OpCode::Continuation, b"lo "));
        bytes.extend(frame(true, OpCode::Continuation, "wörld".as_bytes()));
        let expected = vec![
            Message::Ping(Bytes::from_static(b"p")),
            Message::Text(Utf8Bytes::from("hello wörld")),
        ];
        assert_eq!(decode_all(&bytes).unwrap(), expected);
        assert_eq!(decode_bytewise(&bytes), (expected, None));
    }

    #[test]
    fn unmasked_client_frame_closes_with_1002() {
        let bytes = crate::ws::frame::encode_server(OpCode::Text, b"hi");
        let err = decode_all(&bytes).unwrap_err();
        assert_eq!(err, ProtocolError::UnmaskedFrame);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn masked_server_frame_fails_a_client_decoder() {
        let config = DecoderConfig {
            role: Role::Client,
            ..DecoderConfig::default()
        };
        let err = decode_all_with(config, &frame(true, OpCode::Text, b"x")).unwrap_err();
        assert_eq!(err, ProtocolError::MaskedFrame);
    }

    #[test]
    fn reserved_bits_close_with_1002() {
        let mut bytes = frame(true, OpCode::Text, b"x");
        bytes[0] |= 0x40;
        let err = decode_all(&bytes).unwrap_err();
        assert_eq!(err, ProtocolError::ReservedBits(0b100));
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    /// "Hello" compressed (RFC 7692 §7.2.3.1); not UTF-8 as it stands.
    const HELLO_DEFLATED: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn compressed(opcode: OpCode, payload: &[u8]) -> Message {
        Message::compressed(opcode, Bytes::copy_from_slice(payload))
    }

    #[test]
    fn rsv1_marks_a_compressed_message_once_deflate_is_negotiated() {
        let bytes = frame_rsv(true, RSV1, OpCode::Text, &HELLO_DEFLATED);
        assert_eq!(
            decode_all_with(deflate(), &bytes).unwrap(),
            vec![compressed(OpCode::Text, &HELLO_DEFLATED)]
        );
        let mut decoder = MessageDecoder::new(deflate());
        let mut src = bytes.clone();
        let frame = decoder.decode_in_place(&mut src).unwrap().unwrap();
        assert!(frame.compressed);
        assert_eq!(&src[frame.payload], &HELLO_DEFLATED);
        let err = decode_all(&bytes).unwrap_err();
        assert_eq!(err, ProtocolError::ReservedBits(RSV1), "not negotiated");
        let mut plain = MessageDecoder::new(DecoderConfig::default());
        plain.set_deflate(true);
        assert!(plain.decode(&mut BytesMut::from(&bytes[..])).is_ok());
    }

    #[test]
    fn fragmented_compressed_message_is_assembled_without_utf8_checks() {
        let mut bytes = frame_rsv(false, RSV1, OpCode::Text, &HELLO_DEFLATED[..3]);
        bytes.extend(frame(true, OpCode::Ping, b"p"));
        bytes.extend(frame(true, OpCode::Continuation, &HELLO_DEFLATED[3..]));
        // A plain message after it is validated again.
        bytes.extend(frame(true, OpCode::Text, b"hi"));
        let expected = vec![
            Message::Ping(Bytes::from_static(b"p")),
            compressed(OpCode::Text, &HELLO_DEFLATED),
            Message::Text(Utf8Bytes::from("hi")),
        ];
        assert_eq!(decode_all_with(deflate(), &bytes).unwrap(), expected);
        assert_eq!(decode_bytewise_with(deflate(), &bytes), (expected, None));
        let mut bad = frame_rsv(true, RSV1, OpCode::Binary, b"z");
        bad.extend(frame(true, OpCode::Text, &[0xff]));
        let (msgs, err) = decode_bytewise_with(deflate(), &bad);
        assert_eq!(msgs, vec![compressed(OpCode::Binary, b"z")]);
        assert_eq!(err.map(|(_, e)| e), Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn rsv1_outside_a_first_data_frame_closes_with_1002() {
        let mut continued = frame_rsv(false, RSV1, OpCode::Text, b"a");
        continued.extend(frame_rsv(true, RSV1, OpCode::Continuation, b"b"));
        let cases = [
            (continued, RSV1),
            (frame_rsv(true, RSV1, OpCode::Ping, b"p"), RSV1),
            (frame_rsv(true, RSV1, OpCode::Close, &[0x03, 0xe8]), RSV1),
            (frame_rsv(true, 0b010, OpCode::Text, b"x"), 0b010),
            (frame_rsv(true, RSV1 | 0b001, OpCode::Binary, b"x"), 0b101),
        ];
        for (bytes, rsv) in cases {
            let err = decode_all_with(deflate(), &bytes).unwrap_err();
            assert_eq!(err, ProtocolError::ReservedBits(rsv));
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn reserved_opcode_closes_with_1002() {
        let mut bytes = frame(true, OpCode::Text, b"x");
        bytes[0] = 0x80 | 0x3;
        assert_eq!(
            decode_all(&bytes).unwrap_err().close_code(),
            CloseCode::PROTOCOL_ERROR
        );
    }

    #[test]
    fn fragmented_control_frame_closes_with_1002() {
        let err = decode_all(&frame(false, OpCode::Ping, b"x")).unwrap_err();
        assert_eq!(err, ProtocolError::FragmentedControlFrame);
    }

    #[test]
    fn control_frame_over_125_bytes_closes_with_1002() {
        let err = decode_all(&frame(true, OpCode::Ping, &[0; 126])).unwrap_err();
        assert_eq!(err, ProtocolError::ControlFrameTooLong(126));
        assert!(decode_all(&frame(true, OpCode::Ping, &[0; 125])).is_ok());
    }

    #[test]
    fn continuation_without_start_closes_with_1002() {
        let err = decode_all(&frame(true, OpCode::Continuation, b"x")).unwrap_err();
        assert_eq!(err, ProtocolError::UnexpectedContinuation);
    }

    #[test]
    fn new_message_inside_fragmented_one_closes_with_1002() {
        let mut bytes = frame(false, OpCode::Text, b"a");
        bytes.extend(frame(true, OpCode::Binary, b"b"));
        assert_eq!(
            decode_all(&bytes).unwrap_err(),
            ProtocolError::ExpectedContinuation
        );
    }

    #[test]
    fn oversized_message_closes_with_1009_before_payload_arrives() {
        let config = DecoderConfig {
            max_message_size: 100,
            ..DecoderConfig::default()
        };
        let bytes = frame(true, OpCode::Binary, &[0; 101]);
        let mut decoder = MessageDecoder::new(config);
        // Only the header: the limit is enforced before any payload is buffered.
        let mut src = BytesMut::from(&bytes[..8]);
        let err = decoder.decode(&mut src).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert!(decode_all_with(config, &frame(true, OpCode::Binary, &[0; 100])).is_ok());
    }

    #[test]
    fn oversized_fragmented_message_closes_with_1009() {
        let config = DecoderConfig {
            max_message_size: 100,
            ..DecoderConfig::default()
        };
        let mut bytes = frame(false, OpCode::Binary, &[0; 60]);
        bytes.extend(frame(true, OpCode::Continuation, &[0; 41]));
        let err = decode_all_with(config, &bytes).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::MessageTooBig {
                size: 101,
                max: 100
            }
        );
    }

    #[test]
    fn invalid_utf8_fails_at_first_bad_byte_across_fragments() {
        let mut bytes = frame(false, OpCode::Text, "κόσμε".as_bytes());
        let second = frame(false, OpCode::Continuation, &[0xCE, 0xBA, 0xED, 0xA0, 0x80]);
        let bad_at = bytes.len() + 6 + 3; // header (2 + mask 4), then byte 0xA0
        bytes.extend(second);
        bytes.extend(frame(true, OpCode::Continuation, b"edited"));
        let (msgs, err) = decode_bytewise(&bytes);
        assert!(msgs.is_empty());
        let (at, err) = err.unwrap();
        assert_eq!(at, bad_at);
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn text_ending_mid_sequence_closes_with_1007() {
        let err = decode_all(&frame(true, OpCode::Text, &[b'a', 0xE2, 0x82])).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        let mut bytes = frame(false, OpCode::Text, &[b'a', 0xE2]);
        bytes.extend(frame(true, OpCode::Continuation, &[0x82]));
        assert_eq!(decode_all(&bytes).unwrap_err(), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn close_frame_is_parsed_and_validated() {
        let body = CloseFrame::payload(CloseCode::NORMAL, "bye");
        let msgs = decode_all(&frame(true, OpCode::Close, &body)).unwrap();
        assert_eq!(
            msgs,
            vec![Message::Close(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye".into()
            }))]
        );
        assert_eq!(
            decode_all(&frame(true, OpCode::Close, &[])).unwrap(),
            vec![Message::Close(None)]
        );
        let err = decode_all(&frame(true, OpCode::Close, &[0x03, 0xED])).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidCloseCode(1005));
        let err = decode_all(&frame(true, OpCode::Close, &[0x03, 0xE8, 0xC0])).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn sixty_four_bit_length_frame_decodes() {
        let payload = vec![7u8; 70_000];
        let msgs = decode_all(&frame(true, OpCode::Binary, &payload)).unwrap();
        assert_eq!(msgs, vec![Message::Binary(Bytes::from(payload))]);
    }

    fn arb_message() -> impl Strategy<Value = (OpCode, Vec<u8>)> {
        prop_oneof![
            ".{0,40}".prop_map(|s: String| (OpCode::Text, s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (OpCode::Binary, b)),
            proptest::collection::vec(any::<u8>(), 0..125).prop_map(|b| (OpCode::Ping, b)),
        ]
    }

    /// The wire form of `msgs` (data messages longer than `frag` split into fragments)
    /// and the messages a decoder must give back.
    fn wire_of(msgs: &[(OpCode, Vec<u8>)], frag: usize) -> (Vec<u8>, Vec<Message>) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (op, payload) in msgs {
            if *op == OpCode::Ping || payload.len() <= frag {
                wire.extend(encode_client(*op, payload, KEY));
            } else {
                let chunks: Vec<&[u8]> = payload.chunks(frag).collect();
                for (i, c) in chunks.iter().enumerate() {
                    let code = if i == 0 { *op } else { OpCode::Continuation };
                    wire.extend(frame(i + 1 == chunks.len(), code, c));
                }
            }
            expected.push(match op {
                OpCode::Text => {
                    Message::Text(Utf8Bytes::try_from(Bytes::from(payload.clone())).unwrap())
                }
                OpCode::Binary => Message::Binary(Bytes::from(payload.clone())),
                _ => Message::Ping(Bytes::from(payload.clone())),
            });
        }
        (wire, expected)
    }

    /// One step of a reader that takes the in-place path where it can: the message,
    /// copied out, as [`MessageDecoder::decode`] would have given it.
    fn in_place_first(
        decoder: &mut MessageDecoder,
        src: &mut BytesMut,
    ) -> Result<Option<Message>, ProtocolError> {
        let Some(frame) = decoder.decode_in_place(src)? else {
            return decoder.decode(src);
        };
        let payload = Bytes::copy_from_slice(&src[frame.payload]);
        src.advance(frame.len);
        Ok(Some(match frame.opcode {
            opcode if frame.compressed => Message::compressed(opcode, payload),
            OpCode::Text => Message::Text(Utf8Bytes::try_from(payload).unwrap()),
            _ => Message::Binary(payload),
        }))
    }

    /// Feeds `wire` to one decoder in pieces of the sizes `cuts` cycles through, taking
    /// every message `step` gives after each piece.
    fn decode_in_pieces(
        config: DecoderConfig,
        wire: &[u8],
        cuts: &[usize],
        mut step: impl FnMut(
            &mut MessageDecoder,
            &mut BytesMut,
        ) -> Result<Option<Message>, ProtocolError>,
    ) -> Vec<Message> {
        let mut decoder = MessageDecoder::new(config);
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = wire;
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            src.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = step(&mut decoder, &mut src).unwrap() {
                got.push(m);
            }
        }
        got
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_messages(msgs in proptest::collection::vec(arb_message(), 1..6),
                                             frag in 1usize..50, cuts in proptest::collection::vec(1usize..64, 1..20)) {
            let (wire, expected) = wire_of(&msgs, frag);
            prop_assert_eq!(decode_in_pieces(DecoderConfig::default(), &wire, &cuts, MessageDecoder::decode), expected);
        }

        #[test]
        fn in_place_first_gives_the_same_messages(msgs in proptest::collection::vec(arb_message(), 1..6),
                                                  frag in 1usize..50, cuts in proptest::collection::vec(1usize..64, 1..20)) {
            let (wire, expected) = wire_of(&msgs, frag);
            prop_assert_eq!(decode_in_pieces(DecoderConfig::default(), &wire, &cuts, in_place_first), expected);
        }

        #[test]
        fn compressed_messages_survive_any_split(msgs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..6),
                                                 frag in 1usize..50, cuts in proptest::collection::vec(1usize..64, 1..20)) {
            let (mut wire, mut expected) = (Vec::new(), Vec::new());
            for (text, payload) in &msgs {
                let opcode = if *text { OpCode::Text } else { OpCode::Binary };
                let chunks: Vec<&[u8]> = payload.chunks(frag).collect();
                let last = chunks.len().saturating_sub(1);
                for i in 0..=last {
                    // RSV1 on the first frame only (RFC 7692 §6.1).
                    let (code, rsv) = if i == 0 { (opcode, RSV1) } else { (OpCode::Continuation, 0) };
                    wire.extend(frame_rsv(i == last, rsv, code, chunks.get(i).copied().unwrap_or_default()));
                }
                expected.push(Message::compressed(opcode, Bytes::from(payload.clone())));
            }
            prop_assert_eq!(decode_in_pieces(deflate(), &wire, &cuts, MessageDecoder::decode), expected.clone());
            prop_assert_eq!(decode_in_pieces(deflate(), &wire, &cuts, in_place_first), expected);
        }

        #[test]
        fn in_place_fails_as_decode_does(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                         deflate: bool) {
            let config = DecoderConfig { max_message_size: 256, deflate, ..DecoderConfig::default() };
            let (mut plain, mut in_place) = (MessageDecoder::new(config), MessageDecoder::new(config));
            let (mut a, mut b) = (BytesMut::from(&bytes[..]), BytesMut::from(&bytes[..]));
            loop {
                let x = plain.decode(&mut a);
                prop_assert_eq!(&x, &in_place_first(&mut in_place, &mut b));
                if !matches!(x, Ok(Some(_))) {
                    break;
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       deflate: bool) {
            let mut decoder = MessageDecoder::new(DecoderConfig { max_message_size: 256, deflate, ..DecoderConfig::default() });
            let mut src = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut src) {}
        }
    }
}
