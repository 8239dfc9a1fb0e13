//! One frame queued to 1 000 connections' write queues, then each queue handed to its
//! writer, two ways: a refcounted `Bytes` clone per queue (gathered into one write
//! buffer when several wait, as the writer did), against copying the frame onto each
//! queue's open buffer. `server/src/connection.rs` takes the cheaper of the two: a lone
//! frame stays shared (the x1 rows), frames that wait together up to `COPY_MAX` are
//! copied (the x16 rows decide the threshold). Sizes around it, 1 and 16 frames per
//! write.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// The server's allocator: the copy path's cost is mostly its allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const QUEUES: usize = 1000;

/// Queues `frames` to every queue as shared clones, then drains each like the writer
/// task did: a lone frame written as is, several gathered into the task's own buffer.
fn shared(frames: &[Bytes], queues: &mut [VecDeque<Bytes>]) {
    for f in frames {
        for q in queues.iter_mut() {
            q.push_back(f.clone());
        }
    }
    for q in queues.iter_mut() {
        let mut gather = BytesMut::new();
        let write = if q.len() == 1 {
            q.pop_front().unwrap_or_default()
        } else {
            for f in q.drain(..) {
                gather.extend_from_slice(&f);
            }
            gather.split().freeze()
        };
        black_box(write);
    }
}

/// Copies `frames` onto every queue's open buffer, then hands each buffer over whole.
fn copied(frames: &[Bytes], queues: &mut [BytesMut]) {
    for f in frames {
        for q in queues.iter_mut() {
            if q.capacity() == 0 {
                q.reserve(1024);
            }
            q.extend_from_slice(f);
        }
    }
    for q in queues.iter_mut() {
        black_box(std::mem::take(q).freeze());
    }
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_frames");
    for burst in [1usize, 16] {
        for size in [110usize, 256, 512, 1024, 4096] {
            let frames: Vec<Bytes> = (0..burst)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect();
            group.throughput(Throughput::Elements((burst * QUEUES) as u64));
            let id = format!("{size}B x{burst}");
            group.bench_with_input(BenchmarkId::new("shared", &id), &frames, |b, f| {
                let mut queues = vec![VecDeque::new(); QUEUES];
                b.iter(|| shared(f, &mut queues))
            });
            group.bench_with_input(BenchmarkId::new("copied", &id), &frames, |b, f| {
                let mut queues = vec![BytesMut::new(); QUEUES];
                b.iter(|| copied(f, &mut queues))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
