//! Open-loop pacing: one pacer task per generator thread hands every sender its
//! messages at their intended times; each sender's own task writes them.
//!
//! Message k of a sender is due at `go + phase + k·interval` (senders are spread evenly
//! over one interval) and carries that intended time, so a server that stalls shows up
//! as latency instead of silently slowing the generator (no coordinated omission). The
//! event loop's timer ticks in milliseconds, too coarse for this, so a clock thread
//! keeps the schedule with the OS's high-resolution sleep. A sender whose writes block
//! (the server is not reading) falls behind its schedule but keeps stamping intended
//! times.

use stellar_protocol::EventName;

/// The events the generator sends: what the servers under test echo or relay.
const ECHO: EventName<'static> = EventName::from_static("echo");
const BIN: EventName<'static> = EventName::from_static("bin");
const B: EventName<'static> = EventName::from_static("b");

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use crossbeam_queue::SegQueue;

use crate::conn::Writer;
use crate::scenario::{Run, Scenario};

/// One sending client: its schedule, and the intended times the pacer has handed it.
pub struct Sender {
    /// Publisher number (broadcast) or client index (echo/ack), carried in each message.
    id: usize,
    interval: u64,
    phase: u64,
    room: Option<String>,
    /// Deliveries each message should make.
    receivers: u64,
    due: RefCell<VecDeque<u64>>,
    waker: RefCell<Option<Waker>>,
}

impl Sender {
    /// Sender `slot` of `of` gets phase `interval·slot/of`.
    pub fn new(
        id: usize,
        interval: Duration,
        slot: usize,
        of: usize,
        room: Option<String>,
        receivers: u64,
    ) -> Rc<Self> {
        let interval = interval.as_nanos() as u64;
        Rc::new(Self {
            id,
            interval,
            phase: interval * slot as u64 / of.max(1) as u64,
            room,
            receivers,
            due: RefCell::default(),
            waker: RefCell::default(),
        })
    }

    /// Publisher number (broadcast) or client index (echo/ack).
    pub fn id(&self) -> usize {
        self.id
    }

    fn hand(&self, t: u64) {
        self.due.borrow_mut().push_back(t);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The sending task: writes each handed message as soon as it is due. Messages that
    /// are due together (a fast sender, or one behind its schedule) go in one write, up
    /// to [`MAX_BATCH`], as a real client library flushing its buffer would send them.
    pub async fn run(self: Rc<Self>, run: Arc<Run>, mut writer: Writer) {
        let pad = if run.telemetry {
            telemetry_pad(run.payload)
        } else {
            "x".repeat(run.payload)
        };
        let mut k = 0u64;
        let mut batch = BytesMut::new();
        let mut data = String::new();
        loop {
            std::future::poll_fn(|cx| {
                if self.due.borrow().is_empty() {
                    *self.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if run.done.load(Ordering::Acquire) {
                return;
            }
            // Messages of this write whose intended time is in the measured window.
            let mut measured = 0;
            let mut written = 0;
            for _ in 0..MAX_BATCH {
                let Some(t) = self.due.borrow_mut().pop_front() else {
                    break;
                };
                frame_into(
                    &mut batch,
                    &mut data,
                    &run,
                    &self,
                    &mut writer,
                    (k, t),
                    &pad,
                );
                measured += u64::from(run.in_window(t));
                written += 1;
                k += 1;
            }
            if writer.send_raw(batch.split().freeze()).await.is_err() {
                run.counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            run.counters.sent.fetch_add(measured, Ordering::Relaxed);
            run.counters.published.fetch_add(written, Ordering::Relaxed);
            run.counters
                .expected
                .fetch_add(measured * self.receivers, Ordering::Relaxed);
        }
    }
}

/// The senders of one generator thread.
#[derive(Default)]
pub struct Pacer {
    pending: RefCell<Vec<Rc<Sender>>>,
}

/// Tickets from the clock thread to the event loop: (sender, intended time).
#[derive(Default)]
struct Tickets {
    queue: SegQueue<(usize, u64)>,
    notified: AtomicBool,
    waker: AtomicWaker,
}

impl Pacer {
    /// Registers a sender; its first message is due at `go + phase`.
    pub fn add(&self, sender: Rc<Sender>) {
        self.pending.borrow_mut().push(sender);
    }

    /// Hands every sender its messages on schedule until the run ends. The schedule is
    /// kept by a clock thread (on the same core) that sleeps with the OS's
    /// high-resolution timer and posts due tickets; this task hands them out, woken once
    /// per batch, so nothing spins in the event loop.
    pub async fn run(self: Rc<Self>, run: Arc<Run>) {
        while !run.go.load(Ordering::Acquire) {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let tickets = Arc::new(Tickets::default());
        let (schedule, schedules) = crossbeam_channel::unbounded::<(usize, u64, u64)>();
        let clock = {
            let (run, tickets) = (Arc::clone(&run), Arc::clone(&tickets));
            std::thread::spawn(move || clock(&run, &tickets, &schedules))
        };
        let go = run.go_at.load(Ordering::Acquire);
        let mut senders: Vec<Rc<Sender>> = Vec::new();
        while !run.done.load(Ordering::Acquire) {
            for s in self.pending.borrow_mut().drain(..) {
                let _ = schedule.send((senders.len(), go + s.phase, s.interval));
                senders.push(s);
            }
            let woken = monoio::time::timeout(
                Duration::from_millis(20),
                std::future::poll_fn(|cx| {
                    tickets.waker.register(cx.waker());
                    tickets.notified.store(false, Ordering::Release);
                    let mut any = false;
                    while let Some((i, t)) = tickets.queue.pop() {
                        if let Some(s) = senders.get(i) {
                            s.hand(t);
                        }
                        any = true;
                    }
                    if any { Poll::Ready(()) } else { Poll::Pending }
                }),
            )
            .await;
            let _ = woken;
        }
        drop(schedule);
        let _ = clock.join();
        for s in &senders {
            s.hand(u64::MAX);
        }
    }
}

/// How long the clock thread waits while the event loop has tickets it has not taken.
const BUSY_NAP: Duration = Duration::from_micros(200);

/// The clock thread: keeps every sender's next due time and posts tickets when due.
fn clock(run: &Run, tickets: &Tickets, schedules: &crossbeam_channel::Receiver<(usize, u64, u64)>) {
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut intervals: Vec<u64> = Vec::new();
    while !run.done.load(Ordering::Acquire) {
        while let Ok((i, first, interval)) = schedules.try_recv() {
            if intervals.len() <= i {
                intervals.resize(i + 1, 0);
            }
            intervals[i] = interval;
            due.push(Reverse((first, i)));
        }
        if tickets.notified.load(Ordering::Acquire) {
            // The event loop has not yet taken the last batch: it is busy, and the next
            // tickets could not be handed out sooner than its next turn anyway. Waking
            // now would only preempt it (on this core) for nothing.
            std::thread::sleep(BUSY_NAP);
            continue;
        }
        let Some(&Reverse((t, _))) = due.peek() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let now = run.now_ns();
        if t > now {
            // At most 1 ms at a time, to pick up new senders and the end of the run.
            std::thread::sleep(Duration::from_nanos((t - now).min(1_000_000)));
            continue;
        }
        let mut posted = false;
        while let Some(&Reverse((t, i))) = due.peek() {
            if t > now {
                break;
            }
            due.pop();
            tickets.queue.push((i, t));
            due.push(Reverse((t + intervals[i].max(1), i)));
            posted = true;
        }
        if posted && !tickets.notified.swap(true, Ordering::AcqRel) {
            tickets.waker.wake();
        }
    }
}

/// Most messages one sender puts in one write.
pub(crate) const MAX_BATCH: usize = 64;

/// Appends message `k` of sender `s`, stamped with its intended time `t`, to `batch`
/// (`data` is scratch space for its JSON data).
pub(crate) fn frame_into(
    batch: &mut BytesMut,
    data: &mut String,
    run: &Run,
    s: &Sender,
    writer: &mut Writer,
    (k, t): (u64, u64),
    pad: &str,
) {
    let mut n = itoa::Buffer::new();
    data.clear();
    for (key, value) in [("{\"p\":", s.id as u64), (",\"s\":", k), (",\"t\":", t)] {
        data.push_str(key);
        data.push_str(n.format(value));
    }
    data.push_str(",\"x\":\"");
    data.push_str(pad);
    data.push_str("\"}");
    match (run.scenario, &s.room) {
        (Scenario::Ack, _) => {
            let correlation = ["c", n.format(k)].concat();
            writer.request_into(batch, &ECHO, data, &correlation);
        }
        (Scenario::Binary, Some(room)) => {
            let mut body = Vec::with_capacity(20 + pad.len());
            body.extend_from_slice(&(s.id as u32).to_be_bytes());
            body.extend_from_slice(&k.to_be_bytes());
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(pad.as_bytes());
            writer.binary_into(batch, &BIN, room, &body);
        }
        (_, Some(room)) => writer.event_into(batch, &B, data, Some(room)),
        (_, None) => writer.event_into(batch, &ECHO, data, None),
    }
}

/// `len` bytes of telemetry-like text (readings with varying digits, as a sensor or game
/// state feed sends), so compression is measured on data that compresses like real
/// traffic rather than on one repeated byte. Deterministic; no JSON escapes needed.
pub(crate) fn telemetry_pad(len: usize) -> String {
    let mut out = String::with_capacity(len + 32);
    let mut seed: u32 = 0x2545_f491;
    let mut i = 0u32;
    while out.len() < len {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let value = seed >> 20;
        out.push_str(&format!("t{i}:{}.{:02};", value / 100, value % 100));
        i += 1;
    }
    out.truncate(len);
    out
}
