//! permessage-deflate against the server over a raw socket, for what a well-behaved
//! client never sends: the negotiation's answer, a message whose compressed data is
//! corrupt (1007), a compressed frame from a client that did not negotiate (1002), and
//! a small frame that inflates past `max_payload` (1009). The happy paths, with a real
//! client that negotiates (Node's `ws`), are in `client/test/compression.test.mjs`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use common::*;
use stellar_protocol::ws::frame::{FrameHeader, OpCode, RSV1};
use stellar_protocol::ws::mask::apply_mask;
use stellar_protocol::ws::{Compressor, DeflateConfig};
use stellar_server::{Config, Driver};

/// Upgrades with `extensions` offered; returns the socket and the 101's head.
fn upgrade(port: u16, extensions: Option<&str>) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// A masked client frame with RSV1 set around `payload`.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut buf = BytesMut::new();
    FrameHeader {
        fin: true,
        rsv: RSV1,
        opcode: OpCode::Text,
        mask: Some(key),
        payload_len: payload.len() as u64,
    }
    .encode_into(&mut buf);
    let mut body = payload.to_vec();
    apply_mask(&mut body, key, 0);
    buf.extend_from_slice(&body);
    buf.to_vec()
}

/// Reads frames until a close; returns its code.
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head)
            .expect("a frame before the socket ends");
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            s.read_exact(&mut ext).unwrap();
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            s.read_exact(&mut ext).unwrap();
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        if head[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

fn server(max_payload: usize) -> TestServer {
    TestServer::with(Config {
        compression: true,
        max_payload,
        ..config(1, Driver::Auto)
    })
}

#[test]
fn the_answer_carries_server_no_context_takeover_and_bad_offers_are_declined() {
    let s = server(1 << 20);
    let (_ok, head) = upgrade(
        s.handle.port(),
        Some("permessage-deflate; client_max_window_bits"),
    );
    let answer = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-extensions:")
        })
        .expect("the extension is agreed");
    assert!(answer.contains("permessage-deflate"), "{answer}");
    assert!(answer.contains("server_no_context_takeover"), "{answer}");
    // An unknown parameter declines the offer, not the upgrade.
    let (_plain, head) = upgrade(s.handle.port(), Some("permessage-deflate; bogus=1"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    // Compression off: nothing is agreed.
    let off = TestServer::with(config(1, Driver::Auto));
    let (_s, head) = upgrade(off.handle.port(), Some("permessage-deflate"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
}

#[test]
fn corrupt_compressed_data_closes_with_1007() {
    let s = server(1 << 20);
    let (mut c, _) = upgrade(s.handle.port(), Some("permessage-deflate"));
    // 0xff is a reserved DEFLATE block type: invalid from the first byte.
    c.write_all(&compressed_frame(&[0xff, 0xff, 0xff, 0xff]))
        .unwrap();
    assert_eq!(close_code(&mut c), 1007);
    let mut bystander = s.ws();
    bystander.send(serde_json::json!({"event": "ping"}));
    bystander.recv_event("pong");
}

#[test]
fn a_compressed_frame_without_the_extension_closes_with_1002() {
    let s = server(1 << 20);
    let (mut c, _) = upgrade(s.handle.port(), None);
    let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
    let mut payload = Vec::new();
    compressor.compress_into(br#"{"event":"ping"}"#, &mut payload);
    c.write_all(&compressed_frame(&payload)).unwrap();
    assert_eq!(close_code(&mut c), 1002);
}

#[test]
fn a_small_frame_that_inflates_past_max_payload_closes_with_1009() {
    let s = server(64 * 1024);
    let (mut c, _) = upgrade(s.handle.port(), Some("permessage-deflate"));
    let mut compressor = Compressor::shared(&DeflateConfig::default(), 15);
    let mut payload = Vec::new();
    compressor.compress_into(&vec![b'a'; 4 << 20], &mut payload);
    assert!(
        payload.len() < 64 * 1024,
        "the frame itself is under max_payload"
    );
    c.write_all(&compressed_frame(&payload)).unwrap();
    assert_eq!(close_code(&mut c), 1009);
}
