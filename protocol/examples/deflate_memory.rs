//! Heap held by permessage-deflate state, per window size: what one shared broadcast
//! `Compressor` costs a worker, and what a connection's `Decompressor` keeps when the
//! client uses context takeover (its window lives as long as the connection). Counted
//! with a global allocator that tracks live bytes; the numbers go to
//! results/bench/deflate-backend.md.
//!
//! Usage: `cargo run -p stellar-protocol --example deflate_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use stellar_protocol::ws::{Compressor, Decompressor, DeflateConfig, DeflateParams};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counter only observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout (via `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let config = DeflateConfig::default();
    let message = r#"{"event":"telemetry","data":{"sensor":"temp-3","value":21.5}}"#.repeat(16);
    println!("window_bits  shared_compressor  new_inflater  inflater_after_a_message");
    for bits in 9..=15u8 {
        let before = live();
        let mut compressor = Compressor::shared(&config, bits);
        let mut compressed = Vec::new();
        compressor.compress_into(message.as_bytes(), &mut compressed);
        let compressor_bytes = live() - before - compressed.capacity();

        let params = DeflateParams {
            client_max_window_bits: bits,
            ..DeflateParams::default()
        };
        let before = live();
        let mut inflater = Decompressor::new(&params, 1 << 20);
        let fresh_bytes = live() - before;
        let inflated = inflater.inflate(&compressed).map(|b| b.len());
        // The output was handed out and dropped: what is left is the kept state.
        let kept_bytes = live() - before;
        assert_eq!(inflated, Ok(message.len()));
        println!("{bits:>11}  {compressor_bytes:>17}  {fresh_bytes:>12}  {kept_bytes:>24}");
        drop((compressor, inflater));
    }
    println!(
        "size_of: Compressor {} B, Decompressor {} B",
        std::mem::size_of::<Compressor>(),
        std::mem::size_of::<Decompressor>()
    );
}
