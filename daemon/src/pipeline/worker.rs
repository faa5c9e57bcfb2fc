//! The worker: one OS thread per pipeline that owns the pipeline (and so the ONNX Runtime session).
//!
//! Decoding, tokenization and inference are CPU work; running them here keeps tokio's reactor and zenoh's own
//! threads free to move bytes. The worker prepares the messages that have arrived, which then wait in the queue
//! ordered earliest-deadline-first (see [`super::queue`]), and runs the most urgent. A message whose deadline has passed,
//! or can no longer be met given the measured cost of the model for inputs of its size, is answered `expired`
//! without running, so it does not take CPU from messages that can still make it.
//!
//! With further model instances ([`super::runner`]), a batch formed while other work waits goes to an idle instance
//! and the worker goes on preparing; a batch with nothing else to do runs here, on the worker's own session, because
//! handing it over and back would only add two thread wake-ups to a lone message.
//!
//! It ends when the admission queue's senders are gone, everything queued is answered and no instance is still
//! running a batch, which is how shutdown drains: stop admitting, let the worker finish, then stop publishing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use zinfer_stage_api::{Reason, StageError};

use super::deadline::CostModel;
use super::outcome::{DropReason, ExpireReason, Outcome, Timings, Verdict};
use super::queue::{Choice, Receiver, Ticket, Waiter, Waiting};
use super::runner::Runners;
use super::{Envelope, Job, Pipeline, Prepared, panicked};
use crate::memory::{Governor, Pressure};
use crate::telemetry::metrics::PipelineMetrics;

/// How often an idle worker shows it is alive (see [`PipelineMetrics::beat`]).
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// What the worker needs besides its pipeline and its queue.
pub struct WorkerContext {
    /// Most messages per model run.
    pub max_batch: usize,
    /// Most tokens (rows × padded length) per run of messages whose length varies.
    pub max_batch_tokens: usize,
    /// Where outcomes go.
    pub outcomes: UnboundedSender<Outcome>,
    /// Set when the drain timeout passed: answer what is left `dropped: shutdown`.
    pub abandon: Arc<AtomicBool>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// The process's memory pressure.
    pub memory: Arc<Governor>,
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
        let mut worker = Worker::new(pipeline, context, runners);
        // Stages, decoders and model runs are already guarded per message; a panic that reaches here is zinferd's
        // own bug. The thread then ends (its heartbeat stops, so the watchdog has the service restarted); what
        // waits is answered, and so is every later one. The few messages of the turn in progress (the one being
        // prepared, or in the batch being run) are lost with the turn.
        if catch_unwind(AssertUnwindSafe(|| worker.run(&queue))).is_err() {
            tracing::error!(
                pipeline = %name,
                "the pipeline's worker panicked (a bug in zinferd): its messages are answered error/worker_failed \
                 until zinferd is restarted"
            );
            // Batches still running on other instances are answered too, once back.
            while let Some(done) = worker.runners.wait_finished() {
                for prepared in done.job.into_batch() {
                    let outcome = worker.outcome(prepared, failed_verdict());
                    worker.send(outcome);
                }
            }
            for waiter in queue.fail() {
                worker.context.metrics.record_dequeued();
                let outcome = match waiter {
                    Waiter::Ready(prepared) => worker.outcome(*prepared, failed_verdict()),
                    Waiter::Arrived(envelope) => {
                        let (id, rung) = (worker.pipeline.sender_id(&envelope), worker.pipeline.active_rung());
                        Outcome::undecoded(worker.pipeline.index(), *envelope, id, failed_verdict(), rung)
                    }
                };
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
type Identity = (String, String, Instant, Option<super::deadline::Deadline>, Option<crate::io::egress::Reply>);

struct Worker {
    pipeline: Pipeline,
    context: WorkerContext,
    /// What a run costs, per rung of the pipeline's ladder (one without a ladder).
    costs: Vec<CostModel>,
    /// The pipeline's further model instances, which run batches while this thread prepares the next.
    runners: Runners,
}

impl Worker {
    fn new(pipeline: Pipeline, context: WorkerContext, runners: Runners) -> Self {
        let costs = (0..pipeline.rungs().len())
            .map(|rung| {
                let mut costs = CostModel::default();
                for &(elements, batch, took) in pipeline.calibration(rung) {
                    costs.observe(elements, batch, took);
                }
                costs
            })
            .collect();
        Self { pipeline, context, costs, runners }
    }

    fn run(&mut self, queue: &Receiver) {
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
            let pressed = self.context.memory.pressure() != Pressure::Normal;
            queue.set_pressed(pressed);
            if queue.nothing_ready() {
                match queue.wait_for_arrival(HEARTBEAT) {
                    Ok(()) => {}
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
            // What has arrived is prepared, then the model runs: one turn prepares at most what the queue holds at
            // its start, so a flood that arrives faster than it can be prepared still lets the model run.
            for (ticket, envelope) in queue.take_arrivals() {
                self.admit(ticket, envelope, queue);
            }
            if let Some(head) = queue.take_next() {
                self.context.metrics.record_dequeued();
                let idle_after = queue.is_empty();
                for outcome in self.execute(head, idle_after, queue) {
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
        let idle = queue.is_empty();
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

    /// Decodes and preprocesses a message taken from the queue and files it back, prepared, or answers it at once.
    fn admit(&mut self, ticket: Ticket, envelope: Envelope, queue: &Receiver) {
        let shed = if self.context.abandon.load(Ordering::Relaxed) {
            Some(DropReason::Shutdown)
        } else if self.context.memory.pressure() == Pressure::Hard {
            Some(DropReason::Memory)
        } else {
            None
        };
        if let Some(reason) = shed {
            queue.discard(ticket);
            return self.answer_undecoded(envelope, reason);
        }
        match self.pipeline.prepare(envelope) {
            Ok(prepared) => {
                self.context.metrics.record_counters(&prepared.item.counters);
                queue.file(ticket, prepared);
            }
            Err(outcome) => {
                queue.discard(ticket);
                self.context.metrics.record_dequeued();
                self.send(*outcome);
            }
        }
    }

    /// Answers a message taken from the queue without decoding it, under its sender's id.
    fn answer_undecoded(&mut self, envelope: Envelope, reason: DropReason) {
        self.context.metrics.record_dequeued();
        let (id, rung) = (self.pipeline.sender_id(&envelope), self.pipeline.active_rung());
        let outcome = Outcome::undecoded(self.pipeline.index(), envelope, id, Verdict::Dropped(reason), rung);
        self.send(outcome);
    }

    /// The batch size allowed now: one under memory pressure (activations grow with the batch).
    fn max_batch(&self) -> usize {
        match self.context.memory.pressure() {
            Pressure::Normal => self.context.max_batch,
            Pressure::Soft | Pressure::Hard => 1,
        }
    }

    /// Whether `candidate` may join `batch` under `max_batch_tokens`: the run's activations, and so the memory it
    /// takes, grow with rows × padded length. Messages of a fixed shape (no padding) are bounded by `max_batch` alone.
    fn within_tokens(&self, batch: &[Waiting], candidate: &Waiting) -> bool {
        if candidate.prepared.item.padding.is_none() {
            return true;
        }
        let longest = batch.iter().chain([candidate]).map(|member| member.prepared.length()).max().unwrap_or(0);
        (batch.len() + 1) * longest <= self.context.max_batch_tokens
    }

    /// Why a prepared message should not run now in a batch of `batch`, if it should not.
    fn shed(&self, prepared: &Prepared, batch: usize, now: Instant) -> Option<Verdict> {
        if self.context.abandon.load(Ordering::Relaxed) {
            return Some(Verdict::Dropped(DropReason::Shutdown));
        }
        let deadline = prepared.deadline?;
        if now >= deadline.at {
            Some(Verdict::Expired(ExpireReason::Passed))
        } else if now + self.cost(prepared.rung).estimate_batch(prepared.length(), batch) > deadline.at {
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
    fn execute(&mut self, head: Waiting, idle_after: bool, queue: &Receiver) -> Vec<Outcome> {
        let now = Instant::now();
        let mut answered = Vec::new();
        if let Some(verdict) = self.shed(&head.prepared, 1, now) {
            answered.push(self.outcome(head.prepared, verdict));
            return answered;
        }
        let signature = Pipeline::signature(&head.prepared);
        let mut batch = vec![head];
        let max_batch = self.max_batch();
        // Scanning the whole queue for partners would cost more than it saves.
        let expired = queue.fill_batch(&mut batch, max_batch, max_batch * 4, |batch, candidate| {
            if let Some(verdict @ Verdict::Expired(ExpireReason::Passed)) = self.shed(&candidate.prepared, 1, now) {
                return Choice::Answer(verdict);
            }
            let grown = batch.len() + 1;
            let fits = Pipeline::signature(&candidate.prepared) == signature
                && self.within_tokens(batch, candidate)
                && batch.iter().chain([candidate]).all(|member| self.shed(&member.prepared, grown, now).is_none());
            if fits { Choice::Join } else { Choice::Skip }
        });
        for _ in 1..batch.len() + expired.len() {
            self.context.metrics.record_dequeued();
        }
        for (prepared, verdict) in expired {
            answered.push(self.outcome(prepared, verdict));
        }

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
