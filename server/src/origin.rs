//! Which browser origins may use the server (`allowed_origins`, SPEC §3.4). One list
//! decides both a WebSocket upgrade and a plain HTTP request, so a page that may not open
//! a socket may not call `/api` either (no cross-site request forgery through a form or a
//! `fetch`), and a listed page served from elsewhere gets the CORS headers that let it
//! read the answers, cookies included: the JavaScript client's `action()` fallback from
//! another origin.

use bytes::{Bytes, BytesMut};

/// The verdict on a request's `Origin` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No list, or no header on a plain HTTP request (curl, a server, a browser's
    /// same-origin GET): served, with no CORS headers.
    Served,
    /// A listed origin: served, and HTTP answers carry CORS headers for it.
    Listed(&'a str),
    /// Not listed: 403.
    Refused,
}

/// The verdict on `origin` for a WebSocket upgrade: with a list, only a listed origin
/// passes, and an upgrade with no `Origin` at all is refused.
pub fn for_upgrade<'a>(allowed: &[String], origin: Option<&'a str>) -> Verdict<'a> {
    match (allowed.is_empty(), origin) {
        (true, _) => Verdict::Served,
        (false, Some(o)) if allowed.iter().any(|a| a == o) => Verdict::Listed(o),
        (false, _) => Verdict::Refused,
    }
}

/// The verdict on `origin` for a plain HTTP request: as for an upgrade, except that a
/// request with no `Origin` is served (browsers send one on every cross-origin request
/// they let a page read, and on every cross-origin POST).
pub fn for_http<'a>(allowed: &[String], origin: Option<&'a str>) -> Verdict<'a> {
    match origin {
        None => Verdict::Served,
        Some(_) => for_upgrade(allowed, origin),
    }
}

/// The CORS headers for a listed origin: it may read the answer, with credentials.
pub fn cors_headers(origin: &str) -> String {
    format!(
        "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
    )
}

/// The answer to a CORS preflight (`OPTIONS`) from a listed origin: the methods and
/// headers the client's `action()` fallback uses, cached by the browser for 10 minutes.
pub fn preflight(origin: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 204 No Content\r\n{}Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n\
         Access-Control-Allow-Headers: Content-Type, Authorization\r\n\
         Access-Control-Max-Age: 600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        cors_headers(origin)
    ))
}

/// `answer` (a whole HTTP response) with `headers` (lines ending in CRLF) added after its
/// status line; `answer` itself, uncopied, when there are none.
pub fn with_headers(answer: Bytes, headers: Option<&str>) -> Bytes {
    let Some(headers) = headers else {
        return answer;
    };
    let status_end = answer
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(answer.len(), |i| i + 2);
    let mut out = BytesMut::with_capacity(answer.len() + headers.len());
    out.extend_from_slice(&answer[..status_end]);
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(&answer[status_end..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_serves_everyone_without_cors_headers() {
        for origin in [None, Some("https://evil.example")] {
            assert_eq!(for_upgrade(&[], origin), Verdict::Served);
            assert_eq!(for_http(&[], origin), Verdict::Served);
        }
    }

    #[test]
    fn a_list_admits_only_its_origins_and_http_without_an_origin() {
        let list = vec!["https://app.example".to_owned()];
        let app = Some("https://app.example");
        assert_eq!(
            for_upgrade(&list, app),
            Verdict::Listed("https://app.example")
        );
        assert_eq!(for_http(&list, app), Verdict::Listed("https://app.example"));
        // Exact match only: scheme, host and port.
        for other in [
            "https://evil.example",
            "http://app.example",
            "https://app.example:8443",
        ] {
            assert_eq!(for_upgrade(&list, Some(other)), Verdict::Refused);
            assert_eq!(for_http(&list, Some(other)), Verdict::Refused);
        }
        assert_eq!(for_upgrade(&list, None), Verdict::Refused);
        assert_eq!(for_http(&list, None), Verdict::Served);
    }

    #[test]
    fn headers_go_after_the_status_line() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let got = with_headers(
            Bytes::from_static(answer),
            Some(&cors_headers("https://a.example")),
        );
        assert_eq!(
            &got[..],
            &b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://a.example\r\n\
               Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n\
               Content-Length: 2\r\n\r\nok"[..]
        );
    }
}
