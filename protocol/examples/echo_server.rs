//! A WebSocket echo server built only on `stellar-protocol` and std sockets, one thread
//! per connection. It exists to run the Autobahn fuzzingclient suite against the codecs
//! alone (`scripts/autobahn echo`), permessage-deflate included: it negotiates the
//! extension with the default [`DeflateConfig`] and echoes compressed.
//!
//! Usage: `cargo run --release -p stellar-protocol --example echo_server -- 127.0.0.1:9001`

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use bytes::{Bytes, BytesMut};
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::handshake::{HeadLimits, Request, reject};
use stellar_protocol::ws::{
    CloseCode, CloseFrame, Compressor, DecoderConfig, Decompressor, DeflateConfig, Message,
    MessageDecoder, OpCode,
};

/// Autobahn sends messages up to 16 MiB in cases 9.*.
const MAX_MESSAGE: usize = 64 << 20;

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("echo_server listening on ws://{}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let request = loop {
        if read_more(&mut stream, &mut buf)? == 0 {
            return Ok(());
        }
        match Request::parse(&buf, &HeadLimits::default()) {
            Ok(Some(req)) => break req,
            Ok(None) => continue,
            Err(e) => return stream.write_all(&reject(&e)),
        }
    };
    let upgrade = match request.websocket_upgrade() {
        Ok(u) => u,
        Err(e) => return stream.write_all(&reject(&e)),
    };
    // Every echo compressed, however short: kosoku's 12.*/13.* cases hash a text echo
    // as bytes only when it arrived compressed (a plain one fails them as a `str`).
    let deflate_config = DeflateConfig {
        threshold: 0,
        ..DeflateConfig::default()
    };
    let negotiated = deflate_config.negotiate(&request);
    let response = negotiated.as_ref().map(|n| n.response.as_str());
    stream.write_all(&upgrade.response_with_extensions(response))?;
    let _ = buf.split_to(request.head_len);

    let config = DecoderConfig {
        max_message_size: MAX_MESSAGE,
        deflate: negotiated.is_some(),
        ..DecoderConfig::default()
    };
    let mut decoder = MessageDecoder::new(config);
    let mut deflate = negotiated.map(|n| {
        let compressor = Compressor::new(&deflate_config, &n.params);
        (compressor, Decompressor::new(&n.params, MAX_MESSAGE))
    });
    loop {
        loop {
            let message = match (decoder.decode(&mut buf), &mut deflate) {
                (Ok(Some(message)), Some((_, inflater))) => inflater.inflate_message(message),
                (Ok(Some(message)), None) => Ok(message),
                (Ok(None), _) => break,
                (Err(e), _) => Err(e),
            };
            let reply = match message {
                Ok(Message::Text(t)) => echo(&mut deflate, OpCode::Text, t.as_bytes()),
                Ok(Message::Binary(b)) => echo(&mut deflate, OpCode::Binary, &b),
                Ok(Message::Ping(p)) => encode_server(OpCode::Pong, &p),
                Ok(Message::Pong(_)) => continue,
                Ok(Message::Close(frame)) => {
                    let body = match frame {
                        Some(CloseFrame { code, .. }) => CloseFrame::payload(code, ""),
                        None => Bytes::new(),
                    };
                    stream.write_all(&encode_server(OpCode::Close, &body))?;
                    return stream.shutdown(std::net::Shutdown::Write);
                }
                // Only without deflate, where the decoder never yields them.
                Ok(Message::CompressedText(_) | Message::CompressedBinary(_)) => {
                    return fail(&mut stream, CloseCode::PROTOCOL_ERROR);
                }
                Err(e) => return fail(&mut stream, e.close_code()),
            };
            stream.write_all(&reply)?;
        }
        if read_more(&mut stream, &mut buf)? == 0 {
            return Ok(());
        }
    }
}

/// The echo of a data message: compressed when deflate was negotiated (and the
/// compressor finds it worth it), plain otherwise.
fn echo(deflate: &mut Option<(Compressor, Decompressor)>, opcode: OpCode, payload: &[u8]) -> Bytes {
    match deflate {
        Some((compressor, _)) => compressor.encode_frame(opcode, payload),
        None => encode_server(opcode, payload),
    }
}

fn fail(stream: &mut TcpStream, code: CloseCode) -> io::Result<()> {
    stream.write_all(&encode_server(
        OpCode::Close,
        &CloseFrame::payload(code, ""),
    ))?;
    stream.shutdown(std::net::Shutdown::Write)
}

fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + 64 * 1024, 0);
    let n = stream.read(&mut buf[start..]);
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    n
}
