//! One client connection: its identity, its bounded write queue and its writer task.
//!
//! A connection lives on one worker for its whole life. Everything that sends to it
//! pushes finished frames into its [`WriteQueue`] (`write_queue.rs`: what is copied,
//! what stays shared, in what order it leaves); the writer task takes a batch of
//! everything queued and hands it to the kernel in one write per loop turn. The queue
//! is bounded by `max_backpressure`: a frame is accepted while what is queued or being
//! written is under it, so one message of any legal size goes out, and past it the
//! slow-consumer policy closes or drops, so one slow reader never holds more than
//! `max_backpressure` plus one frame, nor slows the room (SPEC §3.3).

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::Socket;
use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncWriteRent, OwnedWriteHalf};
use stellar_protocol::event::reserved;
use stellar_protocol::tcp::FrameType;
use stellar_protocol::ws::frame::{encode_server, encode_server_with};
use stellar_protocol::ws::{CloseCode, CloseFrame, OpCode};
use stellar_protocol::{ErrorCode, EventName, envelope, tcp};

use crate::auth::AuthUser;
use crate::compression;
use crate::config::SlowConsumerPolicy;
use crate::mesh::ClientId;
use crate::outbound::{Outbound, Proto, Wire};
use crate::rate_limit::Buckets;
use crate::stats::WorkerStats;
use crate::write_queue::{Batch, Next, WriteQueue};

/// What every connection of a worker shares, held once per thread instead of once per
/// connection (every connection of a worker lives on its thread). The worker sets it
/// at start and on each configuration change; on other threads (tests) it holds the
/// configuration's defaults and no stats.
struct PerWorker {
    /// `close_timeout`: how long a closing connection may take to get its close out
    /// (behind a write in flight, for a slow consumer) and finish the close handshake
    /// before its socket is shut down under it.
    close_grace: Cell<Duration>,
    /// `max_backpressure` and `slow_consumer` (SPEC §3.3).
    max_backpressure: Cell<usize>,
    policy: Cell<SlowConsumerPolicy>,
    /// Where writers count the bytes and writes they make.
    stats: RefCell<Option<Arc<WorkerStats>>>,
}

std::thread_local! {
    static PER_WORKER: PerWorker = {
        let defaults = crate::config::Config::default();
        PerWorker {
            close_grace: Cell::new(defaults.close_timeout),
            max_backpressure: Cell::new(defaults.max_backpressure),
            policy: Cell::new(defaults.slow_consumer),
            stats: RefCell::new(None),
        }
    };
}

/// Applies `config` to every connection of this thread's worker.
pub fn configure(config: &crate::config::Config) {
    PER_WORKER.with(|s| {
        s.close_grace.set(config.close_timeout);
        s.max_backpressure.set(config.max_backpressure);
        s.policy.set(config.slow_consumer);
    });
}

/// Makes `stats` where this thread's writers count.
pub fn count_into(stats: Arc<WorkerStats>) {
    PER_WORKER.with(|s| *s.stats.borrow_mut() = Some(stats));
}

/// `at` in whole milliseconds since this process first asked.
fn process_clock(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

/// Outcome of queueing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// The connection is closing or gone.
    Closed,
    /// Over `max_backpressure` with the `drop` policy: this frame was dropped.
    Dropped,
    /// Over `max_backpressure` with the `close` policy: the connection is being closed.
    SlowConsumer,
}

/// Information about a client, as handlers and middleware see it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: String,
    pub protocol: &'static str,
    pub remote_address: SocketAddr,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub user_id: Option<String>,
}

/// A client connection owned by one worker.
pub struct Conn {
    pub id: ClientId,
    pub proto: Proto,
    /// The peer's address, kept as its parts: a `SocketAddr` is 32 bytes (an IPv6
    /// one's flow info and scope), these 19.
    remote_ip: IpAddr,
    remote_port: u16,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// When the last bytes were read from the client, in milliseconds of
    /// [`process_clock`] (8 bytes where an `Instant` takes 16).
    last_seen: Cell<u64>,
    queue: RefCell<WriteQueue>,
    fd: RawFd,
    /// Socket halves still held (by the reader, and by the writer task or parked
    /// here); the fd is open while this is above zero.
    open_halves: Cell<u8>,
    /// The write half while no writer task runs. A writer task is spawned when frames
    /// are queued and parks the half here again once the queue is empty, so an idle
    /// connection costs no task.
    socket: Cell<Option<OwnedWriteHalf<Socket>>>,
    /// Whether this client must authenticate before anything but `auth` and `ping`.
    pub(crate) auth_required: bool,
    /// The window (bits) frames to this client are compressed with; 0 when it did not
    /// agree on permessage-deflate (`compression.rs`). Set once, right after the upgrade.
    deflate_bits: Cell<u8>,
    /// The user and the rate-limit buckets, made when the first of them is needed, so
    /// a connection with neither carries only a pointer.
    extra: RefCell<Option<Box<Extra>>>,
}

/// What only some connections have.
#[derive(Default)]
struct Extra {
    /// The authenticated user, once known.
    user: Option<Box<AuthUser>>,
    /// Rate-limit buckets, touched only by the owning worker; made at the first
    /// message under a limit.
    buckets: Option<Box<Buckets>>,
}

impl Conn {
    pub fn new(id: ClientId, proto: Proto, remote: SocketAddr, fd: RawFd) -> Self {
        let connected_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            id,
            proto,
            remote_ip: remote.ip(),
            remote_port: remote.port(),
            connected_at,
            last_seen: Cell::new(process_clock(Instant::now())),
            queue: RefCell::default(),
            fd,
            open_halves: Cell::new(2),
            socket: Cell::new(None),
            auth_required: false,
            deflate_bits: Cell::new(0),
            extra: RefCell::new(None),
        }
    }

    /// Notes that the client sent bytes at `now`.
    pub fn seen(&self, now: Instant) {
        self.last_seen.set(process_clock(now));
    }

    /// How long before `now` the client last sent bytes (to the millisecond).
    pub fn silent_for(&self, now: Instant) -> Duration {
        Duration::from_millis(process_clock(now).saturating_sub(self.last_seen.get()))
    }

    /// Requires authentication, with `user` already known from the upgrade or not.
    pub fn with_auth(mut self, required: bool, user: Option<AuthUser>) -> Self {
        self.auth_required = required;
        if let Some(user) = user {
            self.extra.get_mut().get_or_insert_default().user = Some(Box::new(user));
        }
        self
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<Ref<'_, AuthUser>> {
        Ref::filter_map(self.extra.borrow(), |e| e.as_ref()?.user.as_deref()).ok()
    }

    /// Records the user this client authenticated as.
    pub fn set_user(&self, user: AuthUser) {
        self.extra.borrow_mut().get_or_insert_default().user = Some(Box::new(user));
    }

    /// This client's rate-limit buckets, made at the first call.
    pub fn buckets(&self) -> RefMut<'_, Buckets> {
        RefMut::map(self.extra.borrow_mut(), |e| {
            &mut **e.get_or_insert_default().buckets.get_or_insert_default()
        })
    }

    /// Sends this client frames compressed with a `window_bits` window
    /// (permessage-deflate was agreed).
    pub fn set_deflate(&self, window_bits: u8) {
        self.deflate_bits.set(window_bits);
    }

    /// The bytes this connection takes from a shared message: the compressed broadcast
    /// frame when its window allows it, else the plain one (always allowed).
    pub fn wire(&self) -> Wire {
        match self.proto {
            Proto::Ws if self.deflate_bits.get() == compression::BROADCAST_WINDOW_BITS => {
                Wire::WsDeflate
            }
            Proto::Ws => Wire::Ws,
            Proto::Tcp => Wire::Tcp,
        }
    }

    /// A WebSocket data frame of `payload` for this connection: compressed when it
    /// agreed on permessage-deflate (and the payload is over the threshold).
    pub fn ws_frame(&self, opcode: OpCode, payload: &[u8]) -> Bytes {
        match self.deflate_bits.get() {
            0 => encode_server(opcode, payload),
            bits => compression::frame(bits, opcode, payload),
        }
    }

    /// A text frame for this connection whose `len`-byte payload `write` appends: built
    /// in the frame's own buffer, behind its header, unless it is to be compressed.
    fn ws_text_with(&self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        match self.deflate_bits.get() {
            0 => encode_server_with(OpCode::Text, len, write),
            bits => {
                let mut payload = BytesMut::with_capacity(len);
                write(&mut payload);
                compression::frame(bits, OpCode::Text, &payload)
            }
        }
    }

    /// Whether the client may do more than authenticate.
    pub fn is_authenticated(&self) -> bool {
        !self.auth_required || self.user().is_some()
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_ip, self.remote_port)
    }

    /// The authenticated user's id, if any.
    pub fn user_id(&self) -> Option<String> {
        self.user().map(|u| u.id.clone())
    }

    /// The client as hooks and handlers see it, with its current user id.
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            id: self.id.to_string(),
            protocol: self.proto.as_str(),
            remote_address: self.remote(),
            connected_at: self.connected_at,
            user_id: self.user_id(),
        }
    }

    /// Hands the write half over; frames queued from now on are written.
    pub fn attach_writer(self: &Rc<Self>, socket: OwnedWriteHalf<Socket>) {
        self.socket.set(Some(socket));
        self.start_writer();
    }

    /// Spawns the writer task if frames wait and none runs.
    fn start_writer(self: &Rc<Self>) {
        if self.queue.borrow().is_empty() {
            return;
        }
        if let Some(socket) = self.socket.take() {
            monoio::spawn(write_loop(Rc::clone(self), socket));
        }
    }

    /// Queues the upgrade's HTTP response ahead of any frame, before the writer is
    /// attached, so it goes out in the same write as the frames queued behind it (the
    /// welcome). It is not a message and is not counted as one.
    pub fn queue_handshake_response(&self, head: Bytes) {
        self.queue.borrow_mut().set_head(head);
    }

    /// Queues one frame, applying the slow-consumer policy.
    pub fn send(self: &Rc<Self>, frame: Bytes, stats: &WorkerStats) -> Queued {
        self.send_shared(&frame, stats)
    }

    /// [`Conn::send`] for a frame other connections are sent too.
    fn send_shared(self: &Rc<Self>, frame: &Bytes, stats: &WorkerStats) -> Queued {
        let mut q = self.queue.borrow_mut();
        if q.is_closing() || q.is_finished() {
            return Queued::Closed;
        }
        let (limit, policy) = PER_WORKER.with(|s| (s.max_backpressure.get(), s.policy.get()));
        if q.backlog() >= limit {
            drop(q);
            return match policy {
                SlowConsumerPolicy::Drop => {
                    stats.slow_consumer_drops.add(1);
                    Queued::Dropped
                }
                SlowConsumerPolicy::Close => {
                    stats.slow_consumer_closes.add(1);
                    self.close_now(CloseCode::POLICY_VIOLATION, "slow consumer");
                    Queued::SlowConsumer
                }
            };
        }
        q.push(frame);
        drop(q);
        stats.messages_sent.add(1);
        self.start_writer();
        Queued::Yes
    }

    /// Queues a shared message in this connection's protocol.
    pub fn send_outbound(self: &Rc<Self>, msg: &Outbound, stats: &WorkerStats) -> Queued {
        self.send_shared(msg.frame(self.wire()), stats)
    }

    /// Sends `{"event":event,"data":data}` (raw JSON data) to this client only.
    pub fn emit_raw(
        self: &Rc<Self>,
        event: &EventName<'_>,
        data: &str,
        stats: &WorkerStats,
    ) -> Queued {
        self.send(self.event_frame(event, data), stats)
    }

    /// The frame of a JSON event for this connection's protocol.
    pub fn event_frame(&self, event: &EventName<'_>, data: &str) -> Bytes {
        match self.proto {
            Proto::Ws => self.ws_text_with(envelope::event_len(event, data, None), |buf| {
                envelope::encode_event_into(buf, event, data, None);
            }),
            Proto::Tcp => tcp::frame::encode(FrameType::Json, event, data.as_bytes()),
        }
    }

    /// Sends an ack reply: the handler's result or its error.
    pub fn reply_ack(
        self: &Rc<Self>,
        name: &EventName<'_>,
        correlation_id: &str,
        result: Result<&str, (&str, &str)>,
        stats: &WorkerStats,
    ) -> Queued {
        self.send(self.ack_frame(name, correlation_id, result), stats)
    }

    /// The frame of an ack reply (WebSocket envelope or TCP ACK_RES).
    pub fn ack_frame(
        &self,
        name: &EventName<'_>,
        correlation_id: &str,
        result: Result<&str, (&str, &str)>,
    ) -> Bytes {
        match (self.proto, result) {
            (Proto::Ws, Ok(data)) => self
                .ws_text_with(envelope::ack_ok_len(name, correlation_id, data), |buf| {
                    envelope::encode_ack_ok_into(buf, name, correlation_id, data)
                }),
            (Proto::Ws, Err((code, message))) => self.ws_frame(
                OpCode::Text,
                &envelope::encode_ack_err(name, correlation_id, code, message),
            ),
            (Proto::Tcp, Ok(data)) => tcp::frame::encode_with(
                FrameType::AckRes,
                name,
                tcp::json::ack_payload_len(correlation_id, data),
                |body| tcp::json::write_ack_payload(body, correlation_id, data),
            ),
            (Proto::Tcp, Err((code, message))) => {
                let mut body = BytesMut::new();
                tcp::json::write_ack_err(&mut body, correlation_id, code, message);
                tcp::frame::encode(FrameType::AckRes, name, &body)
            }
        }
    }

    /// Sends an `error` event (SPEC §3.1): the request is refused, the connection stays.
    pub fn send_error(
        self: &Rc<Self>,
        code: ErrorCode,
        message: &str,
        stats: &WorkerStats,
    ) -> Queued {
        self.send(error_frame(self.proto, code, message), stats)
    }

    /// Queues a close (WebSocket close frame; for TCP an ERROR frame unless the close is
    /// normal, then DISCONNECT) behind what is already queued, and stops accepting more.
    pub fn close(self: &Rc<Self>, code: CloseCode, reason: &str) {
        let mut q = self.queue.borrow_mut();
        if q.is_closing() {
            return;
        }
        let mut push = |frame: Bytes| q.push(&frame);
        match self.proto {
            Proto::Ws => push(encode_server(
                OpCode::Close,
                &CloseFrame::payload(code, reason),
            )),
            Proto::Tcp => {
                if code != CloseCode::NORMAL && code != CloseCode::GOING_AWAY {
                    push(error_frame(Proto::Tcp, close_error_code(code), reason));
                }
                push(tcp::frame::encode_control(FrameType::Disconnect));
            }
        }
        q.close();
        drop(q);
        self.start_writer();
        let conn = Rc::clone(self);
        monoio::spawn(async move {
            monoio::time::sleep(PER_WORKER.with(|s| s.close_grace.get())).await;
            conn.kill();
        });
    }

    /// Closes ahead of whatever is queued: the queue is discarded (a slow consumer will
    /// never read it) and only the close is sent.
    pub fn close_now(self: &Rc<Self>, code: CloseCode, reason: &str) {
        {
            self.queue.borrow_mut().clear();
        }
        self.close(code, reason);
    }

    /// Shuts the socket down now, if it is still open: unblocks a reader waiting on a
    /// silent peer and a writer stuck on a full socket.
    pub fn kill(&self) {
        if self.open_halves.get() > 0 {
            // The fd stays open while either task holds its half (checked above), so
            // this cannot hit a recycled descriptor. Errors (already shut) are moot.
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
        }
    }

    /// Called by the reader and the writer as each drops its half of the socket.
    pub fn release_half(&self) {
        self.open_halves
            .set(self.open_halves.get().saturating_sub(1));
    }

    /// The reader is gone: a running writer flushes what is queued and ends; a parked
    /// write half is dropped now.
    pub fn finish(&self) {
        self.queue.borrow_mut().finish();
        if self.socket.take().is_some() {
            self.release_half();
        }
    }
}

/// The writer task: one write per batch of queued frames; parks the socket back in
/// the connection when the queue is empty, or half-closes it once the queue is closed
/// and drained.
async fn write_loop(conn: Rc<Conn>, mut socket: OwnedWriteHalf<Socket>) {
    let stats = PER_WORKER.with(|s| s.stats.borrow().clone());
    let mut batch = Batch::default();
    loop {
        let next = conn.queue.borrow_mut().take_batch(&mut batch);
        match next {
            Next::Write => {}
            Next::Park => {
                conn.socket.set(Some(socket));
                return;
            }
            Next::End => break,
        }
        let result = batch.write_to(&mut socket).await;
        conn.queue.borrow_mut().written();
        let Ok(len) = result else {
            conn.kill();
            break;
        };
        if let Some(stats) = &stats {
            stats.bytes_out.add(len as u64);
            stats.socket_writes.add(1);
        }
    }
    let _ = socket.shutdown().await;
    conn.release_half();
}

/// An `error` event (WebSocket) or ERROR frame (TCP) with `{"code","message"}`.
pub fn error_frame(proto: Proto, code: ErrorCode, message: &str) -> Bytes {
    match proto {
        Proto::Ws => encode_server(OpCode::Text, &envelope::encode_error(code, message)),
        Proto::Tcp => {
            let mut data = BytesMut::with_capacity(32 + message.len());
            envelope::write_error_object(&mut data, code.as_str(), message);
            tcp::frame::encode(FrameType::Error, &reserved::ERROR, &data)
        }
    }
}

/// The ERROR-frame code a TCP client gets for what would be a WebSocket close code.
fn close_error_code(code: CloseCode) -> ErrorCode {
    match code {
        CloseCode::MESSAGE_TOO_BIG => ErrorCode::PayloadTooLarge,
        CloseCode::POLICY_VIOLATION => ErrorCode::PolicyViolation,
        CloseCode::PROTOCOL_ERROR => ErrorCode::ProtocolError,
        _ => ErrorCode::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ClientId;
    use monoio::io::Splitable;

    /// A writer task is made for each burst of frames to a connection, and after a stall
    /// of the worker for every member of every busy room at once, so its size is memory
    /// the allocator lays out per burst (it was 896 bytes with monoio's `write_all` and
    /// the vectored write inline, and 480 once `Batch::write_to` borrowed the batch,
    /// boxed the vectored write and wrote one buffer by its own loop).
    #[test]
    fn writer_task_is_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("address");
            let stream = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let (_reader, writer) = Socket::Plain(stream).into_split();
            let id = ClientId {
                node: 0,
                worker: 0,
                seq: 1,
            };
            let conn = Rc::new(Conn::new(id, Proto::Ws, addr, -1));
            let task = write_loop(conn, writer);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 512, "the writer task's future is {size} bytes");
        });
    }
}
