//! Egress: publishes every outcome on `<output_prefix>/<input key>` and accounts for it in telemetry.
//!
//! Results are put with `CongestionControl::Block` by default: a result is the only trace of an accepted message,
//! so zinferd waits for the network rather than silently discarding it (zenoh's default for `put` is to drop).
//! A pipeline may choose `drop` (and a zenoh priority) where stale results are worthless. The request id also
//! travels as the sample's attachment, so a client can correlate without decoding.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use zenoh::bytes::Encoding;
use zenoh::qos::CongestionControl;
use zinfer_proto::{Message, keys};

use zenoh::qos::Priority;

use crate::config::{CongestionPolicy, PriorityLevel, WireEncoding};
use crate::pipeline::ModelIdentity;
use crate::pipeline::outcome::Outcome;
use crate::telemetry::metrics::PipelineMetrics;

/// Where and how one pipeline's outcomes are published.
pub struct Route {
    /// The pipeline's name.
    pub name: String,
    /// Results go to `<output_prefix>/<input key>`.
    pub output_prefix: String,
    /// Result serialisation.
    pub encoding: WireEncoding,
    /// zenoh congestion control for results.
    pub congestion_control: CongestionPolicy,
    /// zenoh priority for results.
    pub priority: PriorityLevel,
    /// The model named in results.
    pub model: ModelIdentity,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// The pipeline's stage types, in order, to name the per-stage timings.
    pub stages: Vec<String>,
}

/// Serialises a result or a telemetry snapshot in the configured encoding.
pub fn encode<T: Message + serde::Serialize>(value: &T, encoding: WireEncoding) -> (Vec<u8>, Encoding) {
    match encoding {
        WireEncoding::Json => (serde_json::to_vec(value).unwrap_or_default(), Encoding::APPLICATION_JSON),
        WireEncoding::Protobuf => (value.encode_to_vec(), Encoding::APPLICATION_PROTOBUF),
    }
}

/// Publishes one pipeline's outcomes until its senders (admission and worker) are gone.
pub async fn publish(session: zenoh::Session, route: Route, mut outcomes: UnboundedReceiver<Outcome>) {
    while let Some(outcome) = outcomes.recv().await {
        let result = outcome.to_result(&route.name, &route.model, &route.stages);
        let (bytes, encoding) = encode(&result, route.encoding);
        let key = keys::result(&route.output_prefix, &outcome.key);
        // Counted before the put, so a client that has seen a result finds it in the next status reply.
        route.metrics.record_outcome(&outcome, &result);
        let put = session
            .put(&key, bytes)
            .encoding(encoding)
            .congestion_control(match route.congestion_control {
                CongestionPolicy::Block => CongestionControl::Block,
                CongestionPolicy::Drop => CongestionControl::Drop,
            })
            .priority(priority(route.priority))
            .attachment(outcome.id.clone().into_bytes())
            .await;
        if let Err(error) = put {
            tracing::error!(pipeline = %route.name, id = %outcome.id, %key, %error, "publishing a result failed");
            route.metrics.record_publish_failure();
        }
    }
}

fn priority(level: PriorityLevel) -> Priority {
    match level {
        PriorityLevel::RealTime => Priority::RealTime,
        PriorityLevel::InteractiveHigh => Priority::InteractiveHigh,
        PriorityLevel::InteractiveLow => Priority::InteractiveLow,
        PriorityLevel::DataHigh => Priority::DataHigh,
        PriorityLevel::Data => Priority::Data,
        PriorityLevel::DataLow => Priority::DataLow,
        PriorityLevel::Background => Priority::Background,
    }
}
