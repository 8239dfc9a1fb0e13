//! Static files off the event loop (issue 13): a large `/public/` download or `file`
//! request leaves the other connections of its worker served, files over
//! `max_file_bytes` are refused from their metadata, and HTTP bodies are streamed.
//!
//! Every test runs one server with one worker, so the bystander client and the file
//! request share the event loop that a blocking read would stall.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use stellar_server::{Config, Driver};
use tungstenite::Message;

const MIB: u64 = 1 << 20;
/// The large file served over HTTP: far more than a worker may hold or stall on.
const BIG: u64 = 100 * MIB;
/// The slowest ping round trip a bystander may see while a file is served.
const STALL_BOUND: Duration = Duration::from_millis(50);
/// Pings a bystander completes at least, so the slowest of them means something.
const MIN_PINGS: usize = 20;

/// The tests of this file run one at a time: they time the event loop and measure the
/// process's memory, which other servers in the same process would disturb.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A sparse file of `len` bytes: it reads as zeros and takes no disk space.
fn sparse_file(dir: &std::path::Path, name: &str, len: u64) {
    std::fs::File::create(dir.join(name))
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn server(dir: tempfile::TempDir, driver: Driver, max_file_bytes: u64) -> TestServer {
    TestServer::with(Config {
        public_dir: Some(dir.path().to_path_buf()),
        // `max_backpressure` stays at its default (1 MiB): the `file` verb's reply, one
        // message far larger than it, still goes out on an idle connection.
        max_file_bytes,
        ..config(1, driver)
    })
    .keeping(dir)
}

/// An HTTP response whose head has been read.
struct Response {
    status: u16,
    content_length: Option<u64>,
    stream: TcpStream,
    /// Body bytes that arrived with the head.
    body_read: u64,
}

/// Sends `GET path` and reads the response head.
fn get(port: u16, path: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).expect("response head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    Response {
        status,
        content_length,
        stream,
        body_read: (buf.len() - end) as u64,
    }
}

impl Response {
    /// Reads the body to the end of the connection; returns its length.
    fn read_body(mut self) -> u64 {
        let mut total = self.body_read;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk).expect("response body") {
                0 => return total,
                n => total += n as u64,
            }
        }
    }
}

/// Pings from `client` (`{"event":"ping"}`, answered by `pong`) until `finished` says
/// so and at least [`MIN_PINGS`] have come back; returns the slowest round trip.
fn slowest_ping_until(client: &mut Client, finished: impl Fn() -> bool) -> (Duration, usize) {
    let mut slowest = Duration::ZERO;
    let mut pings = 0;
    while pings < MIN_PINGS || !finished() {
        let sent = Instant::now();
        client.send(json!({"event": "ping", "data": pings}));
        assert_eq!(client.recv_event("pong")["data"], pings);
        slowest = slowest.max(sent.elapsed());
        pings += 1;
    }
    (slowest, pings)
}

/// A bystander pings its worker while a [`BIG`] file is downloaded from the same
/// worker over `/public/`, read whole by the test.
fn download_keeps_pings_fast(driver: Driver) {
    let _serial = serial();
    let dir = temp_dir();
    sparse_file(dir.path(), "big.bin", BIG);
    let s = server(dir, driver, BIG);
    let mut bystander = s.ws();
    let port = s.handle.port();
    let ((slowest, pings), body) = std::thread::scope(|scope| {
        let download = scope.spawn(|| {
            let response = get(port, "/public/big.bin");
            assert_eq!(response.status, 200);
            assert_eq!(response.content_length, Some(BIG));
            response.read_body()
        });
        let slowest = slowest_ping_until(&mut bystander, || download.is_finished());
        (slowest, download.join().expect("download"))
    });
    assert_eq!(body, BIG, "the whole body arrives");
    assert!(
        slowest < STALL_BOUND,
        "a ping took {slowest:?} (slowest of {pings}) during the download"
    );
}

/// Found in review (issue 13): `/public/` read the file with a blocking
/// `std::fs::read` on the worker's loop, so a 100 MiB file stalled every connection
/// of that worker. Fails on the code before the fix.
#[test]
fn regression_public_download_stalled_every_connection_of_its_worker() {
    download_keeps_pings_fast(Driver::Auto);
}

#[test]
fn public_download_keeps_pings_fast_on_uring() {
    download_keeps_pings_fast(Driver::Uring);
}

#[test]
fn public_download_keeps_pings_fast_on_epoll() {
    download_keeps_pings_fast(Driver::Epoll);
}

/// A bystander pings its worker while another client of the same worker asks for a
/// file just under `max_file_bytes` with the `file` verb.
fn file_verb_keeps_pings_fast(driver: Driver) {
    const CAP: u64 = 8 * MIB;
    let _serial = serial();
    let dir = temp_dir();
    let len = CAP - 1024;
    std::fs::write(dir.path().join("near-cap.txt"), vec![b'a'; len as usize]).unwrap();
    let s = server(dir, driver, CAP);
    let mut bystander = s.ws();
    let mut requester = s.ws();
    let ((slowest, pings), reply) = std::thread::scope(|scope| {
        let request = scope.spawn(move || {
            requester.send(json!({"event": "file", "data": "near-cap.txt",
                "_ackName": "file", "_correlationId": "f#1"}));
            match requester.recv() {
                Message::Text(text) => text.to_string(),
                other => panic!("expected the file reply, got {other:?}"),
            }
        });
        let slowest = slowest_ping_until(&mut bystander, || request.is_finished());
        (slowest, request.join().expect("file request"))
    });
    // Not parsed: decoding 8 MiB of JSON in a debug build would load the cores the
    // server's loop needs, which is what is being timed.
    assert!(reply.contains(r#""_isAck":true"#) && reply.contains(r#""_correlationId":"f#1""#));
    assert!(
        reply.contains(&format!(r#""length":{len}"#)),
        "length in the reply"
    );
    assert!(reply.len() as u64 > len, "the content is in the reply");
    assert!(
        slowest < STALL_BOUND,
        "a ping took {slowest:?} (slowest of {pings}) during the file request"
    );
}

#[test]
fn file_verb_keeps_pings_fast_on_uring() {
    file_verb_keeps_pings_fast(Driver::Uring);
}

#[test]
fn file_verb_keeps_pings_fast_on_epoll() {
    file_verb_keeps_pings_fast(Driver::Epoll);
}

#[test]
fn files_over_max_file_bytes_get_413_and_file_too_large() {
    const CAP: u64 = MIB;
    let _serial = serial();
    let dir = temp_dir();
    sparse_file(dir.path(), "at-cap.bin", CAP);
    sparse_file(dir.path(), "over-cap.bin", CAP + 1);
    let s = server(dir, Driver::Auto, CAP);
    let port = s.handle.port();

    let over = get(port, "/public/over-cap.bin");
    assert_eq!(over.status, 413);
    let at = get(port, "/public/at-cap.bin");
    assert_eq!((at.status, at.content_length), (200, Some(CAP)));
    assert_eq!(at.read_body(), CAP);

    let mut c = s.ws();
    let refused = c.request("file", json!("over-cap.bin"), "f#1");
    assert_eq!(refused["error"]["code"], "file_too_large");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("max_file_bytes ({CAP} bytes)")),
        "{message}"
    );
    let served = c.request("file", json!("at-cap.bin"), "f#2");
    assert_eq!(served["data"]["length"], CAP);
    let missing = c.request("file", json!("missing.bin"), "f#3");
    assert_eq!(missing["error"]["code"], "not_found");
}

/// The process's resident memory in bytes (the server runs in this process).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// While the client reads nothing past the head, the server can run ahead of it only as
/// far as the socket buffers let it: the process (server and test together, the test
/// holding nothing of the body) grows by far less than the file. A server that buffered
/// the body whole would hold all 100 MiB before the head even left.
#[test]
fn public_download_is_streamed_not_held_whole() {
    const HELD_BOUND: u64 = 24 * MIB;
    let _serial = serial();
    let dir = temp_dir();
    sparse_file(dir.path(), "big.bin", BIG);
    let s = server(dir, Driver::Auto, BIG);
    let before = rss_bytes();
    let response = get(s.handle.port(), "/public/big.bin");
    assert_eq!(response.content_length, Some(BIG));
    let mut peak = before;
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        peak = peak.max(rss_bytes());
        std::thread::sleep(Duration::from_millis(10));
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < HELD_BOUND,
        "memory grew by {} MiB while the client read nothing",
        grown / MIB
    );
    assert_eq!(response.read_body(), BIG, "the whole body arrives");
}
