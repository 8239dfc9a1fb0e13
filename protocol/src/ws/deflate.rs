//! permessage-deflate (RFC 7692): negotiation, compression and inflation of messages.
//!
//! - Negotiation (§5, §7.1): [`DeflateConfig::negotiate`] reads the client's
//!   `Sec-WebSocket-Extensions` offers in order, declines any offer with an unknown,
//!   repeated or invalid parameter (the next one is tried; none acceptable means no
//!   extension, never a failed handshake) and answers the first acceptable one with the
//!   [`Negotiated`] parameters and the response header value.
//! - Compression (§7.2.1): a [`Compressor`] makes raw DEFLATE (no zlib header) ending in
//!   a sync flush whose `00 00 ff ff` tail is removed. Without context takeover it
//!   starts every message afresh, so one compressed frame ([`Compressor::encode_frame`],
//!   RSV1 set, built once into `Bytes`) is valid for every recipient: the server
//!   compresses a broadcast once, as uWebSockets' shared compressor does.
//! - Inflation (§7.2.2): a [`Decompressor`] appends the tail, inflates under a size cap
//!   checked while the output grows (a small bomb never gets its output allocated),
//!   and keeps the client's LZ77 window between messages unless
//!   `client_no_context_takeover` was agreed. The decoder hands compressed messages
//!   over as [`Message::CompressedText`] / [`Message::CompressedBinary`], which
//!   [`Decompressor::inflate_message`] turns into plain ones.
//!
//! The backend is flate2 on zlib-rs: zlib semantics (window bits 9..15, which miniz_oxide
//! lacks) in Rust; results/bench/deflate-backend.md has the measurement. zlib cannot
//! make raw DEFLATE with a 256-byte window, so an offer that asks for
//! `server_max_window_bits=8` is declined.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::decoder::Message;
use super::frame::{FrameHeader, OpCode, RSV1};
use super::handshake::Request;
use super::utf8::Utf8Bytes;
use crate::error::ProtocolError;

/// The extension's registered name (§7).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The empty stored block a sync flush ends with: stripped from every compressed
/// message and appended again before inflating (§7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window, 32 KiB; also the default when nothing limits it.
const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib can compress raw DEFLATE with (it refuses 8).
const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

/// What the server is willing to agree to. One per server; [`Self::negotiate`] meets it
/// with each client's offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Answer every accepted offer with `server_no_context_takeover`: each message is
    /// compressed on its own, so one compressed broadcast serves every connection and no
    /// connection holds a compressor (371 KiB of zlib-rs state at 15 bits, 245 KiB at 9;
    /// results/bench/deflate-backend.md). Default:
    /// true. Off, a connection's own [`Compressor`] keeps its window between messages
    /// (better ratio, one compressor per connection), unless the client asks otherwise.
    pub server_no_context_takeover: bool,
    /// Ask every client for `client_no_context_takeover`, so the server keeps no inflate
    /// window between messages and one [`Decompressor`] can serve a whole worker.
    /// Default: false (clients keep context for their better ratio; each connection's
    /// inflater then keeps its 46 KiB of zlib-rs state from its first compressed message
    /// on). A client that offers the parameter gets it in the answer either way.
    pub client_no_context_takeover: bool,
    /// Largest window the server compresses with, in bits, 9..=15 (values outside are
    /// clamped). Default: 15, 32 KiB. A client asking for less gets what it asks for.
    pub server_max_window_bits: u8,
    /// Largest window asked of clients that offer `client_max_window_bits`, 8..=15
    /// (clamped). Default: 15. It bounds the inflate window a connection keeps; a client
    /// that does not offer the parameter may use 15 (§7.1.2.2 forbids asking it).
    pub client_max_window_bits: u8,
    /// zlib compression level, 0..=9. Default: 6, zlib's own default; a broadcast is
    /// compressed once however many members receive it.
    pub level: u32,
    /// Messages shorter than this many bytes are sent uncompressed (RSV1 clear):
    /// below it DEFLATE's block overhead eats the gain. Default: 64.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            level: 6,
            threshold: 64,
        }
    }
}

/// The parameters both sides agreed on for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window, so the server's inflater
    /// forgets each message once it is inflated.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with, 9..=15. A frame from a [`Compressor`]
    /// whose window is at most this may be sent on the connection.
    pub server_max_window_bits: u8,
    /// The largest window the client may compress with, 8..=15.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// What a bare `permessage-deflate` agreement means: context kept, 15-bit windows.
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateParams {
    /// Whether frames of a shared `compressor` (one that starts every message afresh)
    /// may be sent on this connection: its window fits the one the client agreed to
    /// inflate with. A compressor that keeps context serves only its own connection.
    pub fn accepts(&self, compressor: &Compressor) -> bool {
        compressor.no_context_takeover && compressor.window_bits <= self.server_max_window_bits
    }
}

/// An accepted offer: the parameters and the `Sec-WebSocket-Extensions` value of the
/// 101 response ([`Upgrade::response_with_extensions`]).
///
/// [`Upgrade::response_with_extensions`]: super::handshake::Upgrade::response_with_extensions
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub params: DeflateParams,
    pub response: String,
}

/// One permessage-deflate offer's parameters, each at most once (§7.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl DeflateConfig {
    /// Meets the request's `Sec-WebSocket-Extensions` offers (every such header, in
    /// order). `None`: no acceptable permessage-deflate offer; the handshake goes on
    /// without the extension.
    pub fn negotiate(&self, request: &Request) -> Option<Negotiated> {
        self.negotiate_offers(request.header_values("sec-websocket-extensions"))
    }

    /// [`Self::negotiate`] over header values.
    pub fn negotiate_offers<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Option<Negotiated> {
        headers
            .into_iter()
            .flat_map(|value| split_unquoted(value, b','))
            .filter_map(parse_offer)
            .find_map(|offer| self.accept(&offer))
    }

    /// Answers one well-formed offer, or declines it (§7.1.2.1: a window below what zlib
    /// can compress with).
    fn accept(&self, offer: &Offer) -> Option<Negotiated> {
        let own_bits = self
            .server_max_window_bits
            .clamp(MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS);
        let server_bits = match offer.server_max_window_bits {
            Some(asked) if asked < MIN_COMPRESS_WINDOW_BITS => return None,
            Some(asked) => asked.min(own_bits),
            None => own_bits,
        };
        let client_bits = match offer.client_max_window_bits {
            Some(asked) => asked
                .unwrap_or(MAX_WINDOW_BITS)
                .min(self.client_max_window_bits.clamp(8, MAX_WINDOW_BITS)),
            None => MAX_WINDOW_BITS,
        };
        let params = DeflateParams {
            server_no_context_takeover: offer.server_no_context_takeover
                || self.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        };
        let mut response = String::from(EXTENSION_NAME);
        if params.server_no_context_takeover {
            response.push_str("; server_no_context_takeover");
        }
        if params.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        // §7.1.2.1: an offered server_max_window_bits must be answered; a smaller window
        // may be announced unasked.
        if offer.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS {
            response.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
        // §7.1.2.2: client_max_window_bits only in answer to an offer that has it.
        if offer.client_max_window_bits.is_some() && client_bits < MAX_WINDOW_BITS {
            response.push_str(&format!("; client_max_window_bits={client_bits}"));
        }
        Some(Negotiated { params, response })
    }
}

/// Parses one element of the extension list: `None` when it is another extension or a
/// permessage-deflate offer to decline (unknown, repeated or invalid parameter).
fn parse_offer(element: &str) -> Option<Offer> {
    let mut parts = split_unquoted(element, b';').into_iter();
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION_NAME) {
        return None;
    }
    let mut offer = Offer::default();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(&v)?);
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(&v)?),
                    None => None,
                });
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// A window size parameter: `8` to `15` in decimal, no sign or leading zero (§7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value as a token, taking a quoted-string apart (RFC 6455 §9.1: the
/// unquoted value must then be a token). `None` for a broken quoted-string.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(Cow::Owned(out))
}

/// Splits `value` at `sep` outside quoted-strings, trimming each piece and dropping
/// empty list elements (RFC 7230 §7 `#rule`). An unterminated quote runs to the end.
fn split_unquoted(value: &str, sep: u8) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                pieces.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(value[start..].trim());
    if sep == b',' {
        pieces.retain(|p| !p.is_empty());
    }
    pieces
}

/// Compresses messages for sending (§7.2.1). Built by [`Compressor::shared`] for
/// broadcasts (one per worker and window size) or [`Compressor::new`] for one connection.
pub struct Compressor {
    raw: Compress,
    window_bits: u8,
    /// Start every message with an empty window, so a frame suits any recipient.
    no_context_takeover: bool,
    threshold: usize,
    /// The compressed payload being built; kept to reuse its allocation.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A stateless compressor with a `window_bits` window (clamped to 9..=15): every
    /// message is compressed on its own, so its frames can go to every connection
    /// whose [`DeflateParams::accepts`] it. This is the broadcast compressor.
    pub fn shared(config: &DeflateConfig, window_bits: u8) -> Self {
        Self::build(config, window_bits, true)
    }

    /// One connection's compressor, keeping its window between messages unless the
    /// connection agreed on `server_no_context_takeover`.
    pub fn new(config: &DeflateConfig, params: &DeflateParams) -> Self {
        Self::build(
            config,
            params.server_max_window_bits,
            params.server_no_context_takeover,
        )
    }

    fn build(config: &DeflateConfig, window_bits: u8, no_context_takeover: bool) -> Self {
        let window_bits = window_bits.clamp(MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS);
        let level = Compression::new(config.level.min(9));
        Self {
            raw: Compress::new_with_window_bits(level, false, window_bits),
            window_bits,
            no_context_takeover,
            threshold: config.threshold,
            scratch: Vec::new(),
        }
    }

    /// The LZ77 window this compressor uses, in bits.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Appends `payload` compressed as one message to `out`, without the `00 00 ff ff`
    /// tail (§7.2.1).
    pub fn compress_into(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if self.no_context_takeover {
            self.raw.reset();
        }
        let start = out.len();
        // Room for stored blocks and the flush: DEFLATE never grows data by more.
        out.reserve(payload.len() + payload.len() / 256 + 16);
        let mut input = payload;
        loop {
            let before = self.raw.total_in();
            self.raw
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("a raw deflate stream this compressor owns accepts any input");
            let used = usize::try_from(self.raw.total_in() - before).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            // The sync flush is complete once zlib stops with output space left.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }

    /// One whole server frame (FIN, unmasked) for `payload`, built once into `Bytes`:
    /// compressed with RSV1 set, or plain when the payload is under the threshold (a
    /// plain frame is always allowed, §6). `opcode` is [`OpCode::Text`] or
    /// [`OpCode::Binary`].
    pub fn encode_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        if payload.len() < self.threshold {
            return super::frame::encode_server(opcode, payload);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.compress_into(payload, &mut scratch);
        let frame = encode_compressed(opcode, &scratch);
        self.scratch = scratch;
        frame
    }
}

/// A FIN frame with RSV1 set around an already compressed payload.
fn encode_compressed(opcode: OpCode, compressed: &[u8]) -> Bytes {
    let header = FrameHeader {
        fin: true,
        rsv: RSV1,
        opcode,
        mask: None,
        payload_len: compressed.len() as u64,
    };
    let mut buf = BytesMut::with_capacity(header.encoded_len() + compressed.len());
    header.encode_into(&mut buf);
    buf.put_slice(compressed);
    buf.freeze()
}

/// Inflates one connection's compressed messages (§7.2.2) under a size cap.
///
/// zlib-rs allocates its whole inflate state (about 46 KiB, whatever the window bits) at
/// once, so it is made on the first compressed message: a connection that never sends
/// one holds no more than this struct.
pub struct Decompressor {
    /// Made on first use (see above).
    raw: Option<Decompress>,
    window_bits: u8,
    /// The client starts each message afresh: the window is dropped before each one,
    /// which also lets one decompressor serve many connections.
    no_context_takeover: bool,
    /// Largest inflated message, in bytes; the server's `max_payload`.
    max_size: usize,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("no_context_takeover", &self.no_context_takeover)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

impl Decompressor {
    /// An inflater for a connection with `params`, refusing messages that inflate past
    /// `max_size` bytes. Its window is the client's (at least 9 bits: a 9-bit window
    /// also reads 8-bit streams, and zlib clients asked for 8 use 9 anyway).
    pub fn new(params: &DeflateParams, max_size: usize) -> Self {
        Self {
            raw: None,
            window_bits: params
                .client_max_window_bits
                .clamp(MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS),
            no_context_takeover: params.client_no_context_takeover,
            max_size,
        }
    }

    /// Inflates one message's payload. [`ProtocolError::InflatedTooBig`] (close 1009) as
    /// soon as the output passes the cap, having allocated at most one byte past it;
    /// [`ProtocolError::InvalidCompressedData`] (close 1007) for corrupt data. After an
    /// error the connection must be failed.
    pub fn inflate(&mut self, payload: &[u8]) -> Result<Bytes, ProtocolError> {
        let max = self.max_size;
        let raw = match &mut self.raw {
            Some(raw) if self.no_context_takeover => {
                raw.reset(false);
                raw
            }
            Some(raw) => raw,
            None => self
                .raw
                .insert(Decompress::new_with_window_bits(false, self.window_bits)),
        };
        let first = payload.len().saturating_mul(4).max(256);
        let mut out = Vec::with_capacity(first.min(max.saturating_add(1)));
        let ended = run(raw, max, payload, &mut out)? || run(raw, max, &TAIL, &mut out)?;
        if ended {
            // A final block (BFINAL, §7.2.3.4) ended the stream; the next message
            // starts a new one.
            raw.reset(false);
        }
        Ok(Bytes::from(out))
    }

    /// Inflates a compressed message into the plain one it carries: `CompressedText`
    /// into `Text` (checked as UTF-8, else [`ProtocolError::InvalidUtf8`], close 1007),
    /// `CompressedBinary` into `Binary`. Any other message is handed back unchanged, so
    /// a reader can pass every message of a deflate connection through here.
    pub fn inflate_message(&mut self, message: Message) -> Result<Message, ProtocolError> {
        match message {
            Message::CompressedText(payload) => Utf8Bytes::try_from(self.inflate(&payload)?)
                .map(Message::Text)
                .map_err(|_| ProtocolError::InvalidUtf8),
            Message::CompressedBinary(payload) => Ok(Message::Binary(self.inflate(&payload)?)),
            other => Ok(other),
        }
    }
}

/// Feeds `input` to `raw`, growing `out` up to one byte past `max`. `true` when the
/// DEFLATE stream ended (a final block).
fn run(
    raw: &mut Decompress,
    max: usize,
    mut input: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, ProtocolError> {
    loop {
        if out.len() == out.capacity() {
            let room = max.saturating_add(1).saturating_sub(out.len());
            out.reserve_exact(out.capacity().max(256).min(room));
        }
        let (before_in, before_out) = (raw.total_in(), out.len());
        let status = raw
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| ProtocolError::InvalidCompressedData)?;
        if out.len() > max {
            return Err(ProtocolError::InflatedTooBig { max });
        }
        let used = usize::try_from(raw.total_in() - before_in).unwrap_or(input.len());
        input = input.get(used..).unwrap_or_default();
        let has_room = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(true),
            // zlib stops with room left only once the input is used up.
            _ if input.is_empty() && has_room => return Ok(false),
            _ if used == 0 && out.len() == before_out && has_room => {
                return Err(ProtocolError::InvalidCompressedData);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::CloseCode;
    use crate::ws::decoder::{DecoderConfig, MessageDecoder, Role};
    use crate::ws::handshake::HeadLimits;

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn negotiate(config: &DeflateConfig, offers: &str) -> Option<Negotiated> {
        config.negotiate_offers([offers])
    }

    fn response(offers: &str) -> Option<String> {
        negotiate(&DeflateConfig::default(), offers).map(|n| n.response)
    }

    /// A compressor standing in for a client's: what the client sends with `bits` and
    /// its context takeover choice.
    fn client_compressor(bits: u8, no_context_takeover: bool) -> Compressor {
        Compressor::build(&DeflateConfig::default(), bits, no_context_takeover)
    }

    fn compress(compressor: &mut Compressor, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compressor.compress_into(payload, &mut out);
        out
    }

    fn inflater(client_bits: u8, client_no_context_takeover: bool, max: usize) -> Decompressor {
        let params = DeflateParams {
            client_max_window_bits: client_bits,
            client_no_context_takeover,
            ..DeflateParams::default()
        };
        Decompressor::new(&params, max)
    }

    /// Telemetry-like JSON of ~120 bytes: short enough for a repeat to fall within even
    /// a 9-bit window's reach (zlib matches back 512 - 262 bytes at most).
    fn telemetry(i: usize) -> Vec<u8> {
        format!(
            r#"{{"event":"telemetry","data":{{"seq":{i},"cpu":[0.{i},0.5,0.25],"host":"node-{}","tags":["alpha","beta","gamma"]}}}}"#,
            i % 7
        )
        .into_bytes()
    }

    #[test]
    fn rfc_hello_compresses_to_the_rfc_bytes() {
        let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
        assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
        // Stateless: the same bytes again, so one frame serves every recipient.
        assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
    }

    #[test]
    fn rfc_context_takeover_shares_the_window_between_messages() {
        let mut compressor = client_compressor(15, false);
        assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
        let second = compress(&mut compressor, b"Hello");
        assert_eq!(second, [0xf2, 0x00, 0x11, 0x00, 0x00], "§7.2.3.2");
        let mut inflater = inflater(15, false, 1024);
        assert_eq!(inflater.inflate(&HELLO).unwrap(), &b"Hello"[..]);
        assert_eq!(inflater.inflate(&second).unwrap(), &b"Hello"[..]);
    }

    #[test]
    fn rfc_payload_forms_inflate_to_hello() {
        let forms: [&[u8]; 4] = [
            &HELLO,
            // §7.2.3.3: a stored (uncompressed) block.
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            // §7.2.3.4: a block with BFINAL set.
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
            // §7.2.3.5: two blocks in one message.
            &[
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
            ],
        ];
        let mut inflater = inflater(15, false, 1024);
        for form in forms {
            assert_eq!(
                inflater.inflate(form).unwrap(),
                &b"Hello"[..],
                "{form:02x?}"
            );
        }
    }

    #[test]
    fn empty_message_is_one_zero_byte() {
        let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
        assert_eq!(compress(&mut compressor, b""), [0x00]);
        assert_eq!(inflater(15, false, 16).inflate(&[0x00]).unwrap(), &b""[..]);
    }

    #[test]
    fn default_answer_is_server_no_context_takeover() {
        let n = negotiate(&DeflateConfig::default(), "permessage-deflate").unwrap();
        assert_eq!(n.response, "permessage-deflate; server_no_context_takeover");
        assert_eq!(
            n.params,
            DeflateParams {
                server_no_context_takeover: true,
                ..DeflateParams::default()
            }
        );
    }

    #[test]
    fn each_parameter_is_answered_per_rfc() {
        let table = [
            // A bare client_max_window_bits: 15 is the default, nothing to say.
            (
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate; server_no_context_takeover",
            ),
            (
                "permessage-deflate; client_max_window_bits=12",
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12",
            ),
            // An offered server_max_window_bits is always answered (§7.1.2.1).
            (
                "permessage-deflate; server_max_window_bits=15",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15",
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
            ),
            // The client's hint is taken, so its messages need no kept window.
            (
                "permessage-deflate; client_no_context_takeover",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                "permessage-deflate; server_no_context_takeover",
            ),
            // Quoted values are unquoted (RFC 6455 §9.1); names are case-insensitive.
            (
                "Permessage-Deflate; Client_Max_Window_Bits=\"10\"",
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            ),
        ];
        for (offer, expected) in table {
            assert_eq!(response(offer).as_deref(), Some(expected), "{offer}");
        }
        let n = negotiate(&DeflateConfig::default(), table[3].0).unwrap();
        assert_eq!(n.params.server_max_window_bits, 9);
        let n = negotiate(&DeflateConfig::default(), table[1].0).unwrap();
        assert_eq!(n.params.client_max_window_bits, 12);
    }

    #[test]
    fn server_config_shapes_the_answer() {
        let config = DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: true,
            server_max_window_bits: 12,
            client_max_window_bits: 10,
            ..DeflateConfig::default()
        };
        let n = negotiate(&config, "permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            n.response,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"
        );
        let n = negotiate(&config, "permessage-deflate; server_max_window_bits=11").unwrap();
        assert_eq!(
            n.params.server_max_window_bits, 11,
            "the client's smaller ask wins"
        );
        // Not offered: client_max_window_bits must not be answered (§7.1.2.2); the client
        // may use 15.
        let n = negotiate(&config, "permessage-deflate").unwrap();
        assert!(!n.response.contains("client_max_window_bits"));
        assert_eq!(n.params.client_max_window_bits, 15);
    }

    #[test]
    fn invalid_offers_are_declined() {
        for offer in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate;",
            // zlib cannot compress raw DEFLATE with a 256-byte window.
            "permessage-deflate; server_max_window_bits=8",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(response(offer), None, "{offer}");
        }
    }

    #[test]
    fn a_declined_offer_falls_through_to_the_next() {
        let offers = "permessage-deflate; server_max_window_bits=8, \
                      permessage-deflate; foo, permessage-deflate; client_max_window_bits=9";
        let n = negotiate(&DeflateConfig::default(), offers).unwrap();
        assert_eq!(n.params.client_max_window_bits, 9);
        // The first acceptable one wins, across repeated headers too.
        let n = DeflateConfig::default()
            .negotiate_offers([
                "foo; bar=\"a, permessage-deflate\"",
                "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            ])
            .unwrap();
        assert_eq!(n.params.server_max_window_bits, 10);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        assert_eq!(
            split_unquoted(r#"a; b="x,\"y", ,c"#, b','),
            [r#"a; b="x,\"y""#, "c"]
        );
        assert_eq!(unquote(r#""a\"b""#).as_deref(), Some("a\"b"));
    }

    #[test]
    fn request_headers_negotiate_and_the_response_carries_the_answer() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        let request = Request::parse(head, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let n = DeflateConfig::default().negotiate(&request).unwrap();
        let upgrade = request.websocket_upgrade().unwrap();
        let answer = upgrade.response_with_extensions(Some(&n.response));
        let answer = std::str::from_utf8(&answer).unwrap();
        assert!(answer.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        ));
        assert!(!String::from_utf8_lossy(&upgrade.response()).contains("Extensions"));
    }

    #[test]
    fn round_trips_with_every_window_and_both_context_modes() {
        for bits in 9..=15 {
            for no_context_takeover in [false, true] {
                let mut compressor = client_compressor(bits, no_context_takeover);
                let mut inflater = inflater(bits, no_context_takeover, 1 << 20);
                let mut sizes = Vec::new();
                for i in 0..20 {
                    let message = telemetry(i / 2);
                    let compressed = compress(&mut compressor, &message);
                    sizes.push(compressed.len());
                    let got = inflater.inflate(&compressed).unwrap();
                    assert_eq!(
                        got, message,
                        "bits {bits}, no takeover {no_context_takeover}"
                    );
                }
                // A kept window makes a repeat nearly free; a fresh one never does.
                let repeat_is_cheaper = sizes[1] < sizes[0] / 2;
                assert_eq!(repeat_is_cheaper, !no_context_takeover, "bits {bits}");
            }
        }
    }

    #[test]
    fn window_8_clients_are_read_with_a_9_bit_window() {
        // zlib compresses "8" with 9 bits; the inflater for an 8-bit agreement copes.
        let n = negotiate(
            &DeflateConfig::default(),
            "permessage-deflate; client_max_window_bits=8",
        )
        .unwrap();
        assert_eq!(n.params.client_max_window_bits, 8);
        assert!(n.response.ends_with("client_max_window_bits=8"));
        let mut inflater = Decompressor::new(&n.params, 1 << 20);
        let mut compressor = client_compressor(9, false);
        for i in 0..5 {
            let message = telemetry(i);
            let got = inflater
                .inflate(&compress(&mut compressor, &message))
                .unwrap();
            assert_eq!(got, message);
        }
    }

    #[test]
    fn inflate_state_is_made_on_the_first_compressed_message() {
        let mut inflater = inflater(15, false, 1024);
        assert!(
            inflater.raw.is_none(),
            "an idle connection holds no zlib state"
        );
        assert_eq!(inflater.inflate(&HELLO).unwrap(), &b"Hello"[..]);
        assert!(inflater.raw.is_some());
    }

    #[test]
    fn no_context_takeover_inflater_forgets_the_previous_message() {
        let mut compressor = client_compressor(15, false);
        let first = compress(&mut compressor, b"Hello");
        let second = compress(&mut compressor, b"Hello");
        let mut forgetful = inflater(15, true, 1024);
        assert_eq!(forgetful.inflate(&first).unwrap(), &b"Hello"[..]);
        // The second message points back into the first: without its window it is corrupt.
        let err = forgetful.inflate(&second).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidCompressedData);
    }

    /// ~2 KiB that inflates to 2 MB.
    fn bomb() -> Vec<u8> {
        let config = DeflateConfig {
            level: 9,
            ..DeflateConfig::default()
        };
        let mut compressor = Compressor::shared(&config, 15);
        compress(&mut compressor, &vec![0; 2_000_000])
    }

    #[test]
    fn bomb_fails_with_1009_before_its_output_is_allocated() {
        let bomb = bomb();
        assert!(bomb.len() <= 2100, "{} bytes", bomb.len());
        let max = 64 * 1024;
        let mut inflater = inflater(15, false, max);
        let err = inflater.inflate(&bomb).unwrap_err();
        assert_eq!(err, ProtocolError::InflatedTooBig { max });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // Stopped one byte past the cap: most of the bomb was never read.
        let raw = inflater.raw.as_ref().unwrap();
        assert_eq!(raw.total_out(), max as u64 + 1);
        assert!(raw.total_in() < bomb.len() as u64 / 4);
    }

    #[test]
    fn cap_is_inclusive() {
        let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
        let exactly = compress(&mut compressor, &[7; 1000]);
        assert_eq!(
            inflater(15, false, 1000).inflate(&exactly).unwrap().len(),
            1000
        );
        let err = inflater(15, false, 999).inflate(&exactly).unwrap_err();
        assert_eq!(err, ProtocolError::InflatedTooBig { max: 999 });
    }

    #[test]
    fn corrupt_data_fails_with_1007() {
        // BTYPE 11 is reserved (RFC 1951 §3.2.3); a stored block whose NLEN is not the
        // complement of LEN.
        for corrupt in [
            &[0xff, 0xff, 0xff][..],
            &[0x07],
            &[0x00, 0x05, 0x00, 0x00, 0x00],
        ] {
            let err = inflater(15, false, 1024).inflate(corrupt).unwrap_err();
            assert_eq!(err, ProtocolError::InvalidCompressedData, "{corrupt:02x?}");
            assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
        }
    }

    #[test]
    fn inflated_text_is_checked_as_utf8() {
        let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
        let mut inflater = inflater(15, false, 1024);
        let good = Bytes::from(compress(&mut compressor, "κόσμε".as_bytes()));
        assert_eq!(
            inflater
                .inflate_message(Message::CompressedText(good))
                .unwrap(),
            Message::Text(Utf8Bytes::from("κόσμε"))
        );
        let bad = Bytes::from(compress(&mut compressor, &[b'a', 0xff, b'b']));
        let err = inflater
            .inflate_message(Message::CompressedText(bad.clone()))
            .unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
        assert_eq!(
            inflater
                .inflate_message(Message::CompressedBinary(bad))
                .unwrap(),
            Message::Binary(Bytes::from_static(&[b'a', 0xff, b'b']))
        );
        let ping = Message::Ping(Bytes::from_static(b"p"));
        assert_eq!(inflater.inflate_message(ping.clone()).unwrap(), ping);
    }

    #[test]
    fn encoded_frame_has_rsv1_and_decodes_back() {
        let config = DeflateConfig::default();
        let mut compressor = Compressor::shared(&config, 15);
        let message = telemetry(1);
        let frame = compressor.encode_frame(OpCode::Text, &message);
        let (header, at) = FrameHeader::parse(&frame).unwrap().unwrap();
        assert_eq!(
            (header.fin, header.rsv, header.opcode),
            (true, RSV1, OpCode::Text)
        );
        assert_eq!(frame.len() - at, header.payload_len as usize);
        assert!(frame.len() < message.len());
        let mut decoder = MessageDecoder::new(DecoderConfig {
            role: Role::Client,
            deflate: true,
            ..DecoderConfig::default()
        });
        let decoded = decoder
            .decode(&mut BytesMut::from(&frame[..]))
            .unwrap()
            .unwrap();
        assert!(matches!(decoded, Message::CompressedText(_)));
        let inflated = inflater(15, false, 1 << 20).inflate_message(decoded);
        assert_eq!(
            inflated.unwrap(),
            Message::Text(Utf8Bytes::try_from(Bytes::from(message)).unwrap())
        );
    }

    #[test]
    fn short_messages_go_plain_under_the_threshold() {
        let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
        let frame = compressor.encode_frame(OpCode::Binary, b"tiny");
        assert_eq!(
            frame,
            crate::ws::frame::encode_server(OpCode::Binary, b"tiny")
        );
    }

    #[test]
    fn shared_frames_suit_connections_with_a_window_as_large() {
        let config = DeflateConfig::default();
        let shared_15 = Compressor::shared(&config, 15);
        let shared_10 = Compressor::shared(&config, 10);
        let narrow = DeflateParams {
            server_max_window_bits: 10,
            ..DeflateParams::default()
        };
        assert!(DeflateParams::default().accepts(&shared_15));
        assert!(!narrow.accepts(&shared_15));
        assert!(narrow.accepts(&shared_10));
        let own = Compressor::new(&config, &DeflateParams::default());
        assert!(!DeflateParams::default().accepts(&own), "it keeps context");
    }
}
