//! The hostile-input suite: every framing rule broken over a real socket gets its exact
//! close code, and a well-behaved client connected at the same time keeps its round
//! trip (SPEC §3.5).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::json;
use stellar_server::{Config, Driver};

/// A raw WebSocket connection: handshake done, `welcome` read, frames written by hand.
struct Raw(TcpStream);

impl Raw {
    fn connect(port: u16) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let mut raw = Self(s);
        let (opcode, _) = raw.frame().expect("welcome");
        assert_eq!(opcode, 0x1);
        raw
    }

    /// A masked frame with the given first byte (FIN/RSV/opcode) and payload.
    fn send(&mut self, first: u8, payload: &[u8]) {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let _ = self.0.write_all(&f);
    }

    /// The next server frame: (opcode, payload), `None` at end of stream.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).ok()?;
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                self.0.read_exact(&mut b).ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.0.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0F, payload))
    }

    /// Reads until the close frame; its code.
    fn close_code(&mut self) -> u16 {
        while let Some((opcode, payload)) = self.frame() {
            if opcode == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        panic!("connection ended without a close frame");
    }
}

fn still_served(c: &mut Client) {
    c.send(json!({"event": "ping", "data": 1}));
    assert_eq!(c.recv_event("pong")["data"], 1);
}

/// A named violation: the frames sent (first byte, payload) and the close code it gets.
type Violation = (&'static str, Vec<(u8, Vec<u8>)>, u16);

/// Each case: what is sent, and the close code it must get.
fn violations() -> Vec<Violation> {
    let long_close = {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(&[b'x'; 130]);
        p
    };
    vec![
        (
            "reserved bit",
            vec![(0x80 | 0x40 | 0x1, b"hi".to_vec())],
            1002,
        ),
        (
            "reserved opcode 0x3",
            vec![(0x80 | 0x3, b"hi".to_vec())],
            1002,
        ),
        (
            "reserved control opcode 0xB",
            vec![(0x80 | 0xB, vec![])],
            1002,
        ),
        ("fragmented ping", vec![(0x9, b"p".to_vec())], 1002),
        ("ping over 125 bytes", vec![(0x89, vec![0; 126])], 1002),
        ("close over 125 bytes", vec![(0x88, long_close)], 1002),
        (
            "continuation without a start",
            vec![(0x80, b"x".to_vec())],
            1002,
        ),
        (
            "new message inside a fragmented one",
            vec![(0x01, b"a".to_vec()), (0x81, b"b".to_vec())],
            1002,
        ),
        ("close with a 1-byte body", vec![(0x88, vec![3])], 1002),
        (
            "close with code 1005",
            vec![(0x88, 1005u16.to_be_bytes().to_vec())],
            1002,
        ),
        (
            "close with code 999",
            vec![(0x88, 999u16.to_be_bytes().to_vec())],
            1002,
        ),
        (
            "close reason not UTF-8",
            vec![(0x88, vec![0x03, 0xE8, 0xFF])],
            1007,
        ),
        ("text not UTF-8", vec![(0x81, vec![b'a', 0xC0, 0x80])], 1007),
        (
            "invalid UTF-8 split across fragments",
            vec![
                (0x01, "κό".as_bytes()[..3].to_vec()),
                (0x00, vec![0xBE, 0xED, 0xA0]),
                (0x80, vec![0x80]),
            ],
            1007,
        ),
        (
            "2 MiB message against the 1 MiB default",
            vec![(0x82, vec![7; 2 << 20])],
            1009,
        ),
    ]
}

#[test]
fn every_framing_violation_gets_its_close_code_and_bystanders_are_unharmed() {
    let s = TestServer::with(config(2, Driver::Auto));
    let mut bystander = s.ws();
    for (name, frames, code) in violations() {
        let mut raw = Raw::connect(s.handle.port());
        for (first, payload) in frames {
            raw.send(first, &payload);
        }
        assert_eq!(raw.close_code(), code, "{name}");
        still_served(&mut bystander);
    }
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let s = TestServer::with(config(1, Driver::Auto));
    let mut bystander = s.ws();
    let mut raw = Raw::connect(s.handle.port());
    raw.0.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(raw.close_code(), 1002);
    still_served(&mut bystander);
}

/// Replies queued before a protocol violation still go out, whole and in order, ahead
/// of its close: small ones are copied into the write queue's open buffer and large ones
/// shared, and the close must land behind both.
#[test]
fn replies_queued_before_a_violation_arrive_whole_before_its_close() {
    let s = TestServer::with(config(1, Driver::Auto));
    let mut bystander = s.ws();
    let mut raw = Raw::connect(s.handle.port());
    let sizes = [1, 600, 30, 2000, 5, 150, 180, 40_000, 7, 9];
    for (i, &n) in sizes.iter().enumerate() {
        let ping = json!({"event": "ping", "data": {"i": i, "pad": "x".repeat(n)}});
        raw.send(0x81, ping.to_string().as_bytes());
    }
    raw.0.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    for (i, &n) in sizes.iter().enumerate() {
        let (opcode, payload) = raw.frame().expect("a pong");
        assert_eq!(opcode, 0x1);
        let pong: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(pong["event"], "pong");
        assert_eq!(pong["data"]["i"], i);
        assert_eq!(pong["data"]["pad"].as_str().map(str::len), Some(n));
    }
    assert_eq!(raw.close_code(), 1002);
    still_served(&mut bystander);
}

#[test]
fn sixty_four_bit_length_with_msb_set_closes_with_1002() {
    let s = TestServer::with(config(1, Driver::Auto));
    let mut raw = Raw::connect(s.handle.port());
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    raw.0.write_all(&frame).unwrap();
    assert_eq!(raw.close_code(), 1002);
}

#[test]
fn two_thousand_joins_from_one_client_stop_at_the_per_client_cap() {
    let s = TestServer::with(config(2, Driver::Auto));
    let mut greedy = s.ws();
    let mut bystander = s.ws();
    for i in 0..2000 {
        greedy.send(json!({"event": "join-room", "data": format!("r{i}")}));
    }
    let mut joined = 0;
    let mut refused = 0;
    for _ in 0..2000 {
        let v = greedy.recv_json();
        match v["event"].as_str() {
            Some("joined-room") => joined += 1,
            Some("error") => {
                assert_eq!(v["data"]["code"], "too_many_rooms");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((joined, refused), (50, 1950));
    assert_eq!(s.handle.rooms().len(), 50);
    still_served(&mut bystander);
    still_served(&mut greedy);
}

#[test]
fn public_paths_never_leave_public_dir() {
    // The public directory, with a secret beside it that no path may reach.
    let root = temp_dir();
    let dir = root.path().join("public");
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log(1)").unwrap();
    let secret = "secret.txt";
    std::fs::write(root.path().join(secret), "secret").unwrap();
    let config = Config {
        public_dir: Some(dir),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let get = |path: &str| {
        let mut st = TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
        st.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(st, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = st.read_to_string(&mut out);
        out
    };
    let ok = get("/public/assets/app.js");
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("text/javascript"),
        "{ok}"
    );
    for bad in [
        format!("/public/../{secret}"),
        format!("/public/assets/../../{secret}"),
        "/public//etc/passwd".to_owned(),
        "/public/%2e%2e/etc/passwd".to_owned(),
        "/public/assets".to_owned(),
    ] {
        let answer = get(&bad);
        assert!(answer.starts_with("HTTP/1.1 404"), "{bad}: {answer}");
        assert!(!answer.contains("secret"), "{bad}");
    }
}

#[test]
fn tcp_frame_over_max_payload_is_refused_from_its_length_prefix() {
    let s = TestServer::with(Config {
        max_payload: 1024,
        ..config(1, Driver::Auto)
    });
    let mut bystander = s.ws();
    let mut tcp = s.tcp();
    // Only the length prefix and type: nothing of the body is ever sent.
    tcp.stream.write_all(&(1_000_000u32).to_be_bytes()).unwrap();
    let (kind, _, payload) = tcp.recv();
    assert_eq!(kind, 0x0B);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["code"],
        "payload_too_large"
    );
    assert_eq!(tcp.recv().0, 0x08, "then DISCONNECT");
    still_served(&mut bystander);
}
