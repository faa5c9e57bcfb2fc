//! zinfer's wire schemas (`schemas/zinfer/v1/zinfer.proto`) as Rust types, and the key expressions they travel on.
//!
//! The generated types carry serde derives, so the JSON encoding of a result or a telemetry snapshot is the same
//! structure with the same field names as its protobuf encoding.

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/zinfer.v1.rs"));
}

pub use generated::*;
pub use prost::Message;

/// The outcome strings of [`Result::outcome`].
pub mod outcome {
    /// The message was processed: its result holds what the head made of it.
    pub const OK: &str = "ok";
    /// The message was bad or a stage failed on it.
    pub const ERROR: &str = "error";
    /// The message was accepted but not processed (queue full, shutdown).
    pub const DROPPED: &str = "dropped";
    /// The message's deadline could no longer be met, so it was not run.
    pub const EXPIRED: &str = "expired";
}

/// Reasons of [`Result::reason`] when the outcome is [`outcome::EXPIRED`].
pub mod expire_reason {
    /// The deadline had already passed when the message reached the model.
    pub const PASSED: &str = "deadline_passed";
    /// The deadline was still ahead, but the model's measured cost would overrun it.
    pub const UNREACHABLE: &str = "deadline_unreachable";
}

/// Drop reasons of [`Result::reason`] when the outcome is [`outcome::DROPPED`].
pub mod drop_reason {
    /// The pipeline's queue was full when the message arrived.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The daemon shut down before the message could be processed.
    pub const SHUTDOWN: &str = "shutdown";
    /// A newer message from the same key replaced it (overload policy `latest`).
    pub const SUPERSEDED: &str = "superseded";
    /// The process was above its memory budget when the message arrived.
    pub const MEMORY: &str = "memory";
    /// Another daemon sharing the pipeline took the message and ended (died, hung, lost its network) before
    /// answering it: a surviving member answers for it.
    pub const MEMBER_LOST: &str = "member_lost";
}

/// Reasons in `PipelineStats::refused_by_reason`: messages refused at the door, with no outcome.
pub mod refuse_reason {
    /// The pipeline already owed `max_in_flight` outcomes.
    pub const IN_FLIGHT_LIMIT: &str = "in_flight_limit";
}

/// Key expressions zinferd publishes on, derived from configured prefixes.
pub mod keys {
    /// Where the result for a request that arrived on `input_key` goes: `<output_prefix>/<input_key>`.
    pub fn result(output_prefix: &str, input_key: &str) -> String {
        format!("{}/{}", output_prefix.trim_end_matches('/'), input_key.trim_start_matches('/'))
    }

    /// Where telemetry snapshots are published.
    pub fn telemetry(prefix: &str) -> String {
        format!("{}/telemetry", prefix.trim_end_matches('/'))
    }

    /// The queryable that answers a telemetry snapshot on demand.
    pub fn status(prefix: &str) -> String {
        format!("{}/status", prefix.trim_end_matches('/'))
    }

    /// The liveliness token held while the daemon serves (withdrawn when a shutdown begins, before the drain).
    pub fn alive(prefix: &str) -> String {
        format!("{}/alive", prefix.trim_end_matches('/'))
    }

    /// The liveliness token a daemon that shares a pipeline holds from start-up until its zenoh session closes,
    /// after its drain: once it is gone, the daemon `zid` publishes nothing more (it stopped, died, or the router
    /// gave up on it).
    pub fn session(prefix: &str, zid: &str) -> String {
        format!("{}/session/{zid}", prefix.trim_end_matches('/'))
    }

    /// Where pipeline `pipeline` answers queries: `<prefix>/infer/<pipeline>`, and any key below it (a sensor
    /// client names its stream there, e.g. `zinfer/infer/activity/watch-3`).
    pub fn infer(prefix: &str, pipeline: &str) -> String {
        format!("{}/infer/{pipeline}", prefix.trim_end_matches('/'))
    }

    /// The selector parameter in which a query states its deadline (its timeout) in milliseconds: zenoh does not
    /// show a queryable the querier's timeout.
    pub const DEADLINE_PARAMETER: &str = "deadline_ms";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_key_joins_prefix_and_input_key() {
        assert_eq!(keys::result("zinfer/out/", "zinfer/in/text/a"), "zinfer/out/zinfer/in/text/a");
        assert_eq!(keys::telemetry("zinfer"), "zinfer/telemetry");
    }

    #[test]
    fn protobuf_and_json_forms_round_trip() {
        let result = Result {
            id: "r1".into(),
            outcome: outcome::OK.into(),
            label: Some("positive".into()),
            score: 0.75,
            scores: vec![ClassScore { label: "positive".into(), score: 0.75 }],
            ..Default::default()
        };
        let bytes = result.encode_to_vec();
        assert_eq!(Result::decode(bytes.as_slice()).expect("protobuf"), result);
        let json = serde_json::to_string(&result).expect("json");
        assert_eq!(serde_json::from_str::<Result>(&json).expect("json back"), result);
        let partial: Result = serde_json::from_str(r#"{"id":"x"}"#).expect("missing fields default");
        assert_eq!(partial.id, "x");
    }

    /// Heads that are not classifications got fields of their own (18 to 20) beside the v1 ones: a client built
    /// before them reads a new result's v1 fields, and a new client reads an old result, in both encodings.
    #[test]
    fn results_with_and_without_the_other_heads_fields_read_both_ways() {
        /// Result and WindowResult as the schema had them before fields 18 to 20 and 9 to 11: what an old client
        /// decodes.
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldResult {
            #[prost(string, tag = "1")]
            id: String,
            #[prost(string, tag = "4")]
            outcome: String,
            #[prost(float, tag = "8")]
            score: f32,
            #[prost(message, repeated, tag = "15")]
            windows: Vec<OldWindowResult>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldWindowResult {
            #[prost(string, tag = "1")]
            source: String,
            #[prost(uint64, tag = "2")]
            index: u64,
            #[prost(float, tag = "7")]
            score: f32,
        }
        let anomaly = Anomaly { score: 0.9, threshold: 0.5, anomalous: true };
        let window = WindowResult { source: "s".into(), index: 3, anomaly: Some(anomaly), ..Default::default() };
        let new = Result {
            id: "w1".into(),
            outcome: outcome::OK.into(),
            anomaly: Some(anomaly),
            windows: vec![window],
            ..Default::default()
        };
        let old = OldResult::decode(new.encode_to_vec().as_slice()).expect("an old client decodes a new result");
        assert_eq!((old.id.as_str(), old.outcome.as_str()), ("w1", "ok"));
        assert_eq!((old.windows[0].source.as_str(), old.windows[0].index), ("s", 3));
        let back = Result::decode(old.encode_to_vec().as_slice()).expect("a new client decodes an old result");
        assert_eq!((back.anomaly, back.values, back.embedding, back.windows[0].anomaly), (None, None, None, None));

        let json = serde_json::to_string(&new).expect("json");
        assert!(json.contains(r#""anomaly":{"score":0.9,"threshold":0.5,"anomalous":true}"#), "{json}");
        assert!(!json.contains("values") && !json.contains("embedding"), "kinds not set are left out: {json}");
        assert_eq!(serde_json::from_str::<Result>(&json).expect("json back"), new);
        let v1 = r#"{"id":"x","outcome":"ok","label":"positive","score":0.8,"scores":[],"top_k":[],"windows":[]}"#;
        let read: Result = serde_json::from_str(v1).expect("a v1 JSON result");
        assert_eq!((read.label.as_deref(), read.anomaly), (Some("positive"), None));
    }
}
