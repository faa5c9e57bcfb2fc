//! The worker: one OS thread per pipeline that owns the pipeline (and so the ONNX Runtime session).
//!
//! Decoding, tokenization and inference are CPU work; running them here keeps tokio's reactor and zenoh's own
//! threads free to move bytes. The worker moves the messages that have arrived into a local queue ordered
//! earliest-deadline-first (a message without a deadline is ordered as if due [`NO_DEADLINE_DUE`] after its
//! arrival, so deadline traffic cannot starve it), then runs the most urgent. A message whose deadline has passed,
//! or can no longer be met given the measured cost of the model for inputs of its size, is answered `expired`
//! without running, so it does not take CPU from messages that can still make it.
//!
//! With further model instances ([`super::runner`]), a batch formed while other work waits goes to an idle instance
//! and the worker goes on preparing; a batch with nothing else to do runs here, on the worker's own session, because
//! handing it over and back would only add two thread wake-ups to a lone message.
//!
//! It ends when the admission queue's senders are gone, everything queued is answered and no instance is still
//! running a batch, which is how shutdown drains: stop admitting, let the worker finish, then stop publishing.

use std::cmp::Ordering as Order;
use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use zinfer_stage_api::{Reason, StageError};

use super::deadline::{CostModel, Deadline};
use super::outcome::{DropReason, ExpireReason, Outcome, Timings, Verdict};
use super::queue::{Account, Receiver};
use super::runner::Runners;
use super::{Envelope, Job, Pipeline, Prepared, panicked};
use crate::memory::{Governor, Pressure};
use crate::telemetry::metrics::PipelineMetrics;

/// How often an idle worker shows it is alive (see [`PipelineMetrics::beat`]).
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// What the worker needs besides its pipeline.
pub struct WorkerContext {
    /// Most messages waiting for the model, in the admission queue and this worker's together (the admission queue
    /// refuses with `queue_full` at this bound). Under memory pressure the worker keeps a quarter of it in its own
    /// queue and answers what it takes beyond that `queue_full`.
    pub capacity: usize,
    /// Most messages per model run.
    pub max_batch: usize,
    /// Most payload bytes waiting, counted like `capacity`; more are refused (or, with `latest`, evict the oldest).
    pub capacity_bytes: usize,
    /// What gives when the queue is full.
    pub overload: Overload,
    /// Where outcomes go.
    pub outcomes: UnboundedSender<Outcome>,
    /// Set when the drain timeout passed: answer what is left `dropped: shutdown`.
    pub abandon: Arc<AtomicBool>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// The process's memory pressure.
    pub memory: Arc<Governor>,
}

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

/// Starts the worker thread, and a thread per further model instance of the pipeline.
pub fn spawn(
    name: &str,
    mut pipeline: Pipeline,
    queue: Receiver,
    context: WorkerContext,
) -> std::io::Result<JoinHandle<()>> {
    let name = name.to_owned();
    let instances = pipeline.take_instances();
    let runners = if instances.is_empty() {
        Runners::none()
    } else {
        Runners::start(&name, instances, queue.waker(), &context.metrics)?
    };
    std::thread::Builder::new().name(format!("zinfer-{name}")).spawn(move || {
        let mut worker = Worker::new(pipeline, context, runners, queue.account());
        // Stages, decoders and model runs are already guarded per message; a panic that reaches here is zinferd's
        // own bug. The thread then ends (its heartbeat stops, so the watchdog has the service restarted); what it
        // held and what waits are answered, and so is every later one. The few messages of the turn in progress
        // (taken from the queue, not yet filed, or in the batch being run) are lost with the turn.
        if catch_unwind(AssertUnwindSafe(|| worker.run(&queue))).is_err() {
            tracing::error!(
                pipeline = %name,
                "the pipeline's worker panicked (a bug in zinferd): its messages are answered error/worker_failed \
                 until zinferd is restarted"
            );
            let held: Vec<Waiting> = std::mem::take(&mut worker.waiting).into_vec();
            for waiting in held {
                worker.dequeued(waiting.bytes);
                let outcome = worker.outcome(waiting.prepared, failed_verdict());
                worker.send(outcome);
            }
            // Batches still running on other instances are answered too, once back.
            while let Some(done) = worker.runners.wait_finished() {
                for prepared in done.job.into_batch() {
                    let outcome = worker.outcome(prepared, failed_verdict());
                    worker.send(outcome);
                }
            }
            for envelope in queue.fail() {
                worker.context.metrics.record_dequeued();
                let (id, rung) = (worker.pipeline.sender_id(&envelope), worker.pipeline.active_rung());
                let outcome = Outcome::undecoded(worker.pipeline.index(), envelope, id, failed_verdict(), rung);
                worker.send(outcome);
            }
        }
    })
}

/// The outcome of a message its pipeline's failed worker could not process.
pub fn failed_verdict() -> Verdict {
    Verdict::Failed(StageError::new(
        Reason::WorkerFailed,
        "the pipeline's worker failed (a bug in zinferd); restart zinferd, and please report the log",
    ))
}

/// What the worker keeps of each message of a batch while postprocessing runs (to answer it even if that panics):
/// id, key, arrival, deadline, and the query its outcome replies to.
type Identity = (String, String, Instant, Option<Deadline>, Option<crate::io::egress::Reply>);

struct Worker {
    pipeline: Pipeline,
    context: WorkerContext,
    waiting: BinaryHeap<Waiting>,
    waiting_bytes: usize,
    sequence: u64,
    /// What a run costs, per rung of the pipeline's ladder (one without a ladder).
    costs: Vec<CostModel>,
    /// The pipeline's further model instances, which run batches while this thread prepares the next.
    runners: Runners,
    /// What the worker holds, in the admission queue's bound (`queue_capacity`, `queue_bytes` cover both).
    account: Account,
}

/// A prepared message in the EDF queue.
struct Waiting {
    prepared: Prepared,
    sequence: u64,
    bytes: usize,
    /// When it is due, for ordering only: its deadline, or for a message without one, [`NO_DEADLINE_DUE`] after its
    /// arrival (it is never expired for it).
    due: Instant,
}

/// How long a message without a deadline yields to messages with one. Ordering it last forever would let a steady
/// stream of deadline traffic starve it; ordering it as if due this long after arrival bounds its wait behind
/// urgent work, as a deadline I/O scheduler treats reads, while messages with a deadline inside that window go
/// first. Among messages without a deadline, arrival order is kept.
pub const NO_DEADLINE_DUE: Duration = Duration::from_secs(1);

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

impl Worker {
    fn new(pipeline: Pipeline, context: WorkerContext, runners: Runners, account: Account) -> Self {
        let costs = (0..pipeline.rungs().len())
            .map(|rung| {
                let mut costs = CostModel::default();
                for &(elements, batch, took) in pipeline.calibration(rung) {
                    costs.observe(elements, batch, took);
                }
                costs
            })
            .collect();
        Self { pipeline, context, waiting: BinaryHeap::new(), waiting_bytes: 0, sequence: 0, costs, runners, account }
    }

    fn run(&mut self, queue: &Receiver) {
        let mut arrived = Vec::new();
        loop {
            // Every turn of this loop is progress; an idle worker still turns every HEARTBEAT. A worker stuck in a
            // stage or a model run stops beating, and the service watchdog notices; so does one whose other
            // instance is stuck in a run (that instance beats after each run of its own).
            if self.runners.oldest_run().is_none_or(|since| since.elapsed() < HEARTBEAT) {
                self.context.metrics.beat();
            }
            if !self.conclude_finished(false) {
                return;
            }
            self.drift_check_if_due(queue);
            self.climb_ladder();
            if self.waiting.is_empty() {
                match queue.recv_timeout(HEARTBEAT) {
                    Ok(envelope) => arrived.push(envelope),
                    // Also when an instance finished a batch: it is concluded at the top of the loop.
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) if self.runners.is_busy() => {
                        if !self.conclude_finished(true) {
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // At most what the worker's queue has room for per turn (at least one), then the model runs: when
            // messages arrive faster than they can be prepared, an unbounded drain would prepare forever and never
            // run the model. Taken together with the worker's queue, they never exceed its capacity either.
            let room = self.context.capacity.saturating_sub(self.waiting.len()).max(1);
            while arrived.len() < room {
                let Some(envelope) = queue.try_recv() else { break };
                arrived.push(envelope);
            }
            self.supersede_undecoded(&mut arrived);
            for envelope in arrived.drain(..) {
                self.admit(envelope);
            }
            if let Some(head) = self.take_next() {
                let idle_after = self.waiting.is_empty() && queue.is_empty();
                for outcome in self.execute(head, idle_after) {
                    if !self.send(outcome) {
                        return;
                    }
                }
            }
        }
    }

    /// Runs the model's golden inputs again when `drift_check_every_s` says so: between messages, while the worker
    /// is idle if it ever is (see [`super::golden::DriftGuard::due`]). Messages that arrive meanwhile wait for it.
    fn drift_check_if_due(&mut self, queue: &Receiver) {
        let idle = self.waiting.is_empty() && queue.is_empty();
        let Some(run) = self.pipeline.drift_check_if_due(idle) else { return };
        let Some((_, spec)) = self.pipeline.golden() else { return };
        let (failures, report) = (super::golden::failures(&run, spec), super::golden::summary(&run));
        if failures.is_empty() {
            tracing::debug!(pipeline = %self.context.metrics.name(), %report, "golden inputs reproduced");
        } else {
            tracing::error!(
                pipeline = %self.context.metrics.name(), %report, ?failures,
                "the model no longer reproduces its golden inputs (it keeps serving; see telemetry `drift`)"
            );
        }
        self.context.metrics.record_drift_check(&run, spec);
        self.context.metrics.beat();
    }

    /// Steps the pipeline's ladder (if it has one) when memory pressure or missed deadlines have lasted, or their
    /// absence has (see [`super::ladder`]). Messages already prepared keep their rung.
    fn climb_ladder(&mut self) {
        let Some(ladder) = self.pipeline.ladder_mut() else { return };
        let pressed = self.context.memory.pressure() != Pressure::Normal;
        let Some(step) = ladder.tick(pressed, Instant::now()) else { return };
        let rungs = self.pipeline.rungs();
        let (from, to) = (&rungs[step.from].identity, &rungs[step.to].identity);
        let why = if pressed { "memory above the soft threshold" } else { "missed deadlines" };
        if step.to > step.from {
            tracing::warn!(
                pipeline = %self.context.metrics.name(), from = %from.name, to = %to.name, why,
                "stepping down the model ladder"
            );
        } else {
            tracing::info!(
                pipeline = %self.context.metrics.name(), from = %from.name, to = %to.name,
                "stepping back up the model ladder: the pressure is gone"
            );
        }
        self.context.metrics.record_rung_switch(step.from, step.to);
    }

    /// Answers the batches the other instances finished (waiting for one if `wait` and one is running); false if
    /// the publisher is gone.
    fn conclude_finished(&mut self, wait: bool) -> bool {
        loop {
            let done = if wait { self.runners.wait_finished() } else { self.runners.try_finished() };
            let Some(done) = done else { return true };
            for outcome in self.conclude(done.job, done.completed) {
                if !self.send(outcome) {
                    return false;
                }
            }
            if wait {
                return true;
            }
        }
    }

    /// Under `latest`, answers `dropped: superseded` the arrivals that newer arrivals of their key replace, before
    /// they cost a decode: under a flood of one key only the newest is prepared, not each in turn.
    fn supersede_undecoded(&mut self, arrived: &mut Vec<Envelope>) {
        let Overload::Latest { per_key } = self.context.overload else { return };
        let mut newer = std::collections::HashMap::<&str, usize>::new();
        let keep: Vec<bool> = arrived
            .iter()
            .rev()
            .map(|envelope| {
                let count = newer.entry(envelope.message.key.as_str()).or_default();
                *count += 1;
                *count <= per_key
            })
            .collect();
        if keep.iter().all(|&keep| keep) {
            return;
        }
        let mut keep = keep.into_iter().rev();
        let (kept, superseded): (Vec<_>, Vec<_>) =
            std::mem::take(arrived).into_iter().partition(|_| keep.next().unwrap_or(true));
        *arrived = kept;
        for envelope in superseded {
            self.answer_undecoded(envelope, DropReason::Superseded);
        }
    }

    /// Decodes and preprocesses a newly arrived message and queues it, or answers it at once.
    fn admit(&mut self, envelope: Envelope) {
        let bytes = envelope.message.payload.len();
        let shed = if self.context.abandon.load(Ordering::Relaxed) {
            Some(DropReason::Shutdown)
        } else if self.context.memory.pressure() == Pressure::Hard {
            Some(DropReason::Memory)
        } else if !self.make_room(&envelope.message.key, bytes) {
            // Refused before decoding: under overload, tokenizing what cannot be queued would only add to it.
            Some(DropReason::QueueFull)
        } else {
            None
        };
        if let Some(reason) = shed {
            return self.answer_undecoded(envelope, reason);
        }
        match self.pipeline.prepare(envelope) {
            Ok(prepared) => {
                self.context.metrics.record_counters(&prepared.item.counters);
                self.sequence += 1;
                self.waiting_bytes += bytes;
                self.waiting.push(Waiting::new(prepared, self.sequence, bytes));
            }
            Err(outcome) => {
                self.dequeued(bytes);
                self.send(*outcome);
            }
        }
    }

    /// Answers a message taken from the admission queue without decoding it, under its sender's id.
    fn answer_undecoded(&mut self, envelope: Envelope, reason: DropReason) {
        self.dequeued(envelope.message.payload.len());
        let (id, rung) = (self.pipeline.sender_id(&envelope), self.pipeline.active_rung());
        let outcome = Outcome::undecoded(self.pipeline.index(), envelope, id, Verdict::Dropped(reason), rung);
        self.send(outcome);
    }

    /// Whether a message of `bytes` on `key` may join the queue, evicting older messages first under `latest`.
    fn make_room(&mut self, key: &str, bytes: usize) -> bool {
        let capacity = self.capacity();
        let full = |worker: &Self| {
            worker.waiting.len() >= capacity || worker.waiting_bytes + bytes > worker.context.capacity_bytes
        };
        match self.context.overload {
            Overload::Fifo => !full(self),
            Overload::Latest { per_key } => {
                if bytes > self.context.capacity_bytes {
                    return false;
                }
                while self.waiting.iter().filter(|waiting| waiting.prepared.item.key == key).count() >= per_key {
                    if !self.evict(|waiting| waiting.prepared.item.key == key) {
                        break;
                    }
                }
                // The admission queue lets a newcomer in while this worker holds the oldest messages: the oldest
                // go until everything waiting, here and there (this message included), fits the bound again.
                let over = |worker: &Self| {
                    let (count, total_bytes) = worker.account.load();
                    count > worker.context.capacity || total_bytes > worker.context.capacity_bytes
                };
                while full(self) || over(self) {
                    if !self.evict(|_| true) {
                        break;
                    }
                }
                !full(self)
            }
        }
    }

    /// Answers the oldest waiting message that `pick` selects `dropped: superseded`; false if there is none.
    fn evict(&mut self, pick: impl Fn(&Waiting) -> bool) -> bool {
        let mut all = std::mem::take(&mut self.waiting).into_vec();
        let oldest =
            all.iter().enumerate().filter(|(_, waiting)| pick(waiting)).min_by_key(|(_, waiting)| waiting.sequence);
        let evicted = oldest.map(|(index, _)| index).map(|index| all.swap_remove(index));
        self.waiting = all.into();
        let Some(evicted) = evicted else { return false };
        self.waiting_bytes -= evicted.bytes;
        self.dequeued(evicted.bytes);
        let outcome = self.outcome(evicted.prepared, Verdict::Dropped(DropReason::Superseded));
        self.send(outcome);
        true
    }

    /// A message of `bytes` leaves what waits (it runs, or is answered): telemetry's queue depth and the admission
    /// bound count it no more.
    fn dequeued(&self, bytes: usize) {
        self.context.metrics.record_dequeued();
        self.account.release(bytes);
    }

    /// The queue length allowed now: a quarter under memory pressure.
    fn capacity(&self) -> usize {
        match self.context.memory.pressure() {
            Pressure::Normal => self.context.capacity,
            Pressure::Soft | Pressure::Hard => (self.context.capacity / 4).max(1),
        }
    }

    /// The batch size allowed now: one under memory pressure (activations grow with the batch).
    fn max_batch(&self) -> usize {
        match self.context.memory.pressure() {
            Pressure::Normal => self.context.max_batch,
            Pressure::Soft | Pressure::Hard => 1,
        }
    }

    /// The most urgent waiting message, leaving the queue.
    fn take_next(&mut self) -> Option<Waiting> {
        let next = self.waiting.pop()?;
        self.waiting_bytes -= next.bytes;
        self.dequeued(next.bytes);
        Some(next)
    }

    /// Why a queued message should not run now, if it should not.
    fn shed(&self, waiting: &Waiting, batch: usize, now: Instant) -> Option<Verdict> {
        if self.context.abandon.load(Ordering::Relaxed) {
            return Some(Verdict::Dropped(DropReason::Shutdown));
        }
        let deadline = waiting.prepared.deadline?;
        if now >= deadline.at {
            Some(Verdict::Expired(ExpireReason::Passed))
        } else if now + self.cost(waiting.prepared.rung).estimate_batch(waiting.prepared.length(), batch) > deadline.at
        {
            Some(Verdict::Expired(ExpireReason::Unreachable))
        } else {
            None
        }
    }

    /// The cost model of `rung`'s model.
    fn cost(&self, rung: usize) -> &CostModel {
        &self.costs[rung.min(self.costs.len() - 1)]
    }

    /// Runs the most urgent message together with the most urgent waiting messages of the same shape (up to
    /// `max_batch`, and only while the larger batch's expected cost still lets every member make its deadline), or
    /// expires it. Nothing waits for a batch to fill: an isolated message runs alone at once.
    fn execute(&mut self, head: Waiting, idle_after: bool) -> Vec<Outcome> {
        let now = Instant::now();
        let mut answered = Vec::new();
        if let Some(verdict) = self.shed(&head, 1, now) {
            answered.push(self.outcome(head.prepared, verdict));
            return answered;
        }
        let signature = Pipeline::signature(&head.prepared);
        let mut batch = vec![head];
        let mut aside = Vec::new();
        let max_batch = self.max_batch();
        while batch.len() < max_batch {
            let Some(candidate) = self.waiting.pop() else { break };
            self.waiting_bytes -= candidate.bytes;
            if let Some(verdict @ Verdict::Expired(ExpireReason::Passed)) = self.shed(&candidate, 1, now) {
                self.dequeued(candidate.bytes);
                answered.push(self.outcome(candidate.prepared, verdict));
                continue;
            }
            let grown = batch.len() + 1;
            let fits = Pipeline::signature(&candidate.prepared) == signature
                && batch.iter().chain([&candidate]).all(|member| self.shed(member, grown, now).is_none());
            if fits {
                self.dequeued(candidate.bytes);
                batch.push(candidate);
            } else {
                aside.push(candidate);
                // Scanning the whole queue for partners would cost more than it saves.
                if aside.len() >= max_batch * 4 {
                    break;
                }
            }
        }
        self.waiting_bytes += aside.iter().map(|waiting| waiting.bytes).sum::<usize>();
        self.waiting.extend(aside);

        let job = Job::new(batch.into_iter().map(|waiting| waiting.prepared).collect(), max_batch);
        // An idle instance takes the batch while this thread prepares the next, unless there is nothing else to
        // do: then the batch runs here, without handing it over and back. The instances serve the first rung only.
        let job = if idle_after || job.rung() != 0 {
            job
        } else {
            match self.runners.dispatch(job) {
                Ok(()) => return answered,
                Err(job) => job,
            }
        };
        answered.extend(self.run_here(job));
        answered
    }

    /// Runs a batch on this thread's own instance of the model and answers it.
    fn run_here(&mut self, mut job: Job) -> Vec<Outcome> {
        let metrics = &self.context.metrics;
        let model = self.pipeline.rung_model_mut(job.rung());
        let completed = catch_unwind(AssertUnwindSafe(|| job.run(model, &mut || metrics.beat()))).is_ok();
        self.conclude(job, completed)
    }

    /// Postprocesses a batch whose model run is over (`completed` false if it panicked) and turns it into
    /// outcomes, one per message; the run's cost teaches the cost model.
    fn conclude(&mut self, mut job: Job, completed: bool) -> Vec<Outcome> {
        let (length, size) = job.shape();
        let rung = job.rung();
        let mut identities: Vec<Identity> = job
            .batch()
            .iter()
            .map(|prepared| {
                let item = &prepared.item;
                (item.id.clone(), item.key.clone(), prepared.arrived, prepared.deadline, None)
            })
            .collect();
        // Kept out of the postprocessing, so that a panic in it cannot take a query's reply with it.
        for (identity, prepared) in identities.iter_mut().zip(job.batch_mut()) {
            identity.4 = prepared.reply.take();
        }
        let concluded =
            if completed { catch_unwind(AssertUnwindSafe(|| self.pipeline.conclude(job))).ok() } else { None };
        match concluded {
            Some(outcomes) => {
                if let (Some(first), Some(costs)) = (outcomes.first(), self.costs.get_mut(rung)) {
                    costs.observe(length, size, first.timings.inference + first.timings.postprocess);
                }
                outcomes
                    .into_iter()
                    .zip(identities)
                    .map(|(mut outcome, (_, _, _, _, reply))| {
                        outcome.reply = reply;
                        outcome
                    })
                    .collect()
            }
            None => identities
                .into_iter()
                .map(|(id, key, arrived, deadline, reply)| Outcome {
                    pipeline: self.pipeline.index(),
                    id,
                    key,
                    verdict: panicked(),
                    timings: Timings::default(),
                    arrived,
                    deadline,
                    reply,
                    rung,
                })
                .collect(),
        }
    }

    fn outcome(&self, prepared: Prepared, verdict: Verdict) -> Outcome {
        Outcome::prepared(self.pipeline.index(), prepared, verdict)
    }

    /// Hands an outcome to the egress; false if the publisher is gone. A missed deadline (expired, or answered
    /// late) counts toward stepping down the ladder.
    fn send(&mut self, outcome: Outcome) -> bool {
        if let Some(ladder) = self.pipeline.ladder_mut() {
            let now = Instant::now();
            if matches!(outcome.verdict, Verdict::Expired(_)) || outcome.deadline.is_some_and(|at| now > at.at) {
                ladder.record_miss(now);
            }
        }
        if self.context.outcomes.send(outcome).is_err() {
            tracing::error!(pipeline = self.pipeline.index(), "the publisher is gone; the worker stops");
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use zinfer_stage_api::{Input, Item};

    use super::*;
    use crate::pipeline::deadline::Deadline;

    fn waiting(sequence: u64, arrived: Instant, deadline: Option<Instant>) -> Waiting {
        let item = Item::new(format!("m{sequence}"), "k".into(), Input::Text("t".into()));
        let deadline = deadline.map(|at| Deadline { at });
        let prepared = Prepared { item, timings: Timings::default(), arrived, deadline, reply: None, rung: 0 };
        Waiting::new(prepared, sequence, 0)
    }

    #[test]
    fn a_message_without_a_deadline_waits_behind_urgent_ones_but_not_forever() {
        let start = Instant::now();
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
