//! Closed-loop sending (`--window W`): each sender keeps W messages in flight and sends
//! the next as soon as one of its own has come back, instead of following the open-loop
//! schedule of [`crate::pacer`].
//!
//! A message "comes back" when every connection it was meant for has received it: the
//! other members of the publisher's room (broadcast, fanout, binary) or the sender
//! itself (echo, ack). Servers never relay a room event back to its sender (SPEC §3.3,
//! and every peer in `scripts/peers/` does the same), so completion cannot be learned
//! from the publisher's own connection; the generator's receiving connections report it
//! instead. That needs nothing from the server but the relay every scenario already
//! uses, so the mode runs unchanged against Stellar, each peer and the sink.
//!
//! Completion is counted, not tracked per message: sender `s` with `R` receivers per
//! message has `sent − returned / R` messages in flight, where `returned` is every
//! delivery of its messages so far. Each connection receives a sender's messages in
//! order (SPEC §3.3), so when no delivery is lost this is exactly "message k is back
//! once all R receivers have it"; a lost delivery shrinks the window for the rest of the
//! run (and shows as loss in the report) instead of stalling the sender forever.
//!
//! Latency in this mode is measured from the actual send time: a closed loop waits for
//! the server by design, so there is no schedule to fall behind.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::BytesMut;

use crate::conn::Writer;
use crate::pacer::{MAX_BATCH, Sender, frame_into, telemetry_pad};
use crate::scenario::{Run, Scenario};

/// What the receivers report back to one sender, from any generator thread.
struct Returns {
    /// Connections each message of this sender is delivered to.
    receivers: u64,
    /// Deliveries of this sender's messages seen so far, by all its receivers.
    delivered: AtomicU64,
    /// The sender's task while it waits for room in its window.
    waker: AtomicWaker,
}

impl Returns {
    /// Messages of this sender whose every delivery has come back.
    fn completed(&self) -> u64 {
        self.delivered.load(Ordering::Acquire) / self.receivers.max(1)
    }
}

/// The closed-loop state of every sender of a run, indexed by the sender id carried in
/// each message (publisher number for broadcast, client index for echo and ack).
pub struct Window {
    /// Messages each sender keeps in flight.
    pub size: u64,
    returns: Vec<Returns>,
}

impl Window {
    /// The window of a run of `scenario` with `size` messages in flight per sender
    /// (`None` or 0: open loop), for clients dealt into rooms by `room_of`. Scenarios
    /// that send nothing have none.
    pub fn plan(
        size: Option<usize>,
        scenario: Scenario,
        room_of: &[usize],
        rooms: usize,
        publishers: usize,
    ) -> Option<Self> {
        let size = size.filter(|w| *w > 0)?;
        match scenario {
            Scenario::Echo | Scenario::Ack => Some(Self::new(size, room_of.iter().map(|_| 1))),
            Scenario::Broadcast | Scenario::Fanout | Scenario::Binary => {
                let mut members = vec![0u64; rooms.max(1)];
                for &room in room_of {
                    if let Some(m) = members.get_mut(room) {
                        *m += 1;
                    }
                }
                // Publisher p is a member of room p % rooms and is not relayed its own.
                let receivers = (0..publishers).map(|p| {
                    members
                        .get(p % rooms.max(1))
                        .map_or(0, |m| m.saturating_sub(1))
                });
                Some(Self::new(size, receivers))
            }
            Scenario::Connect | Scenario::Idle => None,
        }
    }

    /// `receivers[id]`: the connections each message of sender `id` is delivered to.
    pub fn new(size: usize, receivers: impl IntoIterator<Item = u64>) -> Self {
        Self {
            size: size as u64,
            returns: receivers
                .into_iter()
                .map(|receivers| Returns {
                    receivers,
                    delivered: AtomicU64::new(0),
                    waker: AtomicWaker::new(),
                })
                .collect(),
        }
    }

    /// Connections each message of sender `id` is delivered to.
    pub fn receivers(&self, id: usize) -> u64 {
        self.returns.get(id).map_or(0, |r| r.receivers)
    }

    /// A receiver got a message of sender `id`. Wakes the sender when this completes a
    /// message (every `receivers`-th delivery).
    pub fn returned(&self, id: u64) {
        let Some(r) = usize::try_from(id).ok().and_then(|i| self.returns.get(i)) else {
            return;
        };
        let n = r.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if n % r.receivers.max(1) == 0 {
            r.waker.wake();
        }
    }

    /// Waits until sender `id` (with `sent` messages out) may send again, and says how
    /// many; 0 once the run is over. No timer per wait (one per round trip would cost
    /// the generator more than the wake itself): a sender still waiting when the run
    /// ends is dropped with its thread's event loop, as the receivers are.
    async fn room(&self, run: &Run, id: usize, sent: u64) -> u64 {
        if run.done.load(Ordering::Acquire) {
            return 0;
        }
        let Some(r) = self.returns.get(id) else {
            return 0;
        };
        std::future::poll_fn(|cx| {
            r.waker.register(cx.waker());
            let in_flight = sent - r.completed().min(sent);
            match self.size.saturating_sub(in_flight) {
                0 => Poll::Pending,
                free => Poll::Ready(free),
            }
        })
        .await
    }
}

/// The closed-loop sending task of `sender` (whose id indexes `run`'s [`Window`]):
/// fills the window, then sends as many messages as came back, each batch in one write,
/// stamped with the time it is written.
pub async fn send(run: Arc<Run>, sender: Rc<Sender>, mut writer: Writer) {
    let Some(window) = run.closed_loop.as_ref() else {
        return;
    };
    let receivers = window.receivers(sender.id());
    if receivers == 0 {
        // Alone in its room: nothing could ever come back, so there is no loop to close.
        return;
    }
    let pad = if run.telemetry {
        telemetry_pad(run.payload)
    } else {
        "x".repeat(run.payload)
    };
    let id = sender.id();
    let (mut batch, mut data) = (BytesMut::new(), String::new());
    let mut k = 0u64;
    loop {
        let free = window.room(&run, id, k).await;
        if free == 0 {
            return;
        }
        let t = run.now_ns();
        let n = free.min(MAX_BATCH as u64);
        for _ in 0..n {
            frame_into(
                &mut batch,
                &mut data,
                &run,
                &sender,
                &mut writer,
                (k, t),
                &pad,
            );
            k += 1;
        }
        if writer.send_raw(batch.split().freeze()).await.is_err() {
            run.counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if run.in_window(t) {
            run.counters.sent.fetch_add(n, Ordering::Relaxed);
            run.counters
                .expected
                .fetch_add(n * receivers, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_completes_when_all_its_receivers_have_it() {
        let w = Window::new(4, [9, 9]);
        for _ in 0..8 {
            w.returned(1);
        }
        assert_eq!(w.returns[1].completed(), 0, "eight of nine deliveries");
        w.returned(1);
        assert_eq!(w.returns[1].completed(), 1);
        assert_eq!(w.returns[0].completed(), 0, "other senders are apart");
    }

    #[test]
    fn a_publisher_waits_for_the_other_members_of_its_room() {
        // Two rooms of three and two; one publisher each.
        let w = Window::plan(Some(8), Scenario::Broadcast, &[0, 1, 0, 1, 0], 2, 2)
            .expect("broadcast has a window");
        assert_eq!((w.receivers(0), w.receivers(1)), (2, 1));
        let alone = Window::plan(Some(8), Scenario::Broadcast, &[0, 1, 1], 2, 2)
            .expect("broadcast has a window");
        assert_eq!(alone.receivers(0), 0, "a publisher alone in its room");
        assert!(Window::plan(None, Scenario::Broadcast, &[0], 1, 1).is_none());
        assert!(Window::plan(Some(0), Scenario::Ack, &[0], 1, 0).is_none());
        assert!(Window::plan(Some(4), Scenario::Idle, &[0], 1, 0).is_none());
    }

    #[test]
    fn unknown_sender_ids_are_ignored() {
        let w = Window::new(4, [1]);
        w.returned(7);
        w.returned(u64::MAX);
        assert_eq!(w.returns[0].completed(), 0);
    }
}
