//! Cross-protocol relay, end to end: a WebSocket member of room `r` sends fuzzed room
//! events and a TCP member of `r` decodes what it receives. Every frame must decode to
//! exactly what was sent (event name and data), in order; an event whose name breaks
//! SPEC §3.2's rule must reach it as nothing at all (the sender gets `invalid_event`).
//! A marker event closes each input, so "nothing else arrived" is checked too.
//!
//! Input: messages separated by 0xFF; in each, the bytes before the first 0x00 are the
//! event name (lossy UTF-8) and the rest is the data (a JSON string, lossy UTF-8).
#![no_main]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use stellar_protocol::EventName;
use stellar_protocol::tcp::{FrameType, TcpDecoder};
use stellar_protocol::ws::OpCode;
use stellar_protocol::ws::frame::encode_client;
use stellar_server::{Config, Driver, Server, ServerHandle};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Names the server answers itself instead of relaying (SPEC §3.1); the rest of the
/// reserved names are refused with `reserved_event`, so they are relayed to no one either.
const VERBS: [&str; 10] = [
    "join-room", "subscribe", "leave-room", "unsubscribe", "say", "room-view", "details",
    "file", "ping", "auth",
];

fn server() -> &'static ServerHandle {
    static HANDLE: OnceLock<ServerHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let config = Config {
            host: "127.0.0.1".into(),
            port: 0,
            workers: 1,
            driver: Driver::Epoll,
            rate_limit: 0,
            max_payload: 1 << 20,
            max_backpressure: 64 << 20,
            // The members stay silent between inputs for as long as the run lasts.
            heartbeat_interval: Duration::from_secs(24 * 3600),
            heartbeat_timeout: Duration::from_secs(48 * 3600),
            ..Config::default()
        };
        let server = Server::builder().config(config).start().expect("server starts");
        let handle = server.handle();
        std::mem::forget(server);
        handle
    })
}

/// The two members, joined once and kept across inputs.
struct Members {
    ws: TcpStream,
    tcp: TcpStream,
    decoder: TcpDecoder,
    buf: BytesMut,
}

impl Members {
    fn connect() -> Self {
        let port = server().port();
        let mut ws = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        ws.set_read_timeout(Some(TIMEOUT)).unwrap();
        ws.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", server().tcp_port())).expect("connect");
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut members = Self {
            ws,
            tcp,
            decoder: TcpDecoder::new(1 << 24),
            buf: BytesMut::new(),
        };
        members.send_ws(&json!({"event": "join-room", "data": "r"}).to_string());
        let join = [0, 0, 0, 8 + 9, 0x09, 0, 9];
        members.tcp.write_all(&join).unwrap();
        members.tcp.write_all(b"join-roomr").unwrap();
        let (kind, event, _) = members.next_tcp();
        assert_eq!((kind, event.as_str()), (FrameType::Connect, "connect"));
        let (_, event, _) = members.next_tcp();
        assert_eq!(event, "joined-room");
        members
    }

    fn send_ws(&mut self, text: &str) {
        let frame = encode_client(OpCode::Text, text.as_bytes(), [1, 2, 3, 4]);
        self.ws.write_all(&frame).unwrap();
    }

    /// Discards what the sender was answered (`error`s), so its socket never fills.
    fn drain_ws(&mut self) {
        self.ws.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        while matches!(self.ws.read(&mut chunk), Ok(n) if n > 0) {}
        self.ws.set_nonblocking(false).unwrap();
    }

    /// The next frame the TCP member gets, decoded.
    fn next_tcp(&mut self) -> (FrameType, String, Vec<u8>) {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => {
                    let event = f.event.map_or_else(String::new, |e| e.to_string());
                    return (f.kind, event, f.payload.to_vec());
                }
                Ok(None) => {}
                Err(e) => panic!("the TCP member got a frame it cannot decode: {e}"),
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.tcp.read(&mut chunk).expect("the TCP member is served");
            assert!(n > 0, "the server closed the TCP member");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    static MEMBERS: Mutex<Option<Members>> = Mutex::new(None);
    let mut guard = MEMBERS.lock().unwrap();
    let members = guard.get_or_insert_with(Members::connect);
    let mut expected = Vec::new();
    for chunk in input.split(|b| *b == 0xFF).take(16) {
        let cut = chunk.iter().position(|b| *b == 0).unwrap_or(chunk.len());
        let event = String::from_utf8_lossy(&chunk[..cut]).into_owned();
        let data = String::from_utf8_lossy(chunk.get(cut + 1..).unwrap_or_default()).into_owned();
        if VERBS.contains(&event.as_str()) {
            // Verbs are not relayed (and `leave-room` would end the test's membership).
            continue;
        }
        members.send_ws(&json!({"event": event, "room": "r", "data": data}).to_string());
        let server_only = stellar_protocol::event::reserved::SERVER_ONLY.iter().any(|r| *r == event.as_str());
        if EventName::new(event.as_str()).is_ok() && !server_only {
            expected.push((event, serde_json::to_string(&data).unwrap().into_bytes()));
        }
    }
    members.send_ws(r#"{"event":"marker","room":"r","data":0}"#);
    for (event, data) in expected {
        let (kind, got_event, got_data) = members.next_tcp();
        assert_eq!(kind, FrameType::Json);
        assert_eq!(got_event, event, "the event a TCP member sees is the one sent");
        assert_eq!(got_data, data, "and so is its data");
    }
    let (_, event, data) = members.next_tcp();
    assert_eq!((event.as_str(), data.as_slice()), ("marker", &b"0"[..]), "nothing else arrived");
    members.drain_ws();
});
