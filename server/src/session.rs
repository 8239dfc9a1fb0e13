//! One connection's life on its worker: the WebSocket handshake (or the TCP greeting),
//! admission, the read loop that decodes and routes, and the cleanup when the peer goes.
//!
//! Writing is the connection's own writer task (`connection`); routing is `router`'s.
//! The session only moves bytes in and hands decoded messages on.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use stellar_protocol::HandshakeError;
use stellar_protocol::event::reserved;
use stellar_protocol::tcp::{FrameType, TcpDecoder};
use stellar_protocol::ws::frame::encode_server;
use stellar_protocol::ws::handshake::{HeadLimits, Request, reject};
use stellar_protocol::ws::{
    CloseCode, DecoderConfig, Decompressor, DeflateParams, MessageDecoder, OpCode,
};

use crate::admission;
use crate::compression;
use crate::connection::{Conn, error_frame};
use crate::http;
use crate::idle;
use crate::origin::{self, Verdict};
use crate::outbound::Proto;
use crate::router::{self, Decoder, Flow};
use crate::stats::WorkerStats;
use crate::tls::{self, Socket};
use crate::worker::Worker;

/// What is asked of the kernel once a connection is busy (its last read filled the
/// buffer) or has part of a frame buffered.
const READ_CHUNK: usize = 16 * 1024;
/// The largest read, for a connection that keeps filling its buffer (a publisher at
/// full speed): each full read doubles the next, from [`READ_CHUNK`] up to this. The
/// messages of one read are routed in one loop turn and their relays leave in one write
/// to each member, so at capacity the read size is the deliveries per packet: with
/// 16 KiB the broadcast at capacity sent 7.0 packets per 1 000 deliveries where the
/// sink, whose buffers grow, sent 2.6 (`results/bench/broadcast-capacity-read64-ab.md`).
const MAX_READ: usize = 64 * 1024;
/// The smallest read buffer, that of a connection whose last read was small. It holds a
/// client's usual batch (several small messages written together) whole, so their
/// replies and relays go out in one write: at 128 B a batch of four 100-byte acks was
/// read and answered one request first, the rest after, and every round trip cost twice
/// the packets (`results/bench/read-ab-tcp.md`: 1.57x the server CPU). With io_uring the
/// buffer is lent to the kernel while the read is pending; a quiet connection holds none.
const FIRST_READ: usize = 2048;

/// The buffer for a connection's next read after one left `read` bytes in a `len`-byte
/// buffer: when it filled the buffer (more is likely waiting), twice `len`, from
/// [`READ_CHUNK`] to [`MAX_READ`]; else twice what is there, to a power of two, but not
/// under half of `len`, from [`FIRST_READ`] up.
///
/// A client that writes in bursts (a publisher with many messages in flight) then has
/// each burst read whole, so its relays leave in one write to each member, not two.
/// With a fixed 2 KiB, a 3 KiB burst was read 2 KiB in one loop turn and the rest in
/// the next, and the closed-loop broadcast sent 39 packets per 1 000 deliveries instead
/// of 27 (`results/bench/broadcast-window-read-ab.md`). Halving at most once per read
/// keeps the size through the small read that takes such a split burst's tail; a client
/// whose reads stay small is back at `FIRST_READ` after three.
fn next_read(len: usize, read: usize) -> usize {
    if read >= len {
        return len.saturating_mul(2).clamp(READ_CHUNK, MAX_READ);
    }
    read.saturating_mul(2)
        .next_power_of_two()
        .max(len / 2)
        .clamp(FIRST_READ, MAX_READ)
}

/// A connection whose last two reads were further apart than this is quiet: it waits for
/// its next bytes on readiness alone, with no buffer lent to the kernel, and is given
/// one once they are there. That is what keeps idle connections small, and it costs a
/// client sending under one message a second nothing that matters.
///
/// It is not shorter because a quiet connection's bytes are seen later in a loop turn
/// than a busy one's: the worker's epoll watcher wakes it behind every connection whose
/// read completed in that turn, newer messages included. At 100 ms, publishers at ten
/// messages a second were quiet half the time, and after a 40 ms stall of the worker
/// at 90 000 deliveries/s their messages waited for the whole backlog: the slowest
/// deliveries took 70-115 ms against the trivial relay's 47
/// (`results/bench/broadcast-open-10k-90k-stalls-ab.md`).
const QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's first reads after the upgrade leave it quiet however close together
/// they are: most clients say what they have to say at once (a join, a subscription)
/// and then wait, and a read lent to the ring is only given back with the next bytes,
/// which for a spectator is its answer to the first heartbeat ping, 30 s or more later.
/// A client that keeps sending is busy from its next read on.
const OPENING_READS: u8 = 2;

/// The reading side of a session, held in the session's task.
struct ReadSide {
    reader: OwnedReadHalf<Socket>,
    buf: BytesMut,
    decoder: Decoder,
    /// Where the socket waits while quiet (`idle`).
    watch: idle::Watch,
    /// The size of the next read's buffer when nothing is buffered ([`next_read`]), in
    /// KiB.
    next_kib: u8,
    /// The last two reads were more than [`QUIET`] apart (or there was none yet, or it
    /// was one of the [`OPENING_READS`]), and the last did not fill its buffer.
    quiet: bool,
    /// Reads so far, counted up to [`OPENING_READS`].
    reads: u8,
}

impl ReadSide {
    /// The buffer for the next read when nothing is buffered.
    fn next_len(&self) -> usize {
        usize::from(self.next_kib) * 1024
    }
}

/// Reads once into the spare capacity of `buf`, after the bytes it holds. (monoio's
/// `read` on a `BytesMut` writes from the start of the buffer, hence the slice.)
pub async fn read_append(
    reader: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    let start = buf.len();
    let (result, slice) = reader.read(std::mem::take(buf).slice_mut(start..)).await;
    *buf = slice.into_inner();
    result
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads until a whole request head is buffered: the head and the bytes after it, or
/// the handshake error (`None` when the peer went away first, or sent a TLS hello to a
/// plaintext port: counted and closed, no HTTP answer it could not read).
async fn read_head(
    stream: &mut Socket,
    limits: HeadLimits,
    stats: &WorkerStats,
) -> Result<(Request, BytesMut), Option<HandshakeError>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.first() == Some(&TLS_HANDSHAKE_RECORD) && matches!(stream, Socket::Plain(_)) {
            stats.tls_on_plain_port.add(1);
            return Err(None);
        }
        if let Some(request) = Request::parse(&buf, &limits)? {
            return Ok((request, buf));
        }
        buf.reserve(1024);
        if !matches!(read_append(stream, &mut buf).await, Ok(n) if n > 0) {
            return Err(None);
        }
    }
}

/// A connection on the WebSocket/HTTP port: read the request head within
/// `connect_timeout`, then upgrade or answer as HTTP.
pub async fn serve_http(worker: Rc<Worker>, stream: TcpStream, remote: SocketAddr) {
    let Some(stream) = secure(&worker, Proto::Ws, stream).await else {
        return;
    };
    // The session runs as a task of its own and this one ends: a long-lived connection
    // then keeps only the session's state, not the handshake's.
    if let Some((stream, conn, leftover, deflate)) = handshake(&worker, stream, remote).await {
        start(worker, stream, conn, leftover, deflate);
    }
}

/// An upgraded connection: its socket, the admitted client, any bytes after the head,
/// and the permessage-deflate parameters when the client agreed on them.
type Upgraded = (Socket, Rc<Conn>, BytesMut, Option<DeflateParams>);

/// Reads the request head; answers plain HTTP, refusals and a full server itself; on a
/// valid upgrade returns the admitted connection and any bytes after the head.
async fn handshake(
    worker: &Rc<Worker>,
    mut stream: Socket,
    remote: SocketAddr,
) -> Option<Upgraded> {
    let config = worker.config();
    let limits = HeadLimits {
        max_head_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
    };
    let head = monoio::time::timeout(
        config.connect_timeout,
        read_head(&mut stream, limits, &worker.stats),
    )
    .await;
    let (request, mut buf) = match head {
        Ok(Ok(pair)) => pair,
        Ok(Err(Some(e))) => {
            let _ = stream.write_all(reject(&e)).await;
            return None;
        }
        Ok(Err(None)) => return None,
        Err(_) => {
            let _ = stream
                .write_all(http::status_only(408, "Request Timeout"))
                .await;
            return None;
        }
    };
    let _ = buf.split_to(request.head_len);
    let is_ws_path = request.path == "/" || request.path == "/ws";
    if !(is_ws_path && request.is_websocket_upgrade()) {
        http::serve(worker, stream, remote.ip(), request, buf).await;
        return None;
    }
    let upgrade = match request.websocket_upgrade() {
        Ok(u) => u,
        Err(e) => {
            let _ = stream.write_all(reject(&e)).await;
            return None;
        }
    };
    if origin::for_upgrade(&config.allowed_origins, upgrade.origin.as_deref()) == Verdict::Refused {
        let _ = stream
            .write_all(reject(&HandshakeError::OriginNotAllowed))
            .await;
        return None;
    }
    let user = match admission::authenticate(worker, &request) {
        Ok(user) => user,
        Err(e) => {
            let _ = stream.write_all(http::unauthorized(&e.to_string())).await;
            return None;
        }
    };
    let conn = match admission::register(worker, Proto::Ws, remote, stream.as_raw_fd(), user) {
        Ok(conn) => conn,
        Err(refusal) => {
            // Upgrade, then close with 1008 so WebSocket clients see why.
            let _ = stream.write_all(upgrade.response()).await;
            let close = stellar_protocol::ws::CloseFrame::payload(
                CloseCode::POLICY_VIOLATION,
                refusal.reason(),
            );
            let _ = stream.write_all(encode_server(OpCode::Close, &close)).await;
            return None;
        }
    };
    let deflate = compression::negotiate(&config, &request);
    let extensions = deflate.as_ref().map(|(_, response)| response.as_str());
    // Queued, not written: the 101 and the welcome leave in one write (one packet
    // instead of two per connection). A failed write ends the session as usual.
    conn.queue_handshake_response(upgrade.response_with_extensions(extensions));
    let deflate = deflate.map(|(params, _)| params);
    if let Some(params) = &deflate {
        conn.set_deflate(compression::window_bits(params));
    }
    // The head's buffer goes unless the client already sent frames behind it.
    let leftover = if buf.is_empty() { BytesMut::new() } else { buf };
    Some((stream, conn, leftover, deflate))
}

/// A connection on the TCP-protocol port.
pub async fn serve_tcp(worker: Rc<Worker>, stream: TcpStream, remote: SocketAddr) {
    let Some(mut stream) = secure(&worker, Proto::Tcp, stream).await else {
        return;
    };
    match admission::register(&worker, Proto::Tcp, remote, stream.as_raw_fd(), None) {
        Ok(conn) => start(worker, stream, conn, BytesMut::new(), None),
        Err(refusal) => {
            let error = error_frame(Proto::Tcp, refusal.code(), refusal.reason());
            let _ = stream.write_all(error).await;
        }
    }
}

/// Starts an admitted connection: writer, welcome, hooks, then the read loop as a task
/// of its own, which cleans up when the peer goes away.
fn start(
    worker: Rc<Worker>,
    stream: Socket,
    conn: Rc<Conn>,
    leftover: BytesMut,
    deflate: Option<DeflateParams>,
) {
    let watch = idle::Watch::new(match &stream {
        Socket::Plain(s) => Some(s.as_raw_fd()),
        Socket::Tls(..) => None,
    });
    let (reader, writer) = stream.into_split();
    conn.attach_writer(writer);
    let config = worker.config();
    match conn.proto {
        Proto::Ws if config.echo => {}
        Proto::Ws if conn.is_authenticated() => router::send_welcome(&worker, &conn),
        Proto::Ws => admission::require_auth_in_time(&worker, &conn),
        Proto::Tcp => {
            if !conn.is_authenticated() {
                admission::require_auth_in_time(&worker, &conn);
            }
            let id = conn.id.text();
            let connect = stellar_protocol::tcp::frame::encode(
                FrameType::Connect,
                &reserved::CONNECT,
                id.as_bytes(),
            );
            conn.send(connect, &worker.stats);
        }
    }
    if !admission::run_hooks(&worker, &conn) {
        drop(reader);
        end(&worker, &conn);
        return;
    }
    let decoder = match conn.proto {
        Proto::Ws => Decoder::Ws(
            MessageDecoder::new(DecoderConfig {
                max_message_size: config.max_payload,
                deflate: deflate.is_some(),
                ..DecoderConfig::default()
            }),
            deflate.map(|params| Box::new(Decompressor::new(&params, config.max_payload))),
        ),
        Proto::Tcp => Decoder::Tcp(TcpDecoder::new(config.max_payload)),
    };
    let side = ReadSide {
        reader,
        buf: leftover,
        decoder,
        watch,
        next_kib: (FIRST_READ / 1024) as u8,
        quiet: true,
        reads: 0,
    };
    monoio::spawn(session(worker, conn, side));
}

/// The accepted socket, or TLS over it when TLS is on (`tls.rs`); a failed or stalled
/// TLS handshake is counted and the socket closed.
async fn secure(worker: &Rc<Worker>, proto: Proto, stream: TcpStream) -> Option<Socket> {
    let tls = worker.shared.tls.as_ref();
    let socket = tls::secure(tls, proto, stream, worker.config().connect_timeout).await;
    if socket.is_none() {
        worker.stats.tls_handshake_failures.add(1);
    }
    socket
}

fn end(worker: &Rc<Worker>, conn: &Rc<Conn>) {
    admission::unregister(worker, conn);
    conn.finish();
    conn.release_half();
}

/// The connection's task: decodes and routes until the peer goes away, then cleans up.
/// After a close, keeps reading (and discarding) until the peer closes or the grace
/// period shuts the socket, so our close frame is not lost to a reset.
///
/// An async block over the parts it owns, not an `async fn` over references to them:
/// an `async fn` keeps its arguments in its state and again as the locals they are
/// moved into (256 bytes here), and references would be kept beside what they point
/// to. This way the task holds each part once, the read state inline, and is 144 bytes
/// (a test guards it).
#[allow(
    clippy::manual_async_fn,
    reason = "as an async fn its state is 256 bytes, not 144: the arguments are kept twice"
)]
fn session(worker: Rc<Worker>, conn: Rc<Conn>, mut side: ReadSide) -> impl Future<Output = ()> {
    async move {
        let mut open = true;
        loop {
            while open {
                // The join to wait for, if any, is boxed: it is rare, and its state (the
                // barrier, the replies, the recovery) would otherwise be carried in every
                // connection's task. The match ends before the await, so the decoded
                // `Flow` is not held across it either.
                let wait = match side.decoder.route_next(&worker, &conn, &mut side.buf) {
                    None => break,
                    Some(Flow::Continue) => continue,
                    Some(Flow::Stop) => {
                        open = false;
                        continue;
                    }
                    Some(Flow::Wait(barrier, replies, recovery)) => {
                        let (worker, conn) = (Rc::clone(&worker), Rc::clone(&conn));
                        Box::pin(async move {
                            barrier.wait().await;
                            for reply in replies {
                                conn.send(reply, &worker.stats);
                            }
                            if let Some(ask) = recovery {
                                crate::recovery::start(&worker, &conn, ask);
                            }
                        })
                    }
                };
                wait.await;
            }
            if !open {
                side.buf.clear();
            }
            // A quiet connection waits with no buffer, then reads like the others: into
            // a buffer sized by its last reads (`next_read`).
            let mut woken = false;
            if side.buf.is_empty() {
                if side.quiet && open {
                    side.buf = BytesMut::new();
                    side.watch.readable().await;
                    woken = true;
                }
                side.buf = BytesMut::with_capacity(side.next_len());
            } else {
                side.buf.reserve(READ_CHUNK);
            }
            // Boxed: the read's future (the buffer lent, the request, each layer's copy
            // of the arguments) is the largest state of this task, and held inline it
            // would size every connection's task, quiet ones too, which wait on
            // readiness alone. A connection just woken from a quiet wait reads what is
            // there at once (`Watch::read_ready`).
            let ReadSide {
                reader, buf, watch, ..
            } = &mut side;
            let read = Box::pin(async move {
                if woken && let Some(read) = watch.read_ready(buf) {
                    return read;
                }
                read_append(reader, buf).await
            })
            .await;
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // The read is made into the buffer's spare capacity, so a read that
                    // filled it leaves it full, and more is likely waiting.
                    let (len, read) = (side.buf.capacity(), side.buf.len());
                    side.next_kib = (next_read(len, read) / 1024) as u8;
                    worker.stats.bytes_in.add(n as u64);
                    let now = Instant::now();
                    let opening = side.reads < OPENING_READS;
                    side.reads = (side.reads + 1).min(OPENING_READS);
                    side.quiet = read < len && (opening || conn.silent_for(now) > QUIET);
                    conn.seen(now);
                }
            }
        }
        drop(side);
        end(&worker, &conn);
    }
}
#[cfg(test)]
mod tests {
    use super::{FIRST_READ, MAX_READ, READ_CHUNK, next_read};
    use crate::connection::Conn;

    #[test]
    fn reads_grow_to_a_burst_and_shrink_back_by_halves() {
        const K: usize = 1024;
        // A read that filled its buffer: a chunk next time, then twice as much for each
        // read that fills it again, up to the most.
        assert_eq!(next_read(FIRST_READ, FIRST_READ), READ_CHUNK);
        assert_eq!(next_read(READ_CHUNK, READ_CHUNK), 2 * READ_CHUNK);
        assert_eq!(next_read(2 * READ_CHUNK, 2 * READ_CHUNK), MAX_READ);
        assert_eq!(next_read(MAX_READ, MAX_READ), MAX_READ);
        // Small reads keep the small buffer.
        assert_eq!(next_read(FIRST_READ, 100), FIRST_READ);
        // A burst's tail (the rest of a split 3 KiB) keeps room for the next burst.
        assert_eq!(next_read(READ_CHUNK, K), 8 * K);
        assert_eq!(next_read(8 * K, 3 * K), 8 * K);
        // Twice what came, to a power of two: 5 KiB wants 16.
        assert_eq!(next_read(8 * K, 5 * K), READ_CHUNK);
        // Quiet again: back to the small buffer by halves.
        let sizes: Vec<usize> = std::iter::successors(Some(READ_CHUNK), |&len| {
            (len > FIRST_READ).then(|| next_read(len, 10))
        })
        .collect();
        assert_eq!(sizes, [READ_CHUNK, 8 * K, 4 * K, FIRST_READ]);
        // A busy connection's reads shrink by halves too once they stop filling it.
        let sizes: Vec<usize> = std::iter::successors(Some(MAX_READ), |&len| {
            (len > FIRST_READ).then(|| next_read(len, 10))
        })
        .collect();
        assert_eq!(sizes, [MAX_READ, 32 * K, 16 * K, 8 * K, 4 * K, FIRST_READ]);
        // A buffer grown past the most for a large frame's rest comes back within it.
        assert_eq!(next_read(1024 * K, 1024 * K), MAX_READ);
        assert_eq!(next_read(1024 * K, 40 * K), MAX_READ);
        assert_eq!(next_read(1024 * K, 10), MAX_READ);
    }

    /// What every idle connection holds stays within the allocator's size classes it
    /// was fitted to (mimalloc: 128 bytes for `Conn` with its `Rc`'s 16, 192 for the
    /// session task with monoio's 48-byte task header and trailer): one field more
    /// and each connection costs the next class up (+32 bytes). Grow them only with
    /// the idle bench rerun (README "Idle connections").
    #[test]
    fn idle_connection_parts_fit_their_size_classes() {
        fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
            size_of::<F>()
        }
        let task = future_size(super::session);
        assert!(task + 48 <= 192, "the session future is {task} bytes");
        assert!(
            size_of::<Conn>() + 16 <= 128,
            "Conn is {} bytes",
            size_of::<Conn>()
        );
    }
}
