//! Every reserved verb of SPEC §3.1, acks, and error events, over real WebSockets.

mod common;

use common::*;
use serde_json::{Value, json};
use stellar_server::{AckError, Driver, Server};
use tungstenite::Message;

/// A public directory of the server's own, removed with it.
fn public_dir() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::write(dir.path().join("hello.txt"), "hello file").unwrap();
    dir
}

fn server() -> TestServer {
    server_on(Driver::Auto)
}

fn server_on(driver: Driver) -> TestServer {
    let dir = public_dir();
    let config = stellar_server::Config {
        public_dir: Some(dir.path().to_path_buf()),
        ..config(2, driver)
    };
    TestServer::start(
        Server::builder()
            .config(config)
            .on_ack("getUser", |ctx| match ctx.data().get("id") {
                Some(id) => Ok(json!({"id": id, "name": "Ada"})),
                None => Err(AckError::new("bad_request", "id is required")),
            })
            .on_ack_raw("mirror", |ctx| match ctx.data_raw().as_ref() {
                "null" => Err(AckError::new("empty", "nothing to mirror")),
                data => Ok(format!(r#"{{"got":{data}}}"#)),
            })
            .on("shout", |ctx| ctx.emit("shouted", ctx.data()).unwrap())
            .on("remember", |ctx| ctx.set("name", ctx.data().clone()))
            .on("recall", |ctx| {
                ctx.emit("recalled", &ctx.get("name").unwrap_or_default())
                    .unwrap()
            })
            .on("relay-raw", |ctx| {
                ctx.emit_raw("relayed-raw", &ctx.data_raw()).unwrap()
            })
            .on("whoami", |ctx| {
                let info = ctx.client_info().expect("a WebSocket client");
                ctx.emit(
                    "you",
                    &json!({"id": ctx.id(), "infoId": info.id, "remote": info.remote_address.to_string()}),
                )
                .unwrap()
            }),
    )
    .keeping(dir)
}

#[test]
fn welcome_names_the_client_and_its_worker() {
    let s = server();
    let c = s.ws();
    assert!(c.worker() < 2);
}

#[test]
fn join_and_leave_and_their_aliases_answer() {
    let s = server();
    let mut c = s.ws();
    c.join("lobby");
    c.send(json!({"event": "subscribe", "data": "news"}));
    assert_eq!(c.recv_event("subscribed")["data"], "news");
    c.send(json!({"event": "leave-room", "data": "lobby"}));
    assert_eq!(c.recv_event("left-room")["data"], "lobby");
    c.send(json!({"event": "unsubscribe", "data": "news"}));
    assert_eq!(c.recv_event("unsubscribed")["data"], "news");
    eventually("rooms to empty", || s.handle.rooms().is_empty());
}

#[test]
fn room_events_reach_other_members_only() {
    let s = server();
    let (mut a, mut b, mut outsider) = (s.ws(), s.ws(), s.ws());
    a.join("r");
    b.join("r");
    a.send(json!({"event": "move", "room": "r", "data": {"x": 1}}));
    let got = b.recv_event("move");
    assert_eq!(got["data"], json!({"x": 1}));
    assert_eq!(got["room"], "r");
    // Not echoed to the sender: its next message is the answer to a ping.
    a.send(json!({"event": "ping"}));
    a.recv_event("pong");
    outsider.send(json!({"event": "move", "room": "r", "data": 1}));
    assert_eq!(outsider.recv_event("error")["data"]["code"], "not_member");
}

#[test]
fn say_is_relayed_with_sender_and_time() {
    let s = server();
    let (mut a, mut b) = (s.ws(), s.ws());
    a.join("chat");
    b.join("chat");
    a.send(json!({"event": "say", "data": {"room": "chat", "message": "hi"}}));
    let said = b.recv_event("say");
    assert_eq!(said["data"]["room"], "chat");
    assert_eq!(said["data"]["from"], a.id.as_str());
    assert_eq!(said["data"]["message"], "hi");
    assert!(said["data"]["sentAt"].as_u64().unwrap() > 0);
}

#[test]
fn room_view_and_details_answer_as_acks() {
    let s = server();
    let (mut a, mut b) = (s.ws(), s.ws());
    a.join("v");
    b.join("v");
    let view = a.request("room-view", json!("v"), "rv#1");
    assert_eq!(view["event"], "room-view");
    assert_eq!(view["data"]["membersCount"], 2);
    let mut members: Vec<String> = view["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(members, expected);
    let details = a.request("details", Value::Null, "d#1");
    assert_eq!(details["data"]["id"], a.id.as_str());
    assert_eq!(details["data"]["protocol"], "websocket");
    assert_eq!(details["data"]["rooms"], json!(["v"]));
    assert!(
        details["data"]["remoteAddress"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[test]
fn file_serves_from_public_dir_and_refuses_traversal() {
    let s = server();
    let mut c = s.ws();
    let ok = c.request("file", json!("hello.txt"), "f#1");
    assert_eq!(
        ok["data"],
        json!({"content": "hello file", "mime": "text/plain; charset=utf-8", "length": 10})
    );
    let escape = c.request("file", json!("../../etc/passwd"), "f#2");
    assert_eq!(escape["error"]["code"], "not_found");
}

#[test]
fn ping_event_and_ping_frame_are_answered() {
    let s = server();
    let mut c = s.ws();
    c.send(json!({"event": "ping", "data": 7}));
    assert_eq!(c.recv_event("pong")["data"], 7);
    c.ws.send(Message::Ping(b"beat".to_vec().into())).unwrap();
    match c.ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"beat"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[test]
fn acks_reply_with_result_error_or_unknown_action() {
    let s = server();
    let mut c = s.ws();
    let ok = c.request("getUser", json!({"id": 7}), "getUser#1");
    assert_eq!(ok["event"], "getUser");
    assert_eq!(ok["data"], json!({"id": 7, "name": "Ada"}));
    let failed = c.request("getUser", json!({}), "getUser#2");
    assert_eq!(
        failed["error"],
        json!({"code": "bad_request", "message": "id is required"})
    );
    let unknown = c.request("nope", json!({}), "nope#1");
    assert_eq!(unknown["error"]["code"], "unknown_action");
    // Handler named by `event` when only `_correlationId` is given.
    c.send(json!({"event": "getUser", "data": {"id": 1}, "_correlationId": "c9"}));
    let by_event = c.recv_json();
    assert_eq!(
        (
            by_event["_correlationId"].as_str(),
            by_event["data"]["name"].as_str()
        ),
        (Some("c9"), Some("Ada"))
    );
}

/// `on_ack_raw`: the handler's JSON text is the reply's `data` as is, over WebSocket,
/// the TCP protocol and HTTP; its errors are answered as `on_ack`'s are.
#[test]
fn raw_acks_reply_with_the_handlers_text() {
    let s = server();
    let data = json!({"a": [1, "é \"q\" \\"], "b": null});
    let mut c = s.ws();
    let ok = c.request("mirror", data.clone(), "m#1");
    assert_eq!(ok["event"], "mirror");
    assert_eq!(ok["_correlationId"], "m#1");
    assert_eq!(ok["data"], json!({"got": data}));
    let failed = c.request("mirror", Value::Null, "m#2");
    assert_eq!(
        failed["error"],
        json!({"code": "empty", "message": "nothing to mirror"})
    );

    let mut t = s.tcp();
    t.send(0x05, "mirror", br#"{"data":[1,2],"_correlationId":"t\"1"}"#);
    let (kind, event, payload) = t.recv();
    assert_eq!((kind, event.as_str()), (0x06, "mirror"));
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        reply,
        json!({"data": {"got": [1, 2]}, "_correlationId": "t\"1"})
    );

    let body = r#"{"n":5}"#;
    let answer = http(
        s.handle.port(),
        &format!(
            "POST /api/mirror HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json, json!({"data": {"got": {"n": 5}}}));
}

/// A connection quiet for longer than the session's threshold waits in its worker's
/// epoll set with no read buffer (session.rs `QUIET`, idle.rs); its next messages must
/// still be read, whole, on both protocols and both drivers, and a burst after the
/// pause too.
#[test]
fn quiet_connections_still_read_what_comes_next() {
    for driver in [Driver::Auto, Driver::Epoll] {
        let s = server_on(driver);
        let mut c = s.ws();
        let mut t = s.tcp();
        for round in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(150));
            for i in 0..20 {
                let data = json!({"round": round, "i": i, "pad": "x".repeat(300)});
                let reply = c.request("mirror", data.clone(), &format!("q{round}-{i}"));
                assert_eq!(reply["data"], json!({"got": data}));
            }
            t.send(0x05, "mirror", br#"{"data":1,"_correlationId":"t"}"#);
            let (kind, _, payload) = t.recv();
            assert_eq!(kind, 0x06);
            let reply: Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(reply["data"], json!({"got": 1}));
        }
    }
}

/// Many quiet connections waiting at once (more than the watcher takes from epoll in
/// one batch) are each woken by their own message, and one that leaves while quiet
/// frees its place: the others are still answered.
#[test]
fn many_quiet_connections_are_each_woken() {
    let s = server_on(Driver::Auto);
    let mut clients: Vec<_> = (0..300).map(|_| s.ws()).collect();
    std::thread::sleep(std::time::Duration::from_millis(150));
    drop(clients.remove(0));
    for c in clients.iter_mut() {
        c.send(json!({"event": "getUser", "data": {"id": 1}, "_ackName": "getUser", "_correlationId": "w"}));
    }
    for c in clients.iter_mut().rev() {
        let reply = c.recv_json();
        assert_eq!(reply["data"]["id"], 1, "{reply}");
    }
}

/// Requests a client writes together are read together and answered in one write: a
/// batch of acks comes back in one segment, whether the connection was busy or quiet
/// (a first read too small for the batch answered its first request alone, doubling
/// the packets of every round trip: session.rs `FIRST_READ`).
#[test]
fn a_batch_of_requests_is_answered_in_one_write() {
    for driver in [Driver::Auto, Driver::Epoll] {
        let s = server_on(driver);
        let mut t = s.tcp();
        for (round, pause) in [(0, 0), (1, 0), (2, 150), (3, 0)] {
            std::thread::sleep(std::time::Duration::from_millis(pause));
            let mut batch = Vec::new();
            for i in 0..4 {
                let payload = format!(
                    r#"{{"data":{{"pad":"{}"}},"_correlationId":"b{round}-{i}"}}"#,
                    "x".repeat(60)
                );
                tcp_frame_into(&mut batch, 0x05, "mirror", payload.as_bytes());
            }
            let before = data_segments_in(&t.stream);
            std::io::Write::write_all(&mut t.stream, &batch).unwrap();
            for i in 0..4 {
                let (kind, _, payload) = t.recv();
                assert_eq!(kind, 0x06);
                let reply: Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(reply["_correlationId"], format!("b{round}-{i}"));
            }
            let segments = data_segments_in(&t.stream) - before;
            assert_eq!(
                segments, 1,
                "{driver:?}, round {round}: 4 replies came in {segments} segments"
            );
        }
    }
}

#[test]
fn handlers_get_events_and_can_emit() {
    let s = server();
    let mut c = s.ws();
    c.send(json!({"event": "shout", "data": "hey"}));
    assert_eq!(c.recv_event("shouted")["data"], "hey");
}

#[test]
fn malformed_envelopes_get_error_events_and_the_connection_stays() {
    let s = server();
    let mut c = s.ws();
    c.send_raw("{not json");
    assert_eq!(c.recv_event("error")["data"]["code"], "bad_json");
    // Bytes after the envelope's closing brace make it invalid JSON, not ignored.
    c.send_raw(r#"{"event":"shout","data":"hey"} junk"#);
    assert_eq!(c.recv_event("error")["data"]["code"], "bad_json");
    c.send_raw(r#"{"data": 1}"#);
    assert_eq!(c.recv_event("error")["data"]["code"], "invalid_envelope");
    c.send(json!({"event": "welcome", "data": {}}));
    assert_eq!(c.recv_event("error")["data"]["code"], "reserved_event");
    let ok = c.request("getUser", json!({"id": 2}), "after#1");
    assert_eq!(ok["data"]["id"], 2);
}

#[test]
fn alert_reaches_one_client() {
    let s = server();
    let mut c = s.ws();
    s.handle.alert(&c.id, "maintenance at noon").unwrap();
    assert_eq!(
        c.recv_event("alert")["data"]["message"],
        "maintenance at noon"
    );
}

#[test]
fn http_health_stats_and_metrics() {
    let s = server();
    let _c = s.ws();
    let get = |path: &str| -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    };
    let health = get("/health");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#));
    let stats = get("/stats");
    let body: Value = serde_json::from_str(stats.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["activeConnections"], 1);
    assert_eq!(body["workers"].as_array().unwrap().len(), 2);
    let metrics = get("/metrics");
    assert!(
        metrics.contains("stellar_connections_active 1\n"),
        "{metrics}"
    );
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn stats_count_connections_and_messages() {
    let s = server();
    let mut c = s.ws();
    c.send(json!({"event": "ping"}));
    c.recv_event("pong");
    let stats = s.handle.stats();
    assert_eq!(stats.active_connections, 1);
    assert_eq!(stats.ws_connections, 1);
    assert!(stats.total_messages_received >= 1);
    assert!(stats.total_messages_sent >= 2);
    // The welcome's write at least has completed; a write never carries less than a frame.
    assert!(stats.socket_writes >= 1, "{stats:?}");
    assert!(
        stats.socket_writes <= stats.total_messages_sent,
        "{stats:?}"
    );
}

#[test]
fn data_raw_hands_on_the_clients_exact_json() {
    let s = server();
    let mut c = s.ws();
    // Key order, number spelling and escapes as sent; a parse into a `Value` and back
    // would sort the keys and print 1.5.
    c.send_raw(r#"{"event":"relay-raw","data":{"b":1,"a":1.50,"s":"\u00e9"}}"#);
    match c.recv() {
        Message::Text(t) => assert_eq!(
            t.as_str(),
            r#"{"event":"relayed-raw","data":{"b":1,"a":1.50,"s":"\u00e9"}}"#
        ),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn tcp_json_frame_that_is_not_json_gets_bad_json_and_stays_open() {
    let s = server();
    let mut tcp = s.tcp();
    tcp.send(0x01, "relay-raw", b"{not json");
    let (kind, _, payload) = tcp.recv();
    assert_eq!(kind, 0x0B);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["code"],
        "bad_json"
    );
    tcp.send(0x01, "relay-raw", br#"{"k":[1,2]}"#);
    let (kind, event, payload) = tcp.recv();
    assert_eq!((kind, event.as_str()), (0x01, "relayed-raw"));
    assert_eq!(payload, br#"{"k":[1,2]}"#);
}

#[test]
fn handlers_see_the_id_the_welcome_gave() {
    let s = server();
    let mut c = s.ws();
    c.send(json!({"event": "whoami"}));
    let you = c.recv_event("you");
    assert_eq!(you["data"]["id"], c.id.as_str());
    assert_eq!(you["data"]["infoId"], c.id.as_str());
    assert!(
        you["data"]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{you}"
    );
}

#[test]
fn handler_metadata_is_kept_per_client() {
    let s = server();
    let (mut a, mut b) = (s.ws(), s.ws());
    a.send(json!({"event": "remember", "data": "ada"}));
    a.send(json!({"event": "recall"}));
    assert_eq!(a.recv_event("recalled")["data"], "ada");
    b.send(json!({"event": "recall"}));
    assert_eq!(b.recv_event("recalled")["data"], Value::Null);
}
