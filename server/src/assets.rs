//! Files built into the binary and served as they are (SPEC §6, §7): the JavaScript
//! client at `/stellar-client` (and `.js`), its ES-module entry, its type declarations,
//! and the demo page at `/demo` when `demo` is on. No file is needed next to the binary.
//!
//! Each file has a strong `ETag`, a hash of its bytes computed at compile time, and is
//! sent with `Cache-Control: no-cache`: browsers revalidate on every load and get a 304
//! while the binary's copy is unchanged, and the new file as soon as it changes.

use bytes::{Bytes, BytesMut};

/// One embedded file.
pub struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// The quoted strong entity tag (RFC 9110 §8.8.3), `"` + 16 hex digits + `"`.
    etag: &'static str,
}

/// `"<FNV-1a 64 of bytes in hex>"`, at compile time. FNV is enough: the tag only has to
/// change when the file does, and nobody gains by forging a collision with our own file.
const fn etag_of<const N: usize>(bytes: &[u8]) -> [u8; N] {
    assert!(N == 18, "an entity tag is 16 hex digits in quotes");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let digits = b"0123456789abcdef";
    let mut out = [b'"'; N];
    let mut d = 0;
    while d < 16 {
        out[1 + d] = digits[((hash >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    out
}

/// An [`Asset`] of the file at `$path` (relative to this source file).
macro_rules! asset {
    ($path:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!($path);
        const TAG: [u8; 18] = etag_of(BODY);
        const ETAG: &str = match std::str::from_utf8(&TAG) {
            Ok(tag) => tag,
            Err(_) => panic!("an entity tag is ASCII"),
        };
        Asset {
            body: BODY,
            content_type: $content_type,
            etag: ETAG,
        }
    }};
}

static CLIENT: Asset = asset!(
    "../../client/stellar-client.js",
    "text/javascript; charset=utf-8"
);
static CLIENT_MODULE: Asset = asset!(
    "../../client/stellar-client.mjs",
    "text/javascript; charset=utf-8"
);
static CLIENT_TYPES: Asset = asset!(
    "../../client/stellar-client.d.ts",
    "text/plain; charset=utf-8"
);
static DEMO: Asset = asset!("../../client/demo.html", "text/html; charset=utf-8");

/// The file served at `path`, if any; `/demo` only when `demo` is on.
pub fn find(path: &str, demo: bool) -> Option<&'static Asset> {
    match path {
        "/stellar-client" | "/stellar-client.js" => Some(&CLIENT),
        "/stellar-client.mjs" => Some(&CLIENT_MODULE),
        "/stellar-client.d.ts" => Some(&CLIENT_TYPES),
        "/demo" | "/demo/" if demo => Some(&DEMO),
        _ => None,
    }
}

impl Asset {
    /// The whole response: 304 when `if_none_match` names this version, else 200 with
    /// the body (its head only, with the body's length, for a `HEAD`: `with_body` false).
    pub fn response(&self, if_none_match: Option<&str>, with_body: bool) -> Bytes {
        let fresh = if_none_match.is_some_and(|tags| self.is_matched_by(tags));
        let (status, body) = if fresh {
            ("304 Not Modified", &[][..])
        } else {
            ("200 OK", self.body)
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nETag: {}\r\n\
             Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            self.content_type,
            body.len(),
            self.etag,
        );
        let mut out = BytesMut::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        if with_body {
            out.extend_from_slice(body);
        }
        out.freeze()
    }

    /// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `*`, or any listed
    /// tag equal to ours once a `W/` prefix is dropped.
    fn is_matched_by(&self, tags: &str) -> bool {
        tags.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_quoted_hex_and_follows_the_bytes() {
        let a: [u8; 18] = etag_of(b"client v1");
        let b: [u8; 18] = etag_of(b"client v2");
        assert_ne!(a, b);
        assert_eq!(a, etag_of::<18>(b"client v1"));
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with('"') && text.ends_with('"'));
        assert!(text[1..17].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn if_none_match_uses_weak_comparison_over_a_list() {
        let tag = CLIENT.etag;
        assert!(CLIENT.is_matched_by(tag));
        assert!(CLIENT.is_matched_by(&format!("\"other\", W/{tag}")));
        assert!(CLIENT.is_matched_by("*"));
        assert!(!CLIENT.is_matched_by("\"other\""));
        assert!(!CLIENT.is_matched_by(""));
    }

    #[test]
    fn demo_is_served_only_when_on() {
        assert!(find("/demo", false).is_none());
        assert!(find("/demo", true).is_some());
        assert!(find("/stellar-client", false).is_some());
        assert!(find("/stellar-client.js/x", true).is_none());
    }
}
