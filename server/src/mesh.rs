//! The cross-core queues: how work for another worker reaches it (SPEC §2).
//!
//! Every worker has one [`Inbox`]: a lock-free MPMC segment queue that any thread pushes
//! into, plus a "notified" flag so the receiving loop is woken at most once per batch,
//! however many messages arrive before it runs. Messages carry finished frames
//! ([`Outbound`]) and a routing key, never a closure into another worker's state.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

use crate::config::Config;
use crate::outbound::Outbound;
use crate::rooms::RoomName;

/// A client id names its node and its worker, so `to_id` goes straight to the right
/// node (through Redis) and the right inbox. A single node's ids have node 0 and read
/// "worker-seq"; a cluster node's read "node-worker-seq", the node as 8 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub node: u32,
    pub worker: u16,
    pub seq: u64,
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.node != 0 {
            write!(f, "{:08x}-", self.node)?;
        }
        write!(f, "{}-{}", self.worker, self.seq)
    }
}

impl ClientId {
    /// The id as text, spelled out on the stack: the message path needs it (per-client
    /// rate limits are keyed by it) and must not allocate for it.
    pub fn text(&self) -> IdText {
        use std::io::Write;
        let mut buf = [0u8; IdText::MAX];
        let mut rest = &mut buf[..];
        // Cannot fail: the longest id fills the buffer exactly.
        let _ = write!(rest, "{self}");
        let len = IdText::MAX - rest.len();
        IdText {
            buf,
            len: len as u8,
        }
    }
}

/// A [`ClientId`] as text, held inline.
#[derive(Clone, Copy)]
pub struct IdText {
    buf: [u8; IdText::MAX],
    len: u8,
}

impl IdText {
    /// 8 hex digits and a dash, `u16::MAX`, a dash, `u64::MAX`: 9 + 5 + 1 + 20 bytes.
    const MAX: usize = 35;
}

impl std::ops::Deref for IdText {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("digits and a dash are ASCII")
    }
}

impl std::str::FromStr for ClientId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (node, rest) = match s.split('-').count() {
            2 => (0, s),
            3 => {
                let (node, rest) = s.split_once('-').ok_or(())?;
                if node.len() != 8 {
                    return Err(());
                }
                (u32::from_str_radix(node, 16).map_err(|_| ())?, rest)
            }
            _ => return Err(()),
        };
        let (worker, seq) = rest.split_once('-').ok_or(())?;
        Ok(Self {
            node,
            worker: worker.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Work for one worker.
pub enum MeshMsg {
    /// Deliver to this worker's members of `room`, except `exclude`.
    Room {
        room: RoomName,
        msg: Arc<Outbound>,
        exclude: Option<ClientId>,
    },
    /// Deliver to every connection of this worker, except `exclude`.
    All {
        msg: Arc<Outbound>,
        exclude: Option<ClientId>,
    },
    /// Deliver to one connection of this worker.
    Client { id: ClientId, msg: Arc<Outbound> },
    /// `worker` gained its first (`joined`) or lost its last member of `room`. The
    /// sender waits on `barrier` before confirming a join, so a `joined-room` reply
    /// means every worker will route the room's messages to it.
    Interest {
        room: RoomName,
        worker: usize,
        joined: bool,
        barrier: Option<Arc<Barrier>>,
    },
    /// For worker 0, from the cluster thread: this node's workers with members of `room`
    /// are now `workers` (a bit each); see `cluster::link::subscription`.
    Subscription {
        room: RoomName,
        workers: u64,
        barrier: Option<Arc<Barrier>>,
    },
    /// The cluster thread read a recovery for client `id` (`recovery::finish`).
    Recovered {
        id: ClientId,
        ask: crate::recovery::Ask,
        recovery: crate::history::Recovery,
    },
    /// Configuration changed at run time.
    Config(Arc<Config>),
    /// The rate-limit overrides changed at run time.
    RateLimits(Arc<crate::rate_limit::RateLimits>),
    /// Stop accepting and close every client with 1001 (graceful), or drop them now.
    Shutdown {
        graceful: bool,
        timeout: std::time::Duration,
    },
}

/// One worker's queue of cross-core work.
#[derive(Default)]
pub struct Inbox {
    queue: SegQueue<MeshMsg>,
    notified: AtomicBool,
    waker: AtomicWaker,
}

impl Inbox {
    /// Queues `msg`; wakes the worker only if it was not already told about a batch.
    pub fn push(&self, msg: MeshMsg) {
        self.queue.push(msg);
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Moves everything queued into `batch`, without waiting.
    pub fn drain_into(&self, batch: &mut Vec<MeshMsg>) {
        while let Some(msg) = self.queue.pop() {
            batch.push(msg);
        }
    }

    /// Waits for at least one message and moves everything queued into `batch`.
    pub async fn recv_batch(&self, batch: &mut Vec<MeshMsg>) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            // Cleared before draining: a push racing with the drain sets it again and
            // wakes us, so nothing is left behind unnoticed.
            self.notified.store(false, Ordering::Release);
            self.drain_into(batch);
            if batch.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// A countdown that wakes one waiter when every worker has acknowledged.
pub struct Barrier {
    remaining: AtomicUsize,
    waker: AtomicWaker,
}

impl Barrier {
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(count),
            waker: AtomicWaker::new(),
        })
    }

    pub fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    /// Whether every worker has arrived.
    pub fn is_open(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_open() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Every worker's inbox, shared by workers and handles.
pub struct Mesh {
    pub inboxes: Vec<Inbox>,
}

impl Mesh {
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            inboxes: (0..workers).map(|_| Inbox::default()).collect(),
        })
    }

    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Pushes to one worker; an id naming a worker that does not exist is dropped.
    pub fn send(&self, worker: usize, msg: MeshMsg) {
        if let Some(inbox) = self.inboxes.get(worker) {
            inbox.push(msg);
        }
    }

    /// Hands a message of `room` to each worker in `workers` (a bit per worker).
    pub fn send_room(
        &self,
        mut workers: u64,
        room: &RoomName,
        msg: &Arc<Outbound>,
        exclude: Option<ClientId>,
    ) {
        while workers != 0 {
            let w = workers.trailing_zeros() as usize;
            workers &= workers - 1;
            self.send(
                w,
                MeshMsg::Room {
                    room: Arc::clone(room),
                    msg: Arc::clone(msg),
                    exclude,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_through_text() {
        let id = ClientId {
            node: 0,
            worker: 3,
            seq: 41,
        };
        assert_eq!(id.to_string(), "3-41");
        assert_eq!(&*id.text(), "3-41");
        let longest = ClientId {
            node: u32::MAX,
            worker: u16::MAX,
            seq: u64::MAX,
        };
        assert_eq!(&*longest.text(), longest.to_string());
        assert_eq!(longest.to_string().parse(), Ok(longest));
        assert_eq!("3-41".parse(), Ok(id));
        let clustered = ClientId { node: 0xab, ..id };
        assert_eq!(clustered.to_string(), "000000ab-3-41");
        assert_eq!("000000ab-3-41".parse(), Ok(clustered));
        assert!("3".parse::<ClientId>().is_err());
        assert!("x-1".parse::<ClientId>().is_err());
        assert!(
            "ab-3-41".parse::<ClientId>().is_err(),
            "a node is 8 hex digits"
        );
        assert!("1-2-3-4".parse::<ClientId>().is_err());
    }

    /// Counts the wake-ups the inbox gives the worker.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_batch_from_another_thread_arrives_whole_with_one_wake() {
        let inbox = Arc::new(Inbox::default());
        let wakes = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut batch = Vec::new();
        let ready = {
            let mut recv = std::pin::pin!(inbox.recv_batch(&mut batch));
            // The worker waits on an empty inbox: its waker is registered.
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            let sender = Arc::clone(&inbox);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    sender.push(MeshMsg::Shutdown {
                        graceful: true,
                        timeout: std::time::Duration::ZERO,
                    });
                }
            })
            .join()
            .unwrap();
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for 100 pushes");
            recv.as_mut().poll(&mut cx).is_ready()
        };
        assert!(ready);
        assert_eq!(batch.len(), 100);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
