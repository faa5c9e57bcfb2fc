//! Egress: publishes every outcome on `<output_prefix>/<input key>` and accounts for it in telemetry.
//!
//! Results are put with `CongestionControl::Block` by default: a result is the only trace of an accepted message,
//! so zinferd waits for the network rather than silently discarding it (zenoh's default for `put` is to drop).
//! A pipeline may choose `drop` (and a zenoh priority) where stale results are worthless. The request id also
//! travels as the sample's attachment, so a client can correlate without decoding.
//!
//! A message that came as a query is answered to its querier instead, and only there: an `ok` outcome as a reply
//! carrying the result, any other as a reply error whose payload is the same result with its outcome and reason
//! (zenoh's own signal that the query did not succeed). Replies go with the query's own QoS, as zenoh sends them.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use zenoh::Wait;
use zenoh::bytes::Encoding;
use zenoh::key_expr::OwnedKeyExpr;
use zenoh::qos::CongestionControl;
use zenoh::query::Query;
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
    /// The models named in results: the pipeline's, then its ladder's smaller ones (never empty).
    pub models: Vec<ModelIdentity>,
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

/// A query waiting for its one reply, and the key to give that reply.
pub struct Reply {
    query: Query,
    key: OwnedKeyExpr,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Reply").field("key", &self.key.as_str()).finish_non_exhaustive()
    }
}

impl Reply {
    /// The reply owed to `query`, given on `key` (which must intersect the query's key expression).
    pub fn new(query: Query, key: OwnedKeyExpr) -> Self {
        Self { query, key }
    }

    /// Answers: `ok` as a reply carrying `bytes`, else as a reply error carrying them. The query is then dropped,
    /// which tells zenoh that no other reply follows.
    pub async fn send(self, ok: bool, bytes: Vec<u8>, encoding: Encoding, id: &str) -> zenoh::Result<()> {
        if ok {
            self.query.reply(self.key, bytes).encoding(encoding).attachment(id.as_bytes().to_vec()).await
        } else {
            self.query.reply_err(bytes).encoding(encoding).await
        }
    }

    /// The same, synchronously, for a zenoh callback: it returns once zenoh has queued the reply, which blocks only
    /// while zenoh's queue towards the querier is full and the query asked for congestion control `block`.
    pub fn send_now(self, ok: bool, bytes: Vec<u8>, encoding: Encoding, id: &str) -> zenoh::Result<()> {
        if ok {
            self.query.reply(self.key, bytes).encoding(encoding).attachment(id.as_bytes().to_vec()).wait()
        } else {
            self.query.reply_err(bytes).encoding(encoding).wait()
        }
    }
}

/// Publishes one pipeline's outcomes until its senders (admission and worker) are gone.
pub async fn publish(session: zenoh::Session, route: Route, mut outcomes: UnboundedReceiver<Outcome>) {
    let daemon = session.zid().to_string();
    while let Some(mut outcome) = outcomes.recv().await {
        let model = route.models.get(outcome.rung).or(route.models.first());
        let mut result = outcome.to_result(&route.name, model, &route.stages);
        result.daemon.clone_from(&daemon);
        let (bytes, encoding) = encode(&result, route.encoding);
        // Counted before the put, so a client that has seen a result finds it in the next status reply.
        route.metrics.record_outcome(&outcome, &result);
        if let Some(reply) = outcome.reply.take() {
            let ok = result.outcome == zinfer_proto::outcome::OK;
            if let Err(error) = reply.send(ok, bytes, encoding, &outcome.id).await {
                tracing::error!(pipeline = %route.name, id = %outcome.id, %error, "replying to a query failed");
                route.metrics.record_publish_failure();
            }
            continue;
        }
        let key = keys::result(&route.output_prefix, &outcome.key);
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
