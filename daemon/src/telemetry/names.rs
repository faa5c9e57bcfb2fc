//! Names used in telemetry, in one place so that producers and readers cannot drift apart.

/// Stage names of [`zinfer_proto::LatencyStats::stage`], in pipeline order; `total` runs from arrival to publish.
pub const STAGES: [&str; 6] = ["queue", "decode", "preprocess", "inference", "postprocess", "total"];
