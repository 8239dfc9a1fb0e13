//! The WebSocket message decoder fed the input in chunks whose sizes come from the
//! input itself, checked against the same input fed whole: chunking must never change
//! the messages or the error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stellar_protocol::ws::{DecoderConfig, MessageDecoder};

fn decode(chunks: &[&[u8]]) -> (Vec<stellar_protocol::ws::Message>, Option<stellar_protocol::ProtocolError>) {
    let mut decoder = MessageDecoder::new(DecoderConfig { max_message_size: 4096, ..DecoderConfig::default() });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step % 16) + 1;
    let chunked: Vec<&[u8]> = rest.chunks(step).collect();
    let (whole, whole_err) = decode(&[rest]);
    let (pieces, pieces_err) = decode(&chunked);
    // An error may be found earlier in bytes (fail-fast UTF-8), but the same one.
    assert_eq!(whole_err, pieces_err);
    assert_eq!(whole, pieces);
});
