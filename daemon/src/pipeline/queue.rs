//! A pipeline's one queue: every message that waits for the model, from its arrival (zenoh's threads) until the
//! worker runs it or answers it.
//!
//! What waits is in one of three places, all under one lock and one bound (`queue_capacity` messages,
//! `queue_bytes` payload bytes):
//! - `arrived`: as it came, oldest first, not yet decoded;
//! - in the worker's hands: the arrivals it took at the start of its turn to prepare (decode, preprocess);
//! - `ready`: prepared, ordered earliest-deadline-first, for the worker to run or batch.
//!
//! The door ([`Sender::push`]) applies the pipeline's [`Overload`] policy against all three, so the bound holds
//! while the model runs too. A plain bounded channel could only refuse the newest message, which is right for `fifo`
//! but the opposite of what `latest` promises: under a flood of sensor frames the newest must get in and the oldest
//! go, wherever the oldest waits. An evicted message comes back to the caller, who answers it `dropped: superseded`.
//!
//! Each turn, the worker takes every arrival at once, prepares them, then runs the most urgent: preparing one more
//! before running would let a newer arrival supersede what was just prepared, and under a flood of one key that
//! arrives faster than it can be prepared, nothing would ever run. For the same reason what the worker holds in its
//! hands counts, but is never evicted. So when the newest message cannot fit beside them even with everything else
//! evicted (only while the worker prepares, when the bound is as small as its hands' share: `queue_capacity` 1, or
//! payloads together larger than `queue_bytes`), `latest` lets the newest in over the bound by that one message
//! rather than refuse it; the next newcomer evicts it. `fifo` never exceeds the bound.
//!
//! The push never blocks the ingress: the worker holds the lock only to move a message between places.

use std::cmp::Ordering as Order;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Envelope, Prepared};

/// What gives when a pipeline's queue is full (by count or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// Refuse the newest message (`dropped: queue_full`): every accepted message is worth running.
    Fifo,
    /// Keep the newest `per_key` messages of each key, and the newest overall; older ones are answered
    /// `dropped: superseded`. Right for sensor streams, where an old reading is worthless once a new one arrived.
    Latest {
        /// Messages kept per key.
        per_key: usize,
    },
}

/// How long a message without a deadline yields to messages with one. Ordering it last forever would let a steady
/// stream of deadline traffic starve it; ordering it as if due this long after arrival bounds its wait behind
/// urgent work, as a deadline I/O scheduler treats reads, while messages with a deadline inside that window go
/// first. Among messages without a deadline, arrival order is kept.
pub const NO_DEADLINE_DUE: Duration = Duration::from_secs(1);

/// A prepared message waiting for the model.
#[derive(Debug)]
pub struct Waiting {
    /// The message.
    pub prepared: Prepared,
    /// Its place in arrival order.
    sequence: u64,
    /// Its payload's length, which counts against `queue_bytes`.
    bytes: usize,
    /// When it is due, for ordering only: its deadline, or for a message without one, [`NO_DEADLINE_DUE`] after its
    /// arrival (it is never expired for it).
    due: Instant,
}

impl Waiting {
    fn new(prepared: Prepared, sequence: u64, bytes: usize) -> Self {
        let due = prepared.deadline.map_or(prepared.arrived + NO_DEADLINE_DUE, |deadline| deadline.at);
        Self { prepared, sequence, bytes, due }
    }

    /// Earliest due first; ties in arrival order.
    fn urgency(&self) -> (Instant, u64) {
        (self.due, self.sequence)
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.sequence == other.sequence
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Order {
        // BinaryHeap pops the greatest: the most urgent must compare greatest.
        other.urgency().cmp(&self.urgency())
    }
}

/// A message taken out of the queue without running: evicted by a newer one, or left when the worker failed.
#[derive(Debug)]
pub enum Waiter {
    /// Not yet decoded.
    Arrived(Box<Envelope>),
    /// Prepared, waiting for the model.
    Ready(Box<Prepared>),
}

/// An arrival in the worker's hands, to be filed prepared or discarded (see [`Receiver::take_arrivals`]).
#[derive(Debug)]
#[must_use = "an arrival in hand counts against the bound until it is filed or discarded"]
pub struct Ticket {
    sequence: u64,
    bytes: usize,
}

struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    overload: Overload,
}

struct State {
    arrived: VecDeque<(u64, Envelope)>,
    ready: BinaryHeap<Waiting>,
    /// Messages waiting in all three places, and their payload bytes.
    count: usize,
    bytes: usize,
    /// The next arrival's sequence number.
    sequence: u64,
    /// The count allowed now: `capacity`, or a quarter of it under memory pressure (see [`Receiver::set_pressed`]).
    limit: usize,
    /// True once the worker failed: nothing will take messages from here again.
    failed: bool,
    /// False once the sending side is gone: the worker drains what is left and stops.
    open: bool,
    /// Set by a [`Waker`]: the worker has something to do besides messages (a batch back from a model instance).
    woken: bool,
}

/// Where the oldest message of a selection waits.
#[derive(Clone, Copy)]
enum Place {
    Ready(u64),
    Arrived(usize),
}

impl State {
    fn full(&self, bytes: usize, capacity_bytes: usize) -> bool {
        self.count >= self.limit || self.bytes + bytes > capacity_bytes
    }

    /// Where the oldest evictable message on `key` (any key: `None`) is, if there is one: ready messages arrived
    /// before every message in `arrived`.
    fn oldest(&self, key: Option<&str>) -> Option<Place> {
        let matches = |candidate: &str| key.is_none_or(|key| key == candidate);
        let ready = self.ready.iter().filter(|waiting| matches(&waiting.prepared.item.key));
        if let Some(oldest) = ready.map(|waiting| waiting.sequence).min() {
            return Some(Place::Ready(oldest));
        }
        self.arrived.iter().position(|(_, envelope)| matches(&envelope.message.key)).map(Place::Arrived)
    }

    /// Evictable messages waiting on `key`.
    fn on_key(&self, key: &str) -> usize {
        let ready = self.ready.iter().filter(|waiting| waiting.prepared.item.key == key).count();
        ready + self.arrived.iter().filter(|(_, envelope)| envelope.message.key == key).count()
    }

    /// Takes the message at `place` out of the queue.
    fn evict(&mut self, place: Place) -> Option<Waiter> {
        let (waiter, bytes) = match place {
            Place::Ready(sequence) => {
                let mut all = std::mem::take(&mut self.ready).into_vec();
                let index = all.iter().position(|waiting| waiting.sequence == sequence)?;
                let evicted = all.swap_remove(index);
                self.ready = all.into();
                (Waiter::Ready(Box::new(evicted.prepared)), evicted.bytes)
            }
            Place::Arrived(index) => {
                let (_, envelope) = self.arrived.remove(index)?;
                let bytes = envelope.message.payload.len();
                (Waiter::Arrived(Box::new(envelope)), bytes)
            }
        };
        self.count -= 1;
        self.bytes -= bytes;
        Some(waiter)
    }

    /// A message leaves for good (it runs, or is answered).
    fn leave(&mut self, bytes: usize) {
        debug_assert!(self.count > 0 && self.bytes >= bytes, "a message left that was not counted");
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A new queue of `capacity` messages (at least one) and `capacity_bytes` payload bytes (a larger single payload is
/// never queued: the ingress answers it before).
pub fn bounded(capacity: usize, capacity_bytes: usize, overload: Overload) -> (Sender, Receiver) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            arrived: VecDeque::new(),
            ready: BinaryHeap::new(),
            count: 0,
            bytes: 0,
            sequence: 0,
            limit: capacity,
            failed: false,
            open: true,
            woken: false,
        }),
        arrived: Condvar::new(),
        capacity,
        capacity_bytes,
        overload,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

/// Why a message was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full and the policy keeps what it holds (`fifo`).
    Full(Box<Envelope>),
    /// The worker is gone (shutdown).
    Closed(Box<Envelope>),
    /// The worker failed (a bug): no message of this pipeline can be processed until zinferd restarts.
    Failed(Box<Envelope>),
}

/// The ingress's end. Dropping it closes the queue.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `envelope` if what waits leaves room for it, by the pipeline's policy:
    /// - `fifo` refuses it when the queue is full;
    /// - `latest` never refuses it: it first evicts the oldest messages of its key beyond `per_key - 1`, then the
    ///   oldest messages of any key until it fits (see the module docs for the one message being prepared).
    ///
    /// The evicted messages are returned, for the caller to answer `dropped: superseded`.
    pub fn push(&self, envelope: Envelope) -> Result<Vec<Waiter>, Refused> {
        let mut state = self.0.lock();
        if state.failed {
            return Err(Refused::Failed(Box::new(envelope)));
        }
        if !state.open {
            return Err(Refused::Closed(Box::new(envelope)));
        }
        let bytes = envelope.message.payload.len();
        let mut evicted = Vec::new();
        match self.0.overload {
            Overload::Fifo if state.full(bytes, self.0.capacity_bytes) => {
                return Err(Refused::Full(Box::new(envelope)));
            }
            Overload::Fifo => {}
            Overload::Latest { per_key } => {
                let key = envelope.message.key.as_str();
                while state.on_key(key) >= per_key.max(1) {
                    let Some(place) = state.oldest(Some(key)) else { break };
                    evicted.extend(state.evict(place));
                }
                while state.full(bytes, self.0.capacity_bytes) {
                    let Some(place) = state.oldest(None) else { break };
                    evicted.extend(state.evict(place));
                }
            }
        }
        state.sequence += 1;
        let sequence = state.sequence;
        state.count += 1;
        state.bytes += bytes;
        state.arrived.push_back((sequence, envelope));
        drop(state);
        self.0.arrived.notify_one();
        Ok(evicted)
    }

    /// Messages and payload bytes waiting, wherever they wait.
    pub fn load(&self) -> (usize, usize) {
        let state = self.0.lock();
        (state.count, state.bytes)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().open = false;
        self.0.arrived.notify_all();
    }
}

/// What the worker does with a waiting message when it forms a batch (see [`Receiver::fill_batch`]).
pub enum Choice<V> {
    /// It joins the batch.
    Join,
    /// It is answered now, without running, with this verdict.
    Answer(V),
    /// It keeps waiting.
    Skip,
}

/// The worker's end.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// Waits up to `timeout` for an arrival: `Timeout` also as soon as a [`Waker`] wakes it, and `Disconnected` once
    /// the queue is closed and nothing has arrived.
    pub fn wait_for_arrival(&self, timeout: Duration) -> Result<(), RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if !state.arrived.is_empty() {
                return Ok(());
            }
            if std::mem::take(&mut state.woken) {
                return Err(RecvTimeoutError::Timeout);
            }
            if !state.open {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self.0.arrived.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }

    /// Every arrival, oldest first, for the worker to prepare. Each still counts against the bound until its
    /// ticket is handed back with [`Receiver::file`] or [`Receiver::discard`], and is not evicted meanwhile.
    pub fn take_arrivals(&self) -> Vec<(Ticket, Envelope)> {
        let mut state = self.0.lock();
        let arrived = std::mem::take(&mut state.arrived);
        arrived
            .into_iter()
            .map(|(sequence, envelope)| (Ticket { sequence, bytes: envelope.message.payload.len() }, envelope))
            .collect()
    }

    /// Queues a message taken with `ticket`, now prepared, for the model.
    pub fn file(&self, ticket: Ticket, prepared: Prepared) {
        self.0.lock().ready.push(Waiting::new(prepared, ticket.sequence, ticket.bytes));
    }

    /// A message taken with `ticket` leaves without being queued (answered as it was: undecodable, shed).
    pub fn discard(&self, ticket: Ticket) {
        self.0.lock().leave(ticket.bytes);
    }

    /// The most urgent prepared message, leaving the queue (to run, or to be answered).
    pub fn take_next(&self) -> Option<Waiting> {
        let mut state = self.0.lock();
        let next = state.ready.pop()?;
        state.leave(next.bytes);
        Some(next)
    }

    /// Offers `batch` prepared messages, most urgent first, until it holds `max` or `scan` have been passed over:
    /// `choose` says of each whether it joins (it leaves the queue), is answered now (returned with its verdict;
    /// it leaves too), or keeps waiting.
    pub fn fill_batch<V>(
        &self,
        batch: &mut Vec<Waiting>,
        max: usize,
        scan: usize,
        mut choose: impl FnMut(&[Waiting], &Waiting) -> Choice<V>,
    ) -> Vec<(Prepared, V)> {
        let mut state = self.0.lock();
        let (mut answered, mut aside) = (Vec::new(), Vec::new());
        while batch.len() < max && aside.len() < scan {
            let Some(candidate) = state.ready.pop() else { break };
            match choose(batch, &candidate) {
                Choice::Join => {
                    state.leave(candidate.bytes);
                    batch.push(candidate);
                }
                Choice::Answer(verdict) => {
                    state.leave(candidate.bytes);
                    answered.push((candidate.prepared, verdict));
                }
                Choice::Skip => aside.push(candidate),
            }
        }
        state.ready.extend(aside);
        answered
    }

    /// Messages and payload bytes waiting, wherever they wait.
    pub fn load(&self) -> (usize, usize) {
        let state = self.0.lock();
        (state.count, state.bytes)
    }

    /// Whether no message waits to be prepared or run.
    pub fn is_empty(&self) -> bool {
        let state = self.0.lock();
        state.arrived.is_empty() && state.ready.is_empty()
    }

    /// Whether no prepared message waits for the model.
    pub fn nothing_ready(&self) -> bool {
        self.0.lock().ready.is_empty()
    }

    /// Under memory pressure, the queue keeps a quarter of its capacity: fewer payloads held, and a shorter wait for
    /// what is kept. What already waits stays; newcomers are refused (`fifo`) or evict (`latest`) at the lower bound.
    pub fn set_pressed(&self, pressed: bool) {
        let capacity = self.0.capacity;
        self.0.lock().limit = if pressed { (capacity / 4).max(1) } else { capacity };
    }

    /// A handle that interrupts [`Receiver::wait_for_arrival`] from another thread.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.0))
    }

    /// The worker failed: from now on every push is refused as [`Refused::Failed`]; returns what was waiting, so
    /// that each gets its outcome. (What was in the worker's hands is lost with the failed turn.)
    pub fn fail(&self) -> Vec<Waiter> {
        let mut state = self.0.lock();
        state.failed = true;
        state.count = 0;
        state.bytes = 0;
        let ready = std::mem::take(&mut state.ready).into_sorted_vec().into_iter().rev();
        let ready = ready.map(|waiting| Waiter::Ready(Box::new(waiting.prepared)));
        ready.chain(state.arrived.drain(..).map(|(_, envelope)| Waiter::Arrived(Box::new(envelope)))).collect()
    }
}

/// Interrupts the worker's wait for messages (see [`Receiver::waker`]).
pub struct Waker(Arc<Shared>);

impl Waker {
    /// Makes the worker's current or next wait return at once.
    pub fn wake(&self) {
        self.0.lock().woken = true;
        self.0.arrived.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use zinfer_stage_api::{Input, Item, RawMessage};

    use super::*;
    use crate::pipeline::deadline::Deadline;
    use crate::pipeline::outcome::Timings;

    fn envelope(key: &str, id: &str) -> Envelope {
        sized(key, id, 0)
    }

    fn sized(key: &str, id: &str, bytes: usize) -> Envelope {
        let message =
            RawMessage { key: key.into(), payload: vec![0; bytes], encoding: String::new(), attachment_id: None };
        Envelope::new(message, id.into())
    }

    /// What a worker would make of `envelope`, without a pipeline: its id and key, no deadline.
    fn prepare(envelope: Envelope) -> Prepared {
        let item = Item::new(envelope.fallback_id, envelope.message.key, Input::Text(String::new()));
        Prepared { item, timings: Timings::default(), arrived: envelope.arrived, deadline: None, reply: None, rung: 0 }
    }

    /// Takes every arrival and files it prepared.
    fn prepare_all(receiver: &Receiver) {
        for (ticket, envelope) in receiver.take_arrivals() {
            receiver.file(ticket, prepare(envelope));
        }
    }

    /// Takes the one arrival there is.
    fn take_one(receiver: &Receiver) -> (Ticket, Envelope) {
        let mut taken = receiver.take_arrivals();
        assert_eq!(taken.len(), 1);
        taken.remove(0)
    }

    fn ids(waiters: &[Waiter]) -> Vec<String> {
        let id = |waiter: &Waiter| match waiter {
            Waiter::Arrived(envelope) => envelope.fallback_id.clone(),
            Waiter::Ready(prepared) => prepared.item.id.clone(),
        };
        waiters.iter().map(id).collect()
    }

    /// Everything waiting, arrivals prepared on the way, in the order the worker runs them.
    fn drain(receiver: &Receiver) -> Vec<String> {
        prepare_all(receiver);
        std::iter::from_fn(|| receiver.take_next()).map(|waiting| waiting.prepared.item.id).collect()
    }

    #[test]
    fn fifo_refuses_the_newest_when_full() {
        let (sender, receiver) = bounded(2, usize::MAX, Overload::Fifo);
        assert!(sender.push(envelope("a", "1")).expect("room").is_empty());
        assert!(sender.push(envelope("a", "2")).expect("room").is_empty());
        assert!(matches!(sender.push(envelope("a", "3")), Err(Refused::Full(refused)) if refused.fallback_id == "3"));
        assert_eq!(drain(&receiver), ["1", "2"]);
    }

    #[test]
    fn latest_keeps_per_key_and_evicts_the_oldest_when_full() {
        let (sender, receiver) = bounded(3, usize::MAX, Overload::Latest { per_key: 1 });
        for (key, id) in [("a", "1"), ("b", "2"), ("c", "3")] {
            assert!(sender.push(envelope(key, id)).expect("room").is_empty());
        }
        assert_eq!(ids(&sender.push(envelope("b", "4")).expect("latest never refuses")), ["2"], "the older b");
        assert_eq!(ids(&sender.push(envelope("d", "5")).expect("latest never refuses")), ["1"], "the oldest");
        assert_eq!(drain(&receiver), ["3", "4", "5"]);

        // Per key even when there is room.
        let (sender, receiver) = bounded(10, usize::MAX, Overload::Latest { per_key: 2 });
        for id in ["1", "2"] {
            assert!(sender.push(envelope("a", id)).expect("room").is_empty());
        }
        assert_eq!(ids(&sender.push(envelope("a", "3")).expect("latest never refuses")), ["1"]);
        assert_eq!(drain(&receiver), ["2", "3"]);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let (sender, receiver) = bounded(10, 100, Overload::Fifo);
        assert!(sender.push(sized("a", "1", 60)).expect("room").is_empty());
        assert!(matches!(sender.push(sized("a", "2", 50)), Err(Refused::Full(refused)) if refused.fallback_id == "2"));
        assert!(sender.push(sized("a", "3", 40)).expect("room").is_empty());
        assert_eq!(drain(&receiver), ["1", "3"]);
        assert_eq!(sender.load(), (0, 0));
        assert!(sender.push(sized("a", "4", 100)).expect("room once both ran").is_empty());

        // Under latest, as many of the oldest go as the newcomer needs.
        let (sender, receiver) = bounded(10, 100, Overload::Latest { per_key: 10 });
        for (id, bytes) in [("1", 30), ("2", 30), ("3", 30)] {
            assert!(sender.push(sized("k", id, bytes)).expect("room").is_empty());
        }
        assert_eq!(ids(&sender.push(sized("k", "4", 30)).expect("latest never refuses")), ["1"]);
        assert_eq!(ids(&sender.push(sized("k", "5", 95)).expect("latest never refuses")), ["2", "3", "4"]);
        assert_eq!(sender.load(), (1, 95));
        assert_eq!(drain(&receiver), ["5"]);
    }

    #[test]
    fn what_the_worker_prepared_counts_until_it_runs() {
        let (sender, receiver) = bounded(2, 100, Overload::Fifo);
        sender.push(sized("a", "1", 10)).expect("room");
        sender.push(sized("a", "2", 10)).expect("room");
        prepare_all(&receiver);
        assert_eq!(sender.load(), (2, 20));
        assert!(matches!(sender.push(sized("a", "3", 10)), Err(Refused::Full(_))), "still waiting, at the worker");
        assert_eq!(receiver.take_next().expect("one ready").prepared.item.id, "1");
        assert!(sender.push(sized("a", "4", 10)).expect("one started to run").is_empty());
        assert_eq!(sender.load(), (2, 20));

        // The message being prepared counts too, and leaves when discarded.
        let (sender, receiver) = bounded(10, 100, Overload::Fifo);
        sender.push(sized("a", "1", 90)).expect("room");
        let (ticket, _) = take_one(&receiver);
        assert!(matches!(sender.push(sized("a", "2", 11)), Err(Refused::Full(_))));
        assert!(sender.push(sized("a", "3", 10)).expect("room").is_empty());
        receiver.discard(ticket);
        assert_eq!(sender.load(), (1, 10));
    }

    #[test]
    fn latest_evicts_the_oldest_wherever_it_waits_but_not_the_one_being_prepared() {
        let (sender, receiver) = bounded(3, usize::MAX, Overload::Latest { per_key: 1 });
        for (key, id) in [("a", "1"), ("b", "2")] {
            sender.push(envelope(key, id)).expect("room");
        }
        prepare_all(&receiver);
        sender.push(envelope("c", "3")).expect("room");
        let (ticket, in_hand) = take_one(&receiver);
        // Full: the oldest, prepared, goes; the newcomer never exceeds the bound.
        assert_eq!(ids(&sender.push(envelope("d", "4")).expect("latest never refuses")), ["1"]);
        assert_eq!(sender.load(), (3, 0));
        assert_eq!(ids(&sender.push(envelope("e", "5")).expect("latest never refuses")), ["2"]);
        // The message being prepared is next oldest, but it is passed over; so is its key's newer message.
        assert_eq!(ids(&sender.push(envelope("f", "6")).expect("latest never refuses")), ["4"]);
        assert!(sender.push(envelope("c", "7")).expect("latest never refuses").len() == 1);
        assert_eq!(sender.load(), (3, 0));
        receiver.file(ticket, prepare(in_hand));
        assert_eq!(drain(&receiver), ["3", "6", "7"]);
        assert_eq!(sender.load(), (0, 0));

        // A bound of one: the newest gets in beside the one being prepared, over the bound by that one message.
        let (sender, receiver) = bounded(1, usize::MAX, Overload::Latest { per_key: 1 });
        sender.push(envelope("a", "1")).expect("room");
        let (ticket, in_hand) = take_one(&receiver);
        assert!(sender.push(envelope("a", "2")).expect("latest never refuses").is_empty());
        assert_eq!(ids(&sender.push(envelope("a", "3")).expect("latest never refuses")), ["2"]);
        assert_eq!(sender.load(), (2, 0));
        receiver.file(ticket, prepare(in_hand));
        assert_eq!(drain(&receiver), ["1", "3"]);
    }

    #[test]
    fn under_pressure_a_quarter_of_the_capacity_is_kept() {
        let (sender, receiver) = bounded(8, usize::MAX, Overload::Fifo);
        receiver.set_pressed(true);
        for id in ["1", "2"] {
            sender.push(envelope("a", id)).expect("room for two");
        }
        assert!(matches!(sender.push(envelope("a", "3")), Err(Refused::Full(_))));
        receiver.set_pressed(false);
        assert!(sender.push(envelope("a", "4")).expect("room again").is_empty());
        assert_eq!(drain(&receiver), ["1", "2", "4"]);
    }

    #[test]
    fn a_batch_takes_the_chosen_leaves_the_skipped_and_answers_the_rest() {
        let (sender, receiver) = bounded(8, usize::MAX, Overload::Fifo);
        for id in ["1", "2", "3", "4", "5"] {
            sender.push(envelope("a", id)).expect("room");
        }
        prepare_all(&receiver);
        let mut batch = vec![receiver.take_next().expect("the head")];
        let answered =
            receiver.fill_batch(&mut batch, 3, 8, |_, candidate| match candidate.prepared.item.id.as_str() {
                "2" => Choice::Skip,
                "3" => Choice::Answer("expired"),
                _ => Choice::Join,
            });
        let batch: Vec<_> = batch.iter().map(|waiting| waiting.prepared.item.id.as_str()).collect();
        assert_eq!(batch, ["1", "4", "5"]);
        assert_eq!(
            answered.iter().map(|(prepared, why)| (prepared.item.id.as_str(), *why)).collect::<Vec<_>>(),
            [("3", "expired")]
        );
        assert_eq!(sender.load(), (1, 0), "the skipped one waits");
        assert_eq!(drain(&receiver), ["2"]);
    }

    #[test]
    fn a_failed_worker_hands_back_what_waits_and_refuses_the_rest() {
        let (sender, receiver) = bounded(4, usize::MAX, Overload::Fifo);
        sender.push(envelope("a", "1")).expect("room");
        let (ticket, envelope_1) = take_one(&receiver);
        receiver.file(ticket, prepare(envelope_1));
        sender.push(envelope("a", "2")).expect("room");
        assert_eq!(ids(&receiver.fail()), ["1", "2"]);
        assert!(matches!(sender.push(envelope("a", "3")), Err(Refused::Failed(refused)) if refused.fallback_id == "3"));
    }

    #[test]
    fn closing_lets_the_worker_drain_then_disconnects() {
        let (sender, receiver) = bounded(4, usize::MAX, Overload::Fifo);
        sender.push(envelope("a", "1")).expect("room");
        assert!(receiver.wait_for_arrival(Duration::from_millis(1)).is_ok());
        let (ticket, _) = take_one(&receiver);
        receiver.discard(ticket);
        assert!(matches!(receiver.wait_for_arrival(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout)));
        sender.push(envelope("a", "2")).expect("room");
        drop(sender);
        assert!(receiver.wait_for_arrival(Duration::from_secs(1)).is_ok(), "what arrived before closing is taken");
        let (ticket, _) = take_one(&receiver);
        receiver.discard(ticket);
        assert!(matches!(receiver.wait_for_arrival(Duration::from_secs(1)), Err(RecvTimeoutError::Disconnected)));
    }

    #[test]
    fn a_waker_interrupts_a_wait_once() {
        let (_sender, receiver) = bounded(4, usize::MAX, Overload::Fifo);
        let waker = receiver.waker();
        let waking = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let started = Instant::now();
        assert!(matches!(receiver.wait_for_arrival(Duration::from_secs(30)), Err(RecvTimeoutError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(30), "woken, not timed out");
        waking.join().expect("waker thread");
        // Consumed: the next wait runs its course.
        assert!(matches!(receiver.wait_for_arrival(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout)));
    }

    #[test]
    fn a_message_without_a_deadline_waits_behind_urgent_ones_but_not_forever() {
        let start = Instant::now();
        let waiting = |sequence: u64, arrived: Instant, deadline: Option<Instant>| {
            let item = Item::new(format!("m{sequence}"), "k".into(), Input::Text("t".into()));
            let deadline = deadline.map(|at| Deadline { at });
            let prepared = Prepared { item, timings: Timings::default(), arrived, deadline, reply: None, rung: 0 };
            Waiting::new(prepared, sequence, 0)
        };
        let mut heap = BinaryHeap::new();
        // Arrived first, no deadline: due one NO_DEADLINE_DUE after arrival.
        heap.push(waiting(1, start, None));
        // Deadline traffic that keeps arriving: earlier deadlines than that go first, later ones after it.
        heap.push(waiting(2, start + Duration::from_millis(10), Some(start + Duration::from_millis(100))));
        heap.push(waiting(
            3,
            start + Duration::from_millis(900),
            Some(start + NO_DEADLINE_DUE + Duration::from_millis(50)),
        ));
        heap.push(waiting(4, start + Duration::from_millis(20), None));
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|waiting| waiting.sequence)).collect();
        assert_eq!(order, [2, 1, 4, 3], "EDF, with messages without a deadline due a second after arrival");
    }
}
