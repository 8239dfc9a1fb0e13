//! Slow consumers, heartbeats, graceful shutdown, limits and stelar-time-real
//! compatibility.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use stellar_server::{Config, Driver, Server};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn slow_consumer_is_closed_while_the_room_keeps_receiving() {
    let s = TestServer::with(config(1, Driver::Auto));
    let (mut publisher, mut good, mut slow) = (s.ws(), s.ws(), s.ws());
    for c in [&mut publisher, &mut good, &mut slow] {
        c.join("flood");
    }
    let payload = "x".repeat(1024);
    let (total, batch) = (20_000, 500);
    // The good member reads as it goes and reports progress, so the publisher never
    // runs more than one batch (~0.5 MiB, under the 1 MiB max_backpressure) ahead of
    // it; the slow member never reads, so 20 MiB pile up for it.
    // The slow member starts reading once the server has given up on it: its close
    // frame waits behind what was already in flight, and is delivered if it reads
    // within `close_timeout` (2 s), however long the flood takes to publish.
    let handle = s.handle.clone();
    let slow_reader = std::thread::spawn(move || {
        eventually("the slow member to be closed", || {
            handle.stats().slow_consumer_closes == 1
        });
        slow.expect_close()
    });
    let (progress, acked) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for seq in 0..total {
            let got = good.recv_event("blob");
            assert_eq!(got["data"]["seq"], seq);
            if (seq + 1) % batch == 0 {
                progress.send(seq).unwrap();
            }
        }
        good
    });
    for seq in 0..total {
        publisher
            .send(json!({"event": "blob", "room": "flood", "data": {"seq": seq, "p": payload}}));
        if (seq + 1) % batch == 0 {
            acked
                .recv_timeout(TIMEOUT)
                .expect("the good member keeps receiving");
        }
    }
    let mut good = reader
        .join()
        .expect("the good member got every message in order");
    let (code, reason) = slow_reader.join().expect("the slow member got its close");
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Policy, "slow consumer")
    );
    assert_eq!(s.handle.stats().slow_consumer_closes, 1);
    good.send(json!({"event": "ping"}));
    good.recv_event("pong");
}

/// A slow consumer that never reads again cannot hold its socket open: its close frame
/// waits behind a write the kernel will never finish, so after `close_timeout` the
/// socket is shut down and the connection is gone, while the room keeps being served.
#[test]
fn a_slow_consumer_that_never_reads_is_shut_down_after_close_timeout() {
    let s = TestServer::with(Config {
        close_timeout: Duration::from_millis(300),
        max_backpressure: 64 * 1024,
        ..config(1, Driver::Auto)
    });
    let (mut publisher, mut good, mut stuck) = (s.ws(), s.ws(), s.ws());
    for c in [&mut publisher, &mut good, &mut stuck] {
        c.join("flood");
    }
    let payload = "x".repeat(16 * 1024);
    let mut seq = 0;
    while s.handle.stats().slow_consumer_closes == 0 {
        assert!(seq < 20_000, "the stuck member was never found slow");
        publisher
            .send(json!({"event": "blob", "room": "flood", "data": {"seq": seq, "p": payload}}));
        assert_eq!(good.recv_event("blob")["data"]["seq"], seq);
        seq += 1;
    }
    let closed_at = std::time::Instant::now();
    eventually("the stuck member's socket to be shut down", || {
        s.handle.stats().active_connections == 2
    });
    let took = closed_at.elapsed();
    assert!(took < Duration::from_secs(2), "shut down after {took:?}");
    good.send(json!({"event": "ping"}));
    good.recv_event("pong");
    drop(stuck);
}

#[test]
fn silent_client_is_dropped_after_heartbeat_timeout() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(400),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut silent = s.ws();
    let mut lively = s.ws();
    // The lively client keeps reading, so tungstenite answers each ping with a pong.
    let keep_alive = std::thread::spawn(move || {
        lively
            .ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(1200);
        let mut pings = 0;
        while std::time::Instant::now() < deadline {
            match lively.ws.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Close(f)) => panic!("lively client closed: {f:?}"),
                _ => {}
            }
            let _ = lively.ws.flush();
        }
        assert!(pings > 0, "an idle client is pinged");
        lively
    });
    // Reading would make tungstenite answer the server's pings and keep the silent
    // client alive, so wait, without reading, until its close frame is on the socket.
    silent
        .ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    eventually("the silent client to be sent a close", || {
        has_close_frame(silent.ws.get_ref())
    });
    silent.ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    let (code, reason) = silent.expect_close();
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Away, "Heartbeat timeout")
    );
    let mut lively = keep_alive.join().unwrap();
    lively.ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    lively.send(json!({"event": "ping"}));
    lively.recv_event("pong");
}

/// Whether the server frames waiting unread on `stream` include a close, peeked so
/// that nothing is consumed (and no ping answered). Server frames are unmasked; a
/// heartbeat's pings and close are short, but longer lengths are skipped correctly.
fn has_close_frame(stream: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let Ok(n) = stream.peek(&mut buf) else {
        return false;
    };
    let buf = &buf[..n];
    let mut at = 0;
    while let (Some(&b0), Some(&b1)) = (buf.get(at), buf.get(at + 1)) {
        if b0 & 0x0F == 0x8 {
            return true;
        }
        let (len, header) = match b1 & 0x7F {
            126 => match buf.get(at + 2..at + 4) {
                Some(l) => (u16::from_be_bytes([l[0], l[1]]) as usize, 4),
                None => return false,
            },
            127 => return false,
            len => (len as usize, 2),
        };
        at += header + len;
    }
    false
}

#[test]
fn graceful_shutdown_sends_1001_and_runs_hooks() {
    let hooked = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hooked);
    let s = TestServer::start(
        Server::builder()
            .config(config(2, Driver::Auto))
            .on_shutdown(move |signal, forced| {
                assert_eq!((signal, forced), ("api", false));
                flag.store(true, Ordering::SeqCst);
            }),
    );
    let mut clients = clients_on_every_worker(&s, 2, 4);
    let handle = s.handle.clone();
    let stopper = std::thread::spawn(move || handle.shutdown(Duration::from_secs(5)));
    for c in &mut clients {
        let (code, reason) = c.expect_close();
        assert_eq!(
            (code, reason.as_str()),
            (CloseCode::Away, "Server shutting down")
        );
        let _ = c.ws.flush();
    }
    stopper.join().unwrap();
    assert!(hooked.load(Ordering::SeqCst));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).is_err(),
        "no longer accepting"
    );
}

#[test]
fn full_server_closes_new_clients_with_1008() {
    let config = Config {
        max_connections: 2,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let (_a, _b) = (s.ws(), s.ws());
    let stream = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut ws, _) =
        tungstenite::client(format!("ws://127.0.0.1:{}/", s.handle.port()), stream).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(
            (f.code, f.reason.as_str()),
            (CloseCode::Policy, "Server full")
        ),
        other => panic!("expected close, got {other:?}"),
    }
}

#[test]
fn room_limits_answer_errors() {
    let config = Config {
        max_rooms_per_client: 2,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut c = s.ws();
    c.join("a");
    c.join("b");
    c.send(json!({"event": "join-room", "data": "c"}));
    assert_eq!(c.recv_event("error")["data"]["code"], "too_many_rooms");
}

#[test]
fn oversized_message_closes_with_1009() {
    let config = Config {
        max_payload: 1024,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut c = s.ws();
    let mut other = s.ws();
    c.send_raw(&format!(r#"{{"event":"x","data":"{}"}}"#, "y".repeat(2000)));
    let (code, _) = c.expect_close();
    assert_eq!(code, CloseCode::Size);
    other.send(json!({"event": "ping"}));
    other.recv_event("pong");
}

/// A client written for stelar-time-real 3.x sends exactly these bytes.
#[test]
fn stelar_time_real_client_frames_work_unchanged() {
    let s = TestServer::with(config(1, Driver::Auto));
    // Raw handshake as its Node client writes it.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        raw.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(raw, tungstenite::protocol::Role::Client, None);
    let welcome: serde_json::Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(welcome["data"]["context"], "api");
    ws.send(Message::text(r#"{"event":"join-room","data":"legacy"}"#))
        .unwrap();
    ws.send(Message::text(
        r#"{"event":"echo","data":{"n":1},"_ackName":"echo","_correlationId":"echo#1"}"#,
    ))
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Message::Text(t) = ws.read().unwrap() {
            got.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
        }
    }
    assert_eq!(got[0], json!({"event": "joined-room", "data": "legacy"}));
    assert_eq!(got[1]["_correlationId"], "echo#1");
    assert_eq!(
        got[1]["error"]["code"], "unknown_action",
        "no echo handler in the library by default"
    );
    // Its TCP client reads the id from the CONNECT frame's payload as text.
    // The id is `<worker>-<seq>`, both decimal, on a worker that exists, and it is the
    // id the server lists for that client.
    let tcp = s.tcp();
    let (worker, seq) = tcp.id.split_once('-').expect("id is <worker>-<seq>");
    let is_decimal = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    assert!(is_decimal(worker) && is_decimal(seq), "id {:?}", tcp.id);
    assert_eq!(worker, "0", "one worker");
    eventually("the server to list the TCP client under its id", || {
        s.handle.clients(None).contains(&tcp.id)
    });
}

/// A `max_backpressure` smaller than the welcome: the upgrade and the welcome still go
/// out, as one frame over the bound is accepted on an empty queue (SPEC §3.3). (Before
/// that rule this closed the client as a slow consumer from its first frame, and a
/// review found the close frame sent without the 101 in front of it: the write queue
/// keeps the head through a slow-consumer clear, tested in `write_queue.rs`.)
#[test]
fn a_bound_smaller_than_the_welcome_still_lets_the_upgrade_and_welcome_out() {
    let s = TestServer::with(Config {
        max_backpressure: 16,
        ..config(1, Driver::Auto)
    });
    let client = Client::connect(s.handle.port());
    assert!(!client.id.is_empty(), "welcome read");
    assert_eq!(s.handle.stats().slow_consumer_closes, 0);
}
