//! Limits and rate limits (SPEC §3.3-§3.5, §4): each refusal has its exact answer, and a
//! well-behaved client connected at the same time keeps its round trip.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::json;
use stellar_server::{Config, Driver, Server};
use tungstenite::protocol::frame::coding::CloseCode;

/// The bystander's round trip still works.
fn still_served(c: &mut Client) {
    c.send(json!({"event": "ping", "data": "ok?"}));
    assert_eq!(c.recv_event("pong")["data"], "ok?");
}

#[test]
fn flood_over_the_rate_limit_closes_with_1008() {
    let config = Config {
        rate_limit: 50,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut bystander = s.ws();
    let mut flooder = s.ws();
    for i in 0..10_000 {
        if flooder
            .ws
            .send(tungstenite::Message::text(format!(
                r#"{{"event":"spam","data":{i}}}"#
            )))
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = flooder.expect_close();
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Policy, "Rate limit exceeded")
    );
    assert!(s.handle.stats().rate_limited >= 1);
    still_served(&mut bystander);
}

#[test]
fn hook_can_keep_a_limited_client_and_refuse_messages() {
    let config = Config {
        rate_limit: 5,
        rate_limit_window: Duration::from_secs(60),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::start(
        Server::builder()
            .config(config)
            .on_rate_limit_exceeded(|_, _| false),
    );
    let mut c = s.ws();
    for _ in 0..5 {
        c.send(json!({"event": "ping"}));
        c.recv_event("pong");
    }
    c.send(json!({"event": "ping"}));
    let refused = c.recv_event("error");
    assert_eq!(refused["data"]["code"], "rate_limited");
}

#[test]
fn per_event_and_per_client_limits_apply_in_priority_order() {
    let config = Config {
        rate_limit: 1000,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::start(
        Server::builder()
            .config(config)
            .on_rate_limit_exceeded(|_, _| false),
    );
    let mut c = s.ws();
    s.handle
        .set_event_rate_limit("ping", 2, Duration::from_secs(60));
    let refused_after = |c: &mut Client, n: usize| {
        for _ in 0..n {
            c.send(json!({"event": "ping"}));
            c.recv_event("pong");
        }
        c.send(json!({"event": "ping"}));
        assert_eq!(c.recv_event("error")["data"]["code"], "rate_limited");
    };
    eventually("the event limit to reach the worker", || {
        // A fresh client sees the table once the worker applied it.
        let mut probe = s.ws();
        probe.send(json!({"event": "ping"}));
        probe.recv_event("pong");
        probe.send(json!({"event": "ping"}));
        probe.recv_event("pong");
        probe.send(json!({"event": "ping"}));
        probe.recv_json()["event"] == "error"
    });
    refused_after(&mut c, 2);
    // A client override beats the event limit.
    let mut vip = s.ws();
    s.handle
        .set_client_rate_limit(&vip.id, 4, Duration::from_secs(60));
    // Overrides reach the worker as whole snapshots of the table, each holding every
    // override set before it: once a probe's later override is seen in force there,
    // vip's is too. A probe allowed a third ping (the event limit allows two) shows it.
    eventually("the client override to reach the worker", || {
        let mut probe = s.ws();
        s.handle
            .set_client_rate_limit(&probe.id, 3, Duration::from_secs(60));
        (0..3).all(|_| {
            probe.send(json!({"event": "ping"}));
            probe.recv_json()["event"] == "pong"
        })
    });
    refused_after(&mut vip, 4);
    s.handle.remove_event_rate_limit("ping");
    s.handle.remove_client_rate_limit(&vip.id);
}

#[test]
fn too_many_connections_from_one_ip_close_with_1008() {
    let config = Config {
        max_connections_per_ip: 2,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let (mut a, _b) = (s.ws(), s.ws());
    let stream = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut third, _) =
        tungstenite::client(format!("ws://127.0.0.1:{}/", s.handle.port()), stream).unwrap();
    match third.read() {
        Ok(tungstenite::Message::Close(Some(f))) => {
            assert_eq!(
                (f.code, f.reason.as_str()),
                (CloseCode::Policy, "Too many connections")
            )
        }
        other => panic!("expected close, got {other:?}"),
    }
    still_served(&mut a);
}

#[test]
fn oversized_and_malformed_requests_get_their_status() {
    let config = Config {
        max_header_bytes: 1024,
        max_headers: 8,
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut bystander = s.ws();
    let port = s.handle.port();
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    assert!(http(port, &big).starts_with("HTTP/1.1 431"));
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    assert!(http(port, &format!("GET / HTTP/1.1\r\n{many}\r\n")).starts_with("HTTP/1.1 431"));
    assert!(http(port, "NOT HTTP AT ALL\r\n\r\n").starts_with("HTTP/1.1 400"));
    let version = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let answer = http(port, version);
    assert!(answer.starts_with("HTTP/1.1 426") && answer.contains("Sec-WebSocket-Version: 13"));
    still_served(&mut bystander);
}

#[test]
fn foreign_origin_is_refused_with_403() {
    let config = Config {
        allowed_origins: vec!["https://game.example".into()],
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let port = s.handle.port();
    let request = |origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nOrigin: {origin}\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    assert!(http(port, &request("https://evil.example")).starts_with("HTTP/1.1 403"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(request("https://game.example").as_bytes())
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

/// `allowed_origins` also guards plain HTTP: a foreign page's request is refused before
/// its action runs, a listed page gets CORS headers (and its preflight answered), and a
/// request with no `Origin` (curl, a server) is served without them.
#[test]
fn http_from_a_foreign_origin_is_refused_and_a_listed_one_gets_cors_headers() {
    let config = Config {
        allowed_origins: vec!["https://game.example".into()],
        ..config(1, Driver::Auto)
    };
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let s = TestServer::start(Server::builder().config(config).on_ack("hit", move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(json!("ok"))
    }));
    let port = s.handle.port();
    let post = |origin: &str| {
        http(
            port,
            &format!(
                "POST /api/hit HTTP/1.1\r\nHost: x\r\n{origin}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            ),
        )
    };
    let head_of = |answer: &str| answer.split("\r\n\r\n").next().unwrap_or("").to_owned();
    let cors = "Access-Control-Allow-Origin: https://game.example\r\n";

    // A cross-site POST (a form or a fetch from another page) never reaches the handler.
    let foreign = post("Origin: https://evil.example\r\n");
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    assert!(foreign.contains(r#""code":"forbidden""#), "{foreign}");
    assert!(
        http(
            port,
            "GET /stats HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n"
        )
        .starts_with("HTTP/1.1 403")
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The listed origin: served, and allowed to read the answer with credentials.
    let listed = post("Origin: https://game.example\r\n");
    assert!(
        listed.starts_with("HTTP/1.1 200") && listed.ends_with(r#"{"data":"ok"}"#),
        "{listed}"
    );
    let head = head_of(&listed);
    assert!(head.contains(cors), "{head}");
    assert!(
        head.contains("Access-Control-Allow-Credentials: true\r\n"),
        "{head}"
    );
    assert!(head.contains("Vary: Origin"), "{head}");
    let health = http(
        port,
        "GET /health HTTP/1.1\r\nOrigin: https://game.example\r\n\r\n",
    );
    assert!(
        health.starts_with("HTTP/1.1 200") && head_of(&health).contains(cors),
        "{health}"
    );

    // Its preflight: the methods and headers the client's action() fallback sends.
    let preflight = http(
        port,
        "OPTIONS /api/hit HTTP/1.1\r\nOrigin: https://game.example\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type, authorization\r\n\r\n",
    );
    assert!(preflight.starts_with("HTTP/1.1 204"), "{preflight}");
    for header in [
        cors,
        "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n",
        "Access-Control-Allow-Headers: Content-Type, Authorization\r\n",
    ] {
        assert!(preflight.contains(header), "{header} in {preflight}");
    }
    let foreign_preflight = http(
        port,
        "OPTIONS /api/hit HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n",
    );
    assert!(
        foreign_preflight.starts_with("HTTP/1.1 403"),
        "{foreign_preflight}"
    );

    // No Origin: not a browser's cross-origin call; served, no CORS headers.
    let plain = post("");
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(!plain.contains("Access-Control-"), "{plain}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// With no `allowed_origins` every origin is served, and no answer carries CORS headers:
/// a browser lets only same-origin pages read them.
#[test]
fn without_allowed_origins_http_is_served_with_no_cors_headers() {
    let s = TestServer::with(config(1, Driver::Auto));
    let port = s.handle.port();
    let answer = http(
        port,
        "GET /health HTTP/1.1\r\nOrigin: https://any.example\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("Access-Control-"), "{answer}");
    let options = http(
        port,
        "OPTIONS /api/echo HTTP/1.1\r\nOrigin: https://any.example\r\n\r\n",
    );
    assert!(
        options.starts_with("HTTP/1.1 204") && !options.contains("Access-Control-"),
        "{options}"
    );
}

#[test]
fn half_sent_handshake_times_out_with_408() {
    let config = Config {
        connect_timeout: Duration::from_millis(300),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::with(config);
    let mut bystander = s.ws();
    let mut slowloris = std::net::TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    slowloris.set_read_timeout(Some(TIMEOUT)).unwrap();
    slowloris
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: webso")
        .unwrap();
    let mut answer = String::new();
    let _ = slowloris.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    still_served(&mut bystander);
}

#[test]
fn http_actions_answer_200_400_404_422_and_429() {
    let config = Config {
        rate_limit: 4,
        rate_limit_window: Duration::from_secs(60),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::start(Server::builder().config(config).on_ack("sum", |ctx| {
        let a = ctx
            .data()
            .get("a")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
        let b = ctx
            .data()
            .get("b")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
        match (a, b) {
            (Some(a), Some(b)) => Ok(json!(a + b)),
            _ => Err(stellar_server::AckError::new(
                "bad_args",
                "a and b are numbers",
            )),
        }
    }));
    let port = s.handle.port();
    let post = |body: &str| {
        http(
            port,
            &format!(
                "POST /api/sum HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let ok = post(r#"{"a":2,"b":3}"#);
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with(r#"{"data":5}"#),
        "{ok}"
    );
    assert!(post("{nope").starts_with("HTTP/1.1 400"));
    assert!(http(port, "GET /api/sum?a=1&b=x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 422"));
    assert!(http(port, "GET /api/missing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(
        post(r#"{"a":1,"b":1}"#).starts_with("HTTP/1.1 429"),
        "the 5th call is over 4 per minute"
    );
}

/// `GET /api/<action>?k=v` takes the name and the query as a browser or `curl
/// --data-urlencode` escapes them: `%XX` and, in the query, `+` for a space.
#[test]
fn http_get_actions_decode_the_name_and_the_query() {
    let s = TestServer::start(
        Server::builder()
            .config(config(1, Driver::Auto))
            .on_ack("chat:echo", |ctx| Ok(ctx.data().clone())),
    );
    let port = s.handle.port();
    let answer = http(
        port,
        "GET /api/chat%3Aecho?text=hello%20world%21&sum=1%2B1+%3D+2&caf%C3%A9=%E2%9C%93&text=again%26more HTTP/1.1\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(
        body,
        json!({"data": {"text": "again&more", "sum": "1+1 = 2", "café": "✓"}})
    );
    // Decoded, a name is held to the same rules as over WebSocket.
    assert!(http(port, "GET /api/chat%20echo HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(http(port, "GET /api/chat%FFecho HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
}

/// One message of any legal size goes out on a connection whose queue is under
/// `max_backpressure` (SPEC §3.3): a 1 MiB echo on the defaults (`max_payload` and
/// `max_backpressure` both 1 MiB) is echoed, not closed as a slow consumer, and so is a
/// room event of that size to every member.
#[test]
fn one_message_as_large_as_max_payload_is_delivered_on_the_defaults() {
    let echo = Config {
        echo: true,
        ..config(1, Driver::Auto)
    };
    let defaults = Config::default();
    assert_eq!(
        (echo.max_payload, echo.max_backpressure),
        (defaults.max_payload, defaults.max_backpressure)
    );
    let s = TestServer::with(echo);
    let mut c = Client::upgrade(s.handle.port());
    // The largest text message max_payload allows: its frame (payload + 10-byte
    // header) is larger than max_backpressure.
    let text = "e".repeat(defaults.max_payload);
    c.ws.send(tungstenite::Message::text(text.clone())).unwrap();
    match c.recv() {
        tungstenite::Message::Text(got) => assert!(got.as_str() == text, "echoed intact"),
        other => panic!("expected the echo, got {other:?}"),
    }
    assert_eq!(s.handle.stats().slow_consumer_closes, 0);

    let s = TestServer::with(config(1, Driver::Auto));
    let (mut publisher, mut member) = (s.ws(), s.ws());
    publisher.join("big");
    member.join("big");
    let payload = "r".repeat(defaults.max_payload - 100);
    publisher.send(json!({"event": "big", "room": "big", "data": payload}));
    assert_eq!(
        member.recv_event("big")["data"].as_str(),
        Some(&payload[..])
    );
    still_served(&mut member);
    assert_eq!(s.handle.stats().slow_consumer_closes, 0);
}
