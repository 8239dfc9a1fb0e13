//! A connection's outgoing frames between whoever sends them and the writer task, and
//! the batch the writer hands to the kernel in one write.
//!
//! Separate from `connection.rs` because it is the one place that decides what is
//! copied and what stays shared on the way to the socket (SPEC §2, encode once): a
//! frame over [`COPY_MAX`] is queued as a refcounted clone of the sender's `Bytes` and
//! reaches the kernel through a vectored write, never copied per recipient; small frames
//! waiting together are copied end to end onto the queue's open buffer (what the kernel
//! copies next anyway), so a burst to one client becomes one buffer without a refcount
//! per frame.
//!
//! Invariants, checked by the property tests at the end of this file:
//! - [`WriteQueue::bytes`] is the sum of the lengths of the queued frames (the upgrade
//!   head not included: it is not a message and does not count against
//!   `max_backpressure`); [`WriteQueue::backlog`] adds the frames of the batch being
//!   written, until [`WriteQueue::written`] says the write is done.
//! - Bytes leave in the order they were pushed, the upgrade head ahead of all of them;
//!   the concatenation of every batch taken equals the concatenation of every frame
//!   pushed.
//! - A batch holds whole frames only, at most [`MAX_GATHER`] bytes with the upgrade head
//!   unless it is a single larger frame.
//! - Once [`WriteQueue::close`] is called nothing more is queued, so the close frame is
//!   the last thing written; `closing` and `finished` (the reader is gone) both make the
//!   writer end, instead of parking, once the queue is drained.
//! - [`WriteQueue::clear`] (a slow consumer's queue is discarded) keeps the head: a close
//!   frame without the upgrade before it would mean nothing to the client.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoVecBuf;
use monoio::io::AsyncWriteRent;
use smallvec::SmallVec;

/// Largest single write the writer gathers from the queue.
pub const MAX_GATHER: usize = 256 * 1024;
/// Frames up to this size are copied into the queue's open buffer once a second one
/// waits behind them; larger ones are always queued as shared `Bytes`. Up to here a
/// burst is cheaper copied than shared (`benches/benches/queue.rs`).
pub const COPY_MAX: usize = 256;
/// The least the open buffer is first made for: its first allocation holds the two
/// frames that open it, rounded up to a power of two, and it grows by doubling.
///
/// Not a fixed kilobyte: after a stall of the worker every member of a busy room opens
/// a buffer at once, and 1 000 buffers of 1 KiB for two 150-byte frames each took a
/// sixth of the worker's time between waking and its first write, most of it mimalloc
/// laying out fresh pages for them (`results/bench/stalls-tail-ab.md`).
const TAIL_MIN: usize = 256;
/// Most iovecs one `writev` takes (Linux `UIO_MAXIOV`); a longer batch goes out in
/// several calls.
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The batch holds something to write.
    Write,
    /// Nothing queued and the connection is open: park until something is.
    Park,
    /// Nothing queued and the connection is closing or its reader gone: end.
    End,
}

/// Frames waiting for the writer.
///
/// Everything queued lives in one box that exists only while something is queued or
/// being written: an idle connection's queue is a null pointer and two flags, and
/// the box (with its ring and open buffer) goes back when the writer parks.
#[derive(Default)]
pub struct WriteQueue {
    pending: Option<Box<Pending>>,
    /// A close was queued: nothing more is accepted and the writer ends after it.
    closing: bool,
    /// The reader is gone: the writer ends once the queue is empty.
    finished: bool,
}

/// What a [`WriteQueue`] holds between the first frame of a burst and the writer's
/// park.
#[derive(Default)]
struct Pending {
    /// The upgrade's HTTP response while it waits for the first write. Kept apart from
    /// the frames: it is not a message, does not count against `max_backpressure`,
    /// and a slow-consumer close must not discard it (the client would get a close
    /// frame without the upgrade).
    head: Option<Bytes>,
    /// Frames sealed off ahead of `lone` and the tail. Made only when something is
    /// sealed off: a burst of one frame, or of small frames only, never touches it.
    frames: VecDeque<Bytes>,
    /// The frame queued last, behind `frames`, when it is not on the tail: shared, not
    /// copied, so a lone frame (the common burst at low rates) costs no buffer, and
    /// held apart from `frames` so that such a burst never makes the ring. The next
    /// frame seals it into `frames`, or, both being small, copies it onto the tail.
    /// Never set while the tail holds anything.
    lone: Option<Bytes>,
    /// Small frames copied end to end, behind everything in `frames`. Handed to the
    /// writer whole (buffer and all).
    tail: BytesMut,
    /// Bytes of frames in `frames`, `lone` and `tail`.
    bytes: usize,
    /// Bytes of frames handed to the writer and not yet written.
    in_flight: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.frames.is_empty() && self.lone.is_none() && self.tail.is_empty()
    }

    /// The lone frame, or the tail as one frame, whichever holds anything.
    fn take_last(&mut self) -> Option<Bytes> {
        self.lone
            .take()
            .or_else(|| (!self.tail.is_empty()).then(|| std::mem::take(&mut self.tail).freeze()))
    }

    /// Bytes in the lone frame or on the tail.
    fn last_len(&self) -> usize {
        self.lone.as_ref().map_or(self.tail.len(), Bytes::len)
    }

    /// Moves the lone frame or the tail, whichever holds anything, to the end of
    /// `frames`.
    fn seal_tail(&mut self) {
        if let Some(last) = self.take_last() {
            self.frames.push_back(last);
        }
    }
}

impl WriteQueue {
    /// Nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.as_ref().is_none_or(|p| p.is_empty())
    }

    /// Bytes of queued frames (the upgrade head not included).
    pub fn bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes)
    }

    /// Bytes of frames queued or being written: what `max_backpressure` bounds. A
    /// frame is accepted while this is under the limit (uWS's rule), so one frame of
    /// any size goes out on an idle connection, and a connection holds at most
    /// `max_backpressure` plus one frame.
    pub fn backlog(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes + p.in_flight)
    }

    /// The batch last taken is written (or failed): its frames no longer count.
    pub fn written(&mut self) {
        if let Some(p) = &mut self.pending {
            p.in_flight = 0;
        }
    }

    /// A close is queued; nothing more may be.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The reader is gone; nothing more may be queued.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The queue's contents, made at the first frame of a burst.
    fn pending(&mut self) -> &mut Pending {
        self.pending.get_or_insert_default()
    }

    /// Queues the upgrade's HTTP response ahead of every frame.
    pub fn set_head(&mut self, head: Bytes) {
        self.pending().head = Some(head);
    }

    /// Queues `frame` behind everything else: shared, unless it and the frame before it
    /// are small, when both are copied onto the tail (and small frames after them).
    pub fn push(&mut self, frame: &Bytes) {
        debug_assert!(!self.closing, "nothing is queued behind a close");
        let p = self.pending();
        p.bytes += frame.len();
        let small = frame.len() <= COPY_MAX;
        if small && !p.tail.is_empty() {
            p.tail.extend_from_slice(frame);
        } else if small && let Some(first) = p.lone.take_if(|f| f.len() <= COPY_MAX) {
            p.tail.reserve(
                (first.len() + frame.len())
                    .next_power_of_two()
                    .max(TAIL_MIN),
            );
            p.tail.extend_from_slice(&first);
            p.tail.extend_from_slice(frame);
        } else {
            p.seal_tail();
            p.lone = Some(frame.clone());
        }
    }

    /// Marks the last frame pushed as the close: nothing more is accepted.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// The reader is gone: the writer ends once what is queued is written.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Discards everything but the upgrade response.
    pub fn clear(&mut self) {
        if let Some(p) = &mut self.pending {
            p.frames.clear();
            p.lone = None;
            p.tail = BytesMut::new();
            p.bytes = 0;
        }
    }

    /// Moves the upgrade response, if it still waits, and queued frames into `out`,
    /// whole frames only, up to [`MAX_GATHER`] bytes in all (or one larger frame).
    /// [`Next::Park`] when the queue is empty and open, [`Next::End`] when it is empty
    /// and closing or finished.
    pub fn take_batch(&mut self, out: &mut Batch) -> Next {
        let ended = self.finished || self.closing;
        let Some(p) = &mut self.pending else {
            return if ended { Next::End } else { Next::Park };
        };
        // The head shares the batch's size bound with the frames behind it.
        let mut gathered = 0;
        if let Some(head) = p.head.take() {
            gathered = head.len();
            out.frames.push(head);
        }
        let mut taken = 0;
        // With nothing sealed off, the lone frame or the tail goes to the batch straight
        // (the common burst: `frames` is never made); else it is sealed behind them.
        if p.frames.is_empty() && (gathered == 0 || gathered + p.last_len() <= MAX_GATHER) {
            if let Some(last) = p.take_last() {
                taken = last.len();
                out.frames.push(last);
            }
        } else {
            p.seal_tail();
        }
        while let Some(front) = p.frames.front() {
            if gathered > 0 && gathered + front.len() > MAX_GATHER {
                break;
            }
            gathered += front.len();
            taken += front.len();
            if let Some(frame) = p.frames.pop_front() {
                out.frames.push(frame);
            }
        }
        if out.frames.is_empty() {
            // Drained, and no write outstanding: the box goes until the next frame.
            if p.in_flight == 0 {
                self.pending = None;
            }
            return if ended { Next::End } else { Next::Park };
        }
        p.bytes -= taken;
        p.in_flight += taken;
        Next::Write
    }
}

/// The frames of one batch: one is held inline, so the common batch (a burst of one
/// frame, or of small frames copied onto one buffer) allocates nothing.
type Frames = SmallVec<[Bytes; 1]>;

/// Frames taken from a [`WriteQueue`] for one write, and the buffer a batch of small
/// frames is copied into, reused from one batch to the next.
#[derive(Default)]
pub struct Batch {
    frames: Frames,
    /// Where a batch of small frames is copied into one buffer.
    gather: BytesMut,
}

/// How a batch goes to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One frame, written as it is.
    Single,
    /// Small frames only: copied into one buffer (a few hundred bytes cost less to copy
    /// than to describe).
    Gathered,
    /// A frame over [`COPY_MAX`] is in it: one iovec per frame, nothing copied.
    Vectored,
}

impl Batch {
    /// The frames taken, in order.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    /// Bytes in the batch.
    pub fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops the frames (the buffers stay for the next batch).
    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// How this batch is written.
    pub fn plan(&self) -> Plan {
        match self.frames.len() {
            0 | 1 => Plan::Single,
            _ if self.frames.iter().any(|f| f.len() > COPY_MAX) => Plan::Vectored,
            _ => Plan::Gathered,
        }
    }

    /// Writes the whole batch to `io` and empties it (its buffers stay for the next
    /// one); returns the bytes written.
    ///
    /// The writer task that awaits this is made anew for each burst, so its size is
    /// paid once per burst per connection, and after a stall by every member of every
    /// busy room at once. So the batch is borrowed, not moved in; the vectored write (a
    /// frame over [`COPY_MAX`] in the batch) is boxed, its iovecs with it; and one
    /// buffer is written by [`write_whole`] rather than monoio's `write_all`: the writer
    /// task is under 512 bytes, against 896 with all of it inline
    /// (`writer_task_is_small`).
    pub async fn write_to<W: AsyncWriteRent>(&mut self, io: &mut W) -> io::Result<usize> {
        let len = self.len();
        let result = match self.plan() {
            Plan::Single => match self.frames.pop() {
                Some(frame) => write_whole(io, frame).await,
                None => Ok(()),
            },
            Plan::Gathered => {
                for frame in self.frames.drain(..) {
                    self.gather.extend_from_slice(&frame);
                }
                write_whole(io, self.gather.split().freeze()).await
            }
            Plan::Vectored => {
                let vectored = Vectored::new(std::mem::take(&mut self.frames));
                let (result, vectored) = Box::pin(vectored.write(io, len)).await;
                // Its buffer (the frames spilled past the one held inline) is kept for
                // the next batch.
                self.frames = vectored.frames;
                result
            }
        };
        self.clear();
        result.map(|_| len)
    }
}

/// A vectored write under way: the batch's frames and one iovec per frame, owned
/// together because the runtime takes them by value for the duration of a `writev`.
/// Made only for a batch holding a frame over [`COPY_MAX`].
struct Vectored {
    frames: Frames,
    /// One iovec per frame, pointing into `frames`.
    iovecs: Vec<libc::iovec>,
    /// iovecs before this one are written.
    sent: usize,
}

impl Vectored {
    /// One iovec per frame, nothing sent yet.
    fn new(frames: Frames) -> Self {
        let iovecs = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            })
            .collect();
        Self {
            frames,
            iovecs,
            sent: 0,
        }
    }

    /// `writev` until all `len` bytes of the frames are written, resuming a short write
    /// mid-iovec (monoio 0.2's `write_vectored_all` does not advance the base of a
    /// partly written iovec, so it is not used).
    async fn write<W: AsyncWriteRent>(mut self, io: &mut W, len: usize) -> (io::Result<()>, Self) {
        let mut left = len;
        while left > 0 {
            let result;
            (result, self) = io.writev(self).await;
            match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), self),
                Ok(n) => {
                    self.advance(n);
                    left = left.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), self),
            }
        }
        (Ok(()), self)
    }

    /// Marks `n` more bytes written: whole iovecs are skipped, a partly written one
    /// starts after what was written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(iov) = self.iovecs.get_mut(self.sent) else {
                return;
            };
            if n < iov.iov_len {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
                iov.iov_len -= n;
                return;
            }
            n -= iov.iov_len;
            self.sent += 1;
        }
    }

    /// The iovecs not yet written, at most [`IOV_MAX`] of them.
    fn unsent(&self) -> &[libc::iovec] {
        let rest = self.iovecs.get(self.sent..).unwrap_or_default();
        rest.get(..IOV_MAX).unwrap_or(rest)
    }
}

/// Writes all of `buf`, resuming after a short write.
async fn write_whole<W: AsyncWriteRent>(io: &mut W, mut buf: Bytes) -> io::Result<()> {
    while !buf.is_empty() {
        let result;
        (result, buf) = io.write(buf).await;
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes::Buf::advance(&mut buf, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// SAFETY: `unsent` points into `iovecs`, whose heap buffer does not move when the write
// does and is not touched while the runtime holds it (it holds it by value and gives it
// back). Each iovec in it describes bytes inside one of `frames` (built by `new`, then
// only moved forward within the same frame by `advance`), and a `Bytes`'s data stays
// where it is for as long as the `Bytes` lives, however it moves (an inline `Bytes`
// moving with the `SmallVec` is the handle, not the data it points to).
unsafe impl IoVecBuf for Vectored {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.unsent().as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.unsent().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| seed.wrapping_add(i as u8))
                .collect::<Vec<_>>(),
        )
    }

    fn batch_of(frames: Vec<Bytes>) -> Batch {
        Batch {
            frames: frames.into(),
            ..Batch::default()
        }
    }

    fn take(q: &mut WriteQueue) -> (Next, Vec<Bytes>) {
        let mut batch = Batch::default();
        let next = q.take_batch(&mut batch);
        (next, batch.frames().to_vec())
    }

    /// The bytes the unsent iovecs describe.
    fn unsent_bytes(write: &Vectored) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in write.unsent() {
            // SAFETY: every iovec points into a frame the write holds (the invariant
            // under test; a wrong one would read outside it and fail under Miri/ASan
            // or show as a mismatch below).
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
            });
        }
        out
    }

    #[test]
    fn an_empty_open_queue_parks_and_a_closed_or_finished_one_ends() {
        let mut q = WriteQueue::default();
        assert_eq!(take(&mut q).0, Next::Park);
        q.finish();
        assert_eq!(take(&mut q).0, Next::End);
        let mut q = WriteQueue::default();
        q.push(&frame(10, 0));
        q.close();
        assert!(q.is_closing());
        assert_eq!(take(&mut q).0, Next::Write);
        assert_eq!(take(&mut q).0, Next::End);
    }

    #[test]
    fn the_head_goes_first_and_is_not_counted() {
        let mut q = WriteQueue::default();
        q.push(&frame(1000, 1));
        q.set_head(Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"));
        assert_eq!(q.bytes(), 1000);
        let (next, frames) = take(&mut q);
        assert_eq!(next, Next::Write);
        assert_eq!(&frames[0][..], b"HTTP/1.1 101\r\n\r\n");
        assert_eq!(frames[1].len(), 1000);
        assert_eq!(q.bytes(), 0);
    }

    /// Found by the property test in CI: the head was not counted against the batch's
    /// bound, so head + frames could pass `MAX_GATHER`.
    #[test]
    fn the_head_counts_against_the_batch_bound() {
        let mut q = WriteQueue::default();
        q.set_head(frame(271, 0xAA));
        q.push(&frame(300, 1));
        q.push(&frame(MAX_GATHER - 300, 2));
        let (_, first) = take(&mut q);
        assert_eq!(first.len(), 2, "head and the first frame");
        let (_, second) = take(&mut q);
        assert_eq!(second.len(), 1, "the frame that would pass the bound waits");
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn the_backlog_counts_the_batch_being_written_until_it_is_written() {
        let mut q = WriteQueue::default();
        q.push(&frame(1000, 1));
        let mut batch = Batch::default();
        assert_eq!(q.take_batch(&mut batch), Next::Write);
        q.push(&frame(10, 2));
        assert_eq!((q.bytes(), q.backlog()), (10, 1010));
        q.written();
        assert_eq!((q.bytes(), q.backlog()), (10, 10));
    }

    #[test]
    fn clear_discards_frames_but_keeps_the_head() {
        let mut q = WriteQueue::default();
        q.set_head(Bytes::from_static(b"head"));
        q.push(&frame(10, 0));
        q.push(&frame(10, 1));
        q.push(&frame(5000, 2));
        q.clear();
        assert_eq!(q.bytes(), 0);
        q.push(&frame(3, 9));
        let (_, frames) = take(&mut q);
        assert_eq!(frames, vec![Bytes::from_static(b"head"), frame(3, 9)]);
    }

    #[test]
    fn a_drained_queue_holds_nothing_until_its_next_frame() {
        let mut q = WriteQueue::default();
        assert!(q.pending.is_none());
        q.push(&frame(10, 0));
        let mut batch = Batch::default();
        assert_eq!(q.take_batch(&mut batch), Next::Write);
        assert_eq!(take(&mut q).0, Next::Park);
        assert!(q.pending.is_some(), "kept while its batch is being written");
        assert_eq!(q.backlog(), 10);
        q.written();
        assert_eq!(take(&mut q).0, Next::Park);
        assert!(q.pending.is_none());
        assert_eq!((q.bytes(), q.backlog()), (0, 0));
        q.push(&frame(5, 1));
        assert_eq!(take(&mut q).1, vec![frame(5, 1)]);
    }

    #[test]
    fn a_lone_small_frame_is_shared_and_a_second_one_is_copied_behind_it() {
        let mut q = WriteQueue::default();
        let a = frame(100, 0);
        q.push(&a);
        let (_, frames) = take(&mut q);
        assert_eq!(frames[0].as_ptr(), a.as_ptr());
        let b = frame(100, 1);
        q.push(&a);
        q.push(&b);
        let (_, frames) = take(&mut q);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0], [a, b].concat());
    }

    /// A burst of one frame (of any size), or of small frames only, reaches its batch
    /// without the ring of sealed frames or the batch's own buffer being made: after a
    /// stall every member of every busy room has such a burst at once.
    #[test]
    fn a_burst_of_one_frame_or_of_small_ones_makes_no_ring() {
        for burst in [vec![100], vec![COPY_MAX + 1], vec![100, 100, 50]] {
            let mut q = WriteQueue::default();
            for (i, &n) in burst.iter().enumerate() {
                q.push(&frame(n, i as u8));
            }
            let mut batch = Batch::default();
            assert_eq!(q.take_batch(&mut batch), Next::Write);
            assert_eq!(batch.frames().len(), 1, "burst {burst:?}");
            assert!(!batch.frames.spilled(), "burst {burst:?}");
            let p = q.pending.as_ref().expect("kept while its batch is written");
            assert_eq!(p.frames.capacity(), 0, "burst {burst:?}");
        }
    }

    #[test]
    fn plan_copies_only_batches_of_small_frames() {
        assert_eq!(Batch::default().plan(), Plan::Single);
        let plan = |frames| batch_of(frames).plan();
        assert_eq!(plan(vec![frame(COPY_MAX + 1, 0)]), Plan::Single);
        assert_eq!(plan(vec![frame(20, 0), frame(COPY_MAX, 1)]), Plan::Gathered);
        assert_eq!(
            plan(vec![frame(20, 0), frame(COPY_MAX + 1, 1)]),
            Plan::Vectored
        );
    }

    #[test]
    fn iovecs_point_at_the_frames_and_advance_across_them() {
        let sizes = [0, 1, 7, 300, 64, 0, 5000, 2];
        let frames: Frames = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| frame(n, i as u8))
            .collect();
        let all: Vec<u8> = frames.concat();
        for first in 0..=all.len() {
            for second in [0, 1, 3, 299, 5000] {
                let mut write = Vectored::new(frames.clone());
                for (iov, f) in write.iovecs.iter().zip(&frames) {
                    assert_eq!(iov.iov_base.cast_const().cast::<u8>(), f.as_ptr());
                }
                write.advance(first);
                assert_eq!(unsent_bytes(&write), all[first..]);
                let second = second.min(all.len() - first);
                write.advance(second);
                assert_eq!(unsent_bytes(&write), all[first + second..]);
            }
        }
    }

    #[test]
    fn a_batch_over_iov_max_frames_is_offered_iov_max_at_a_time() {
        let mut write = Vectored::new((0..IOV_MAX + 5).map(|i| frame(1, i as u8)).collect());
        assert_eq!(write.read_iovec_len(), IOV_MAX);
        write.advance(IOV_MAX);
        assert_eq!(write.read_iovec_len(), 5);
        write.advance(5);
        assert_eq!(write.read_iovec_len(), 0);
    }

    /// A writer that takes at most the next of `caps` bytes per call, so every write
    /// comes back short somewhere: mid-iovec, on an iovec boundary, across several.
    struct Trickle {
        out: Vec<u8>,
        caps: Vec<usize>,
        calls: usize,
    }

    impl Trickle {
        fn cap(&mut self) -> usize {
            let cap = self.caps[self.calls % self.caps.len()];
            self.calls += 1;
            cap
        }
    }

    impl AsyncWriteRent for Trickle {
        fn write<T: monoio::buf::IoBuf>(
            &mut self,
            buf: T,
        ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
            let n = buf.bytes_init().min(self.cap());
            // SAFETY: `read_ptr` is valid for `bytes_init` bytes, and n is at most that.
            let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
            self.out.extend_from_slice(bytes);
            std::future::ready((Ok(n), buf))
        }

        fn writev<T: IoVecBuf>(
            &mut self,
            buf: T,
        ) -> impl std::future::Future<Output = monoio::BufResult<usize, T>> {
            let mut cap = self.cap();
            let start = self.out.len();
            for i in 0..buf.read_iovec_len() {
                // SAFETY: `read_iovec_ptr` points at `read_iovec_len` valid iovecs.
                let iov = unsafe { *buf.read_iovec_ptr().add(i) };
                let n = iov.iov_len.min(cap);
                // SAFETY: an iovec describes `iov_len` readable bytes (the invariant the
                // `IoVecBuf` impl under test promises).
                let bytes = unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), n) };
                self.out.extend_from_slice(bytes);
                cap -= n;
            }
            std::future::ready((Ok(self.out.len() - start), buf))
        }

        async fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A vectored write through a real socket with a small send buffer (so the kernel
    /// takes it in several short writes), on the legacy driver and on io_uring when
    /// the kernel allows it.
    #[test]
    fn write_to_a_socket_delivers_every_byte_on_both_drivers() {
        let frames: Vec<Bytes> = (0..24u8)
            .map(|i| frame(if i % 3 == 0 { 17 } else { 20_000 + i as usize }, i))
            .collect();
        let want: Vec<u8> = frames.concat();
        for use_uring in [false, monoio::utils::detect_uring()] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let len = want.len();
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                let (mut s, _) = listener.accept().expect("accept");
                let mut got = Vec::with_capacity(len);
                s.read_to_end(&mut got).expect("read");
                got
            });
            let frames = frames.clone();
            let write = async move {
                let mut s = monoio::net::TcpStream::connect(addr)
                    .await
                    .expect("connect");
                nix::sys::socket::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    nix::sys::socket::sockopt::SndBuf,
                    &4096,
                )
                .expect("SO_SNDBUF");
                let mut batch = batch_of(frames);
                assert_eq!(batch.plan(), Plan::Vectored);
                let result = batch.write_to(&mut s).await;
                assert_eq!(result.expect("write"), len);
                assert!(batch.is_empty());
            };
            if use_uring {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .build()
                    .expect("uring runtime")
                    .block_on(write);
            } else {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .build()
                    .expect("legacy runtime")
                    .block_on(write);
            }
            let got = reader.join().expect("reader");
            assert!(got == want, "bytes differ (uring: {use_uring})");
        }
    }

    /// One step of a property run: push a frame of this length, or take a batch.
    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Take,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..=COPY_MAX + 2).prop_map(Op::Push),
            2 => (COPY_MAX - 2..=COPY_MAX * 4).prop_map(Op::Push),
            1 => (MAX_GATHER / 2..=MAX_GATHER + 1000).prop_map(Op::Push),
            2 => Just(Op::Take),
        ]
    }

    /// Checks one batch's size bound; appends its bytes to `taken` and the (stream
    /// offset, data pointer) of each of its frames to `handed`.
    fn take_into(batch: &Batch, taken: &mut Vec<u8>, handed: &mut Vec<(usize, usize)>) {
        let frames = batch.frames();
        let len = batch.len();
        assert!(
            len <= MAX_GATHER || frames.len() == 1,
            "{} frames, {len} bytes in one batch",
            frames.len()
        );
        for f in frames {
            if !f.is_empty() {
                handed.push((taken.len(), f.as_ptr() as usize));
            }
            taken.extend_from_slice(f);
        }
    }

    proptest! {
        #[test]
        fn batches_hand_out_exactly_what_was_pushed_in_order(
            ops in proptest::collection::vec(op(), 0..60),
            head in proptest::option::of(1usize..300),
        ) {
            let mut q = WriteQueue::default();
            let mut pushed = Vec::new();
            if let Some(n) = head {
                q.set_head(frame(n, 0xAA));
                pushed.extend_from_slice(&frame(n, 0xAA));
            }
            let head_len = pushed.len();
            // (offset in the pushed stream, data pointer) of each large frame pushed,
            // and of each frame handed out.
            let mut large = Vec::new();
            let mut handed = Vec::new();
            let mut taken = Vec::new();
            let mut batch = Batch::default();
            for (i, op) in ops.iter().chain(std::iter::once(&Op::Take)).enumerate() {
                match *op {
                    Op::Push(n) => {
                        let f = frame(n, i as u8);
                        if n > COPY_MAX {
                            large.push((pushed.len(), f.as_ptr() as usize));
                        }
                        pushed.extend_from_slice(&f);
                        q.push(&f);
                    }
                    Op::Take => loop {
                        let first = taken.is_empty();
                        match q.take_batch(&mut batch) {
                            Next::Write => {}
                            Next::Park => break,
                            Next::End => panic!("an open queue ended"),
                        }
                        if first && head_len > 0 {
                            prop_assert_eq!(&batch.frames()[0][..], &pushed[..head_len]);
                        }
                        take_into(&batch, &mut taken, &mut handed);
                        batch.clear();
                    },
                }
                // The head is always in the first batch, so whatever was taken beyond
                // it was frames.
                let frames_pushed = pushed.len() - head_len;
                let frames_taken = taken.len().saturating_sub(head_len);
                prop_assert_eq!(q.bytes(), frames_pushed - frames_taken);
            }
            prop_assert!(q.is_empty());
            prop_assert!(taken == pushed, "taken bytes differ from pushed bytes");
            for l in &large {
                prop_assert!(handed.contains(l), "large frame at {} was copied", l.0);
            }
        }

        #[test]
        fn write_to_resumes_short_writes_across_iovecs(
            sizes in proptest::collection::vec(0usize..3 * COPY_MAX, 1..40),
            caps in proptest::collection::vec(1usize..2 * COPY_MAX, 1..8),
        ) {
            let mut batch = batch_of(sizes.iter().enumerate().map(|(i, &n)| frame(n, i as u8)).collect());
            let want: Vec<u8> = batch.frames.concat();
            let mut out = Trickle { out: Vec::new(), caps, calls: 0 };
            let result = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .expect("runtime")
                .block_on(batch.write_to(&mut out));
            prop_assert_eq!(result.expect("write"), want.len());
            prop_assert!(batch.is_empty());
            prop_assert!(out.out == want, "written bytes differ");
        }

        #[test]
        fn clear_keeps_the_head_and_zeroes_the_count(
            before in proptest::collection::vec(0usize..2000, 0..20),
            after in proptest::collection::vec(0usize..2000, 0..20),
        ) {
            let mut q = WriteQueue::default();
            q.set_head(Bytes::from_static(b"head"));
            for (i, &n) in before.iter().enumerate() {
                q.push(&frame(n, i as u8));
            }
            q.clear();
            prop_assert_eq!(q.bytes(), 0);
            let mut want = b"head".to_vec();
            for (i, &n) in after.iter().enumerate() {
                let f = frame(n, 100 + i as u8);
                want.extend_from_slice(&f);
                q.push(&f);
            }
            prop_assert_eq!(q.bytes(), want.len() - 4);
            let mut batch = Batch::default();
            let mut got = Vec::new();
            while q.take_batch(&mut batch) == Next::Write {
                got.extend(batch.frames().concat());
                batch.clear();
            }
            prop_assert!(got == want);
        }
    }
}
