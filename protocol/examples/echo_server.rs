//! A WebSocket echo server built only on `stellar-protocol` and std sockets, one thread
//! per connection. It exists to run the Autobahn fuzzingclient suite against the codecs
//! alone (`scripts/autobahn echo`).
//!
//! Usage: `cargo run --release -p stellar-protocol --example echo_server -- 127.0.0.1:9001`

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use bytes::BytesMut;
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::handshake::{HeadLimits, Request, reject};
use stellar_protocol::ws::{CloseCode, CloseFrame, DecoderConfig, Message, MessageDecoder, OpCode};

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
    stream.write_all(&upgrade.response())?;
    let _ = buf.split_to(request.head_len);

    let config = DecoderConfig {
        max_message_size: MAX_MESSAGE,
        ..DecoderConfig::default()
    };
    let mut decoder = MessageDecoder::new(config);
    loop {
        loop {
            let reply = match decoder.decode(&mut buf) {
                Ok(Some(Message::Text(t))) => encode_server(OpCode::Text, t.as_bytes()),
                Ok(Some(Message::Binary(b))) => encode_server(OpCode::Binary, &b),
                Ok(Some(Message::Ping(p))) => encode_server(OpCode::Pong, &p),
                Ok(Some(Message::Pong(_))) => continue,
                Ok(Some(Message::Close(frame))) => {
                    let body = match frame {
                        Some(CloseFrame { code, .. }) => CloseFrame::payload(code, ""),
                        None => bytes::Bytes::new(),
                    };
                    stream.write_all(&encode_server(OpCode::Close, &body))?;
                    return stream.shutdown(std::net::Shutdown::Write);
                }
                Ok(None) => break,
                Err(e) => return fail(&mut stream, e.close_code()),
            };
            stream.write_all(&reply)?;
        }
        if read_more(&mut stream, &mut buf)? == 0 {
            return Ok(());
        }
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
