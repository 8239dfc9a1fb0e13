//! Test harness: starts a real server on ephemeral ports and drives it with real
//! clients (tungstenite over std sockets, raw TCP for the binary protocol).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stellar_server::{Config, Driver, Server, ServerBuilder, ServerHandle};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A config for tests: loopback, ephemeral ports, `workers` workers, and no rate limit
/// (tests that relay hundreds of messages send faster than the default 100/s; the
/// rate-limit tests set their own).
pub fn config(workers: usize, driver: Driver) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        workers,
        driver,
        rate_limit: 0,
        ..Config::default()
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub handle: ServerHandle,
    /// Directories the server reads, removed once it has stopped.
    dirs: Vec<tempfile::TempDir>,
}

/// A fresh directory under the system's temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stellar-test-")
        .tempdir()
        .expect("temporary directory")
}

impl TestServer {
    pub fn start(builder: ServerBuilder) -> Self {
        let server = builder.start().expect("server starts");
        let handle = server.handle();
        Self {
            server: Some(server),
            handle,
            dirs: Vec::new(),
        }
    }

    /// Keeps `dir` until the server has stopped (its `public_dir`, say).
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Self {
        self.dirs.push(dir);
        self
    }

    pub fn with(config: Config) -> Self {
        Self::start(Server::builder().config(config))
    }

    pub fn ws(&self) -> Client {
        Client::connect(self.handle.port())
    }

    pub fn tcp(&self) -> TcpClient {
        TcpClient::connect(self.handle.tcp_port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(s) = self.server.take() {
            s.wait();
        }
    }
}

/// A WebSocket client that has read its `welcome`.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub id: String,
}

impl Client {
    pub fn connect(port: u16) -> Self {
        let mut client = Self::upgrade(port);
        let welcome = client.recv_event("welcome");
        client.id = welcome["data"]["id"]
            .as_str()
            .expect("welcome id")
            .to_owned();
        client
    }

    /// Completes the upgrade and reads nothing more (no `welcome` yet, or none coming).
    pub fn upgrade(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) =
            tungstenite::client(format!("ws://127.0.0.1:{port}/"), stream).expect("handshake");
        Self {
            ws,
            id: String::new(),
        }
    }

    /// The worker this client lives on, read from its id.
    pub fn worker(&self) -> u16 {
        self.id
            .split('-')
            .next()
            .and_then(|w| w.parse().ok())
            .expect("id names a worker")
    }

    pub fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    pub fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).expect("send");
    }

    /// Next data message (text parsed as JSON; binary returned raw).
    pub fn recv(&mut self) -> Message {
        loop {
            match self.ws.read().expect("read") {
                m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) => return m,
                _ => continue,
            }
        }
    }

    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Reads until an event named `event`, failing on any other.
    pub fn recv_event(&mut self, event: &str) -> Value {
        let v = self.recv_json();
        assert_eq!(v["event"], event, "unexpected message {v}");
        v
    }

    pub fn join(&mut self, room: &str) {
        self.send(json!({"event": "join-room", "data": room}));
        assert_eq!(self.recv_event("joined-room")["data"], room);
    }

    /// Joins a room that keeps history: `joined-room`, then the `recovered` answer that
    /// gives the position the client starts from; returns that answer's data.
    pub fn join_kept(&mut self, room: &str) -> Value {
        self.join(room);
        let answer = self.recv_event("recovered");
        assert_eq!(answer["data"]["room"], room, "{answer}");
        assert_eq!(answer["data"]["recovered"], true, "{answer}");
        answer["data"].clone()
    }

    /// How long a read waits before it fails.
    pub fn read_timeout(&mut self, timeout: Duration) {
        self.ws
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }

    /// Every text message (as JSON) until none comes for `quiet`; leaves that timeout.
    pub fn read_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        self.read_timeout(quiet);
        let mut got = Vec::new();
        while let Ok(Message::Text(t)) = self.ws.read() {
            got.push(serde_json::from_str(&t).expect("JSON"));
        }
        got
    }

    /// An ack request; returns the reply.
    pub fn request(&mut self, name: &str, data: Value, correlation: &str) -> Value {
        self.send(
            json!({"event": name, "data": data, "_ackName": name, "_correlationId": correlation}),
        );
        let reply = self.recv_json();
        assert_eq!(reply["_isAck"], true, "not an ack reply: {reply}");
        assert_eq!(reply["_correlationId"], correlation);
        reply
    }

    /// Reads until the close frame; returns its code and reason.
    pub fn expect_close(&mut self) -> (CloseCode, String) {
        let deadline = Instant::now() + TIMEOUT * 3;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
                Ok(Message::Close(None)) => panic!("close without a code"),
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("no close frame before the deadline");
    }
}

/// Appends one TCP frame (SPEC §3.2: length, type, event length, event, payload) to
/// `out`, so a test can write several in one write.
pub fn tcp_frame_into(out: &mut Vec<u8>, kind: u8, event: &str, payload: &[u8]) {
    let total = 7 + event.len() + payload.len();
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(event.len() as u16).to_be_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(payload);
}

/// A client of the binary TCP protocol (SPEC §3.2).
pub struct TcpClient {
    pub stream: TcpStream,
    pub id: String,
}

/// One TCP frame: type, event, payload.
pub type Frame = (u8, String, Vec<u8>);

impl TcpClient {
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Self {
            stream,
            id: String::new(),
        };
        let (kind, event, payload) = client.recv();
        assert_eq!((kind, event.as_str()), (0x07, "connect"));
        client.id = String::from_utf8(payload).expect("id is UTF-8 text");
        client
    }

    pub fn send(&mut self, kind: u8, event: &str, payload: &[u8]) {
        let mut frame = Vec::new();
        tcp_frame_into(&mut frame, kind, event, payload);
        self.stream.write_all(&frame).expect("write");
    }

    pub fn recv(&mut self) -> Frame {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).expect("frame header");
        let total = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let event_len = u16::from_be_bytes([head[5], head[6]]) as usize;
        let mut body = vec![0u8; total - 7];
        self.stream.read_exact(&mut body).expect("frame body");
        let payload = body.split_off(event_len);
        (
            head[4],
            String::from_utf8(body).expect("event UTF-8"),
            payload,
        )
    }
}

/// Sends one raw HTTP request and reads the whole answer (the server closes after it).
pub fn http(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// Polls `f` until it is true or the deadline passes.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// Connects clients until every worker has at least `per_worker` of them (the kernel
/// spreads connections over the workers' listeners).
pub fn clients_on_every_worker(server: &TestServer, workers: usize, count: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..count).map(|_| server.ws()).collect();
    let mut attempts = 0;
    while (0..workers as u16).any(|w| !clients.iter().any(|c| c.worker() == w)) {
        attempts += 1;
        assert!(attempts < 500, "the kernel never picked some worker");
        clients.push(server.ws());
        clients.remove(0);
    }
    clients
}

/// Segments with data this socket has received so far (the kernel's `tcp_info`): on
/// loopback, one per write the server made to it (of up to 64 KiB).
pub fn data_segments_in(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, the kernel writes at most `len` bytes
    // and sets `len` to what it wrote; the fd is an open TCP socket held by `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(TCP_INFO): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: zero-initialised, then filled by the kernel; every field is an integer.
    unsafe { info.assume_init() }.tcpi_data_segs_in
}
