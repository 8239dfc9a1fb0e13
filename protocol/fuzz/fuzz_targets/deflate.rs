//! permessage-deflate on hostile input: negotiating an arbitrary header value never
//! panics and agrees only to windows the codecs can use; inflating arbitrary bytes under
//! a small cap never panics and never hands out more than the cap; whatever the
//! compressor makes of the input inflates back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stellar_protocol::ws::{Compressor, Decompressor, DeflateConfig, DeflateParams};

/// A cap small enough that bombs in the corpus hit it.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let config = DeflateConfig::default();
    if let Some(n) = std::str::from_utf8(data).ok().and_then(|h| config.negotiate_offers([h])) {
        assert!((9..=15).contains(&n.params.server_max_window_bits));
        assert!((8..=15).contains(&n.params.client_max_window_bits));
        assert!(n.response.starts_with("permessage-deflate"));
    }
    let params = DeflateParams::default();
    if let Ok(out) = Decompressor::new(&params, MAX).inflate(data) {
        assert!(out.len() <= MAX);
    }
    let mut compressed = Vec::new();
    Compressor::shared(&config, 15).compress_into(data, &mut compressed);
    let inflated = Decompressor::new(&params, data.len()).inflate(&compressed);
    assert_eq!(inflated.as_deref().ok(), Some(data));
});
