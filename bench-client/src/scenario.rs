//! What each simulated client does in each scenario, and the shared run state the
//! clients report into.
//!
//! Timestamps are nanoseconds since the run's start `Instant` (one process, one clock).
//! Sending is paced by one [`Pacer`] per generator thread (open loop, see there).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conn::{self, Inbound, Proto, Reader, Writer};
use crate::pacer::{Pacer, Sender};
use crate::tls::{Connector, Stream};
use crate::window::{self, Window};

/// The scenarios of SPEC §9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Echo,
    Ack,
    Broadcast,
    Fanout,
    Binary,
    Connect,
    Idle,
}

/// Counters every client adds into.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    pub sent: AtomicU64,
    /// Every message written, in the window or not.
    pub published: AtomicU64,
    pub expected: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries that arrived inside the window, whenever they were sent: the
    /// throughput actually achieved (it falls behind `delivered` once a server saturates).
    pub arrived: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub errors: AtomicU64,
}

/// The plan and state of one run, shared by all generator threads.
pub struct Run {
    pub scenario: Scenario,
    pub proto: Proto,
    /// The server's nodes (one for a single server).
    pub servers: Vec<SocketAddr>,
    /// Node of each client, an index into `servers`.
    pub server_of: Vec<usize>,
    /// TLS over every connection (`--tls-ca`); `None` = plaintext.
    pub tls: Option<Connector>,
    /// Offer permessage-deflate (`--deflate`).
    pub deflate: bool,
    /// Pad messages with telemetry-like text instead of one repeated byte
    /// (`--telemetry`).
    pub telemetry: bool,
    pub clients: usize,
    pub rooms: usize,
    pub publishers: usize,
    /// Messages per second over all publishers.
    pub rate: f64,
    pub payload: usize,
    pub concurrency: usize,
    /// Idle clients join their room before idling (`--join`).
    pub idle_join: bool,
    /// First source address is 127.0.0.(1 + this).
    pub source_offset: u32,
    /// Room of each client, from the seed.
    pub room_of: Vec<usize>,
    pub start: Instant,
    /// Set by the coordinator once every client is connected and joined.
    pub go: AtomicBool,
    pub go_at: AtomicU64,
    pub window: (AtomicU64, AtomicU64),
    pub done: AtomicBool,
    pub counters: Counters,
    pub close_codes: Mutex<HashMap<String, u64>>,
    /// `--window`: senders run closed-loop with this state; `None` = open loop.
    pub closed_loop: Option<Window>,
    /// Every client socket, for the data segments the server sent to it (`packets`).
    pub sockets: Mutex<Vec<RawFd>>,
}

impl Run {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// `at` as nanoseconds since the run's start.
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn in_window(&self, t: u64) -> bool {
        t >= self.window.0.load(Ordering::Acquire) && t < self.window.1.load(Ordering::Acquire)
    }

    pub fn note_close(&self, code: Option<u16>) {
        let key = code.map_or_else(|| "abrupt".to_owned(), |c| c.to_string());
        let mut codes = self
            .close_codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *codes.entry(key).or_default() += 1;
    }

    /// Members per room (clients are dealt round-robin into rooms by `room_of`).
    pub fn room_size(&self, room: usize) -> usize {
        self.room_of.iter().filter(|r| **r == room).count()
    }

    /// Publisher `p` is the first client of room `p % rooms`.
    pub fn publisher_index(&self, client: usize) -> Option<usize> {
        let room = self.room_of[client];
        let first = self.room_of.iter().position(|r| *r == room)?;
        if first != client {
            return None;
        }
        (0..self.publishers).find(|p| p % self.rooms == room)
    }
}

/// What one generator thread's clients record: latencies (ns), when the late ones were
/// sent ([`Series`]) and the in-window delivery counts. One event loop owns it, so
/// counting is a plain add, not an atomic one; the thread adds its counts to the run's
/// when it ends.
pub struct Tally {
    latency: RefCell<Histogram<u64>>,
    series: RefCell<Series>,
    arrived: Cell<u64>,
    delivered: Cell<u64>,
}

/// Width of one bin of a [`Series`].
pub const SERIES_BIN_NS: u64 = 100_000_000;
/// A delivery slower than this is late in a [`Series`]: 30 times the median of the
/// open-loop shapes here, so only a delivery that waited behind something is counted.
pub const LATE_NS: u64 = 10_000_000;

/// The window's deliveries by when they were sent, in bins of [`SERIES_BIN_NS`]: whether
/// the slow ones come in bursts (a stall: every delivery sent in those 100 ms waited)
/// or spread over the run (a queue that is sometimes long). Not in the percentiles,
/// which cannot tell the two apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Series(pub Vec<Bin>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Bin {
    pub deliveries: u64,
    /// Deliveries slower than [`LATE_NS`].
    pub late: u64,
    /// The slowest delivery, in µs.
    pub max_us: u64,
}

impl Series {
    /// Counts a delivery sent `sent` ns into the window that took `ns`.
    pub fn record(&mut self, sent: u64, ns: u64) {
        let Ok(i) = usize::try_from(sent / SERIES_BIN_NS) else {
            return;
        };
        if self.0.len() <= i {
            self.0.resize(i + 1, Bin::default());
        }
        let bin = &mut self.0[i];
        bin.deliveries += 1;
        bin.late += u64::from(ns > LATE_NS);
        bin.max_us = bin.max_us.max(ns / 1_000);
    }

    /// Adds another thread's series, bin by bin.
    pub fn add(&mut self, other: &Series) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), Bin::default());
        }
        for (bin, o) in self.0.iter_mut().zip(&other.0) {
            bin.deliveries += o.deliveries;
            bin.late += o.late;
            bin.max_us = bin.max_us.max(o.max_us);
        }
    }
}

impl Tally {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            latency: RefCell::new(new_histogram()),
            series: RefCell::default(),
            arrived: Cell::new(0),
            delivered: Cell::new(0),
        })
    }

    /// Records one latency in nanoseconds (at least the histogram's 1 µs floor).
    pub fn record(&self, ns: u64) {
        let _ = self.latency.borrow_mut().record(ns.max(1_000));
    }

    /// Records one delivery of the window: sent at `t` (ns since the run's start), and
    /// taking `ns`.
    fn record_delivery(&self, run: &Run, t: u64, ns: u64) {
        self.record(ns);
        let start = run.window.0.load(Ordering::Acquire);
        self.series.borrow_mut().record(t.saturating_sub(start), ns);
    }

    /// Adds this thread's counts to the run's and hands back its histogram and series.
    pub fn finish(&self, run: &Run) -> (Histogram<u64>, Series) {
        let c = &run.counters;
        c.arrived.fetch_add(self.arrived.take(), Ordering::Relaxed);
        c.delivered
            .fetch_add(self.delivered.take(), Ordering::Relaxed);
        (self.latency.replace(new_histogram()), self.series.take())
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 sigfigs is valid"))
}

/// A generator thread's connection slots: at most `limit` connections opening at once,
/// so a storm does not overflow the server's accept backlog. The opener is woken the
/// moment a slot frees; it used to poll on a timer, whose millisecond tick was longer
/// than a connection takes, so a storm's rate was the tick's more than the server's.
pub struct Slots {
    used: std::cell::Cell<usize>,
    limit: usize,
    opener: std::cell::RefCell<Option<std::task::Waker>>,
}

impl Slots {
    pub fn new(limit: usize) -> Rc<Self> {
        Rc::new(Self {
            used: std::cell::Cell::new(0),
            limit: limit.max(1),
            opener: std::cell::RefCell::default(),
        })
    }

    /// Waits for a free slot and takes it (one opener per thread waits here).
    pub async fn take(self: &Rc<Self>) -> Slot {
        std::future::poll_fn(|cx| {
            if self.used.get() < self.limit {
                self.used.set(self.used.get() + 1);
                std::task::Poll::Ready(())
            } else {
                *self.opener.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        Slot(Rc::clone(self))
    }
}

/// One of a thread's connection slots, held until the client is connected (or failed).
pub struct Slot(Rc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0;
        slots.used.set(slots.used.get().saturating_sub(1));
        if let Some(opener) = slots.opener.borrow_mut().take() {
            opener.wake();
        }
    }
}

/// A one-way door the clients of one generator thread wait at.
#[derive(Default)]
pub struct Gate {
    open: std::cell::Cell<bool>,
    waiters: std::cell::RefCell<Vec<std::task::Waker>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.open.get() {
                return std::task::Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }
}

/// The run's start and end as one generator thread sees them. One task per thread
/// watches the shared flags and opens the gates; clients wait at the gates instead of
/// each polling the flags (19 000 idle clients polling every few milliseconds kept the
/// generator's core busy and slowed the connection phase).
#[derive(Default)]
pub struct Phases {
    pub go: Gate,
    pub done: Gate,
}

impl Phases {
    /// Opens `go` and then `done` as the coordinator sets the shared flags.
    pub async fn watch(self: Rc<Self>, run: Arc<Run>) {
        while !run.go.load(Ordering::Acquire) {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        self.go.open();
        while !run.done.load(Ordering::Acquire) {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        self.done.open();
    }
}

/// Runs client `index` to the end of the run; `slot` is freed once it is connected.
pub async fn client_with_slot(
    run: Arc<Run>,
    index: usize,
    tally: Rc<Tally>,
    slot: Slot,
    pacer: Rc<Pacer>,
    phases: Rc<Phases>,
) {
    let started = Instant::now();
    let server = run.servers[run.server_of[index]];
    // Recorded for `Run::sockets` only once the client is in: a failed one's descriptor
    // is closed and may be reused by the next, which would then be counted twice.
    let mut fd = None;
    let opened = match conn::connect_from(conn::source_for(index, run.source_offset), server) {
        Ok(tcp) => {
            fd = Some(tcp.as_raw_fd());
            match &run.tls {
                None => conn::open(Stream::Plain(tcp), run.proto, "127.0.0.1", run.deflate).await,
                Some(tls) => match tls.connect(tcp).await {
                    Ok(stream) => conn::open(stream, run.proto, "127.0.0.1", run.deflate).await,
                    Err(e) => Err(e),
                },
            }
        }
        Err(e) => Err(e),
    };
    let (mut reader, mut writer) = match opened {
        Ok(pair) => pair,
        Err(_) => {
            run.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // The server's first message: `welcome` (WebSocket) or CONNECT (TCP).
    match reader.next().await {
        Inbound::Event { .. } => {}
        _ => {
            run.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if matches!(run.scenario, Scenario::Connect) {
        tally.record(started.elapsed().as_nanos() as u64);
    }
    let room = format!("room-{}", run.room_of[index]);
    let joins = match run.scenario {
        Scenario::Broadcast | Scenario::Fanout | Scenario::Binary => true,
        Scenario::Idle => run.idle_join,
        Scenario::Echo | Scenario::Ack | Scenario::Connect => false,
    };
    if joins
        && (writer.join(&room).await.is_err() || !await_event(&mut reader, "joined-room").await)
    {
        run.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    run.counters.connected.fetch_add(1, Ordering::Relaxed);
    if let (Some(fd), Ok(mut sockets)) = (fd, run.sockets.lock()) {
        sockets.push(fd);
    }
    drop(slot);
    phases.go.wait().await;
    match run.scenario {
        Scenario::Connect | Scenario::Idle => {
            phases.done.wait().await;
            writer.close().await;
        }
        Scenario::Echo | Scenario::Ack => {
            let interval = Duration::from_secs_f64(run.clients as f64 / run.rate);
            let sender = Sender::new(index, interval, index, run.clients, None, 1);
            start_sending(&run, &pacer, sender, writer);
            receive(run, reader, tally, 1).await;
        }
        Scenario::Broadcast | Scenario::Fanout | Scenario::Binary => {
            if let Some(p) = run.publisher_index(index) {
                let interval = Duration::from_secs_f64(run.publishers as f64 / run.rate);
                let receivers = run.room_size(run.room_of[index]).saturating_sub(1) as u64;
                let sender = Sender::new(p, interval, p, run.publishers, Some(room), receivers);
                start_sending(&run, &pacer, sender, writer);
            }
            let publishers = run.publishers.max(1);
            receive(run, reader, tally, publishers).await;
        }
    }
}

/// Starts `sender` on the open-loop schedule of `pacer`, or closed-loop with `--window`.
fn start_sending(run: &Arc<Run>, pacer: &Pacer, sender: Rc<Sender>, writer: Writer) {
    if run.closed_loop.is_some() {
        monoio::spawn(window::send(Arc::clone(run), sender, writer));
    } else {
        pacer.add(Rc::clone(&sender));
        monoio::spawn(sender.run(Arc::clone(run), writer));
    }
}

async fn await_event(reader: &mut Reader, name: &str) -> bool {
    loop {
        match reader.next().await {
            Inbound::Event { event, .. } if event == name.as_bytes() => return true,
            Inbound::Event { .. } | Inbound::Binary(_) => {}
            Inbound::Closed(_) => return false,
        }
    }
}

/// Reads until the run ends, recording latency, duplicates and order per publisher.
async fn receive(run: Arc<Run>, mut reader: Reader, tally: Rc<Tally>, publishers: usize) {
    // The last sequence number seen from each publisher (ids are 0..publishers).
    let mut last: Vec<Option<u64>> = vec![None; publishers];
    loop {
        let (p, seq, t) = match reader.next().await {
            Inbound::Event { event, data } => {
                if event == b"error" {
                    run.counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match conn::stamp(data) {
                    Some(stamp) => stamp,
                    None => continue,
                }
            }
            Inbound::Binary(b) => match binary_stamp(b, run.proto) {
                Some(stamp) => stamp,
                None => continue,
            },
            Inbound::Closed(code) => {
                if !run.done.load(Ordering::Acquire) {
                    run.note_close(code);
                }
                return;
            }
        };
        // Warm-up deliveries too: a closed-loop sender waits for every one.
        if let Some(w) = &run.closed_loop {
            w.returned(p);
        }
        // Everything one read brought arrived at the same moment.
        let now = run.ns_at(reader.read_at());
        if run.in_window(now) {
            tally.arrived.set(tally.arrived.get() + 1);
        }
        if !run.in_window(t) {
            continue;
        }
        tally.record_delivery(&run, t, now.saturating_sub(t));
        tally.delivered.set(tally.delivered.get() + 1);
        let Some(slot) = usize::try_from(p).ok().and_then(|p| last.get_mut(p)) else {
            continue;
        };
        match *slot {
            Some(prev) if seq == prev => {
                run.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(prev) if seq < prev => {
                run.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            _ => *slot = Some(seq),
        }
    }
}

/// `(publisher, seq, time)` from a binary message's payload.
fn binary_stamp(msg: &[u8], proto: Proto) -> Option<(u64, u64, u64)> {
    let payload = match proto {
        Proto::Ws => {
            let header_len = u32::from_be_bytes(msg.get(..4)?.try_into().ok()?) as usize;
            msg.get(4 + header_len..)?
        }
        Proto::Tcp | Proto::Socketio => msg,
    };
    let p = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as u64;
    let s = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let t = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    Some((p, s, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_bins_deliveries_by_when_they_were_sent() {
        let mut a = Series::default();
        a.record(50_000_000, 300_000); // bin 0, on time
        a.record(250_000_000, 12_000_000); // bin 2, late
        a.record(299_999_999, 10_000_000); // bin 2, exactly the bound: not late
        assert_eq!(
            a.0,
            vec![
                Bin {
                    deliveries: 1,
                    late: 0,
                    max_us: 300
                },
                Bin::default(),
                Bin {
                    deliveries: 2,
                    late: 1,
                    max_us: 12_000
                },
            ]
        );
        let mut b = Series::default();
        b.record(450_000_000, 40_000_000);
        b.record(210_000_000, 20_000_000);
        a.add(&b);
        assert_eq!(a.0.len(), 5);
        assert_eq!(
            a.0[2],
            Bin {
                deliveries: 3,
                late: 2,
                max_us: 20_000
            }
        );
        assert_eq!(
            a.0[4],
            Bin {
                deliveries: 1,
                late: 1,
                max_us: 40_000
            }
        );
    }
}
