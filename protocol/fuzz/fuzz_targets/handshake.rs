//! The HTTP request head parser and the RFC 6455 §4 upgrade checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stellar_protocol::ws::handshake::{HeadLimits, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(request)) = Request::parse(data, &HeadLimits::default()) {
        assert!(request.head_len <= data.len());
        let _ = request.query_param("token");
        let _ = request.query_pairs().count();
        let _ = request.cookie("token");
        if let Ok(upgrade) = request.websocket_upgrade() {
            let _ = upgrade.response();
        }
    }
});
