//! Frame decode (masked client frames through `MessageDecoder`) and encode (server
//! frames, built once into `Bytes`) at 16 B, 1 KiB and 64 KiB.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_protocol::ws::frame::{encode_client, encode_server};
use stellar_protocol::ws::{DecoderConfig, MessageDecoder, OpCode};

const SIZES: [(&str, usize); 3] = [("16B", 16), ("1KiB", 1024), ("64KiB", 64 * 1024)];

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode");
    for (name, size) in SIZES {
        let text = "a".repeat(size);
        let frames = [
            (
                "text_masked",
                encode_client(OpCode::Text, text.as_bytes(), [1, 2, 3, 4]),
            ),
            (
                "binary_masked",
                encode_client(OpCode::Binary, &vec![7u8; size], [1, 2, 3, 4]),
            ),
        ];
        group.throughput(Throughput::Bytes(size as u64));
        for (kind, frame) in frames {
            group.bench_with_input(BenchmarkId::new(kind, name), &frame, |b, frame| {
                let mut decoder = MessageDecoder::new(DecoderConfig::default());
                b.iter_batched(
                    || BytesMut::from(&frame[..]),
                    |mut src| black_box(decoder.decode(&mut src)),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode");
    for (name, size) in SIZES {
        let payload = vec![b'a'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("server_text", name), &payload, |b, p| {
            b.iter(|| black_box(encode_server(OpCode::Text, black_box(p))))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
