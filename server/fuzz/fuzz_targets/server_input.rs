//! The server's input path, end to end and in process: a real Stellar server (one
//! worker) runs inside the fuzzer, so libFuzzer sees coverage of the router, the verbs,
//! rooms and acks on top of the decoders. Each input is split into WebSocket messages
//! (text or binary, by a tag byte) sent by one client; then a second client's ping must
//! still be answered — whatever the input did, everyone else keeps being served.
#![no_main]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stellar_protocol::ws::OpCode;
use stellar_protocol::ws::frame::encode_client;
use stellar_server::{Config, Driver, Server, ServerHandle};

fn server() -> &'static ServerHandle {
    static HANDLE: OnceLock<ServerHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let config = Config {
            host: "127.0.0.1".into(),
            port: 0,
            workers: 1,
            driver: Driver::Epoll,
            rate_limit: 0,
            max_payload: 64 * 1024,
            ..Config::default()
        };
        let server = Server::builder()
            .config(config)
            .on_ack("echo", |ctx| Ok(ctx.data().clone()))
            .on("shout", |ctx| {
                let _ = ctx.to("r", "shout", ctx.data());
            })
            .start()
            .expect("server starts");
        let handle = server.handle();
        std::mem::forget(server);
        handle
    })
}

/// Opens a WebSocket and reads the 101 and the welcome frame.
fn connect(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    read_frame(&mut s).expect("welcome");
    s
}

fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0] & 0x0F, p))
}

fuzz_target!(|data: &[u8]| {
    static BYSTANDER: Mutex<Option<TcpStream>> = Mutex::new(None);
    let port = server().port();
    let mut attacker = connect(port);
    for chunk in data.split(|b| *b == 0xFF) {
        let Some((&tag, body)) = chunk.split_first() else { continue };
        let opcode = if tag & 1 == 0 { OpCode::Text } else { OpCode::Binary };
        if attacker.write_all(&encode_client(opcode, body, [tag, 1, 2, 3])).is_err() {
            break;
        }
    }
    drop(attacker);
    let mut guard = BYSTANDER.lock().unwrap();
    let bystander = guard.get_or_insert_with(|| connect(port));
    bystander.write_all(&encode_client(OpCode::Text, br#"{"event":"ping","data":"alive"}"#, [9, 9, 9, 9])).unwrap();
    loop {
        let (opcode, payload) = read_frame(bystander).expect("the bystander is still served");
        if opcode == 0x1 && payload.windows(7).any(|w| w == b"\"alive\"") {
            break;
        }
    }
});
