//! Envelope parse (sonic-rs into borrowed routing fields + raw `data`) against
//! `serde_json::Value` and simd-json's borrowed value, and envelope building against
//! `serde_json::to_vec`. Target: parse >= 2x serde_json on a 200-byte chat envelope.
//! `room_frame`: a room broadcast's WebSocket frame written in one buffer (the JSON
//! behind its header) against building the JSON apart and framing a copy of it.

use std::hint::black_box;
use stellar_protocol::EventName;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_protocol::envelope::{Envelope, encode_event, encode_event_into, event_len};
use stellar_protocol::ws::OpCode;
use stellar_protocol::ws::frame::{encode_server, encode_server_with};

fn chat(size: usize) -> String {
    let base = r#"{"event":"chat","room":"lobby","data":{"user":"alice","ts":1732470000000,"tags":["a","b"],"text":""}}"#;
    let text = "x".repeat(size.saturating_sub(base.len()));
    format!(
        r#"{{"event":"chat","room":"lobby","data":{{"user":"alice","ts":1732470000000,"tags":["a","b"],"text":"{text}"}}}}"#
    )
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope_parse");
    for (name, size) in [("200B", 200), ("1KiB", 1024)] {
        let msg = chat(size);
        group.throughput(Throughput::Bytes(msg.len() as u64));
        group.bench_with_input(BenchmarkId::new("stellar_sonic", name), &msg, |b, m| {
            b.iter(|| {
                black_box(Envelope::parse(black_box(m.as_bytes())).map(|e| e.data.map(|d| d.len())))
            })
        });
        group.bench_with_input(BenchmarkId::new("stellar_sonic_str", name), &msg, |b, m| {
            b.iter(|| {
                black_box(
                    Envelope::parse_str(black_box(m.as_str())).map(|e| e.data.map(|d| d.len())),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), &msg, |b, m| {
            b.iter(|| {
                black_box(
                    serde_json::from_slice::<serde_json::Value>(black_box(m.as_bytes())).is_ok(),
                )
            })
        });
        group.bench_with_input(
            BenchmarkId::new("simd_json_borrowed", name),
            &msg,
            |b, m| {
                b.iter_batched(
                    || m.as_bytes().to_vec(),
                    |mut bytes| black_box(simd_json::to_borrowed_value(&mut bytes).is_ok()),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

const CHAT: EventName<'static> = EventName::from_static("chat");
const B: EventName<'static> = EventName::from_static("b");

fn build(c: &mut Criterion) {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        event: &'a str,
        data: &'a serde_json::value::RawValue,
        room: &'a str,
    }
    let data = r#"{"user":"alice","ts":1732470000000,"tags":["a","b"],"text":"hello there, general kenobi"}"#;
    let raw = serde_json::value::RawValue::from_string(data.to_owned()).expect("valid JSON");
    let mut group = c.benchmark_group("envelope_build");
    group.bench_function("stellar_raw/200B", |b| {
        b.iter(|| black_box(encode_event(&CHAT, black_box(data), Some("lobby"))))
    });
    group.bench_function("serde_json_to_vec/200B", |b| {
        b.iter(|| {
            black_box(serde_json::to_vec(&Out {
                event: "chat",
                data: &raw,
                room: "lobby",
            }))
        })
    });
    group.finish();
}

fn room_frame(c: &mut Criterion) {
    let data = r#"{"p":17,"s":123456,"t":98765432101,"x":"xxxxxxxxxxxxxxxx"}"#;
    let mut group = c.benchmark_group("room_frame");
    group.bench_function("json_then_frame/100B", |b| {
        b.iter(|| {
            let json = encode_event(&B, black_box(data), Some("room-17"));
            black_box(encode_server(OpCode::Text, &json))
        })
    });
    group.bench_function("in_place/100B", |b| {
        b.iter(|| {
            let data = black_box(data);
            let len = event_len(&B, data, Some("room-17"));
            black_box(encode_server_with(OpCode::Text, len, |buf| {
                encode_event_into(buf, &B, data, Some("room-17"))
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, parse, build, room_frame);
criterion_main!(benches);
