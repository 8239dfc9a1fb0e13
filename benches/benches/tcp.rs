//! TCP frame decode and encode (SPEC §3.2) at 16 B, 1 KiB and 64 KiB.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_protocol::tcp::frame::encode;
use stellar_protocol::tcp::{FrameType, TcpDecoder};

fn tcp(c: &mut Criterion) {
    let mut group = c.benchmark_group("tcp");
    for (name, size) in [("16B", 16), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let payload = vec![b'x'; size];
        let frame = encode(
            FrameType::Json,
            &stellar_protocol::EventName::from_static("chat"),
            &payload,
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, f| {
            let mut decoder = TcpDecoder::new(1 << 20);
            b.iter_batched(
                || BytesMut::from(&f[..]),
                |mut src| black_box(decoder.decode(&mut src)),
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("encode", name), &payload, |b, p| {
            b.iter(|| {
                black_box(encode(
                    FrameType::Json,
                    &stellar_protocol::EventName::from_static("chat"),
                    black_box(p),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tcp);
criterion_main!(benches);
