//! Fixed workloads of the hot paths for the CI performance check: `scripts/perfcheck`
//! runs each under callgrind and compares its instruction count with the committed
//! baseline (`results/perf-baseline.json`). Instruction counts do not depend on what
//! else the machine is doing, so a real slowdown is caught and noise is not.
//!
//! Usage: `perfcheck <workload>`; workloads: ws_decode, ws_encode, envelope_parse,
//! fanout, tcp_decode.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use stellar_protocol::envelope::{Envelope, encode_event};
use stellar_protocol::tcp::{FrameType, TcpDecoder};
use stellar_protocol::ws::frame::{encode_client, encode_server};
use stellar_protocol::ws::{DecoderConfig, MessageDecoder, OpCode};

const CHAT: &str = r#"{"event":"chat","room":"lobby","data":{"user":"alice","ts":1732470000000,"tags":["a","b"],"text":"hello there general kenobi, how are you doing today?"}}"#;

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    match workload.as_str() {
        "ws_decode" => ws_decode(),
        "ws_encode" => ws_encode(),
        "envelope_parse" => envelope_parse(),
        "fanout" => fanout(),
        "tcp_decode" => tcp_decode(),
        other => {
            eprintln!("perfcheck: unknown workload `{other}`");
            std::process::exit(2);
        }
    }
}

/// 20 000 masked 1 KiB text frames decoded from one buffer.
fn ws_decode() {
    let frame = encode_client(OpCode::Text, "a".repeat(1024).as_bytes(), [1, 2, 3, 4]);
    let mut wire = BytesMut::new();
    for _ in 0..20_000 {
        wire.extend_from_slice(&frame);
    }
    let mut decoder = MessageDecoder::new(DecoderConfig::default());
    let mut n = 0;
    while let Ok(Some(m)) = decoder.decode(&mut wire) {
        black_box(m);
        n += 1;
    }
    assert_eq!(n, 20_000);
}

/// 100 000 server frames of a 200-byte envelope.
fn ws_encode() {
    for _ in 0..100_000 {
        black_box(encode_server(OpCode::Text, black_box(CHAT.as_bytes())));
    }
}

/// 50 000 envelope parses with raw `data`.
fn envelope_parse() {
    for _ in 0..50_000 {
        let env = Envelope::parse(black_box(CHAT.as_bytes())).map(|e| e.data.map(|d| d.len()));
        black_box(env.ok());
    }
}

/// 1 000 relays to a 1 000-member room: parse once, encode once, one refcounted clone
/// into each member's write queue, as the server's fan-out does.
fn fanout() {
    let mut queues: Vec<VecDeque<Bytes>> = (0..1000).map(|_| VecDeque::new()).collect();
    for _ in 0..1000 {
        let Ok(env) = Envelope::parse(CHAT.as_bytes()) else {
            return;
        };
        let json = encode_event(
            &env.event,
            env.data.as_deref().unwrap_or("null"),
            env.room.as_deref(),
        );
        let frame = encode_server(OpCode::Text, &json);
        for q in &mut queues {
            q.push_back(frame.clone());
        }
        for q in &mut queues {
            black_box(q.pop_front());
        }
    }
}

/// 50 000 TCP frames decoded from one buffer.
fn tcp_decode() {
    let frame = stellar_protocol::tcp::frame::encode(
        FrameType::Json,
        &stellar_protocol::EventName::from_static("chat"),
        CHAT.as_bytes(),
    );
    let mut wire = BytesMut::new();
    for _ in 0..50_000 {
        wire.extend_from_slice(&frame);
    }
    let mut decoder = TcpDecoder::new(1 << 20);
    let mut n = 0;
    while let Ok(Some(f)) = decoder.decode(&mut wire) {
        black_box(f);
        n += 1;
    }
    assert_eq!(n, 50_000);
}
