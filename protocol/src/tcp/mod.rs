//! The binary TCP protocol of SPEC §3.2.

pub mod frame;

pub use frame::{FrameType, TcpDecoder, TcpFrame};
