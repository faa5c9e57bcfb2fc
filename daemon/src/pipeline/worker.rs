//! The worker: one OS thread per pipeline that owns the pipeline (and so the ONNX Runtime session).
//!
//! Decoding, tokenization and inference are CPU work; running them here keeps tokio's reactor and zenoh's own
//! threads free to move bytes. The worker reads a bounded queue and ends when the queue's senders are gone and it
//! is empty, which is how shutdown drains: stop admitting, let the worker finish, then stop publishing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;
use zinfer_proto::drop_reason;
use zinfer_stage_api::{Reason, StageError};

use super::outcome::{Outcome, Timings, Verdict};
use super::{Envelope, Pipeline, Processed};
use crate::telemetry::metrics::PipelineMetrics;

/// Starts the worker thread for pipeline `index`.
///
/// Once `abandon` is set (the drain timeout passed), queued envelopes are answered `dropped: shutdown` instead of
/// being processed.
pub fn spawn(
    index: usize,
    name: &str,
    mut pipeline: Pipeline,
    queue: Receiver<Envelope>,
    outcomes: UnboundedSender<Outcome>,
    abandon: Arc<AtomicBool>,
    metrics: Arc<PipelineMetrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("zinfer-{name}")).spawn(move || {
        while let Ok(envelope) = queue.recv() {
            metrics.record_dequeued();
            let id_fallback = envelope.fallback_id.clone();
            let key = envelope.message.key.clone();
            let arrived = envelope.arrived;
            let processed = if abandon.load(Ordering::Relaxed) {
                Processed {
                    id: id_fallback,
                    verdict: Verdict::Dropped(drop_reason::SHUTDOWN),
                    timings: Timings::default(),
                }
            } else {
                // A panicking stage (a user's plugin, say) must cost one message, not the whole pipeline.
                catch_unwind(AssertUnwindSafe(|| pipeline.process(envelope))).unwrap_or_else(|_| Processed {
                    id: id_fallback,
                    verdict: Verdict::Failed(StageError::new(Reason::Custom("stage_panicked"), "a stage panicked")),
                    timings: Timings::default(),
                })
            };
            let outcome = Outcome {
                pipeline: index,
                id: processed.id,
                key,
                verdict: processed.verdict,
                timings: processed.timings,
                arrived,
            };
            if outcomes.send(outcome).is_err() {
                tracing::error!(pipeline = index, "the publisher is gone; the worker stops");
                break;
            }
        }
    })
}
