//! Per-pipeline counters and latency histograms.
//!
//! Counters are updated at two points only: `received` at admission, and the outcome counters by the egress just
//! before it hands the result to zenoh (so a status reply that follows a result counts it). So
//! `in_flight = received - completed - failed - expired - dropped` counts the messages whose result is not yet
//! being published; a put that zenoh then refuses is counted in `publish_failures`. Admission keeps `in_flight` at
//! most `max_in_flight` ([`PipelineMetrics::try_receive`]): every outcome owed is an accepted message, so this bounds
//! what the queues and the egress hold together, whatever the input rate and however slowly results leave.
//!
//! The egress records each outcome's latencies under a lock that a snapshot (a status query, a telemetry tick)
//! takes only to swap the recorded histograms for empty ones: the merge into the running totals and the quantiles,
//! which walk every bucket (tens of thousands per histogram), happen under a lock of their own, off the path of
//! the outcomes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use zinfer_proto as proto;
use zinfer_stage_api::GoldenSpec;

use super::names::STAGES;
use crate::pipeline::ModelIdentity;
use crate::pipeline::golden::GoldenRun;
use crate::pipeline::outcome::{Outcome, Verdict, micros};

/// What telemetry says about a pipeline that does not change while it runs.
#[derive(Debug, Clone)]
pub struct PipelineDescription {
    /// The pipeline's name.
    pub name: String,
    /// Its input key expression.
    pub input: String,
    /// Its model.
    pub model: ModelIdentity,
    /// Its model ladder, largest first (`model` first); empty without a ladder.
    pub ladder: Vec<ModelIdentity>,
    /// Execution providers in force.
    pub providers: Vec<String>,
    /// What the model cost at start-up.
    pub memory: proto::ModelMemory,
    /// ONNX Runtime settings in force.
    pub session: proto::SessionSettings,
    /// The configuration generation the pipeline was built in.
    pub generation: u64,
    /// The types of its preprocessing then postprocessing stages, in order (what each `Timings::stages` entry
    /// times).
    pub stages: Vec<String>,
}

/// Counters of one pipeline.
pub struct PipelineMetrics {
    description: PipelineDescription,
    received: AtomicU64,
    refused: AtomicU64,
    max_in_flight: u64,
    completed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    deadline_missed: AtomicU64,
    publish_failures: AtomicU64,
    queries: AtomicU64,
    queries_refused: AtomicU64,
    shared_elsewhere: AtomicU64,
    share_members: AtomicU64,
    share_unwatched: AtomicU64,
    queue_depth: AtomicU64,
    /// Milliseconds from `created` to the worker's latest sign of progress.
    heartbeat_ms: AtomicU64,
    created: Instant,
    detail: Mutex<Detail>,
    latency: Mutex<Latency>,
    /// The golden inputs' runs: their counts and the last one, and when it ran.
    drift: Mutex<Option<(proto::DriftCheck, Instant)>>,
    /// The model ladder's serving rung and steps, and the results each rung produced.
    ladder: LadderCounts,
}

/// What telemetry counts of a pipeline's model ladder.
struct LadderCounts {
    active: AtomicU64,
    steps_down: AtomicU64,
    steps_up: AtomicU64,
    /// Results (`ok`) per rung.
    completed: Vec<AtomicU64>,
}

/// Latency histograms as of the last snapshot, and empty ones to swap for those the egress filled since.
struct Latency {
    totals: Vec<Histogram<u64>>,
    spare: Vec<Histogram<u64>>,
}

struct Detail {
    refused_by_reason: BTreeMap<&'static str, u64>,
    failed_by_reason: BTreeMap<&'static str, u64>,
    dropped_by_reason: BTreeMap<&'static str, u64>,
    expired_by_reason: BTreeMap<&'static str, u64>,
    by_batch_size: BTreeMap<u32, u64>,
    stage_counters: BTreeMap<&'static str, u64>,
    /// Recorded since the last snapshot.
    latency: Vec<Histogram<u64>>,
}

impl PipelineMetrics {
    /// Empty counters for a pipeline that may owe at most `max_in_flight` outcomes at once.
    pub fn new(description: PipelineDescription, max_in_flight: usize) -> Self {
        // Two significant digits (quantiles within 1%) up to an hour, in microseconds: 26 KiB each. Three digits
        // cost 188 KiB each, 4.5 MiB for the three sets of a two-stage pipeline: 7% of the daemon's peak RSS, for a
        // precision no dashboard reads (`zinferd bench footprint`, massif).
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid");
        // The fixed stages, then the pipeline's own.
        let count = STAGES.len() + description.stages.len();
        let histograms = || (0..count).map(|_| histogram()).collect::<Vec<_>>();
        Self {
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            max_in_flight: max_in_flight as u64,
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            deadline_missed: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            queries_refused: AtomicU64::new(0),
            shared_elsewhere: AtomicU64::new(0),
            share_members: AtomicU64::new(0),
            share_unwatched: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            created: Instant::now(),
            detail: Mutex::new(Detail {
                refused_by_reason: BTreeMap::new(),
                failed_by_reason: BTreeMap::new(),
                dropped_by_reason: BTreeMap::new(),
                expired_by_reason: BTreeMap::new(),
                by_batch_size: BTreeMap::new(),
                stage_counters: BTreeMap::new(),
                latency: histograms(),
            }),
            latency: Mutex::new(Latency { totals: histograms(), spare: histograms() }),
            drift: Mutex::new(None),
            ladder: LadderCounts {
                active: AtomicU64::new(0),
                steps_down: AtomicU64::new(0),
                steps_up: AtomicU64::new(0),
                completed: description.ladder.iter().map(|_| AtomicU64::new(0)).collect(),
            },
            description,
        }
    }

    /// The pipeline's model ladder stepped from rung `from` to rung `to`.
    pub fn record_rung_switch(&self, from: usize, to: usize) {
        let counter = if to > from { &self.ladder.steps_down } else { &self.ladder.steps_up };
        counter.fetch_add(1, Ordering::Relaxed);
        self.ladder.active.store(to as u64, Ordering::Relaxed);
    }

    /// A run of the model's golden inputs: its report, or why it could not run; judged against `spec`.
    pub fn record_drift_check(&self, run: &GoldenRun, spec: &GoldenSpec) {
        let mut drift = self.drift.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = drift.take().map(|(check, _)| check).unwrap_or_default();
        let mut check = proto::DriftCheck {
            checks: previous.checks + 1,
            failures: previous.failures,
            min_agreement: spec.min_agreement,
            max_deviation_allowed: spec.max_deviation,
            max_mean_deviation_allowed: spec.max_mean_deviation,
            ..Default::default()
        };
        match run {
            Ok(report) => {
                check.cases = report.cases as u32;
                check.agreeing = report.agreeing as u32;
                check.max_deviation = report.max_deviation;
                check.mean_deviation = report.mean_deviation;
            }
            Err(error) => check.error = error.clone(),
        }
        check.passed = crate::pipeline::golden::failures(run, spec).is_empty();
        check.failures += u64::from(!check.passed);
        *drift = Some((check, Instant::now()));
    }

    /// For the service's status line: what is wrong with the model's last run of its golden inputs, if anything.
    pub fn drift_problem(&self) -> Option<String> {
        let drift = self.drift.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (check, _) = drift.as_ref().filter(|(check, _)| !check.passed)?;
        Some(if check.error.is_empty() {
            format!(
                "top-1 {}/{}, largest deviation {:.3} (allowed {})",
                check.agreeing, check.cases, check.max_deviation, check.max_deviation_allowed
            )
        } else {
            format!("could not run: {}", check.error)
        })
    }

    /// Accepts a message (counts it received) unless the pipeline already owes `max_in_flight` outcomes; then it is
    /// counted refused instead and gets no outcome. Returns whether it was accepted.
    pub fn try_receive(&self) -> bool {
        // The outcome counters only grow, so reading them first can only overstate in_flight: never over the limit.
        let answered = self.answered();
        let accepted = self
            .received
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |received| {
                (received.saturating_sub(answered) < self.max_in_flight).then_some(received + 1)
            })
            .is_ok();
        if !accepted {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let mut detail = self.detail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *detail.refused_by_reason.entry(proto::refuse_reason::IN_FLIGHT_LIMIT).or_default() += 1;
            drop(detail);
            // Logged at 1, 2, 4, 8…: each episode shows up in the log without flooding it; telemetry has the count.
            if refused.is_power_of_two() {
                tracing::warn!(
                    pipeline = %self.description.name, refused, max_in_flight = self.max_in_flight,
                    "message refused without an outcome: the pipeline owes max_in_flight outcomes (results are \
                     published more slowly than messages arrive: a slow result subscriber?)"
                );
            }
        }
        accepted
    }

    /// A message entered the pipeline's queue.
    pub fn record_enqueued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// The worker took a message from the queue.
    pub fn record_dequeued(&self) {
        let _ = self.queue_depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |depth| depth.checked_sub(1));
    }

    /// Adds what a stage counted while preparing a message.
    pub fn record_counters(&self, counters: &[(&'static str, u64)]) {
        if counters.is_empty() {
            return;
        }
        let mut detail = self.detail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, count) in counters {
            *detail.stage_counters.entry(name).or_default() += count;
        }
    }

    /// A message accepted by [`Self::try_receive`] came as a query.
    pub fn record_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// A query refused by [`Self::try_receive`] (answered at once with a reply error).
    pub fn record_query_refused(&self) {
        self.queries_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A sample left to another daemon sharing the pipeline.
    pub fn record_shared_elsewhere(&self) {
        self.shared_elsewhere.fetch_add(1, Ordering::Relaxed);
    }

    /// The daemons sharing the pipeline, as this one sees them.
    pub fn set_share_members(&self, members: usize) {
        self.share_members.store(members as u64, Ordering::Relaxed);
    }

    /// `count` messages left to another member that this daemon no longer follows (see `io::share::watch`).
    pub fn record_unwatched(&self, count: u64) {
        if count > 0 {
            self.share_unwatched.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// A message another member took and died owing, taken over here to be answered: received now, beyond
    /// `max_in_flight` if need be (its outcome is handed to the egress at once).
    pub fn record_taken_over(&self) {
        self.received.fetch_add(1, Ordering::SeqCst);
    }

    /// The most outcomes the pipeline may owe at once.
    pub fn max_in_flight(&self) -> usize {
        usize::try_from(self.max_in_flight).unwrap_or(usize::MAX)
    }

    /// Zenoh refused to publish a result (or send a reply) that `record_outcome` already counted.
    pub fn record_publish_failure(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An outcome is about to leave the daemon as `result`.
    pub fn record_outcome(&self, outcome: &Outcome, result: &proto::Result) {
        let ok = matches!(outcome.verdict, Verdict::Predicted(_) | Verdict::Parts(_));
        if result.deadline_met == Some(false) && ok {
            self.deadline_missed.fetch_add(1, Ordering::Relaxed);
        }
        let total_us = result.timings.map_or(0, |timings| timings.total_us);
        let batch_size = outcome.timings.batch_size;
        let mut detail = self.detail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if batch_size > 0 {
            *detail.by_batch_size.entry(batch_size).or_default() += 1;
        }
        match &outcome.verdict {
            Verdict::Predicted(_) | Verdict::Parts(_) => {
                if let Some(counter) = self.ladder.completed.get(outcome.rung) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let t = &outcome.timings;
                let fixed = [t.queue, t.decode, t.preprocess, t.inference, t.postprocess].map(micros);
                let own = t.stages.iter().map(|took| micros(*took));
                let values = fixed.into_iter().chain([total_us]).chain(own);
                for (histogram, value) in detail.latency.iter_mut().zip(values) {
                    histogram.saturating_record(value.max(1));
                }
                drop(detail);
                self.completed.fetch_add(1, Ordering::SeqCst);
            }
            Verdict::Failed(error) => {
                *detail.failed_by_reason.entry(error.reason.as_str()).or_default() += 1;
                drop(detail);
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
            Verdict::Dropped(reason) => {
                *detail.dropped_by_reason.entry(reason.as_str()).or_default() += 1;
                drop(detail);
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
            Verdict::Expired(reason) => {
                *detail.expired_by_reason.entry(reason.as_str()).or_default() += 1;
                drop(detail);
                self.expired.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The worker shows progress: it is idle and waiting, or it just finished a step.
    pub fn beat(&self) {
        self.heartbeat_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the worker last showed progress.
    pub fn since_beat(&self) -> Duration {
        let elapsed = self.created.elapsed().as_millis() as u64;
        Duration::from_millis(elapsed.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.description.name
    }

    /// Outcomes published or being published so far (all kinds).
    pub fn answered(&self) -> u64 {
        [&self.completed, &self.failed, &self.dropped, &self.expired]
            .iter()
            .map(|counter| counter.load(Ordering::SeqCst))
            .sum()
    }

    /// The wire form of the counters now.
    pub fn snapshot(&self) -> proto::PipelineStats {
        // Read the outcome counters before `received`, so in_flight can never appear negative.
        let completed = self.completed.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        let dropped = self.dropped.load(Ordering::SeqCst);
        let expired = self.expired.load(Ordering::SeqCst);
        let received = self.received.load(Ordering::SeqCst);
        let mut latency = self.latency.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let detail = {
            let mut detail = self.detail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::swap(&mut detail.latency, &mut latency.spare);
            Counts::of(&detail)
        };
        let Latency { totals, spare } = &mut *latency;
        for (total, recent) in totals.iter_mut().zip(spare.iter_mut()) {
            // Same bounds on both sides: adding cannot fail.
            let _ = total.add(&*recent);
            recent.reset();
        }
        let stats = |stage: &str, histogram: &Histogram<u64>| proto::LatencyStats {
            stage: stage.to_owned(),
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p95_us: histogram.value_at_quantile(0.95),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        };
        // `new` made the fixed stages' histograms first, then one per own stage.
        let (fixed, own) = totals.split_at(STAGES.len());
        let latency = STAGES.iter().zip(fixed).map(|(stage, histogram)| stats(stage, histogram)).collect();
        let description = &self.description;
        let stage_latency =
            description.stages.iter().zip(own).map(|(stage, histogram)| stats(stage, histogram)).collect();
        proto::PipelineStats {
            name: description.name.clone(),
            input: description.input.clone(),
            model: Some(proto::ModelRef {
                name: description.model.name.clone(),
                version: description.model.version.clone(),
            }),
            received,
            completed,
            failed,
            dropped,
            in_flight: received.saturating_sub(completed + failed + dropped + expired),
            failed_by_reason: detail.failed_by_reason,
            dropped_by_reason: detail.dropped_by_reason,
            latency,
            stage_latency,
            execution_providers: description.providers.clone(),
            model_memory: Some(description.memory),
            session: Some(description.session.clone()),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            expired,
            deadline_missed: self.deadline_missed.load(Ordering::Relaxed),
            expired_by_reason: detail.expired_by_reason,
            messages_by_batch_size: detail.by_batch_size,
            stage_counters: detail.stage_counters,
            worker_idle_ms: self.since_beat().as_millis() as u64,
            generation: description.generation,
            refused: self.refused.load(Ordering::Relaxed),
            refused_by_reason: detail.refused_by_reason,
            max_in_flight: self.max_in_flight,
            queries: self.queries.load(Ordering::Relaxed),
            queries_refused: self.queries_refused.load(Ordering::Relaxed),
            shared_elsewhere: self.shared_elsewhere.load(Ordering::Relaxed),
            share_members: self.share_members.load(Ordering::Relaxed),
            share_unwatched: self.share_unwatched.load(Ordering::Relaxed),
            drift: self
                .drift
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
                .map(|(check, at)| proto::DriftCheck { age_ms: at.elapsed().as_millis() as u64, ..check.clone() }),
            ladder: (!description.ladder.is_empty()).then(|| proto::Ladder {
                rungs: description
                    .ladder
                    .iter()
                    .zip(&self.ladder.completed)
                    .map(|(model, completed)| proto::Rung {
                        model: Some(proto::ModelRef { name: model.name.clone(), version: model.version.clone() }),
                        completed: completed.load(Ordering::Relaxed),
                    })
                    .collect(),
                active: self.ladder.active.load(Ordering::Relaxed) as u32,
                steps_down: self.ladder.steps_down.load(Ordering::Relaxed),
                steps_up: self.ladder.steps_up.load(Ordering::Relaxed),
            }),
        }
    }
}

/// The counters of [`Detail`] in their wire form, copied out under its lock.
struct Counts {
    refused_by_reason: BTreeMap<String, u64>,
    failed_by_reason: BTreeMap<String, u64>,
    dropped_by_reason: BTreeMap<String, u64>,
    expired_by_reason: BTreeMap<String, u64>,
    stage_counters: BTreeMap<String, u64>,
    by_batch_size: BTreeMap<u32, u64>,
}

impl Counts {
    fn of(detail: &Detail) -> Self {
        let owned = |map: &BTreeMap<&'static str, u64>| map.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        Self {
            refused_by_reason: owned(&detail.refused_by_reason),
            failed_by_reason: owned(&detail.failed_by_reason),
            dropped_by_reason: owned(&detail.dropped_by_reason),
            expired_by_reason: owned(&detail.expired_by_reason),
            stage_counters: owned(&detail.stage_counters),
            by_batch_size: detail.by_batch_size.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use zinfer_stage_api::{Prediction, Scores};

    use super::{PipelineDescription, PipelineMetrics};
    use crate::pipeline::ModelIdentity;
    use crate::pipeline::outcome::{Outcome, Timings, Verdict};

    fn answer(metrics: &PipelineMetrics, inference_ms: u64) {
        let identity = ModelIdentity { name: "m".into(), version: "1".into() };
        let prediction = Prediction::Scores(Scores::default());
        let timings = Timings {
            inference: Duration::from_millis(inference_ms),
            batch_size: 1,
            stages: vec![Duration::from_micros(70), Duration::from_micros(3)],
            ..Timings::default()
        };
        let outcome = Outcome {
            rung: 0,
            pipeline: 0,
            id: "id".into(),
            key: "k".into(),
            verdict: Verdict::Predicted(prediction),
            timings,
            arrived: Instant::now(),
            deadline: None,
            reply: None,
        };
        assert!(metrics.try_receive());
        metrics.record_outcome(&outcome, &outcome.to_result("p", Some(&identity), &[]));
    }

    #[test]
    fn latency_keeps_counting_across_snapshots() {
        let description = PipelineDescription {
            name: "p".into(),
            input: "in/**".into(),
            model: ModelIdentity { name: "m".into(), version: "1".into() },
            ladder: Vec::new(),
            providers: Vec::new(),
            memory: Default::default(),
            session: Default::default(),
            generation: 1,
            stages: vec!["tokenize".into(), "classify".into()],
        };
        let metrics = PipelineMetrics::new(description, 100);
        let inference = |metrics: &PipelineMetrics| {
            let snapshot = metrics.snapshot();
            let stats = snapshot.latency.iter().find(|stats| stats.stage == "inference").cloned();
            stats.map(|stats| (stats.count, stats.max_us / 1000))
        };
        for _ in 0..3 {
            answer(&metrics, 2);
        }
        assert_eq!(inference(&metrics), Some((3, 2)));
        answer(&metrics, 40);
        answer(&metrics, 2);
        assert_eq!(inference(&metrics), Some((5, 40)), "the totals keep what earlier snapshots took in");
        assert_eq!(inference(&metrics), Some((5, 40)), "a snapshot with nothing new changes nothing");
        assert_eq!(metrics.snapshot().completed, 5);
        let snapshot = metrics.snapshot();
        let own: Vec<_> = snapshot.stage_latency.iter().map(|stats| (stats.stage.as_str(), stats.count)).collect();
        assert_eq!(own, [("tokenize", 5), ("classify", 5)], "the pipeline's own stages, by name, in order");
        let tokenize = &snapshot.stage_latency[0];
        assert!((69..=71).contains(&tokenize.p50_us), "each stage's own timings: {tokenize:?}");
    }
}
