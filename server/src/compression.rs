//! permessage-deflate on the server (`compression = true`; the codec and the negotiation
//! are the protocol crate's `ws::deflate`).
//!
//! - **Negotiation** in the upgrade ([`negotiate`]): the server always answers with
//!   `server_no_context_takeover`, so every message it sends is compressed on its own
//!   and one compressed frame suits every member of a room.
//! - **Sending** ([`frame`]): one stateless compressor per worker thread. A room
//!   message is compressed once, the first time a member that negotiated compression
//!   needs it (`outbound.rs`), and the same bytes go to all of them; members without the
//!   extension get the plain frame, itself built once. Direct messages and replies are
//!   compressed the same way, per message. No connection owns a compressor.
//!   Messages under `compression_threshold` bytes go out plain (RSV1 clear), which the
//!   RFC allows at any time.
//! - **Receiving**: each connection that negotiated the extension inflates its own
//!   messages (`session.rs` gives its decoder a `Decompressor`, whose ~46 KiB of zlib
//!   state is made on the first compressed message), capped at `max_payload` while
//!   inflating: a small frame that would inflate past it is closed with 1009 before the
//!   memory is spent; corrupt data with 1007.

use std::cell::RefCell;

use bytes::Bytes;
use stellar_protocol::ws::handshake::Request;
use stellar_protocol::ws::{Compressor, DeflateConfig, DeflateParams, OpCode};

use crate::config::Config;

/// What the server agrees to, from its configuration.
fn deflate_config(config: &Config) -> DeflateConfig {
    DeflateConfig {
        threshold: config.compression_threshold,
        ..DeflateConfig::default()
    }
}

/// The extension agreed with this client: its parameters and the
/// `Sec-WebSocket-Extensions` value of the 101. `None` when compression is off or the
/// client offered nothing acceptable (the upgrade goes on without it).
pub fn negotiate(config: &Config, request: &Request) -> Option<(DeflateParams, String)> {
    if !config.compression {
        return None;
    }
    deflate_config(config)
        .negotiate(request)
        .map(|n| (n.params, n.response))
}

/// The window, in bits, the broadcast frames are compressed with: the largest, which
/// every client that did not limit `server_max_window_bits` accepts.
pub const BROADCAST_WINDOW_BITS: u8 = 15;

/// The window a connection with `params` is sent frames compressed with: what it
/// agreed to (9..=15; the negotiation declines 8, which zlib cannot compress raw
/// DEFLATE with).
pub fn window_bits(params: &DeflateParams) -> u8 {
    params.server_max_window_bits.min(BROADCAST_WINDOW_BITS)
}

/// The thread's stateless compressors, one per window size in use (a client that
/// limits `server_max_window_bits` gets its own size), and the configuration they were
/// made from.
struct Shared {
    config: DeflateConfig,
    /// Indexed by window bits - 9.
    compressors: [Option<Compressor>; 7],
}

std::thread_local! {
    static SHARED: RefCell<Shared> = RefCell::new(Shared::new(&Config::default()));
}

impl Shared {
    fn new(config: &Config) -> Self {
        Self {
            config: deflate_config(config),
            compressors: Default::default(),
        }
    }
}

/// Makes this thread's compressors follow `config` (the worker calls it at start and
/// on each configuration change).
pub fn configure(config: &Config) {
    SHARED.with_borrow_mut(|shared| {
        if shared.config != deflate_config(config) {
            *shared = Shared::new(config);
        }
    });
}

/// One whole server frame of `payload` compressed on its own with a `window_bits`
/// window (RSV1), or plain under the threshold.
pub fn frame(window_bits: u8, opcode: OpCode, payload: &[u8]) -> Bytes {
    let bits = window_bits.clamp(9, BROADCAST_WINDOW_BITS);
    SHARED.with_borrow_mut(|shared| {
        let config = shared.config;
        let slot = &mut shared.compressors[usize::from(bits - 9)];
        slot.get_or_insert_with(|| Compressor::shared(&config, bits))
            .encode_frame(opcode, payload)
    })
}
