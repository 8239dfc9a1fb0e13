//! Unmasking (RFC 6455 §5.3): `apply_mask` against the naive byte loop it replaces.
//! Target: >= 8x the byte loop at 64 KiB (median).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_protocol::ws::mask::{apply_mask, apply_mask_bytewise};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for (name, size) in [("16B", 16), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("word", name), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
        });
        group.bench_with_input(BenchmarkId::new("bytewise", name), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), 0))
        });
    }
    group.finish();
}

criterion_group!(benches, mask);
criterion_main!(benches);
