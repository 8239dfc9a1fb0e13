//! Incremental UTF-8 validation (`Utf8Validator`, simdutf8 underneath) against
//! `std::str::from_utf8`, on ASCII and on mixed multibyte text.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_protocol::ws::utf8::Utf8Validator;

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let texts = [
        ("ascii", "the quick brown fox jumps ".repeat(3000)),
        ("mixed", "κόσμε 𝄞 € abc ".repeat(3000)),
    ];
    for (kind, text) in &texts {
        for (name, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
            let mut end = size.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let bytes = &text.as_bytes()[..end];
            group.throughput(Throughput::Bytes(end as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("validator_{kind}"), name),
                bytes,
                |b, bytes| {
                    b.iter(|| {
                        let mut v = Utf8Validator::default();
                        black_box(v.finish(black_box(bytes)))
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("std_{kind}"), name),
                bytes,
                |b, bytes| b.iter(|| black_box(std::str::from_utf8(black_box(bytes)).is_ok())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, utf8);
criterion_main!(benches);
