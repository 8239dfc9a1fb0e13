//! Sans-IO codecs for Stellar's wire protocol (shared/SPEC.md §3).
//!
//! Nothing in this crate touches a socket, a runtime or a clock: decoders take byte
//! chunks and answer `Ok(Some(item))`, `Ok(None)` (need more bytes) or `Err(violation)`;
//! encoders hand out `bytes::Bytes` built once, so one broadcast is shared by every
//! recipient. That is what makes the codecs fuzzable, benchmarkable, and reusable by the
//! server and the bench client alike.
//!
//! - [`ws::handshake`]: the RFC 6455 §4 opening handshake over an HTTP/1.1 request.
//! - [`ws::frame`]: frame headers, opcodes and the encoders (RFC 6455 §5.2).
//! - [`ws::decoder`]: the message decoder state machine (fragmentation, control frames,
//!   limits, incremental UTF-8).
//! - [`ws::deflate`]: permessage-deflate (RFC 7692): negotiation, the compressor a
//!   broadcast is compressed with once, the per-connection inflater and its size cap.
//! - [`ws::mask`]: word-at-a-time unmasking (RFC 6455 §5.3).
//! - [`ws::utf8`]: streaming UTF-8 validation that fails at the first bad byte (§8.1).
//! - [`ws::close`]: close codes and the close-frame body (§7.4).
//! - [`event`]: [`EventName`], the one checked form of an event name (SPEC §3.2).
//! - [`envelope`]: the JSON envelope of SPEC §3.1, parsed without building a tree.
//! - [`binary`]: binary-over-WebSocket messages (`[u32 header len][header JSON][bytes]`).
//! - [`tcp`]: the binary TCP frame codec of SPEC §3.2.
//! - [`error`]: one error enum per layer, each variant knowing its answer.

pub mod binary;
pub mod envelope;
pub mod error;
pub mod event;
pub mod tcp;
pub mod ws;

pub use error::{EnvelopeError, ErrorCode, HandshakeError, ProtocolError, TcpError};
pub use event::{EventName, InvalidEvent};
