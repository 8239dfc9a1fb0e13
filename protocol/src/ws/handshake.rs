//! The opening handshake (RFC 6455 §4) over an HTTP/1.1 request head.
//!
//! [`Request::parse`] reads a request head with httparse, under caps on its size and
//! header count, and owns what it read so the caller can route it: a WebSocket upgrade,
//! or a plain HTTP request on the same port (SPEC §6). [`Request::websocket_upgrade`]
//! checks §4.2.1 rule by rule and yields the [`Upgrade`], whose `Origin` the caller
//! judges; [`Upgrade::response`] builds the 101 answer and [`reject`] the 4xx ones.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Caps on a request head: they bound what a client can make the server buffer before
/// it has proven anything (a slowloris or header flood).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest request head, request line to blank line, in bytes.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    /// 8 KiB and 64 headers, the same order as common proxies' defaults.
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

/// An HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string, as sent (not percent-decoded).
    pub path: String,
    /// The query string after `?`, if any.
    pub query: Option<String>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, including the blank line; the body (if any) starts there.
    pub head_len: usize,
}

impl Request {
    /// Parses a request head from the start of `buf`: `Ok(None)` while incomplete and
    /// within the size cap.
    pub fn parse(buf: &[u8], limits: &HeadLimits) -> Result<Option<Self>, HandshakeError> {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
        let head_len = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
                return Err(HandshakeError::HeadTooLarge {
                    max: limits.max_head_bytes,
                });
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::TooManyHeaders {
                    max: limits.max_headers,
                });
            }
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Ok(Some(Self {
            method: req.method.unwrap_or_default().to_owned(),
            path,
            query,
            minor_version: req.version.unwrap_or(0),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
            head_len,
        }))
    }

    /// The first header called `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The values of every `name` header (case-insensitive) that is valid UTF-8, in
    /// order: for headers a client may repeat, such as `Sec-WebSocket-Extensions`.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether any `name` header holds `token` in its comma-separated list.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The query's `key=value` pairs in order, decoded as browsers encode a query
    /// (`application/x-www-form-urlencoded`: `%XX` escapes, `+` for a space). A key with
    /// no `=` has the empty value; bytes that are not UTF-8 once decoded become U+FFFD,
    /// and a `%` not followed by two hex digits is kept as it is.
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
    }

    /// The decoded value of the first query parameter whose decoded key is `key`.
    pub fn query_param(&self, key: &str) -> Option<Cow<'_, str>> {
        self.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A cookie's value from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// `Content-Length`, if present and a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.parse().ok()
    }

    /// Whether the client asks for an upgrade at all (`Upgrade: websocket`), so the
    /// caller knows whether to answer as HTTP or as a (possibly failed) handshake.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }

    /// Validates the opening handshake (RFC 6455 §4.2.1, items 1-6).
    pub fn websocket_upgrade(&self) -> Result<Upgrade, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::Method(self.method.clone()));
        }
        if self.minor_version < 1 {
            return Err(HandshakeError::HttpVersion);
        }
        if !self.is_websocket_upgrade() {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !self.has_token("connection", "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if self.header("sec-websocket-version") != Some("13") {
            return Err(HandshakeError::UnsupportedVersion);
        }
        let key = self
            .header("sec-websocket-key")
            .ok_or(HandshakeError::InvalidKey)?;
        match STANDARD.decode(key) {
            Ok(raw) if raw.len() == 16 => {}
            _ => return Err(HandshakeError::InvalidKey),
        }
        Ok(Upgrade {
            key: key.to_owned(),
            origin: self.header("origin").map(str::to_owned),
        })
    }
}

/// A valid upgrade request, ready to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key` as sent.
    pub key: String,
    /// `Origin`, for the caller's origin policy (§10.2).
    pub origin: Option<String>,
}

impl Upgrade {
    /// The 101 Switching Protocols response.
    pub fn response(&self) -> Bytes {
        self.response_with_extensions(None)
    }

    /// The 101 response, with a `Sec-WebSocket-Extensions` header when `extensions`
    /// is given: the value the negotiation settled on, such as
    /// [`Negotiated::response`](super::deflate::Negotiated::response) (RFC 6455 §9.1).
    pub fn response_with_extensions(&self, extensions: Option<&str>) -> Bytes {
        let mut out = BytesMut::with_capacity(224);
        out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
        out.put_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.put_slice(accept_key(&self.key).as_bytes());
        if let Some(value) = extensions {
            out.put_slice(b"\r\nSec-WebSocket-Extensions: ");
            out.put_slice(value.as_bytes());
        }
        out.put_slice(b"\r\n\r\n");
        out.freeze()
    }
}

/// `Sec-WebSocket-Accept`: base64(SHA-1(key + GUID)) (§4.2.2 item 5.4).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    STANDARD.encode(sha.finalize())
}

/// The HTTP answer refusing a handshake, ending with `Connection: close`; a version
/// mismatch also names the version this server speaks (§4.4).
pub fn reject(err: &HandshakeError) -> Bytes {
    let status = err.status();
    let reason = match status {
        403 => "Forbidden",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let body = err.to_string();
    let version = if matches!(err, HandshakeError::UnsupportedVersion) {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\n{version}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(bytes: &[u8]) -> Request {
        Request::parse(bytes, &HeadLimits::default())
            .unwrap()
            .unwrap()
    }

    fn with_header(name: &str, value: Option<&str>) -> Vec<u8> {
        let text = std::str::from_utf8(RFC_REQUEST).unwrap();
        let mut out = String::new();
        for line in text.split("\r\n") {
            if line
                .to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                if let Some(v) = value {
                    out.push_str(&format!("{name}: {v}\r\n"));
                }
            } else if !line.is_empty() {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_request_upgrades_with_origin_exposed() {
        let req = parse(RFC_REQUEST);
        assert_eq!(req.path, "/chat");
        assert_eq!(req.head_len, RFC_REQUEST.len());
        let upgrade = req.websocket_upgrade().unwrap();
        assert_eq!(upgrade.origin.as_deref(), Some("http://example.com"));
        let response = String::from_utf8(upgrade.response().to_vec()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn partial_head_needs_more_bytes() {
        for cut in 0..RFC_REQUEST.len() {
            assert_eq!(
                Request::parse(&RFC_REQUEST[..cut], &HeadLimits::default()),
                Ok(None)
            );
        }
    }

    #[test]
    fn oversized_head_is_431() {
        let limits = HeadLimits {
            max_head_bytes: 64,
            max_headers: 64,
        };
        let err = Request::parse(&RFC_REQUEST[..100], &limits).unwrap_err();
        assert_eq!(err, HandshakeError::HeadTooLarge { max: 64 });
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_headers: 3,
        };
        let err = Request::parse(RFC_REQUEST, &limits).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders { max: 3 });
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn garbage_is_malformed_400() {
        let err = Request::parse(b"\x00\x01 nonsense\r\n\r\n", &HeadLimits::default()).unwrap_err();
        assert!(matches!(err, HandshakeError::Malformed(_)));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn post_is_refused_400() {
        let bytes = [b"POST".as_slice(), &RFC_REQUEST[3..]].concat();
        let err = parse(&bytes).websocket_upgrade().unwrap_err();
        assert_eq!(err, HandshakeError::Method("POST".into()));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn http_1_0_is_refused() {
        let text = std::str::from_utf8(RFC_REQUEST)
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(
            parse(text.as_bytes()).websocket_upgrade(),
            Err(HandshakeError::HttpVersion)
        );
    }

    #[test]
    fn missing_upgrade_is_426() {
        let err = parse(&with_header("Upgrade", None))
            .websocket_upgrade()
            .unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HandshakeError::MissingUpgrade, 426)
        );
    }

    #[test]
    fn missing_connection_upgrade_is_400() {
        let req = parse(&with_header("Connection", Some("keep-alive")));
        assert_eq!(
            req.websocket_upgrade(),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn wrong_version_is_426_naming_13() {
        let err = parse(&with_header("Sec-WebSocket-Version", Some("8")))
            .websocket_upgrade()
            .unwrap_err();
        assert_eq!(err.status(), 426);
        let answer = String::from_utf8(reject(&err).to_vec()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn bad_or_missing_key_is_400() {
        for key in [None, Some("short"), Some("dGhlIHNhbXBsZSBub25jZQ")] {
            let err = parse(&with_header("Sec-WebSocket-Key", key))
                .websocket_upgrade()
                .unwrap_err();
            assert_eq!(err, HandshakeError::InvalidKey, "{key:?}");
        }
    }

    #[test]
    fn query_cookie_and_body_length_are_exposed() {
        let req = parse(
            b"GET /ws?token=abc&x HTTP/1.1\r\nCookie: a=1; token=xyz\r\nContent-Length: 12\r\n\r\n",
        );
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("token").as_deref(), Some("abc"));
        assert_eq!(req.query_param("x").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.cookie("token"), Some("xyz"));
        assert_eq!(req.content_length(), Some(12));
    }

    #[test]
    fn query_values_are_decoded_as_browsers_encode_them() {
        let req = parse(
            b"GET /api/x?msg=hello%20world&sum=a%2Bb+c&caf%C3%A9=%E2%9C%93&bad=100%&bin=%FF&&=e HTTP/1.1\r\n\r\n",
        );
        let pairs: Vec<(String, String)> = req
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let want = [
            ("msg", "hello world"),
            ("sum", "a+b c"),
            ("café", "✓"),
            ("bad", "100%"),
            ("bin", "\u{FFFD}"),
            ("", "e"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pairs, want);
        assert_eq!(req.query_param("café").as_deref(), Some("✓"));
        assert!(
            parse(b"GET /api/x HTTP/1.1\r\n\r\n")
                .query_pairs()
                .next()
                .is_none()
        );
    }
}
