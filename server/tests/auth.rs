//! Authentication and room grants (SPEC §3.4): tokens from the query, a Bearer header, a
//! cookie or an `auth` message; expired, forged and missing tokens; joins outside the
//! grant; the `auth` hook, `GET /api/ws/token` and HTTP actions under auth.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use stellar_server::{AuthUser, Config, Driver, Server};
use tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "stellar-test-secret";

fn token(claims: Value, secret: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn exp(from_now: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + from_now
}

fn jwt_server() -> TestServer {
    let config = Config {
        jwt_secret: Some(SECRET.into()),
        connect_timeout: Duration::from_millis(500),
        ..config(1, Driver::Auto)
    };
    TestServer::start(
        Server::builder()
            .config(config)
            .on_ack("whoami", |ctx| Ok(json!(ctx.user().map(|u| u.id)))),
    )
}

/// Sends a raw upgrade with extra header lines; returns the status line.
fn upgrade_status(port: u16, target: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A client connected with `extra` headers / target; reads its welcome.
fn connect_with(port: u16, target: &str, extra: &[(&str, &str)]) -> Client {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://127.0.0.1:{port}{target}")
        .into_client_request()
        .unwrap();
    for (k, v) in extra {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(request, stream).unwrap();
    let mut c = Client {
        ws,
        id: String::new(),
    };
    c.id = c.recv_event("welcome")["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c
}

#[test]
fn token_in_query_header_or_cookie_authenticates() {
    let s = jwt_server();
    let port = s.handle.port();
    let t = token(json!({"sub": "ada", "exp": exp(60)}), SECRET);
    for mut c in [
        connect_with(port, &format!("/?token={t}"), &[]),
        connect_with(port, "/", &[("authorization", &format!("Bearer {t}"))]),
        connect_with(
            port,
            "/ws",
            &[("cookie", &format!("theme=dark; token={t}"))],
        ),
    ] {
        assert_eq!(c.request("whoami", Value::Null, "w1")["data"], "ada");
        c.join("lobby");
    }
}

#[test]
fn expired_and_forged_tokens_get_401_before_the_upgrade() {
    let s = jwt_server();
    let port = s.handle.port();
    let mut bystander = connect_with(
        port,
        &format!(
            "/?token={}",
            token(json!({"sub": "b", "exp": exp(60)}), SECRET)
        ),
        &[],
    );
    let expired = token(json!({"sub": "ada", "exp": exp(-10)}), SECRET);
    let forged = token(json!({"sub": "ada", "exp": exp(60)}), "not-the-secret");
    assert_eq!(
        upgrade_status(port, &format!("/?token={expired}"), ""),
        "HTTP/1.1 401"
    );
    assert_eq!(
        upgrade_status(port, "/", &format!("Authorization: Bearer {forged}\r\n")),
        "HTTP/1.1 401"
    );
    assert_eq!(upgrade_status(port, "/?token=garbage", ""), "HTTP/1.1 401");
    bystander.send(json!({"event": "ping"}));
    bystander.recv_event("pong");
}

#[test]
fn missing_token_allows_only_auth_then_welcome_follows_auth_success() {
    let s = jwt_server();
    let stream = TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ws, _) =
        tungstenite::client(format!("ws://127.0.0.1:{}/", s.handle.port()), stream).unwrap();
    let mut c = Client {
        ws,
        id: String::new(),
    };
    // No welcome yet: the first answer is to our join, refused.
    c.send(json!({"event": "join-room", "data": "lobby"}));
    assert_eq!(c.recv_event("error")["data"]["code"], "unauthorized");
    c.send(json!({"event": "say", "data": {"room": "lobby", "message": "hi"}}));
    assert_eq!(c.recv_event("error")["data"]["code"], "unauthorized");
    c.send(json!({"event": "whoami", "_correlationId": "w"}));
    assert_eq!(c.recv_event("error")["data"]["code"], "unauthorized");
    c.send(json!({"event": "auth", "data": {"token": "forged.token.here"}}));
    assert!(
        c.recv_event("auth_error")["data"]["error"]
            .as_str()
            .unwrap()
            .contains("invalid token")
    );
    let t = token(
        json!({"sub": "ada", "exp": exp(60), "rooms": ["lobby", "match:*"]}),
        SECRET,
    );
    c.send(json!({"event": "auth", "data": {"token": t}}));
    assert_eq!(c.recv_event("auth_success")["data"]["userId"], "ada");
    c.recv_event("welcome");
    c.join("lobby");
    c.join("match:7");
}

#[test]
fn joins_outside_the_grant_are_forbidden() {
    let s = jwt_server();
    let t = token(
        json!({"sub": "ada", "exp": exp(60), "rooms": ["lobby", "match:*"]}),
        SECRET,
    );
    let mut c = connect_with(s.handle.port(), &format!("/?token={t}"), &[]);
    for room in ["admin", "lobby2", "matchmaking"] {
        c.send(json!({"event": "join-room", "data": room}));
        assert_eq!(c.recv_event("error")["data"]["code"], "forbidden", "{room}");
    }
    assert!(s.handle.rooms().is_empty());
    c.join("match:1");
}

#[test]
fn a_refused_join_sent_as_a_request_answers_the_request() {
    let s = jwt_server();
    let t = token(
        json!({"sub": "ada", "exp": exp(60), "rooms": ["lobby"]}),
        SECRET,
    );
    let mut c = connect_with(s.handle.port(), &format!("/?token={t}"), &[]);
    let reply = c.request("join-room", json!("admin"), "join-room#1");
    assert_eq!(reply["_isAck"], true);
    assert_eq!(reply["_correlationId"], "join-room#1");
    assert_eq!(reply["error"]["code"], "forbidden");
    c.send(json!({"event": "join-room", "data": "lobby", "_ackName": "join-room", "_correlationId": "join-room#2"}));
    assert_eq!(
        c.recv_event("joined-room")["data"],
        "lobby",
        "the event comes first"
    );
    let ack = c.recv_json();
    assert_eq!(
        (&ack["_isAck"], &ack["data"]),
        (&json!(true), &json!("lobby")),
        "then the ack"
    );
}

#[test]
fn no_auth_within_connect_timeout_closes_with_1008() {
    let s = jwt_server();
    let mut c = Client::upgrade(s.handle.port());
    let (code, reason) = c.expect_close();
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Policy, "Authentication required")
    );
}

#[test]
fn auth_hook_backs_upgrades_token_issuing_and_http_actions() {
    let config = Config {
        jwt_secret: Some(SECRET.into()),
        ..config(1, Driver::Auto)
    };
    let s = TestServer::start(
        Server::builder()
            .config(config)
            .auth(|req| match req.header("x-api-key") {
                Some("k-123") => Ok(AuthUser {
                    id: "svc".into(),
                    claims: json!({"rooms": ["ops:*"]}),
                }),
                Some(_) => Err("bad api key".into()),
                None => match req.query_param("token") {
                    Some(t) => stellar_server::auth::verify(SECRET, &t).map_err(|e| e.to_string()),
                    None => Err("missing credentials".into()),
                },
            })
            .on_ack("ping2", |_| Ok(json!("pong2"))),
    );
    let port = s.handle.port();
    assert_eq!(
        upgrade_status(port, "/", "X-Api-Key: wrong\r\n"),
        "HTTP/1.1 401"
    );
    assert_eq!(upgrade_status(port, "/", ""), "HTTP/1.1 401");
    let mut c = connect_with(port, "/", &[("x-api-key", "k-123")]);
    c.send(json!({"event": "join-room", "data": "lobby"}));
    assert_eq!(c.recv_event("error")["data"]["code"], "forbidden");
    c.join("ops:alerts");
    // GET /api/ws/token: a short-lived token for a request the hook accepts.
    let http = |req: &str| {
        let mut st = TcpStream::connect(("127.0.0.1", port)).unwrap();
        st.set_read_timeout(Some(TIMEOUT)).unwrap();
        st.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = st.read_to_string(&mut out);
        out
    };
    let answer = http("GET /api/ws/token HTTP/1.1\r\nX-Api-Key: k-123\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let issued = body["token"].as_str().unwrap();
    let mut via_token = connect_with(port, &format!("/?token={issued}"), &[]);
    via_token.join("ops:pager");
    assert!(http("GET /api/ws/token HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401"));
    // HTTP actions need the same credentials.
    assert!(http("GET /api/ping2 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401"));
    let ok = http("GET /api/ping2 HTTP/1.1\r\nX-Api-Key: k-123\r\n\r\n");
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with(r#"{"data":"pong2"}"#),
        "{ok}"
    );
}

#[test]
fn tcp_clients_authenticate_with_an_auth_frame() {
    let s = jwt_server();
    let mut tcp = s.tcp();
    tcp.send(0x09, "join-room", b"lobby");
    let (kind, _, payload) = tcp.recv();
    assert_eq!(kind, 0x0B);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["code"],
        "unauthorized"
    );
    let t = token(json!({"sub": "bot", "exp": exp(60)}), SECRET);
    tcp.send(0x01, "auth", json!({"token": t}).to_string().as_bytes());
    let (_, event, payload) = tcp.recv();
    assert_eq!(event, "auth_success");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["userId"],
        "bot"
    );
    tcp.send(0x09, "join-room", b"lobby");
    assert_eq!(tcp.recv().1, "joined-room");
}
