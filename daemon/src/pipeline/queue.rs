//! The admission queue: the bounded hand-over from a pipeline's ingress (zenoh's threads) to its worker thread.
//!
//! A plain bounded channel can only refuse the newest message when it is full, which is right for `fifo` but the
//! opposite of what `latest` promises: under a flood of sensor frames, the newest must get in and the oldest go.
//! This queue does either, by the pipeline's [`Overload`] policy, and never blocks the ingress.
//!
//! It bounds the count and the payload bytes of every message that waits for the model (`queue_capacity`,
//! `queue_bytes`): those here, and those the worker took from here and has not yet started to run or answered (its
//! own deadline-ordered queue), which the worker gives back with [`Account::release`]. One bound over both, so that
//! the settings mean what they say rather than twice as much. Under `latest` the worker's oldest messages cannot be
//! evicted from here: a newcomer is let in, and the worker answers its oldest `superseded` when it takes the
//! newcomer (its next turn, after the model run in progress).

use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Envelope;
use super::worker::Overload;

struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    overload: Overload,
}

struct State {
    waiting: VecDeque<Envelope>,
    bytes: usize,
    /// Messages the worker took from `waiting` and holds, not yet running or answered, and their payload bytes.
    held: usize,
    held_bytes: usize,
    /// True once the worker failed: nothing will take messages from here again.
    failed: bool,
    /// False once the sending side is gone: the worker drains what is left and stops.
    open: bool,
    /// Set by a [`Waker`]: the worker has something to do besides messages (a batch back from a model instance).
    woken: bool,
}

impl State {
    /// The oldest message, which the worker holds from now on: it still counts against the bound.
    fn pop(&mut self) -> Option<Envelope> {
        let envelope = self.waiting.pop_front()?;
        let bytes = envelope.message.payload.len();
        self.bytes -= bytes;
        self.held += 1;
        self.held_bytes += bytes;
        Some(envelope)
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
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            waiting: VecDeque::new(),
            bytes: 0,
            held: 0,
            held_bytes: 0,
            failed: false,
            open: true,
            woken: false,
        }),
        arrived: Condvar::new(),
        capacity: capacity.max(1),
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
    /// Queues `envelope` if what waits (here and in the worker) leaves room for it. Under `latest`, a full queue (by
    /// count or bytes) makes room by evicting its oldest message of the same key, else its oldest message if the
    /// worker holds nothing or this queue alone is full; the evicted message is returned so that the caller answers
    /// it `dropped: superseded`. Otherwise the worker holds the oldest: the newcomer is let in and the worker makes
    /// room (see the module docs). When one eviction is not enough (a large newcomer), it is refused like under
    /// `fifo`.
    pub fn push(&self, envelope: Envelope) -> Result<Option<Envelope>, Refused> {
        let mut state = self.0.lock();
        if state.failed {
            return Err(Refused::Failed(Box::new(envelope)));
        }
        if !state.open {
            return Err(Refused::Closed(Box::new(envelope)));
        }
        let bytes = envelope.message.payload.len();
        let (capacity, capacity_bytes) = (self.0.capacity, self.0.capacity_bytes);
        // Full counting what the worker holds too, or (`with_held` false) what waits here alone.
        let full = |state: &State, with_held: bool| {
            let (held, held_bytes) = if with_held { (state.held, state.held_bytes) } else { (0, 0) };
            state.waiting.len() + held >= capacity || state.bytes + held_bytes + bytes > capacity_bytes
        };
        let mut evicted = None;
        if full(&state, true) {
            let mut with_held = true;
            if let Overload::Latest { .. } = self.0.overload {
                let key = &envelope.message.key;
                let same_key = state.waiting.iter().position(|waiting| &waiting.message.key == key);
                // Else the oldest here, if the worker holds nothing older or this queue alone is full.
                let oldest = same_key.or_else(|| (state.held == 0 || full(&state, false)).then_some(0));
                evicted = oldest.and_then(|oldest| state.waiting.remove(oldest));
                state.bytes -= evicted.as_ref().map_or(0, |evicted| evicted.message.payload.len());
                // The worker evicts among what it holds once it takes the newcomer: only this queue's own share of
                // the bound can refuse it.
                with_held = false;
            }
            if full(&state, with_held) {
                // Nothing was gained by the eviction: put it back where it was, refuse the newcomer.
                if let Some(evicted) = evicted {
                    state.bytes += evicted.message.payload.len();
                    let end = state.waiting.len();
                    let position = state.waiting.iter().position(|waiting| waiting.arrived > evicted.arrived);
                    state.waiting.insert(position.unwrap_or(end), evicted);
                }
                return Err(Refused::Full(Box::new(envelope)));
            }
        }
        state.bytes += bytes;
        state.waiting.push_back(envelope);
        drop(state);
        self.0.arrived.notify_one();
        Ok(evicted)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().open = false;
        self.0.arrived.notify_all();
    }
}

/// The worker's end.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The oldest message, waiting up to `timeout`; `Timeout` also as soon as a [`Waker`] wakes it, and
    /// `Disconnected` once the queue is closed and empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Envelope, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if let Some(envelope) = state.pop() {
                return Ok(envelope);
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

    /// The oldest message, if one is waiting.
    pub fn try_recv(&self) -> Option<Envelope> {
        self.0.lock().pop()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.lock().waiting.is_empty()
    }

    /// A handle that interrupts [`Receiver::recv_timeout`] from another thread.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.0))
    }

    /// The handle through which the worker accounts for what it holds (see [`Account`]).
    pub fn account(&self) -> Account {
        Account(Arc::clone(&self.0))
    }

    /// The worker failed: from now on every push is refused as [`Refused::Failed`]; returns what was waiting, so
    /// that each gets its outcome.
    pub fn fail(&self) -> Vec<Envelope> {
        let mut state = self.0.lock();
        state.failed = true;
        state.bytes = 0;
        state.waiting.drain(..).collect()
    }
}

/// The worker's account of what it holds, which shares the queue's bound (see [`Receiver::account`]).
pub struct Account(Arc<Shared>);

impl Account {
    /// Messages and payload bytes waiting in all: in the queue, and held by the worker.
    pub fn load(&self) -> (usize, usize) {
        let state = self.0.lock();
        (state.waiting.len() + state.held, state.bytes + state.held_bytes)
    }

    /// A message the worker took from the queue no longer waits: it started to run, or was answered. Its `bytes`
    /// (payload length) and its place are free for the next arrival.
    pub fn release(&self, bytes: usize) {
        let mut state = self.0.lock();
        debug_assert!(state.held > 0 && state.held_bytes >= bytes, "released a message the worker did not hold");
        state.held = state.held.saturating_sub(1);
        state.held_bytes = state.held_bytes.saturating_sub(bytes);
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
    use zinfer_stage_api::RawMessage;

    use super::*;

    fn envelope(key: &str, id: &str) -> Envelope {
        sized(key, id, 0)
    }

    fn sized(key: &str, id: &str, bytes: usize) -> Envelope {
        let message =
            RawMessage { key: key.into(), payload: vec![0; bytes], encoding: String::new(), attachment_id: None };
        Envelope::new(message, id.into())
    }

    fn ids(receiver: &Receiver) -> Vec<String> {
        std::iter::from_fn(|| receiver.try_recv()).map(|envelope| envelope.fallback_id).collect()
    }

    #[test]
    fn fifo_refuses_the_newest_when_full() {
        let (sender, receiver) = bounded(2, usize::MAX, Overload::Fifo);
        assert!(sender.push(envelope("a", "1")).expect("room").is_none());
        assert!(sender.push(envelope("a", "2")).expect("room").is_none());
        assert!(matches!(sender.push(envelope("a", "3")), Err(Refused::Full(refused)) if refused.fallback_id == "3"));
        assert_eq!(ids(&receiver), ["1", "2"]);
    }

    #[test]
    fn latest_evicts_the_oldest_of_the_same_key_else_the_oldest() {
        let (sender, receiver) = bounded(3, usize::MAX, Overload::Latest { per_key: 1 });
        for (key, id) in [("a", "1"), ("b", "2"), ("a", "3")] {
            assert!(sender.push(envelope(key, id)).expect("room").is_none());
        }
        let evicted = sender.push(envelope("b", "4")).expect("latest never refuses").expect("an eviction");
        assert_eq!(evicted.fallback_id, "2", "the oldest of key b");
        let evicted = sender.push(envelope("c", "5")).expect("latest never refuses").expect("an eviction");
        assert_eq!(evicted.fallback_id, "1", "no other c: the oldest overall");
        assert_eq!(ids(&receiver), ["3", "4", "5"]);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let (sender, receiver) = bounded(10, 100, Overload::Fifo);
        assert!(sender.push(sized("a", "1", 60)).expect("room").is_none());
        assert!(matches!(sender.push(sized("a", "2", 50)), Err(Refused::Full(refused)) if refused.fallback_id == "2"));
        assert!(sender.push(sized("a", "3", 40)).expect("room").is_none());
        assert_eq!(ids(&receiver), ["1", "3"]);
        let account = receiver.account();
        account.release(60);
        account.release(40);
        assert!(sender.push(sized("a", "4", 100)).expect("room once both ran").is_none());

        let (sender, receiver) = bounded(10, 100, Overload::Latest { per_key: 1 });
        for (id, bytes) in [("1", 30), ("2", 30), ("3", 30)] {
            assert!(sender.push(sized("k", id, bytes)).expect("room").is_none());
        }
        let evicted = sender.push(sized("k", "4", 30)).expect("an eviction makes room").expect("evicted");
        assert_eq!(evicted.fallback_id, "1");
        // One eviction cannot make room for 95 bytes: the newcomer is refused and the queue is unchanged.
        assert!(matches!(sender.push(sized("k", "5", 95)), Err(Refused::Full(refused)) if refused.fallback_id == "5"));
        assert_eq!(ids(&receiver), ["2", "3", "4"]);
    }

    #[test]
    fn what_the_worker_holds_counts_against_the_bound_until_released() {
        let (sender, receiver) = bounded(2, 100, Overload::Fifo);
        let account = receiver.account();
        sender.push(sized("a", "1", 10)).expect("room");
        sender.push(sized("a", "2", 10)).expect("room");
        assert_eq!(ids(&receiver), ["1", "2"], "taken by the worker, not yet run");
        assert_eq!(account.load(), (2, 20));
        assert!(matches!(sender.push(sized("a", "3", 10)), Err(Refused::Full(_))), "still waiting, at the worker");
        account.release(10);
        assert!(sender.push(sized("a", "4", 10)).expect("one started to run").is_none());
        assert_eq!(account.load(), (2, 20));

        // Bytes too: 90 held leave room for 10 more, not 11.
        let (sender, receiver) = bounded(10, 100, Overload::Fifo);
        sender.push(sized("a", "1", 90)).expect("room");
        assert_eq!(ids(&receiver), ["1"]);
        assert!(matches!(sender.push(sized("a", "2", 11)), Err(Refused::Full(_))));
        assert!(sender.push(sized("a", "3", 10)).expect("room").is_none());
    }

    #[test]
    fn latest_lets_the_newest_in_when_the_worker_holds_the_oldest() {
        let (sender, receiver) = bounded(2, usize::MAX, Overload::Latest { per_key: 1 });
        let account = receiver.account();
        sender.push(envelope("a", "1")).expect("room");
        sender.push(envelope("b", "2")).expect("room");
        assert_eq!(ids(&receiver), ["1", "2"]);
        // The oldest are the worker's to evict: the newcomer gets in, over the bound until the worker takes it.
        assert!(sender.push(envelope("c", "3")).expect("latest lets it in").is_none());
        assert_eq!(account.load(), (3, 0));
        // A newer message of a key still waiting here replaces it.
        let evicted = sender.push(envelope("c", "4")).expect("latest never refuses").expect("an eviction");
        assert_eq!(evicted.fallback_id, "3");
        // Once what waits here alone is full, the oldest here makes room: the newest always gets in.
        sender.push(envelope("d", "5")).expect("room here");
        let evicted = sender.push(envelope("e", "6")).expect("latest never refuses").expect("an eviction");
        assert_eq!(evicted.fallback_id, "4");
        assert_eq!(ids(&receiver), ["5", "6"]);
    }

    #[test]
    fn a_failed_worker_hands_back_what_waits_and_refuses_the_rest() {
        let (sender, receiver) = bounded(4, usize::MAX, Overload::Fifo);
        sender.push(envelope("a", "1")).expect("room");
        sender.push(envelope("a", "2")).expect("room");
        let left: Vec<String> = receiver.fail().into_iter().map(|envelope| envelope.fallback_id).collect();
        assert_eq!(left, ["1", "2"]);
        assert!(matches!(sender.push(envelope("a", "3")), Err(Refused::Failed(refused)) if refused.fallback_id == "3"));
    }

    #[test]
    fn closing_lets_the_worker_drain_then_disconnects() {
        let (sender, receiver) = bounded(4, usize::MAX, Overload::Fifo);
        sender.push(envelope("a", "1")).expect("room");
        assert!(matches!(receiver.recv_timeout(Duration::from_millis(1)), Ok(envelope) if envelope.fallback_id == "1"));
        assert!(matches!(receiver.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout)));
        sender.push(envelope("a", "2")).expect("room");
        drop(sender);
        assert!(matches!(receiver.recv_timeout(Duration::from_secs(1)), Ok(envelope) if envelope.fallback_id == "2"));
        assert!(matches!(receiver.recv_timeout(Duration::from_secs(1)), Err(RecvTimeoutError::Disconnected)));
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
        assert!(matches!(receiver.recv_timeout(Duration::from_secs(30)), Err(RecvTimeoutError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(30), "woken, not timed out");
        waking.join().expect("waker thread");
        // Consumed: the next wait runs its course.
        assert!(matches!(receiver.recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout)));
    }
}
