//! TLS on both ports (`tls_cert` + `tls_key`), with certificates made at test time by
//! rcgen and real rustls clients: wss and the TCP protocol over TLS on io_uring and
//! epoll, HTTPS, a reload while clients are connected (library and SIGHUP), and the
//! hostile cases: plaintext on a TLS port, a TLS hello on a plaintext port, a stalled
//! handshake.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use stellar_server::{Config, Driver, ReloadTlsError};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost`, written as PEM files in a fresh directory.
struct Cert {
    /// Holds the certificate and key files; removed with the `Cert`.
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Self {
        let cert = Self {
            der: CertificateDer::from(Vec::new()),
            dir: temp_dir(),
        };
        cert.rotate()
    }

    /// Writes a new certificate and key over the files.
    fn rotate(mut self) -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(self.cert_path(), made.cert.pem()).unwrap();
        std::fs::write(self.key_path(), made.signing_key.serialize_pem()).unwrap();
        self.der = made.cert.der().clone();
        self
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn config(&self, driver: Driver) -> Config {
        Config {
            tls_cert: Some(self.cert_path()),
            tls_key: Some(self.key_path()),
            ..config(1, driver)
        }
    }

    /// A client configuration that trusts this certificate only.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Opens TLS to `port` trusting `config`'s roots, and completes the handshake.
fn tls_connect(port: u16, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A wss client that has read its `welcome`.
fn wss(port: u16, cert: &Cert) -> WebSocket<Tls> {
    let tls = tls_connect(port, cert.client(&[b"http/1.1"])).expect("TLS handshake");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, _) = tungstenite::client("wss://localhost/", tls).expect("upgrade");
    let welcome = recv_json(&mut ws);
    assert_eq!(welcome["event"], "welcome");
    ws
}

fn recv_json(ws: &mut WebSocket<Tls>) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn send(ws: &mut WebSocket<Tls>, value: Value) {
    ws.send(Message::text(value.to_string())).expect("send");
}

/// One TCP-protocol frame (SPEC §3.2) over any stream.
fn tcp_send(s: &mut impl Write, kind: u8, event: &str, payload: &[u8]) {
    let total = 7 + event.len() + payload.len();
    let mut frame = (total as u32).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(&(event.len() as u16).to_be_bytes());
    frame.extend_from_slice(event.as_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame).expect("write");
}

fn tcp_recv(s: &mut impl Read) -> (u8, String, Vec<u8>) {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).expect("frame header");
    let total = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let event_len = u16::from_be_bytes([head[5], head[6]]) as usize;
    let mut body = vec![0u8; total - 7];
    s.read_exact(&mut body).expect("frame body");
    let payload = body.split_off(event_len);
    (head[4], String::from_utf8(body).unwrap(), payload)
}

/// A WebSocket member and a TCP member, both over TLS, in one room: each gets the
/// other's room event.
fn both_protocols_over_tls(driver: Driver) {
    let cert = Cert::new();
    let s = TestServer::with(cert.config(driver));
    let mut ws = wss(s.handle.port(), &cert);
    let mut tcp = tls_connect(s.handle.tcp_port(), cert.client(&[])).expect("TLS handshake");
    assert_eq!(tcp_recv(&mut tcp).0, 0x07, "CONNECT");
    send(&mut ws, json!({"event": "join-room", "data": "secure"}));
    assert_eq!(recv_json(&mut ws)["event"], "joined-room");
    tcp_send(&mut tcp, 0x09, "join-room", b"secure");
    let (kind, event, _) = tcp_recv(&mut tcp);
    assert_eq!((kind, event.as_str()), (0x01, "joined-room"));

    send(
        &mut ws,
        json!({"event": "move", "room": "secure", "data": {"x": 1}}),
    );
    let (kind, event, payload) = tcp_recv(&mut tcp);
    assert_eq!((kind, event.as_str()), (0x01, "move"));
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap(),
        json!({"x": 1})
    );

    tcp_send(
        &mut tcp,
        0x01,
        "shot",
        br#"{"room":"secure","data":{"y":2}}"#,
    );
    let got = recv_json(&mut ws);
    assert_eq!(
        (got["event"].clone(), got["data"].clone()),
        (json!("shot"), json!({"y": 2}))
    );

    // A message larger than a TLS record (16 KiB) crosses intact both ways.
    let big = "b".repeat(100_000);
    send(
        &mut ws,
        json!({"event": "big", "room": "secure", "data": big}),
    );
    let (_, _, payload) = tcp_recv(&mut tcp);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap(),
        json!(big)
    );

    // A burst of 1 KiB messages: batches of frames over the copy threshold go out as
    // one vectored write, which TLS gathers into one buffer; all arrive, in order.
    let kib = "k".repeat(1024);
    for seq in 0..300 {
        send(
            &mut ws,
            json!({"event": "burst", "room": "secure", "data": {"seq": seq, "p": kib}}),
        );
    }
    for seq in 0..300 {
        let (_, event, payload) = tcp_recv(&mut tcp);
        let data: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!((event.as_str(), data["seq"].as_i64()), ("burst", Some(seq)));
    }
}

#[test]
fn wss_and_tcp_over_tls_on_uring() {
    both_protocols_over_tls(Driver::Uring);
}

#[test]
fn wss_and_tcp_over_tls_on_epoll() {
    both_protocols_over_tls(Driver::Epoll);
}

#[test]
fn https_answers_plain_http_routes() {
    let cert = Cert::new();
    let s = TestServer::with(cert.config(Driver::Auto));
    let mut tls = tls_connect(s.handle.port(), cert.client(&[b"http/1.1"])).unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(r#"{"status":"ok"}"#), "{out}");
}

/// Plaintext on a TLS port, and a TLS hello on a plaintext port: each closed without
/// a hang, counted, and the server keeps serving.
#[test]
fn the_wrong_protocol_on_a_port_is_closed_and_counted() {
    let cert = Cert::new();
    let s = TestServer::with(cert.config(Driver::Auto));
    let mut plain = TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/1.1 200"), "answered in plaintext");
    eventually("the failed handshake to be counted", || {
        s.handle.stats().tls_handshake_failures == 1
    });
    let _still = wss(s.handle.port(), &cert);

    let plain_server = TestServer::with(config(1, Driver::Auto));
    let started = Instant::now();
    let err = tls_connect(plain_server.handle.port(), cert.client(&[b"http/1.1"]));
    assert!(err.is_err(), "a TLS handshake with a plaintext port failed");
    assert!(started.elapsed() < TIMEOUT, "closed, not left hanging");
    assert_eq!(plain_server.handle.stats().tls_on_plain_port, 1);
    // The TCP-protocol port: the hello reads as an oversized frame, answered with an
    // ERROR frame the TLS client cannot use, and closed.
    let started = Instant::now();
    let err = tls_connect(plain_server.handle.tcp_port(), cert.client(&[]));
    assert!(
        err.is_err(),
        "a TLS handshake with the plaintext TCP port failed"
    );
    assert!(started.elapsed() < TIMEOUT, "closed, not left hanging");
    eventually("the TCP-port hello to be counted", || {
        plain_server.handle.stats().tls_on_plain_port == 2
    });
    let _served = plain_server.ws();
}

/// A client that opens TCP and never finishes its hello is closed after
/// `connect_timeout`, like a slowloris before an HTTP head.
#[test]
fn a_stalled_handshake_is_closed_after_connect_timeout() {
    let cert = Cert::new();
    let s = TestServer::with(Config {
        connect_timeout: Duration::from_millis(300),
        ..cert.config(Driver::Auto)
    });
    let mut slow = TcpStream::connect(("127.0.0.1", s.handle.port())).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The first bytes of a TLS record, and then nothing.
    slow.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let n = slow.read(&mut byte).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after connect_timeout, took {waited:?}"
    );
    assert_eq!(s.handle.stats().tls_handshake_failures, 1);
}

/// A reload swaps the certificate for new handshakes while a connected client keeps
/// its session; a broken file keeps the old certificate.
#[test]
fn reload_swaps_the_certificate_without_dropping_connections() {
    let cert = Cert::new();
    let s = TestServer::with(cert.config(Driver::Auto));
    let mut before = wss(s.handle.port(), &cert);
    let old_client = cert.client(&[b"http/1.1"]);
    let cert = cert.rotate();
    s.handle.reload_tls().expect("reload");
    let _after = wss(s.handle.port(), &cert);
    assert!(
        tls_connect(s.handle.port(), old_client).is_err(),
        "new handshakes get the new certificate"
    );
    send(&mut before, json!({"event": "ping", "data": 1}));
    assert_eq!(recv_json(&mut before)["event"], "pong");

    std::fs::write(cert.key_path(), "not a key").unwrap();
    match s.handle.reload_tls() {
        Err(ReloadTlsError::Load(e)) => assert!(e.to_string().contains("key.pem"), "{e}"),
        other => panic!("expected a load error, got {other:?}"),
    }
    let _still = wss(s.handle.port(), &cert);
    let plain = TestServer::with(config(1, Driver::Auto));
    assert!(matches!(
        plain.handle.reload_tls(),
        Err(ReloadTlsError::Off)
    ));
}

/// The `stellar` binary: TLS from flags, SIGHUP reloads, a missing key refuses to start.
#[test]
fn the_binary_serves_tls_and_reloads_on_sighup() {
    let cert = Cert::new();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stellar"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--tcp-port",
            "0",
        ])
        .args(["--workers", "1", "--tls-cert"])
        .arg(cert.cert_path())
        .arg("--tls-key")
        .arg(cert.key_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let mut before = wss(port, &cert);
    let cert = cert.rotate();
    let pid = child.id() as i32;
    // SAFETY: kill(2) takes no pointers; the pid is the child this test started and
    // has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    while wss_result(port, &cert).is_err() {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    send(&mut before, json!({"event": "ping"}));
    assert_eq!(recv_json(&mut before)["event"], "pong");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_stellar"))
        .args(["--port", "0", "--tls-cert"])
        .arg(cert.cert_path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("set both or neither"), "{stderr}");
}

fn wss_result(port: u16, cert: &Cert) -> std::io::Result<()> {
    tls_connect(port, cert.client(&[b"http/1.1"])).map(drop)
}

fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 32768 {
            return port;
        }
        let candidate = 20000 + (std::process::id() as u16 % 12000);
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}
