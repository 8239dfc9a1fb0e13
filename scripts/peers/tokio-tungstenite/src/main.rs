//! The ordinary Rust baseline Stellar is measured against: a multi-threaded tokio
//! runtime, one task per connection plus a writer task fed by an mpsc channel, and a
//! shared `RwLock` room map. A relay is serialized once and the same `Utf8Bytes` is
//! cloned into each member's channel.
//!
//! With `TLS_CERT` and `TLS_KEY` (PEM files) set, the port speaks `wss://` only:
//! tokio-rustls over rustls 0.23 with ring, Stellar's TLS stack, with rustls's default
//! server configuration (ALPN `http/1.1`, as Stellar offers), the handshake in the
//! connection's own task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::Message;

type Tx = mpsc::UnboundedSender<Message>;

#[derive(Default)]
struct State {
    rooms: RwLock<HashMap<String, HashSet<u64>>>,
    clients: RwLock<HashMap<u64, Tx>>,
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(3000);
    let tls = tls_from_env();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    eprintln!("tokio-tungstenite peer on {scheme}://127.0.0.1:{port}/");
    let state = Arc::new(State::default());
    let next = Arc::new(AtomicU64::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let id = next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::clone(&state);
        match &tls {
            None => tokio::spawn(serve(stream, id, state)),
            Some(acceptor) => {
                let accept = acceptor.accept(stream);
                tokio::spawn(async move {
                    if let Ok(stream) = accept.await {
                        serve(stream, id, state).await;
                    }
                })
            }
        };
    }
}

/// The TLS acceptor of `TLS_CERT` and `TLS_KEY`, or `None` (plaintext) when they are unset.
fn tls_from_env() -> Option<TlsAcceptor> {
    let cert = std::env::var_os("TLS_CERT")?;
    let key = std::env::var_os("TLS_KEY").expect("TLS_CERT is set: TLS_KEY must be too");
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .expect("TLS_CERT: a PEM certificate chain");
    let key = PrivateKeyDer::from_pem_file(&key).expect("TLS_KEY: a PEM private key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("TLS_CERT and TLS_KEY: a certificate and its key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(TlsAcceptor::from(Arc::new(config)))
}

async fn serve<S>(stream: S, id: u64, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    state.clients.write().await.insert(id, tx.clone());
    let welcome = json!({"event": "welcome", "data": {"id": format!("t-{id}"), "message": "Connected", "context": "api"}});
    let _ = tx.send(Message::text(welcome.to_string()));
    let mut joined: HashSet<String> = HashSet::new();
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Text(text) => on_text(&state, id, &tx, &mut joined, &text).await,
            Message::Binary(bytes) => {
                let Some(len) = bytes.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else { continue };
                let Some(room) = bytes
                    .get(4..4 + len)
                    .and_then(|h| serde_json::from_slice::<Value>(h).ok())
                    .and_then(|h| h.get("room").and_then(Value::as_str).map(str::to_owned))
                else {
                    continue;
                };
                if joined.contains(&room) {
                    relay(&state, &room, id, Message::Binary(bytes)).await;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    state.clients.write().await.remove(&id);
    let mut rooms = state.rooms.write().await;
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    drop(rooms);
    writer.abort();
}

async fn on_text(state: &State, id: u64, tx: &Tx, joined: &mut HashSet<String>, text: &str) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        let _ = tx.send(Message::text(r#"{"event":"error","data":{"code":"bad_json","message":"invalid JSON"}}"#));
        return;
    };
    let event = msg.get("event").and_then(Value::as_str).unwrap_or_default();
    let data = msg.get("data").cloned().unwrap_or(Value::Null);
    if let Some(correlation) = msg.get("_correlationId") {
        let name = msg.get("_ackName").and_then(Value::as_str).unwrap_or(event);
        let reply = if name == "echo" {
            json!({"event": name, "data": data, "_isAck": true, "_correlationId": correlation})
        } else {
            json!({"event": name, "error": {"code": "unknown_action", "message": "no handler"}, "_isAck": true, "_correlationId": correlation})
        };
        let _ = tx.send(Message::text(reply.to_string()));
        return;
    }
    let room = msg.get("room").and_then(Value::as_str);
    match (event, room) {
        ("join-room", _) => {
            let name = data.as_str().unwrap_or_default().to_owned();
            state.rooms.write().await.entry(name.clone()).or_default().insert(id);
            joined.insert(name.clone());
            let _ = tx.send(Message::text(json!({"event": "joined-room", "data": name}).to_string()));
        }
        ("leave-room", _) => {
            let name = data.as_str().unwrap_or_default().to_owned();
            if let Some(m) = state.rooms.write().await.get_mut(&name) {
                m.remove(&id);
            }
            joined.remove(&name);
            let _ = tx.send(Message::text(json!({"event": "left-room", "data": name}).to_string()));
        }
        ("ping", _) => {
            let _ = tx.send(Message::text(json!({"event": "pong", "data": data}).to_string()));
        }
        ("echo", None) => {
            let _ = tx.send(Message::text(json!({"event": "echo", "data": data}).to_string()));
        }
        (_, Some(room)) if joined.contains(room) => {
            let out = json!({"event": event, "data": data, "room": room}).to_string();
            relay(state, room, id, Message::text(out)).await;
        }
        (_, Some(room)) => {
            let err = json!({"event": "error", "data": {"code": "not_member", "message": room}});
            let _ = tx.send(Message::text(err.to_string()));
        }
        _ => {}
    }
}

/// Sends the same message to every other member of `room`.
async fn relay(state: &State, room: &str, from: u64, msg: Message) {
    let rooms = state.rooms.read().await;
    let Some(members) = rooms.get(room) else { return };
    let clients = state.clients.read().await;
    for member in members.iter().filter(|m| **m != from) {
        if let Some(tx) = clients.get(member) {
            let _ = tx.send(msg.clone());
        }
    }
}
