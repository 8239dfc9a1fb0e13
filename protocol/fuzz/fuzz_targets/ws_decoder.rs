//! The WebSocket message decoder fed the input in chunks whose sizes come from the
//! input itself, checked against the same input fed whole: chunking must never change
//! the messages or the error. A reader that takes the in-place path first
//! (`decode_in_place`, falling back to `decode`) must give the same too.
#![no_main]

use bytes::{Buf, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stellar_protocol::ProtocolError;
use stellar_protocol::ws::{DecoderConfig, Message, MessageDecoder, OpCode};

/// One message the way a reader that prefers the in-place path gets it.
fn in_place_first(d: &mut MessageDecoder, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
    let Some(frame) = d.decode_in_place(buf)? else { return d.decode(buf) };
    let payload = Bytes::copy_from_slice(&buf[frame.payload]);
    buf.advance(frame.len);
    Ok(Some(match frame.opcode {
        OpCode::Text => Message::Text(payload),
        _ => Message::Binary(payload),
    }))
}

fn decode(chunks: &[&[u8]], in_place: bool) -> (Vec<Message>, Option<ProtocolError>) {
    let mut decoder = MessageDecoder::new(DecoderConfig { max_message_size: 4096, ..DecoderConfig::default() });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let next = if in_place { in_place_first(&mut decoder, &mut buf) } else { decoder.decode(&mut buf) };
            match next {
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
    let whole = decode(&[rest], false);
    // An error may be found earlier in bytes (fail-fast UTF-8), but the same one.
    assert_eq!(whole, decode(&chunked, false));
    assert_eq!(whole, decode(&[rest], true));
    assert_eq!(whole, decode(&chunked, true));
});
