//! The JavaScript client and the demo page served from the binary (SPEC §6, §7; issue
//! 14): content type, a strong ETag that a revalidation answers with 304, `no-cache`,
//! the bytes of the files under `client/`, and `/demo` only when `demo` is on.

mod common;

use common::*;
use stellar_server::{Config, Driver};

/// Status code, head lines (lower-cased names) and body of one GET.
fn get(port: u16, path: &str, extra: &str) -> (u16, Vec<(String, String)>, String) {
    let answer = http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"),
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// GETs `path` and checks a 200 with `content_type`, `Cache-Control: no-cache` and the
/// bytes of `client/<file>`; returns its ETag.
fn served(port: u16, path: &str, file: &str, content_type: &str) -> String {
    let (status, headers, body) = get(port, path, "");
    assert_eq!(status, 200, "{path}");
    assert_eq!(
        header(&headers, "content-type"),
        Some(content_type),
        "{path}"
    );
    assert_eq!(
        header(&headers, "cache-control"),
        Some("no-cache"),
        "{path}"
    );
    assert_eq!(body, source(file), "{path}");
    header(&headers, "etag").expect("an ETag").to_owned()
}

fn source(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../client")
        .join(file);
    std::fs::read_to_string(path).expect("client file")
}

const JS: &str = "text/javascript; charset=utf-8";

#[test]
fn client_is_served_with_a_strong_etag_and_revalidates_with_304() {
    let s = TestServer::with(config(1, Driver::Auto));
    let port = s.handle.port();
    let etag = served(port, "/stellar-client", "stellar-client.js", JS);
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong tag: {etag}"
    );
    assert_eq!(
        served(port, "/stellar-client.js", "stellar-client.js", JS),
        etag
    );
    for tags in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"old\", {etag}"),
    ] {
        let (status, headers, body) = get(
            port,
            "/stellar-client",
            &format!("If-None-Match: {tags}\r\n"),
        );
        assert_eq!(status, 304, "If-None-Match: {tags}");
        assert_eq!(body, "");
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    }
    let head = http(
        port,
        "HEAD /stellar-client HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    let length = source("stellar-client.js").len();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {length}\r\n")),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "HEAD gets no body: {head}");
    let (status, _, body) = get(port, "/stellar-client", "If-None-Match: \"old\"\r\n");
    assert_eq!(status, 200, "a stale tag gets the file");
    assert_eq!(body, source("stellar-client.js"));
}

#[test]
fn module_entry_and_type_declarations_are_served_beside_the_client() {
    let s = TestServer::with(config(1, Driver::Auto));
    let port = s.handle.port();
    let types = "text/plain; charset=utf-8";
    let etag = served(port, "/stellar-client.d.ts", "stellar-client.d.ts", types);
    let revalidation = format!("If-None-Match: {etag}\r\n");
    let (status, _, _) = get(port, "/stellar-client.d.ts", &revalidation);
    assert_eq!(status, 304);
    let module = served(port, "/stellar-client.mjs", "stellar-client.mjs", JS);
    assert_ne!(module, etag, "each file has its own tag");
}

#[test]
fn demo_page_is_served_only_when_demo_is_on() {
    let off = TestServer::with(config(1, Driver::Auto));
    let (status, _, _) = get(off.handle.port(), "/demo", "");
    assert_eq!(status, 404);
    let on = TestServer::with(Config {
        demo: true,
        ..config(1, Driver::Auto)
    });
    served(
        on.handle.port(),
        "/demo",
        "demo.html",
        "text/html; charset=utf-8",
    );
    let (_, _, body) = get(on.handle.port(), "/demo", "");
    assert!(
        body.contains("/stellar-client.js"),
        "the page loads the client"
    );
}
