//! WebSocket (RFC 6455): handshake, frames, masking, UTF-8 and the message decoder.

pub mod close;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use decoder::{DecoderConfig, InPlace, Message, MessageDecoder, Role};
pub use frame::{FrameHeader, OpCode};
pub use utf8::Utf8Bytes;
