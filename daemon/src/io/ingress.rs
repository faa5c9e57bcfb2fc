//! Ingress: a zenoh subscriber per pipeline that admits samples into the pipeline's bounded queue.
//!
//! Admission is where a message becomes the daemon's responsibility: from the moment it is counted as received it
//! gets exactly one outcome. The zenoh callback never blocks (it runs on zenoh's own threads): when the queue is
//! full the message is answered at once with `dropped: queue_full` (or, under `overload = "latest"`, the oldest
//! waiting message of its key makes room and is answered `dropped: superseded`) instead of stalling every subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use zenoh::sample::Sample;
use zinfer_proto::drop_reason;
use zinfer_stage_api::RawMessage;

use crate::pipeline::Envelope;
use crate::pipeline::outcome::{Outcome, Timings, Verdict};
use crate::pipeline::queue::{Refused, Sender};
use crate::telemetry::metrics::PipelineMetrics;

/// Generates request ids for messages that carry none: `<zenoh id>-<sequence>`, unique per daemon run.
#[derive(Debug)]
pub struct IdGenerator {
    prefix: String,
    next: AtomicU64,
}

impl IdGenerator {
    /// Ids prefixed with `prefix` (the session's zenoh id).
    pub fn new(prefix: String) -> Self {
        Self { prefix, next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where admitted messages go: the pipeline's queue, or straight to the egress when they cannot be queued.
pub struct Admission {
    /// The pipeline's bounded queue.
    pub queue: Sender,
    /// The egress, for messages answered without processing.
    pub outcomes: UnboundedSender<Outcome>,
    /// Index of the pipeline in its generation (outcomes name it).
    pub pipeline: usize,
    /// Its counters.
    pub metrics: Arc<PipelineMetrics>,
}

/// A pipeline's subscription. While it is open, every sample on the input key is admitted to exactly one
/// [`Admission`]: the current one. A reload swaps the admission under the same subscriber ([`Ingress::retarget`]),
/// so a message published during a reload reaches either the old pipeline or the new one, never both or neither.
pub struct Ingress {
    gate: Arc<Mutex<Option<Admission>>>,
    subscriber: zenoh::pubsub::Subscriber<()>,
}

impl Ingress {
    /// Declares the subscriber on `input`; messages without an id get one from `ids`.
    pub async fn open(
        session: &zenoh::Session,
        input: &str,
        admission: Admission,
        ids: Arc<IdGenerator>,
    ) -> Result<Self, crate::Error> {
        let gate = Arc::new(Mutex::new(Some(admission)));
        let callback_gate = Arc::clone(&gate);
        let subscriber = session
            .declare_subscriber(input.to_owned())
            .callback(move |sample| admit(&callback_gate, &ids, sample))
            .await
            .map_err(|error| crate::Error::Zenoh(format!("cannot subscribe to `{input}`: {error}")))?;
        Ok(Self { gate, subscriber })
    }

    /// From the next message on, admits into `admission`. Dropping the previous admission (returned) releases the
    /// previous pipeline's queue, so its worker drains what it holds and finishes.
    pub fn retarget(&self, admission: Admission) -> Option<Admission> {
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).replace(admission)
    }

    /// Stops admitting: releases the queue (so the worker can drain and finish) and undeclares the subscriber.
    pub async fn close(self) {
        drop(self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        if let Err(error) = self.subscriber.undeclare().await {
            tracing::warn!(%error, "undeclaring a subscriber failed");
        }
    }
}

fn admit(gate: &Mutex<Option<Admission>>, ids: &IdGenerator, sample: Sample) {
    let arrived = Instant::now();
    let arrived_wall = SystemTime::now();
    let gate = gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Closed: the daemon is shutting down and no longer accepts messages.
    let Some(admission) = gate.as_ref() else {
        return;
    };
    admission.metrics.record_received();
    let attachment_id = sample
        .attachment()
        .and_then(|attachment| String::from_utf8(attachment.to_bytes().into_owned()).ok())
        .filter(|id| !id.is_empty());
    let fallback_id = attachment_id.clone().unwrap_or_else(|| ids.next());
    let message = RawMessage {
        key: sample.key_expr().as_str().to_owned(),
        payload: sample.payload().to_bytes().into_owned(),
        encoding: sample.encoding().to_string(),
        attachment_id,
    };
    // Count before queueing: the worker may dequeue before push returns.
    admission.metrics.record_enqueued();
    let (envelope, reason) = match admission.queue.push(Envelope { message, arrived, arrived_wall, fallback_id }) {
        Ok(None) => return,
        // `latest`: the newest got in, the oldest of its key made room.
        Ok(Some(evicted)) => (evicted, drop_reason::SUPERSEDED),
        Err(Refused::Full(envelope)) => (*envelope, drop_reason::QUEUE_FULL),
        Err(Refused::Closed(envelope)) => (*envelope, drop_reason::SHUTDOWN),
    };
    admission.metrics.record_dequeued();
    tracing::debug!(pipeline = admission.pipeline, reason, "message dropped at admission");
    let outcome = Outcome {
        pipeline: admission.pipeline,
        id: envelope.fallback_id,
        key: envelope.message.key,
        verdict: Verdict::Dropped(reason),
        timings: Timings::default(),
        arrived: envelope.arrived,
        deadline: None,
    };
    if admission.outcomes.send(outcome).is_err() {
        tracing::error!(pipeline = admission.pipeline, "the publisher is gone; a dropped message gets no outcome");
    }
}
