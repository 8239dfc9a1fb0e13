//! Plain HTTP on the WebSocket port (SPEC §6): health, stats, metrics, static files, the
//! embedded client and demo page (`assets`) and the HTTP fallback for `on_ack` handlers.
//! One request per connection, answered with `Connection: close`.

use std::rc::Rc;
use std::sync::Arc;

use crate::tls::Socket;
use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use serde_json::{Value, json};
use stellar_protocol::ws::handshake::Request;
use stellar_protocol::{ErrorCode, EventName};

use crate::admission;
use crate::assets;
use crate::config::Config;
use crate::ctx::Ctx;
use crate::files;
use crate::origin::{self, Verdict};
use crate::worker::Worker;

/// A response head for a body of `len` bytes.
fn head(status: u16, reason: &str, content_type: &str, len: u64) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

/// A response head and body.
fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(128 + body.len());
    out.extend_from_slice(head(status, reason, content_type, body.len() as u64).as_bytes());
    out.extend_from_slice(body);
    out.freeze()
}

fn json_response(status: u16, reason: &str, body: &Value) -> Bytes {
    response(
        status,
        reason,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// A response with only a status and a JSON error body.
pub fn status_only(status: u16, reason: &str) -> Bytes {
    json_response(status, reason, &json!({ "error": reason }))
}

/// 401 with the reason, before any upgrade.
pub fn unauthorized(reason: &str) -> Bytes {
    json_response(
        401,
        "Unauthorized",
        &json!({"error": {"code": ErrorCode::Unauthorized.as_str(), "message": reason}}),
    )
}

/// Answers one HTTP request. `body` holds whatever followed the head in the first reads.
pub async fn serve(
    worker: &Rc<Worker>,
    mut stream: Socket,
    remote: std::net::IpAddr,
    request: Request,
    mut body: BytesMut,
) {
    let config = worker.config();
    let listed = match origin::for_http(&config.allowed_origins, request.header("origin")) {
        Verdict::Refused => {
            let error = json!({"error": {"code": ErrorCode::Forbidden.as_str(), "message": "origin not allowed"}});
            let _ = stream
                .write_all(json_response(403, "Forbidden", &error))
                .await;
            return;
        }
        Verdict::Listed(o) => Some(o),
        Verdict::Served => None,
    };
    if request.method == "OPTIONS" {
        let _ = stream.write_all(options(listed)).await;
        return;
    }
    let cors = listed.map(origin::cors_headers);
    let answer = |bytes: Bytes| origin::with_headers(bytes, cors.as_deref());
    if let Some(len) = request.content_length() {
        if len > config.max_payload {
            let _ = stream
                .write_all(answer(status_only(413, "Payload Too Large")))
                .await;
            return;
        }
        while body.len() < len {
            body.reserve(len - body.len());
            if !matches!(crate::session::read_append(&mut stream, &mut body).await, Ok(n) if n > 0)
            {
                return;
            }
        }
        body.truncate(len);
    }
    if request.method == "GET"
        && let Some(path) = request.path.strip_prefix("/public/")
    {
        return serve_public(&mut stream, config, path, cors.as_deref()).await;
    }
    if matches!(request.method.as_str(), "GET" | "HEAD")
        && let Some(asset) = assets::find(&request.path, config.demo)
    {
        let response = asset.response(request.header("if-none-match"), request.method == "GET");
        let _ = stream.write_all(answer(response)).await;
        return;
    }
    let response = route(worker, remote, &request, &body);
    let _ = stream.write_all(answer(response)).await;
}

/// `OPTIONS`: a CORS preflight from a listed origin gets its headers; any other request
/// gets the methods only, and a browser then refuses the cross-origin call.
fn options(listed: Option<&str>) -> Bytes {
    listed.map_or_else(
        || {
            Bytes::from_static(
                b"HTTP/1.1 204 No Content\r\nAllow: GET, POST, HEAD, OPTIONS\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        },
        origin::preflight,
    )
}

/// `GET /public/<path>`: 404 or 413, or the head with the file's length and then its
/// body, streamed in chunks read off the loop.
async fn serve_public(stream: &mut Socket, config: Arc<Config>, path: &str, cors: Option<&str>) {
    match files::open(config, path).await {
        Ok(file) => {
            let head = head(200, "OK", file.mime, file.len);
            let head = origin::with_headers(Bytes::from(head.into_bytes()), cors);
            if stream.write_all(head).await.0.is_ok() {
                let _ = file.send_body(stream).await;
            }
        }
        Err(e) => {
            let (status, reason) = e.status();
            let answer = origin::with_headers(status_only(status, reason), cors);
            let _ = stream.write_all(answer).await;
        }
    }
}

fn route(worker: &Rc<Worker>, remote: std::net::IpAddr, request: &Request, body: &[u8]) -> Bytes {
    let handle = worker.handle();
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") if handle.is_shutting_down() => json_response(
            503,
            "Service Unavailable",
            &json!({"status": "shutting_down"}),
        ),
        ("GET", "/health") => json_response(200, "OK", &json!({"status": "ok"})),
        ("GET", "/stats") => {
            let stats = serde_json::to_value(handle.stats()).unwrap_or(Value::Null);
            json_response(200, "OK", &stats)
        }
        ("GET", "/metrics") => response(
            200,
            "OK",
            "text/plain; version=0.0.4",
            handle.stats().to_prometheus().as_bytes(),
        ),
        ("GET", "/api/ws/token") => issue_token(worker, request),
        (method @ ("GET" | "POST"), path) if path.starts_with("/api/") => action(
            worker,
            remote,
            method,
            &path["/api/".len()..],
            request,
            body,
        ),
        (_, "/" | "/ws") => response(
            426,
            "Upgrade Required",
            "text/plain",
            b"WebSocket endpoint: send an Upgrade request",
        ),
        _ => status_only(404, "Not Found"),
    }
}

/// `POST /api/<action>` (JSON body) or `GET /api/<action>?k=v` (each value a string,
/// percent-decoded; the last of a repeated key wins): calls the `on_ack` handler of that
/// name, under the same rate limits as WebSocket clients (keyed by the caller's address).
fn action(
    worker: &Rc<Worker>,
    remote: std::net::IpAddr,
    method: &str,
    name: &str,
    request: &Request,
    body: &[u8],
) -> Bytes {
    // The name as a client may have escaped it (`chat%3Asend`); one that is not UTF-8
    // once decoded is kept as sent, and fails the name rules below.
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .unwrap_or(std::borrow::Cow::Borrowed(name));
    let name = &*name;
    let event = match EventName::new(name) {
        Ok(event) => event,
        Err(e) => {
            let error = json!({"error": {"code": ErrorCode::InvalidEvent.as_str(), "message": e.to_string()}});
            return json_response(400, "Bad Request", &error);
        }
    };
    if !worker.allow_http(remote, name) {
        worker.stats.rate_limited.add(1);
        let error = json!({"error": {"code": ErrorCode::RateLimited.as_str(), "message": format!("rate limit exceeded for `{name}`")}});
        return json_response(429, "Too Many Requests", &error);
    }
    if admission::is_auth_on(worker) {
        match admission::authenticate(worker, request) {
            Ok(Some(_)) => {}
            Ok(None) => return unauthorized("authentication required"),
            Err(e) => return unauthorized(&e.to_string()),
        }
    }
    let data = if method == "POST" {
        if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return json_response(
                        400,
                        "Bad Request",
                        &json!({"error": {"code": ErrorCode::BadJson.as_str(), "message": e.to_string()}}),
                    );
                }
            }
        }
    } else {
        Value::Object(
            request
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    };
    let Some(handler) = worker.handlers().acks.get(name) else {
        let error = json!({"error": {"code": ErrorCode::UnknownAction.as_str(), "message": format!("no handler named `{name}`")}});
        return json_response(404, "Not Found", &error);
    };
    let ctx = Ctx::new(worker, None, &event, data);
    match handler.answer(&ctx) {
        Ok(result) => response(
            200,
            "OK",
            "application/json",
            format!(r#"{{"data":{result}}}"#).as_bytes(),
        ),
        Err(e) => json_response(
            422,
            "Unprocessable Entity",
            &json!({"error": {"code": e.code, "message": e.message}}),
        ),
    }
}

/// `GET /api/ws/token`: a 60-second token for a request the `auth` hook accepts
/// (needs both the hook and `jwt_secret`).
fn issue_token(worker: &Rc<Worker>, request: &Request) -> Bytes {
    let secret = worker.config().jwt_secret.clone();
    let (Some(hook), Some(secret)) = (&worker.handlers().auth, secret) else {
        return status_only(404, "Not Found");
    };
    match hook(request) {
        Ok(user) => match crate::auth::issue(&secret, &user, TOKEN_TTL_SECS) {
            Ok(token) => json_response(
                200,
                "OK",
                &json!({"token": token, "expiresIn": TOKEN_TTL_SECS}),
            ),
            Err(e) => json_response(
                500,
                "Internal Server Error",
                &json!({"error": e.to_string()}),
            ),
        },
        Err(reason) => unauthorized(&reason),
    }
}

/// Lifetime of tokens from `GET /api/ws/token`: long enough to open a WebSocket.
const TOKEN_TTL_SECS: u64 = 60;
