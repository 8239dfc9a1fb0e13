//! Event names obey SPEC §3.2's rule (1-256 bytes of `[A-Za-z0-9-./:_]`) wherever they
//! enter: WebSocket envelope, binary header, TCP frame, HTTP action and the library API.
//! A name outside it is answered with `error` `invalid_event` and nothing is relayed.

mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::json;
use stellar_server::{Driver, SendError, Server};
use tungstenite::Message;

/// A WebSocket member and a TCP member of room `mixed` (on two workers, so the relay
/// also crosses the mesh where the kernel spreads them).
fn mixed_room(s: &TestServer) -> (Client, TcpClient) {
    let mut ws = s.ws();
    let mut tcp = s.tcp();
    ws.join("mixed");
    tcp.send(0x09, "join-room", b"mixed");
    assert_eq!(tcp.recv().1, "joined-room");
    (ws, tcp)
}

/// The next frame the TCP member gets is the marker the WebSocket member sent after the
/// probe: nothing of the probe reached it, under any name.
fn next_tcp_frame_is_the_marker(ws: &mut Client, tcp: &mut TcpClient) {
    ws.send(json!({"event": "marker", "room": "mixed", "data": 1}));
    let (kind, event, payload) = tcp.recv();
    assert_eq!(
        (kind, event.as_str(), payload.as_slice()),
        (0x01, "marker", &b"1"[..])
    );
}

fn expect_invalid_event(ws: &mut Client) {
    let error = ws.recv_event("error");
    assert_eq!(error["data"]["code"], "invalid_event", "{error}");
}

#[test]
fn regression_a_70000_byte_name_from_websocket_never_reaches_tcp_members() {
    // Found by trying it: the TCP member got a frame whose event was the first 4 464
    // bytes of the name (70 000 mod 65 536) and whose payload was the rest.
    let s = TestServer::with(config(2, Driver::Auto));
    let (mut ws, mut tcp) = mixed_room(&s);
    let name = "x".repeat(70_000);
    ws.send(json!({"event": name, "room": "mixed", "data": {"a": 1}}));
    expect_invalid_event(&mut ws);
    next_tcp_frame_is_the_marker(&mut ws, &mut tcp);
}

#[test]
fn regression_a_websocket_client_cannot_spoof_alert_to_tcp_members() {
    // 65 541 = 65 536 + 5: the u16 length read back as 5, so TCP members got `alert`
    // with the rest of the name as a payload of the sender's choosing.
    let s = TestServer::with(config(2, Driver::Auto));
    let (mut ws, mut tcp) = mixed_room(&s);
    let name = format!("alert{}", "A".repeat(65_536));
    assert_eq!(name.len(), 65_541);
    ws.send(json!({"event": name, "room": "mixed", "data": 1}));
    expect_invalid_event(&mut ws);
    next_tcp_frame_is_the_marker(&mut ws, &mut tcp);
}

#[test]
fn names_at_the_limit_pass_and_past_it_are_refused() {
    let s = TestServer::with(config(1, Driver::Auto));
    let (mut ws, mut tcp) = mixed_room(&s);
    let longest = "a.b/c:d_e-".repeat(26)[..256].to_owned();
    ws.send(json!({"event": longest, "room": "mixed", "data": 2}));
    let (_, event, _) = tcp.recv();
    assert_eq!(event, longest);
    for bad in ["", "no spaces", "é", "quote\"d", &"a".repeat(257)] {
        ws.send(json!({"event": bad, "room": "mixed", "data": 3}));
        expect_invalid_event(&mut ws);
    }
    ws.send(json!({"event": "e", "_ackName": "bad name", "_correlationId": "c1"}));
    expect_invalid_event(&mut ws);
    next_tcp_frame_is_the_marker(&mut ws, &mut tcp);
}

#[test]
fn a_binary_header_with_a_bad_name_is_refused_not_relayed() {
    let s = TestServer::with(config(1, Driver::Auto));
    let (mut ws, mut tcp) = mixed_room(&s);
    let header = br#"{"event":"bad name","_binary":true,"room":"mixed"}"#;
    let mut msg = (header.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(header);
    msg.extend_from_slice(&[1, 2, 3]);
    ws.ws.send(Message::binary(msg)).unwrap();
    expect_invalid_event(&mut ws);
    next_tcp_frame_is_the_marker(&mut ws, &mut tcp);
}

#[test]
fn a_tcp_frame_with_a_bad_name_gets_an_error_frame() {
    let s = TestServer::with(config(1, Driver::Auto));
    let mut tcp = s.tcp();
    tcp.send(0x01, "no spaces", b"1");
    let (kind, _, payload) = tcp.recv();
    let error: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (kind, error["code"].as_str()),
        (0x0B, Some("invalid_event"))
    );
}

/// A TCP BINARY frame's payload: a SPEC §3.1 binary message.
fn tcp_binary(header_event: &str, room: &str, bytes: &[u8]) -> Vec<u8> {
    let header = json!({"event": header_event, "_binary": true, "room": room}).to_string();
    let mut payload = (header.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(header.as_bytes());
    payload.extend_from_slice(bytes);
    payload
}

#[test]
fn regression_tcp_binary_frames_are_relayed_to_the_room_not_dropped() {
    // They were dropped without an answer.
    let s = TestServer::with(config(2, Driver::Auto));
    let (mut ws, mut tcp) = mixed_room(&s);
    let mut other_tcp = s.tcp();
    other_tcp.send(0x09, "join-room", b"mixed");
    assert_eq!(other_tcp.recv().1, "joined-room");
    tcp.send(
        0x02,
        "telemetry",
        &tcp_binary("telemetry", "mixed", &[7, 8, 9]),
    );
    match ws.recv() {
        Message::Binary(got) => {
            let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
            let header: serde_json::Value = serde_json::from_slice(&got[4..4 + len]).unwrap();
            assert_eq!(header["event"], "telemetry");
            assert_eq!(header["room"], "mixed");
            assert_eq!(&got[4 + len..], &[7, 8, 9]);
        }
        other => panic!("expected a binary message, got {other:?}"),
    }
    let (kind, event, payload) = other_tcp.recv();
    assert_eq!(
        (kind, event.as_str(), payload.as_slice()),
        (0x02, "telemetry", &[7u8, 8, 9][..])
    );
    // A header naming another event, or a room the sender is not in, is refused.
    tcp.send(0x02, "telemetry", &tcp_binary("other", "mixed", &[1]));
    let (kind, _, payload) = tcp.recv();
    assert_eq!(kind, 0x0B);
    assert!(String::from_utf8_lossy(&payload).contains("invalid_binary"));
    tcp.send(
        0x02,
        "telemetry",
        &tcp_binary("telemetry", "elsewhere", &[1]),
    );
    let (kind, _, payload) = tcp.recv();
    assert_eq!(kind, 0x0B);
    assert!(String::from_utf8_lossy(&payload).contains("not_member"));
}

#[test]
fn an_http_action_with_a_bad_name_is_refused() {
    let s = TestServer::start(
        Server::builder()
            .config(config(1, Driver::Auto))
            .on_ack("echo", |ctx| Ok(ctx.data().clone())),
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"POST /api/e*cho HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_event"), "{answer}");
}

#[test]
fn the_library_refuses_bad_names_too() {
    let refused = Server::builder()
        .config(config(1, Driver::Auto))
        .on("no spaces", |_| {})
        .start();
    assert!(
        matches!(
            refused,
            Err(stellar_server::StartError::InvalidEvent { .. })
        ),
        "a handler no client could call"
    );
    let s = TestServer::with(config(1, Driver::Auto));
    let mut ws = s.ws();
    ws.join("r");
    assert!(matches!(
        s.handle.to("r", "bad name", &json!(1)),
        Err(SendError::InvalidEvent(_))
    ));
    assert!(matches!(
        s.handle.broadcast(&"x".repeat(257), &json!(1)),
        Err(SendError::InvalidEvent(_))
    ));
    s.handle.to("r", "good", &json!(1)).unwrap();
    assert_eq!(ws.recv_event("good")["data"], 1);
}
