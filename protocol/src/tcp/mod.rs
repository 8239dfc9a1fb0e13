//! The binary TCP protocol of SPEC §3.2.

pub mod frame;
pub mod json;

pub use frame::{FrameType, TcpDecoder, TcpFrame};
pub use json::{AckPayload, JsonPayload};
