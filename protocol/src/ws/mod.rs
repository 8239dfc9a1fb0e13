//! WebSocket (RFC 6455): handshake, frames, masking, UTF-8, the message decoder and
//! permessage-deflate (RFC 7692).

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use decoder::{DecoderConfig, InPlace, Message, MessageDecoder, Role};
pub use deflate::{Compressor, Decompressor, DeflateConfig, DeflateParams, Negotiated};
pub use frame::{FrameHeader, OpCode};
pub use utf8::Utf8Bytes;
