//! The TCP frame decoder fed in input-sized chunks, checked against the whole input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stellar_protocol::tcp::{TcpDecoder, TcpFrame};
use stellar_protocol::TcpError;

fn decode(chunks: &[&[u8]]) -> (Vec<TcpFrame>, Option<TcpError>) {
    let mut decoder = TcpDecoder::new(4096);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let chunked: Vec<&[u8]> = rest.chunks(usize::from(step % 16) + 1).collect();
    assert_eq!(decode(&[rest]), decode(&chunked));
});
