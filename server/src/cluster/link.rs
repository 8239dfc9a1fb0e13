//! Each worker's own connection to Redis, on its own io_uring loop: the hot path of a
//! cluster, with no thread between a worker and Redis.
//!
//! - **Out**: a message without history (a room broadcast, `broadcast`, `to_id`,
//!   presence) is written as a PUBLISH by the worker that sent it; the commands of one
//!   loop turn go out in one write, and the replies are counted as they come (`:N`
//!   published, an error refused).
//! - **In** (worker 0): the node's subscriptions (its rooms, `all`, its own channel). A
//!   message without history is framed here and handed to the workers it concerns; a
//!   node's own messages are skipped unread. A room message with history goes to the cluster thread, which
//!   delivers in position order and catches rooms up after a gap. A `joined-room` waits
//!   until Redis confirmed the room's subscription.
//!
//! RESP3 (`HELLO 3`, Redis 6 or later), so one connection carries pushes and replies.
//! Everything else stays with the cluster thread: history, the directory, liveness, and
//! the outage itself. A worker connects only while the
//! cluster thread has Redis; while its link is down, its messages go through the cluster
//! thread as before, so an outage is logged and counted in one place. After worker 0
//! (re)subscribes, the cluster thread catches its history rooms up.
//!
//! Counting: a message is pending (against `redis_max_pending`) from its hand-over until
//! its reply; when the connection drops, what was written without a reply and what was
//! waiting to be written are counted as unpublished.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::resp::{self, Frame, Partial};
use super::{Cluster, Command, Scope, wire};
use crate::mesh::{Barrier, ClientId, Mesh, MeshMsg};
use crate::outbound::Outbound;
use crate::rooms::RoomName;
use crate::session::read_append;

/// Longest wait between two connection attempts of a worker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a connection attempt (and its `HELLO`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A read of the subscription starts with this much room.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// This worker thread's link, once [`attach`]ed.
    static LINK: RefCell<Option<Rc<Link>>> = const { RefCell::new(None) };
}

/// Starts this worker thread's link to Redis (on its loop).
pub fn attach(cluster: &Arc<Cluster>, mesh: &Arc<Mesh>, worker: usize) {
    let link = Rc::new(Link {
        cluster: Arc::clone(cluster),
        mesh: Arc::clone(mesh),
        subscriber: worker == 0,
        node_channel: cluster.keys.node(cluster.node),
        up: Cell::new(false),
        out: RefCell::default(),
        queued: Cell::new(0),
        in_flight: Cell::new(0),
        scratch: RefCell::default(),
        work: Notify::new(),
        rooms: RefCell::default(),
        confirming: RefCell::default(),
        waiting: RefCell::default(),
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

/// Worker 0: the workers of this node with members of `room` are now `workers` (a bit
/// per worker); the node subscribes to the room on its first and unsubscribes after its
/// last. `barrier` is arrived at once Redis confirmed the subscription (at once when
/// there is nothing to wait for).
pub fn subscription(room: RoomName, workers: u64, barrier: Option<Arc<Barrier>>) {
    // No link on this thread (not a worker of a cluster node): nothing to wait for.
    let barrier = LINK.with(|link| match &*link.borrow() {
        Some(link) => link.subscription(room, workers, barrier),
        None => barrier,
    });
    arrive(barrier);
}

/// What a subscription confirmation from Redis completes: the joins waiting for it, and
/// for the last channel of a (re)connection's subscriptions, the cluster thread's
/// catch-up.
#[derive(Default)]
struct Confirm {
    joins: Vec<Arc<Barrier>>,
    resubscribed: bool,
}

/// Lets `joins` go on.
fn arrive(joins: impl IntoIterator<Item = Arc<Barrier>>) {
    joins.into_iter().for_each(|b| b.arrive());
}

/// One worker's connection to Redis and what goes through it (one thread: `Cell`s).
struct Link {
    cluster: Arc<Cluster>,
    mesh: Arc<Mesh>,
    /// Worker 0's link also holds the node's subscriptions: its rooms, `all`, and its
    /// own channel.
    subscriber: bool,
    node_channel: String,
    up: Cell<bool>,
    /// Commands not yet written, and how many of them are messages (PUBLISH).
    out: RefCell<Vec<u8>>,
    queued: Cell<usize>,
    /// Messages written and not yet answered.
    in_flight: Cell<usize>,
    /// One message's encoding, before its length is known.
    scratch: RefCell<Vec<u8>>,
    /// Told when `out` has something to write.
    work: Notify,
    /// Worker 0: the rooms this node has members of, with its workers that have them.
    rooms: RefCell<HashMap<RoomName, u64>>,
    /// Worker 0: what each subscription confirmation to come completes, in order.
    confirming: RefCell<VecDeque<Confirm>>,
    /// Worker 0: joins waiting for the link to come up (Redis is there, the link not yet).
    waiting: RefCell<Vec<Arc<Barrier>>>,
}

impl Link {
    fn push(&self, scope: &Scope, msg: &Outbound, exclude: Option<ClientId>) {
        let (channel, target) = self.cluster.keys.channel(scope);
        let mut payload = self.scratch.borrow_mut();
        payload.clear();
        wire::encode_into(&mut payload, self.cluster.node, msg, exclude, target);
        resp::command(
            &mut self.out.borrow_mut(),
            &[b"PUBLISH", channel.as_bytes(), &payload],
        );
        self.queued.set(self.queued.get() + 1);
        self.work.notify_one();
    }

    /// See [`subscription`]; gives back the barrier when it is not to wait.
    fn subscription(
        &self,
        room: RoomName,
        workers: u64,
        barrier: Option<Arc<Barrier>>,
    ) -> Option<Arc<Barrier>> {
        let channel = self.cluster.keys.room(&room);
        let had = {
            let mut rooms = self.rooms.borrow_mut();
            if workers == 0 {
                rooms.remove(&room).is_some()
            } else {
                rooms.insert(room, workers).is_some()
            }
        };
        if !self.up.get() {
            // Subscribed when the link comes up; a join waits for that while Redis is
            // there, and not while it is down (as a join never waits on an outage).
            return match barrier {
                Some(b) if self.cluster.counters.connected.load(Ordering::Relaxed) => {
                    self.waiting.borrow_mut().push(b);
                    None
                }
                other => other,
            };
        }
        let verb: &[u8] = match (had, workers != 0) {
            (false, true) => b"SUBSCRIBE",
            (true, false) => b"UNSUBSCRIBE",
            _ => return barrier,
        };
        resp::command(&mut self.out.borrow_mut(), &[verb, channel.as_bytes()]);
        if verb == b"SUBSCRIBE" {
            self.confirming.borrow_mut().push_back(Confirm {
                joins: barrier.into_iter().collect(),
                resubscribed: false,
            });
        }
        self.work.notify_one();
        None
    }

    /// Connects while the cluster thread has Redis, serves the connection until it
    /// drops, and again, with backoff.
    async fn run(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let addr = *super::lock(&self.cluster.addr);
            match addr.filter(|_| self.cluster.counters.connected.load(Ordering::Relaxed)) {
                Some(addr) => match self.connect(addr).await {
                    Ok(stream) => {
                        backoff = Duration::from_millis(100);
                        warned = false;
                        self.serve(stream).await;
                    }
                    Err(e) => {
                        if !warned {
                            warn!(error = %e, "cluster: a worker cannot talk to Redis (RESP3 needs Redis 6 or later); retrying");
                            warned = true;
                        }
                        self.release_waiting();
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
                None => self.release_waiting(),
            }
            monoio::time::sleep(backoff).await;
        }
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> io::Result<TcpStream> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer");
        let mut stream = monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        let mut hello = Vec::new();
        match &self.cluster.auth {
            Some((user, password)) => resp::command(
                &mut hello,
                &[
                    b"HELLO",
                    b"3",
                    b"AUTH",
                    user.as_deref().unwrap_or("default").as_bytes(),
                    password.as_bytes(),
                ],
            ),
            None => resp::command(&mut hello, &[b"HELLO", b"3"]),
        }
        let (written, _) = stream.write_all(hello).await;
        written?;
        let mut reply = BytesMut::with_capacity(1024);
        loop {
            let read = monoio::time::timeout(CONNECT_TIMEOUT, read_append(&mut stream, &mut reply))
                .await
                .map_err(|_| timed_out())?;
            if read? == 0 {
                return Err(io::Error::other("Redis closed the connection"));
            }
            match resp::parse(&reply) {
                Ok((Frame::Reply { error: false }, _)) => return Ok(stream),
                Ok(_) | Err(Partial::Invalid) => {
                    return Err(io::Error::other(format!(
                        "HELLO 3 refused: {}",
                        String::from_utf8_lossy(&reply[..reply.len().min(200)]).trim_end()
                    )));
                }
                Err(Partial::Incomplete) => reply.reserve(1024),
            }
        }
    }

    /// Subscribes (worker 0), writes and reads until either side of the connection
    /// fails; then settles what it leaves unanswered.
    async fn serve(&self, stream: TcpStream) {
        let (reader, writer) = stream.into_split();
        if self.subscriber {
            self.resubscribe();
        }
        self.up.set(true);
        let reading = pin!(self.read(reader));
        let writing = pin!(self.write(writer));
        futures_util::future::select(reading, writing).await;
        self.up.set(false);
        self.out.borrow_mut().clear();
        let lost = self.in_flight.replace(0) + self.queued.replace(0);
        self.cluster.settle(0, lost);
        // Joins do not wait on a link that is down.
        let confirming = std::mem::take(&mut *self.confirming.borrow_mut());
        arrive(confirming.into_iter().flat_map(|c| c.joins));
        debug!(lost, "cluster: a worker's link to Redis dropped");
    }

    /// Queues the subscription of every room this node has members of; its last
    /// confirmation releases the joins that waited and starts the catch-up.
    fn resubscribe(&self) {
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        let keys = &self.cluster.keys;
        let mut channels = vec![keys.all().to_owned(), self.node_channel.clone()];
        channels.extend(self.rooms.borrow().keys().map(|room| keys.room(room)));
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        resp::command(&mut self.out.borrow_mut(), &args);
        // One confirmation per channel; the last completes the resubscription.
        let mut confirming = self.confirming.borrow_mut();
        confirming.extend((1..channels.len()).map(|_| Confirm::default()));
        confirming.push_back(Confirm {
            joins: waiting,
            resubscribed: true,
        });
    }

    fn release_waiting(&self) {
        arrive(std::mem::take(&mut *self.waiting.borrow_mut()));
    }

    async fn write(&self, mut writer: OwnedWriteHalf<TcpStream>) {
        let mut spare = Vec::new();
        loop {
            if self.out.borrow().is_empty() {
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

    async fn read(&self, mut reader: OwnedReadHalf<TcpStream>) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            if !matches!(read_append(&mut reader, &mut buf).await, Ok(n) if n > 0) {
                return;
            }
            let mut at = 0;
            let (mut published, mut refused) = (0, 0);
            loop {
                match resp::parse(&buf[at..]) {
                    Ok((frame, len)) => {
                        match frame {
                            Frame::Reply { error: false } => published += 1,
                            Frame::Reply { error: true } => refused += 1,
                            Frame::Push(items) => self.on_push(&items),
                        }
                        at += len;
                    }
                    Err(Partial::Incomplete) => break,
                    Err(Partial::Invalid) => {
                        warn!("cluster: Redis sent what is not RESP3; reconnecting");
                        return;
                    }
                }
            }
            buf.advance(at);
            // Never more than was written (a reply nobody asked for is not ours).
            let answered = (published + refused).min(self.in_flight.get());
            let refused = refused.min(answered);
            self.in_flight.set(self.in_flight.get() - answered);
            self.cluster.settle(answered - refused, refused);
        }
    }

    fn on_push(&self, items: &[&[u8]]) {
        match items {
            [b"message", channel, payload] => self.on_message(channel, payload),
            [b"subscribe", ..] => {
                let confirm = self.confirming.borrow_mut().pop_front();
                if let Some(Confirm {
                    joins,
                    resubscribed,
                }) = confirm
                {
                    arrive(joins);
                    if resubscribed {
                        self.cluster.send(Command::Resubscribed);
                    }
                }
            }
            _ => {}
        }
    }

    /// A message of `broadcast` (the `all` channel) or to a client of this node (its own
    /// channel), from another node.
    fn on_node_message(&self, channel: &str, payload: &[u8]) {
        if wire::origin(payload) == Some(self.cluster.node) {
            return;
        }
        let Some(wire::Message {
            exclude,
            target,
            msg,
        }) = wire::decode(payload)
        else {
            return;
        };
        if channel == self.cluster.keys.all() {
            for w in 0..self.mesh.workers() {
                let msg = Arc::clone(&msg);
                self.mesh.send(w, MeshMsg::All { msg, exclude });
            }
        } else if channel == self.node_channel
            && let Some(id) = target.filter(|id| id.node == self.cluster.node)
        {
            self.mesh
                .send(id.worker as usize, MeshMsg::Client { id, msg });
        } else {
            return;
        }
        self.cluster
            .counters
            .received
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A room message from the subscription (worker 0).
    fn on_message(&self, channel: &[u8], payload: &[u8]) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(room) = self.cluster.keys.room_of(channel) else {
            self.on_node_message(channel, payload);
            return;
        };
        // With history: the cluster thread delivers in position order.
        if !payload.starts_with(b"P|") {
            self.cluster.send(Command::Received {
                room: Arc::from(room),
                payload: payload.to_vec(),
            });
            return;
        }
        if wire::origin(payload) == Some(self.cluster.node) {
            return;
        }
        let rooms = self.rooms.borrow();
        let (Some(decoded), Some((room, &workers))) =
            (wire::decode(payload), rooms.get_key_value(room))
        else {
            return;
        };
        self.cluster
            .counters
            .received
            .fetch_add(1, Ordering::Relaxed);
        self.mesh
            .send_room(workers, room, &decoded.msg, decoded.exclude);
    }
}
