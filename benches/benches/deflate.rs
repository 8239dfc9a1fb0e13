//! permessage-deflate backends: compressing (raw DEFLATE, sync flush, a fresh window per
//! message as the shared broadcast compressor does) and inflating a ~1 KiB and a
//! ~64 KiB telemetry JSON message, with flate2 on zlib-rs (the crate's backend) against
//! miniz_oxide (flate2's default backend, called directly: flate2 cannot build both
//! backends into one binary). `stellar_*` cases time the shipped path around zlib-rs:
//! `Compressor::encode_frame` (frame included) and `Decompressor::inflate` (output
//! allocated per message, size cap checked). Results: results/bench/deflate-backend.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush};
use stellar_protocol::ws::{Compressor, Decompressor, DeflateConfig, DeflateParams, OpCode};

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const LEVEL: u32 = 6;

/// Telemetry JSON of at least `size` bytes: readings whose values vary (a small LCG), so
/// the text is as compressible as real telemetry, not a run of one byte.
fn telemetry(size: usize) -> Vec<u8> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed >> 33
    };
    let mut out = String::from(r#"{"event":"telemetry","data":{"node":"edge-17","readings":["#);
    while out.len() < size {
        let n = next();
        out.push_str(&format!(
            r#"{{"sensor":"temp-{}","ts":{},"value":{}.{:03},"unit":"C","ok":{}}},"#,
            n % 16,
            1_733_200_000_000 + n % 100_000,
            n % 40,
            n % 1000,
            n % 5 != 0
        ));
    }
    out.pop();
    out.push_str("]}}");
    out.into_bytes()
}

fn zlib_rs_compress(raw: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    raw.reset();
    out.clear();
    raw.compress_vec(input, out, FlushCompress::Sync)
        .expect("room for the whole output");
}

fn miniz_compress(raw: &mut CompressorOxide, input: &[u8], out: &mut [u8]) -> usize {
    raw.reset();
    let result = miniz_oxide::deflate::stream::deflate(raw, input, out, MZFlush::Sync);
    result.bytes_written
}

fn zlib_rs_inflate(raw: &mut Decompress, input: &[u8], out: &mut Vec<u8>) {
    raw.reset(false);
    out.clear();
    raw.decompress_vec(input, out, FlushDecompress::Sync)
        .expect("valid input");
    raw.decompress_vec(&TAIL, out, FlushDecompress::Sync)
        .expect("valid input");
}

fn miniz_inflate(state: &mut InflateState, input: &[u8], out: &mut [u8]) -> usize {
    state.reset(DataFormat::Raw);
    let first = miniz_oxide::inflate::stream::inflate(state, input, out, MZFlush::Sync);
    let rest = out.get_mut(first.bytes_written..).unwrap_or_default();
    let tail = miniz_oxide::inflate::stream::inflate(state, &TAIL, rest, MZFlush::Sync);
    first.bytes_written + tail.bytes_written
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_compress");
    let config = DeflateConfig {
        threshold: 0,
        ..DeflateConfig::default()
    };
    for (name, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let message = telemetry(size);
        let room = message.len() + message.len() / 256 + 64;
        group.throughput(Throughput::Bytes(message.len() as u64));
        let mut raw = Compress::new_with_window_bits(Compression::new(LEVEL), false, 15);
        let mut out = Vec::with_capacity(room);
        group.bench_with_input(BenchmarkId::new("zlib_rs", name), &message, |b, m| {
            b.iter(|| zlib_rs_compress(&mut raw, black_box(m), &mut out))
        });
        let flags = create_comp_flags_from_zip_params(LEVEL as i32, -15, 0);
        let mut oxide = CompressorOxide::new(flags);
        let mut buf = vec![0; room];
        group.bench_with_input(BenchmarkId::new("miniz_oxide", name), &message, |b, m| {
            b.iter(|| miniz_compress(&mut oxide, black_box(m), &mut buf))
        });
        let mut shipped = Compressor::shared(&config, 15);
        group.bench_with_input(BenchmarkId::new("stellar_frame", name), &message, |b, m| {
            b.iter(|| shipped.encode_frame(OpCode::Text, black_box(m)))
        });
    }
    group.finish();
}

fn inflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_inflate");
    let config = DeflateConfig::default();
    for (name, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let message = telemetry(size);
        let mut compressed = Vec::new();
        Compressor::shared(&config, 15).compress_into(&message, &mut compressed);
        group.throughput(Throughput::Bytes(message.len() as u64));
        let mut raw = Decompress::new_with_window_bits(false, 15);
        let mut out = Vec::with_capacity(message.len() + 64);
        zlib_rs_inflate(&mut raw, &compressed, &mut out);
        assert_eq!(out, message, "zlib-rs round trip");
        group.bench_with_input(BenchmarkId::new("zlib_rs", name), &compressed, |b, z| {
            b.iter(|| zlib_rs_inflate(&mut raw, black_box(z), &mut out))
        });
        let mut state = InflateState::new_boxed(DataFormat::Raw);
        let mut buf = vec![0; message.len() + 64];
        let n = miniz_inflate(&mut state, &compressed, &mut buf);
        assert_eq!(buf.get(..n), Some(&message[..]), "miniz_oxide round trip");
        group.bench_with_input(
            BenchmarkId::new("miniz_oxide", name),
            &compressed,
            |b, z| b.iter(|| miniz_inflate(&mut state, black_box(z), &mut buf)),
        );
        let params = DeflateParams {
            client_no_context_takeover: true,
            ..DeflateParams::default()
        };
        let mut shipped = Decompressor::new(&params, 1 << 20);
        group.bench_with_input(
            BenchmarkId::new("stellar_inflate", name),
            &compressed,
            |b, z| b.iter(|| shipped.inflate(black_box(z))),
        );
    }
    group.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
