//! The contract between zinfer's pipeline runtime and its stages.
//!
//! A pipeline turns one zenoh sample into one outcome in four phases:
//!
//! ```text
//! RawMessage ──Decoder──▶ Request ──▶ Item ──preprocess Stages──▶ features ──model──▶ outputs ──postprocess Stages──▶ Prediction
//! ```
//!
//! This crate owns only the vocabulary of that journey: the [`Decoder`] and [`Stage`] traits, the data they see
//! ([`RawMessage`], [`Item`], [`Tensor`]), the typed [`StageError`] whose [`Reason`] becomes the machine-readable
//! reason of an error outcome, and the [`Registry`] through which the daemon builds stages from TOML without
//! knowing any stage by name. It deliberately knows nothing of zenoh, tokio or ONNX Runtime, so a stage can be
//! written and unit-tested without any of them.
//!
//! Stages are synchronous and run on the pipeline's worker thread; they must not block on I/O.

mod error;
mod item;
mod manifest;
mod registry;
mod tensor;

pub use error::{BuildError, Reason, StageError};
pub use item::{ClassScore, Input, Item, Prediction, RawMessage, Request};
pub use manifest::{ManifestError, ModelManifest};
pub use registry::{BuildContext, DecoderFactory, Registry, StageFactory, parse_options};
pub use tensor::{ElementType, NamedTensor, Tensor, TensorData, TensorSpec};

/// Turns the bytes of one zenoh sample into a [`Request`].
///
/// A decoder is the first phase of every pipeline: it owns the payload formats (plain text, JSON, protobuf…) and the
/// payload size limit. It must reject bad input with a [`StageError`], never panic.
pub trait Decoder: Send {
    /// Decodes one message.
    fn decode(&self, message: &RawMessage) -> Result<Request, StageError>;
}

/// One synchronous pipeline step that reads and writes an [`Item`].
///
/// Preprocessing stages write model inputs into [`Item::features`]; postprocessing stages read
/// [`Item::outputs`] and write [`Item::prediction`]. At start-up the runtime checks what the stages declare in
/// [`Stage::produces`] and [`Stage::consumes`] against the model's own signature, so a mismatch is a start-up
/// error, not a per-message one.
pub trait Stage: Send {
    /// The stage's registry name (its `type` in TOML), for logs and error messages.
    fn name(&self) -> &str;

    /// Processes one item in place.
    fn process(&mut self, item: &mut Item) -> Result<(), StageError>;

    /// The model inputs this stage writes into [`Item::features`] (per item, without the batch axis).
    fn produces(&self) -> Vec<TensorSpec> {
        Vec::new()
    }

    /// The model outputs this stage reads from [`Item::outputs`] (per item, without the batch axis).
    fn consumes(&self) -> Vec<TensorSpec> {
        Vec::new()
    }
}
