//! Payload masking (RFC 6455 §5.3): `payload[i] ^= key[(offset + i) % 4]`.
//!
//! Every byte a client sends is masked, so unmasking runs over every inbound byte. It
//! works eight bytes at a time on a key widened to a `u64`, which the compiler turns
//! into vector instructions; where the CPU has AVX2 (checked once at run time) the same
//! loop is compiled for 32-byte vectors. The byte loop [`apply_mask_bytewise`] is kept
//! as the test oracle and the benchmark baseline. `offset` lets a payload that arrives
//! in several reads be unmasked piece by piece: it is the payload position of `buf[0]`.

/// XORs `buf` with the mask `key`, where `buf[0]` is byte `offset` of the payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 64 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above; the function body is safe
        // code that only needs the target feature to be present.
        unsafe { apply_mask_avx2(buf, key, offset) };
        return;
    }
    apply_mask_words(buf, key, offset);
}

/// [`apply_mask_words`] compiled with AVX2 enabled, so its loop uses 32-byte vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    apply_mask_words(buf, key, offset);
}

/// The portable word-at-a-time loop.
#[inline(always)]
fn apply_mask_words(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8 from `buf[0]`, so the rotated key still lines up.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// The naive byte-at-a-time mask: the reference `apply_mask` is tested and benched against.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) & 3];
    }
}

/// The key as seen from payload position `offset`.
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset & 3);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn matches_bytewise_for_every_length_offset_and_alignment() {
        let source: Vec<u8> = (0..=255u8).cycle().take(400).collect();
        for len in (0..=64).chain([65, 100, 127, 128, 129, 255, 300]) {
            for align in 0..8 {
                for offset in 0..4 {
                    let mut fast = source[align..align + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, KEY, offset);
                    apply_mask_bytewise(&mut slow, KEY, offset);
                    assert_eq!(fast, slow, "len {len} align {align} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn portable_loop_matches_bytewise_too() {
        // The AVX2 path is taken for 64 bytes and more where available; check the
        // portable one on its own as well.
        let source: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in [0, 1, 7, 8, 63, 64, 65, 200] {
            for offset in 0..4 {
                let mut fast = source[3..3 + len].to_vec();
                let mut slow = fast.clone();
                apply_mask_words(&mut fast, KEY, offset);
                apply_mask_bytewise(&mut slow, KEY, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn rfc_example_hello_unmasks() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn piecewise_unmasking_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..300),
                                            split in 0usize..300, key in any::<[u8; 4]>()) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            prop_assert_eq!(whole, pieces);
        }
    }
}
