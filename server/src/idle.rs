//! Quiet connections wait for their next bytes in their worker's epoll set, holding
//! nothing in the ring.
//!
//! A read lent to io_uring pins a buffer for as long as it waits, and a readiness wait
//! through monoio (`TcpStream::readable`, a PollAdd) still puts an op in the driver's
//! table and about 120 bytes of future layers in every session task. Most connections
//! of a large server are idle most of the time, so instead a quiet one registers its fd
//! (one-shot) in an epoll set its worker owns, and its task waits on a future of a few
//! bytes. One watcher task per worker waits on the epoll fd itself (through the same
//! driver: on io_uring a single PollAdd for all of them) and wakes the connections whose
//! sockets became readable; each then reads as any other connection does.
//!
//! The epoll entries are kernel memory, as io_uring's poll requests were. A socket is
//! added at its first quiet wait and re-armed at the next ones; closing it removes it.
//! Should epoll refuse a socket, its connection simply reads at once instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use monoio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::epoll::{
    EpollCreateFlags, EpollEvent, EpollFlags, EpollOp, epoll_create1, epoll_ctl, epoll_wait,
};
use nix::sys::socket::{MsgFlags, recv};
use slab::Slab;

/// Events taken from the epoll set per `epoll_wait`.
const BATCH: usize = 256;

/// One connection's place in the idle set: whether its socket is in it yet.
#[derive(Clone, Copy, Debug)]
pub enum Watch {
    /// Never waits here (TLS: its reads go through rustls's buffers, held anyway).
    Never,
    /// Not in the set yet.
    Out(RawFd),
    /// In the set; the next wait re-arms it.
    In(RawFd),
}

impl Watch {
    /// A plaintext socket; `None` for one that should read at once.
    pub fn new(fd: Option<RawFd>) -> Self {
        fd.map_or(Self::Never, Self::Out)
    }

    /// Waits until the socket has bytes to read (or is closed), holding no buffer.
    pub fn readable(&mut self) -> Readable {
        let arm = match *self {
            Self::Never => None,
            Self::Out(fd) => Some((fd, EpollOp::EpollCtlAdd)),
            Self::In(fd) => Some((fd, EpollOp::EpollCtlMod)),
        };
        if let Some((fd, _)) = arm {
            *self = Self::In(fd);
        }
        Readable { arm, slot: None }
    }

    /// Reads, at once and into `buf`'s spare capacity, what a socket that
    /// [`Watch::readable`] just found readable holds. `None` when it cannot be read here
    /// (TLS, or no bytes after all: epoll refused the socket, or a close raced the
    /// event): read through the driver instead.
    ///
    /// Through io_uring the read would be submitted at the end of this loop turn and
    /// seen at the next, so a quiet connection's message would wait a whole turn more
    /// than a busy one's. That turn is short on a quiet server; after a stall of the
    /// worker (a page-in, a preempted core) it is the backlog's length, and at 90 000
    /// deliveries/s with the worker stopped 40 ms once a second it made the slowest
    /// deliveries 70-115 ms against the trivial relay's 47
    /// (`results/bench/broadcast-open-10k-90k-stalls-ab.md`).
    pub fn read_ready(&self, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
        let Self::In(fd) = *self else {
            return None;
        };
        let start = buf.len();
        buf.resize(buf.capacity(), 0);
        let got = recv(fd, &mut buf[start..], MsgFlags::MSG_DONTWAIT);
        buf.truncate(start + *got.as_ref().unwrap_or(&0));
        match got {
            // Zero bytes is the peer's end of stream.
            Ok(n) => Some(Ok(n)),
            Err(Errno::EAGAIN | Errno::EINTR) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// The future [`Watch::readable`] returns. It resolves when the socket is readable,
/// or at once when it cannot be watched.
pub struct Readable {
    /// The registration still to make (taken at the first poll).
    arm: Option<(RawFd, EpollOp)>,
    /// Its waiter in the set, once registered.
    slot: Option<Token>,
}

impl Future for Readable {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(token) = self.slot {
            return match current(false).map(|set| set.check(token, cx.waker())) {
                Some(false) => Poll::Pending,
                _ => {
                    self.slot = None;
                    Poll::Ready(())
                }
            };
        }
        let Some((fd, op)) = self.arm.take() else {
            return Poll::Ready(());
        };
        match current(true).map(|set| set.register(fd, op, cx.waker())) {
            Some(Some(token)) => {
                self.slot = Some(token);
                Poll::Pending
            }
            // No set on this thread, or epoll refused the socket: read now instead.
            _ => Poll::Ready(()),
        }
    }
}

impl Drop for Readable {
    fn drop(&mut self) {
        if let Some(token) = self.slot
            && let Some(set) = current(false)
        {
            set.forget(token);
        }
    }
}

/// A waiter's slab index and the generation it was made in, so a late event for a
/// slot since reused wakes nobody.
#[derive(Clone, Copy, Debug)]
struct Token {
    index: u32,
    generation: u32,
}

impl Token {
    fn encode(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.index)
    }

    fn decode(data: u64) -> Self {
        Self {
            index: data as u32,
            generation: (data >> 32) as u32,
        }
    }
}

struct Waiter {
    generation: u32,
    waker: Waker,
    ready: bool,
}

/// A worker's epoll set and the connections waiting in it.
struct Set {
    /// The epoll fd, held as a socket so the driver can wait on it (an epoll fd is
    /// pollable like one; nothing but `readable` is ever asked of it).
    epoll: TcpStream,
    waiters: RefCell<Slab<Waiter>>,
    generation: Cell<u32>,
}

thread_local! {
    /// This thread's set, while its watcher task runs.
    static SET: RefCell<Option<Rc<Set>>> = const { RefCell::new(None) };
}

/// This thread's set; with `start`, started (with its watcher) if there is none yet.
/// `None` when there is none and none can be made.
fn current(start: bool) -> Option<Rc<Set>> {
    SET.try_with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() && start {
            *slot = Set::start();
        }
        slot.clone()
    })
    .ok()
    .flatten()
}

impl Set {
    /// A new set with its watcher task spawned on this thread's runtime.
    fn start() -> Option<Rc<Self>> {
        let fd = epoll_create1(EpollCreateFlags::EPOLL_CLOEXEC)
            .inspect_err(|e| tracing::warn!("epoll_create1 failed, idle waits read at once: {e}"))
            .ok()?;
        // SAFETY: `fd` was just created and nothing else owns it; the stream takes it.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let epoll = TcpStream::from_std(std).ok()?;
        let set = Rc::new(Self {
            epoll,
            waiters: RefCell::new(Slab::new()),
            generation: Cell::new(0),
        });
        monoio::spawn(watch(set.clone()));
        Some(set)
    }

    fn register(&self, fd: RawFd, op: EpollOp, waker: &Waker) -> Option<Token> {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let mut waiters = self.waiters.borrow_mut();
        let entry = waiters.vacant_entry();
        let token = Token {
            index: u32::try_from(entry.key()).ok()?,
            generation,
        };
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        let mut event = EpollEvent::new(flags, token.encode());
        let armed = match epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) {
            // Not in the set after all (an earlier add failed), or already in it.
            Err(Errno::ENOENT) if op == EpollOp::EpollCtlMod => {
                epoll_ctl(self.epoll.as_raw_fd(), EpollOp::EpollCtlAdd, fd, &mut event)
            }
            Err(Errno::EEXIST) if op == EpollOp::EpollCtlAdd => {
                epoll_ctl(self.epoll.as_raw_fd(), EpollOp::EpollCtlMod, fd, &mut event)
            }
            other => other,
        };
        if let Err(e) = armed {
            tracing::debug!("epoll_ctl on fd {fd} failed, reading at once: {e}");
            return None;
        }
        entry.insert(Waiter {
            generation,
            waker: waker.clone(),
            ready: false,
        });
        Some(token)
    }

    /// Whether the waiter's socket is readable; if not, keeps the latest waker.
    fn check(&self, token: Token, waker: &Waker) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        let Some(waiter) = waiters.get_mut(token.index as usize) else {
            return true;
        };
        if waiter.generation != token.generation || waiter.ready {
            waiters.remove(token.index as usize);
            return true;
        }
        waiter.waker.clone_from(waker);
        false
    }

    fn forget(&self, token: Token) {
        let mut waiters = self.waiters.borrow_mut();
        if waiters
            .get(token.index as usize)
            .is_some_and(|w| w.generation == token.generation)
        {
            waiters.remove(token.index as usize);
        }
    }

    fn wake(&self, token: Token) {
        let mut waiters = self.waiters.borrow_mut();
        if let Some(waiter) = waiters.get_mut(token.index as usize)
            && waiter.generation == token.generation
            && !waiter.ready
        {
            waiter.ready = true;
            waiter.waker.wake_by_ref();
        }
    }

    /// Wakes everyone (they read at once): the watcher is gone.
    fn wake_all(&self) {
        for (_, waiter) in self.waiters.borrow_mut().iter_mut() {
            waiter.ready = true;
            waiter.waker.wake_by_ref();
        }
    }
}

/// Clears the thread's set when its watcher ends (the runtime going away, or epoll
/// failing), waking whoever still waits in it.
struct Unset(Rc<Set>);

impl Drop for Unset {
    fn drop(&mut self) {
        let _ = SET.try_with(|cell| cell.borrow_mut().take());
        self.0.wake_all();
    }
}

/// The watcher: waits for the epoll fd to be readable, then wakes each connection
/// whose socket is.
async fn watch(set: Rc<Set>) {
    let set = Unset(set);
    let mut events = vec![EpollEvent::empty(); BATCH];
    loop {
        if let Err(e) = set.0.epoll.readable(false).await {
            tracing::warn!("waiting on the idle epoll set failed: {e}");
            return;
        }
        loop {
            let n = match epoll_wait(set.0.epoll.as_raw_fd(), &mut events, 0) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("epoll_wait on the idle set failed: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                set.0.wake(Token::decode(event.data()));
            }
            if n < BATCH {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket pair on loopback: the accepted end and the client's.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn a_readable_socket_is_read_at_once_and_an_empty_one_left_to_the_driver() {
        use std::io::Write;
        let (server, mut client) = pair();
        let watch = Watch::In(server.as_raw_fd());
        let mut buf = BytesMut::with_capacity(8);
        // Nothing there yet: the caller reads through the driver, and `buf` is as it was.
        assert!(watch.read_ready(&mut buf).is_none());
        assert!(buf.is_empty() && buf.capacity() >= 8);
        client.write_all(b"hello, world").unwrap();
        // What fits is read, and the rest stays in the socket for the next read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match watch.read_ready(&mut buf) {
                Some(read) => break read.unwrap(),
                None if std::time::Instant::now() < deadline => std::thread::yield_now(),
                None => panic!("the bytes never arrived"),
            }
        };
        assert_eq!(n, buf.len());
        assert!(n < 12, "an 8-byte buffer took {n} bytes");
        assert_eq!(&buf[..], &b"hello, world"[..n]);
        let mut rest = BytesMut::with_capacity(64);
        assert_eq!(watch.read_ready(&mut rest).unwrap().unwrap(), 12 - n);
        assert_eq!(&rest[..], &b"hello, world"[n..]);
        // The peer's end of stream is a read of zero bytes, not "nothing yet".
        drop(client);
        let mut end = BytesMut::with_capacity(64);
        let eof = loop {
            match watch.read_ready(&mut end) {
                Some(read) => break read.unwrap(),
                None if std::time::Instant::now() < deadline => std::thread::yield_now(),
                None => panic!("the close never arrived"),
            }
        };
        assert_eq!(eof, 0);
        assert!(end.is_empty());
    }

    #[test]
    fn sockets_not_in_the_set_are_never_read_here() {
        use std::io::Write;
        let (server, mut client) = pair();
        client.write_all(b"tls record").unwrap();
        let mut buf = BytesMut::with_capacity(64);
        // TLS bytes belong to rustls, and a socket never registered waits nowhere.
        assert!(Watch::Never.read_ready(&mut buf).is_none());
        assert!(
            Watch::Out(server.as_raw_fd())
                .read_ready(&mut buf)
                .is_none()
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn tokens_round_trip() {
        let token = Token {
            index: 0xdead_beef,
            generation: 7,
        };
        let back = Token::decode(token.encode());
        assert_eq!((back.index, back.generation), (0xdead_beef, 7));
    }
}
