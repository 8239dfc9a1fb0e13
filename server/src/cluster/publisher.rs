//! Plain publishes straight from each worker's loop: the hot path of a cluster.
//!
//! A message without history (a room broadcast, `broadcast`, `to_id`, presence) needs
//! nothing back from Redis but a count, so each worker writes it itself, on its own
//! connection to Redis on its own io_uring loop: the PUBLISH commands of one loop turn go
//! out in one write, and a reader beside it counts the replies (each is one line: `:N`
//! published, `-ERR` refused). That spares every message two hops through the cluster
//! thread (a wake-up and a context switch each way) and the reply's third.
//!
//! Everything else stays with the cluster thread: history (Redis gives its order), the
//! directory, subscriptions, liveness, and the outage itself. A worker connects only while
//! the cluster thread has Redis, and while its own link is not up its messages go through
//! the cluster thread as before, so an outage is logged and counted in one place.
//!
//! Counting: a message is pending (against `redis_max_pending`) from its hand-over until
//! its reply; when the connection drops, what was written without a reply and what was
//! waiting to be written are counted as unpublished.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tokio::sync::Notify;
use tracing::debug;

use super::{Cluster, Scope, wire};
use crate::mesh::ClientId;
use crate::outbound::Outbound;

/// Longest wait between two connection attempts of a worker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a connection attempt (and its `AUTH`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

thread_local! {
    /// This worker thread's link, once [`attach`]ed.
    static LINK: RefCell<Option<Rc<Link>>> = const { RefCell::new(None) };
}

/// Where the workers reach Redis: `redis_url` when it names a TCP address. A TLS or Unix
/// socket URL has none, and its messages all go through the cluster thread.
pub(super) struct Target {
    addr: SocketAddr,
    /// `AUTH` (username, password) before anything else.
    auth: Option<(Option<String>, String)>,
}

impl Target {
    pub(super) fn from_url(url: &str) -> Option<Self> {
        let info = redis::IntoConnectionInfo::into_connection_info(url).ok()?;
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))
            .ok()?
            .next()?;
        let settings = info.redis_settings();
        let auth = settings
            .password()
            .map(|p| (settings.username().map(str::to_owned), p.to_owned()));
        Some(Self { addr, auth })
    }
}

/// Starts this worker thread's link to Redis (on its loop), if the cluster has a target.
pub fn attach(cluster: &Arc<Cluster>) {
    if cluster.target.is_none() {
        return;
    }
    let link = Rc::new(Link {
        cluster: Arc::clone(cluster),
        up: Cell::new(false),
        out: RefCell::default(),
        queued: Cell::new(0),
        in_flight: Cell::new(0),
        scratch: RefCell::default(),
        work: Notify::new(),
    });
    LINK.with(|l| *l.borrow_mut() = Some(Rc::clone(&link)));
    monoio::spawn(link.run());
}

/// Publishes a plain message on this thread's link; false when this thread has no link
/// up (a handle's thread, or a worker still connecting): the caller hands it to the
/// cluster thread.
pub(super) fn publish(scope: &Scope, msg: &Outbound, exclude: Option<ClientId>) -> bool {
    LINK.with(|link| match &*link.borrow() {
        Some(link) if link.up.get() => {
            link.push(scope, msg, exclude);
            true
        }
        _ => false,
    })
}

/// One worker's connection to Redis and what goes through it (one thread: `Cell`s).
struct Link {
    cluster: Arc<Cluster>,
    up: Cell<bool>,
    /// PUBLISH commands not yet written, and how many they are.
    out: RefCell<Vec<u8>>,
    queued: Cell<usize>,
    /// Messages written and not yet answered.
    in_flight: Cell<usize>,
    /// One message's encoding, before its length is known.
    scratch: RefCell<Vec<u8>>,
    /// Told when `out` has something to write.
    work: Notify,
}

impl Link {
    fn push(&self, scope: &Scope, msg: &Outbound, exclude: Option<ClientId>) {
        let (channel, target) = self.cluster.keys.channel(scope);
        let mut payload = self.scratch.borrow_mut();
        payload.clear();
        wire::encode_into(&mut payload, self.cluster.node, msg, exclude, target);
        command(
            &mut self.out.borrow_mut(),
            &[b"PUBLISH", channel.as_bytes(), &payload],
        );
        self.queued.set(self.queued.get() + 1);
        self.work.notify_one();
    }

    /// Connects while the cluster thread has Redis, serves the connection until it
    /// drops, and again, with backoff.
    async fn run(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.cluster.counters.connected.load(Ordering::Relaxed) {
                match self.connect().await {
                    Ok(stream) => {
                        backoff = Duration::from_millis(100);
                        self.serve(stream).await;
                    }
                    Err(e) => {
                        debug!(error = %e, "cluster: a worker could not connect to Redis");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            monoio::time::sleep(backoff).await;
        }
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let Some(target) = &self.cluster.target else {
            return Err(io::Error::other("no TCP address"));
        };
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer");
        let mut stream = monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        if let Some((user, password)) = &target.auth {
            let mut auth = Vec::new();
            match user {
                Some(user) => command(&mut auth, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut auth, &[b"AUTH", password.as_bytes()]),
            }
            let (written, _) = stream.write_all(auth).await;
            written?;
            let (read, reply) =
                monoio::time::timeout(CONNECT_TIMEOUT, stream.read(Vec::with_capacity(512)))
                    .await
                    .map_err(|_| timed_out())?;
            read?;
            if !reply.starts_with(b"+OK") {
                return Err(io::Error::other(format!(
                    "AUTH refused: {}",
                    String::from_utf8_lossy(&reply).trim_end()
                )));
            }
        }
        Ok(stream)
    }

    /// Writes and counts until either side of the connection fails; then settles what
    /// it leaves unanswered.
    async fn serve(&self, stream: TcpStream) {
        let (reader, writer) = stream.into_split();
        self.up.set(true);
        let reading = pin!(self.read_replies(reader));
        let writing = pin!(self.write_commands(writer));
        futures_util::future::select(reading, writing).await;
        self.up.set(false);
        self.out.borrow_mut().clear();
        let lost = self.in_flight.replace(0) + self.queued.replace(0);
        self.cluster.settle(0, lost);
        debug!(lost, "cluster: a worker's link to Redis dropped");
    }

    async fn write_commands(&self, mut writer: OwnedWriteHalf<TcpStream>) {
        let mut spare = Vec::new();
        loop {
            if self.queued.get() == 0 {
                self.work.notified().await;
                continue;
            }
            let batch = std::mem::replace(&mut *self.out.borrow_mut(), spare);
            self.in_flight
                .set(self.in_flight.get() + self.queued.replace(0));
            let (written, mut batch) = writer.write_all(batch).await;
            if written.is_err() {
                return;
            }
            batch.clear();
            spare = batch;
        }
    }

    async fn read_replies(&self, mut reader: OwnedReadHalf<TcpStream>) {
        let mut buf = Vec::with_capacity(4096);
        let mut counter = Replies::default();
        loop {
            buf.clear();
            let (read, filled) = reader.read(buf).await;
            buf = filled;
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
            let (answered, refused) = counter.count(&buf);
            // Never more than was written (a reply nobody asked for is not ours).
            let answered = answered.min(self.in_flight.get());
            let refused = refused.min(answered);
            self.in_flight.set(self.in_flight.get() - answered);
            self.cluster.settle(answered - refused, refused);
        }
    }
}

/// Counts replies in Redis's answers to PUBLISH, which are each one line.
#[derive(Default)]
struct Replies {
    /// Inside a line, and whether it is an error.
    mid_line: bool,
    error: bool,
}

impl Replies {
    /// (replies, of which errors) that end in `bytes`.
    fn count(&mut self, bytes: &[u8]) -> (usize, usize) {
        let (mut answered, mut refused) = (0, 0);
        for &b in bytes {
            if b == b'\n' {
                answered += 1;
                refused += usize::from(self.error);
                self.mid_line = false;
                self.error = false;
            } else if !self.mid_line {
                self.mid_line = true;
                self.error = b == b'-';
            }
        }
        (answered, refused)
    }
}

/// Appends the RESP command `args` to `out`.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut number = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(number.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(number.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"s:room:a", b"\0|\r\n"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$8\r\ns:room:a\r\n$4\r\n\0|\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn replies_are_counted_across_reads() {
        let mut counter = Replies::default();
        assert_eq!(counter.count(b":1\r\n:0\r\n-ERR no"), (2, 0));
        assert_eq!(counter.count(b"pe\r\n:3"), (1, 1));
        assert_eq!(counter.count(b"\r\n"), (1, 0));
    }
}
