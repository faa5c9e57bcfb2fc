//! One status query to every daemon under a prefix.

use std::time::Duration;

use prost::Message;
use zenoh::bytes::Encoding;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zinfer_proto::{self as proto, keys};

/// Why the fleet could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// zenoh refused the query.
    #[error("zenoh: {0}")]
    Zenoh(String),
}

/// Every daemon's snapshot under `prefix` (the daemons' `telemetry.prefix`), in zenoh id order, waiting up to
/// `timeout` for the last reply. A reply that is not a snapshot (an error, or another program on the key) is
/// skipped with a warning; no daemon at all is an empty list, not an error.
pub async fn gather(
    session: &zenoh::Session,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<proto::Telemetry>, FleetError> {
    let replies = session
        .get(keys::status(prefix))
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(|error| FleetError::Zenoh(error.to_string()))?;
    let mut snapshots = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        match reply.result() {
            Ok(sample) => match decode(&sample.payload().to_bytes(), sample.encoding()) {
                Some(snapshot) => snapshots.push(snapshot),
                None => tracing::warn!(key = %sample.key_expr(), "a status reply that is not a zinferd snapshot"),
            },
            Err(error) => {
                tracing::warn!(error = %error.payload().try_to_string().unwrap_or_default(), "a status query failed")
            }
        }
    }
    snapshots.sort_by(|a, b| a.zid.cmp(&b.zid));
    Ok(snapshots)
}

fn decode(bytes: &[u8], encoding: &Encoding) -> Option<proto::Telemetry> {
    if *encoding == Encoding::APPLICATION_PROTOBUF {
        proto::Telemetry::decode(bytes).ok()
    } else {
        serde_json::from_slice(bytes).ok()
    }
}
