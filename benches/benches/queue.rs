//! One frame (or a burst of 16) queued to 1 000 connections' write queues, then each
//! queue's batch taken for its writer: the server's real `WriteQueue`
//! (`server/src/write_queue.rs`) against two baselines in the same group: a refcounted
//! `Bytes` clone per queue handed out as is (the floor: nothing copied, a refcount per
//! frame), and every frame copied onto each queue's own buffer. The queue shares a lone
//! frame and any frame over `COPY_MAX` and copies bursts of smaller ones, so it should
//! track the cheaper baseline at each size; the x16 rows around 256 B are what set
//! `COPY_MAX`. The write itself (one send, or a writev over the batch) is not measured.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stellar_server::write_queue::{Batch, Next, WriteQueue};

/// The server's allocator: the copy path's cost is mostly its allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const QUEUES: usize = 1000;

/// The real queue: `frames` pushed to every queue, then each queue drained batch by
/// batch as the writer task does.
fn write_queue(frames: &[Bytes], queues: &mut [WriteQueue], batch: &mut Batch) {
    for f in frames {
        for q in queues.iter_mut() {
            q.push(f);
        }
    }
    for q in queues.iter_mut() {
        while q.take_batch(batch) == Next::Write {
            black_box(batch.plan());
            black_box(batch.frames());
            batch.clear();
        }
    }
}

/// Baseline: a shared clone per frame per queue, handed to the writer as is.
fn shared(frames: &[Bytes], queues: &mut [VecDeque<Bytes>], batch: &mut Vec<Bytes>) {
    for f in frames {
        for q in queues.iter_mut() {
            q.push_back(f.clone());
        }
    }
    for q in queues.iter_mut() {
        batch.extend(q.drain(..));
        black_box(&batch);
        batch.clear();
    }
}

/// Baseline: every frame copied onto each queue's open buffer, handed over whole.
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
        for size in [110usize, 256, 512, 1024, 4096, 65536] {
            let frames: Vec<Bytes> = (0..burst)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect();
            group.throughput(Throughput::Elements((burst * QUEUES) as u64));
            let id = format!("{size}B x{burst}");
            group.bench_with_input(BenchmarkId::new("write_queue", &id), &frames, |b, f| {
                let mut queues: Vec<WriteQueue> =
                    (0..QUEUES).map(|_| WriteQueue::default()).collect();
                let mut batch = Batch::default();
                b.iter(|| write_queue(f, &mut queues, &mut batch))
            });
            group.bench_with_input(BenchmarkId::new("shared", &id), &frames, |b, f| {
                let mut queues = vec![VecDeque::new(); QUEUES];
                let mut batch = Vec::new();
                b.iter(|| shared(f, &mut queues, &mut batch))
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
