//! Errors of stages: per-message failures ([`StageError`]) and start-up failures ([`BuildError`]).
//!
//! A per-message failure becomes an error outcome on the pipeline's output key; its [`Reason`] is the
//! machine-readable `reason` field and the telemetry label, so the set of reasons is closed and small.

use std::fmt;

/// Why a message could not be processed: a bounded set, used as an outcome reason and a metric label. Each has a
/// stable wire name ([`Reason::as_str`]); more may come, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The payload was empty.
    EmptyPayload,
    /// The payload exceeded the decoder's size limit.
    PayloadTooLarge,
    /// The payload was not valid UTF-8 where text was expected.
    InvalidUtf8,
    /// The payload was not the JSON document the decoder expects.
    MalformedJson,
    /// The payload was not the protobuf message the decoder expects.
    MalformedProtobuf,
    /// The sample's zenoh encoding is not one this decoder understands.
    UnsupportedEncoding,
    /// The request decoded fine but carried no text.
    EmptyText,
    /// The text is longer than the model accepts and the pipeline rejects rather than truncates.
    TooManyTokens,
    /// A stage received an item without the data it needs (a pipeline wiring bug).
    MissingInput,
    /// The tokenizer failed on the text.
    TokenizerFailed,
    /// ONNX Runtime failed to run the model.
    InferenceFailed,
    /// The model run overran the session's hard timeout and was cancelled.
    InferenceTimeout,
    /// The model produced an output of an unexpected shape or type.
    BadModelOutput,
    /// A sensor frame's channel count (or channel names) differ from what the model takes.
    WrongChannelCount,
    /// A sensor reading is NaN or infinite.
    NonFiniteValue,
    /// A sensor frame's timestamps do not increase strictly.
    NonMonotonicTimestamps,
    /// A sensor frame carries more samples than the pipeline allows.
    FrameTooLarge,
    /// The pipeline's worker thread failed (a bug in zinferd): the message could not be processed.
    WorkerFailed,
    /// A decoder or stage panicked on the message (a bug in that stage); the pipeline carries on.
    StagePanicked,
    /// A reason defined by a user's own stage; keep these few and static, they become metric labels.
    Custom(&'static str),
}

impl Reason {
    /// The stable, snake_case name of the reason, as published in outcomes and telemetry.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MalformedJson => "malformed_json",
            Self::MalformedProtobuf => "malformed_protobuf",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::EmptyText => "empty_text",
            Self::TooManyTokens => "too_many_tokens",
            Self::MissingInput => "missing_input",
            Self::TokenizerFailed => "tokenizer_failed",
            Self::InferenceFailed => "inference_failed",
            Self::InferenceTimeout => "inference_timeout",
            Self::BadModelOutput => "bad_model_output",
            Self::WrongChannelCount => "wrong_channel_count",
            Self::NonFiniteValue => "non_finite_value",
            Self::NonMonotonicTimestamps => "non_monotonic_timestamps",
            Self::FrameTooLarge => "frame_too_large",
            Self::WorkerFailed => "worker_failed",
            Self::StagePanicked => "stage_panicked",
            Self::Custom(reason) => reason,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A per-message failure: the message gets an error outcome with this reason and detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct StageError {
    /// Machine-readable reason.
    pub reason: Reason,
    /// Human-readable detail for the outcome's `message` field.
    pub detail: String,
}

impl StageError {
    /// Creates an error with a reason and a human-readable detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// A failure to build a stage from its configuration; the daemon adds the file and key prefix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An option of the stage is invalid (unknown key, wrong type, bad value).
    #[error("key `{key}`: {reason}")]
    Option {
        /// The option's key path inside the stage's table (empty for the table itself).
        key: String,
        /// What is wrong and, where possible, what to do instead.
        reason: String,
    },
    /// No stage or decoder of this type is registered.
    #[error("unknown {what} type `{name}`; known types: {known}")]
    UnknownType {
        /// "stage" or "decoder".
        what: &'static str,
        /// The type that was asked for.
        name: String,
        /// The registered types, comma separated.
        known: String,
    },
    /// A file the stage needs is missing or unreadable.
    #[error("key `{key}`: cannot use {path}: {reason}")]
    File {
        /// The option that named the file.
        key: String,
        /// The resolved path.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl BuildError {
    /// The option `key` has a bad value, for `reason`.
    pub fn option(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Option { key: key.into(), reason: reason.into() }
    }
}
