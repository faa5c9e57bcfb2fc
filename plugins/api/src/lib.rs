//! The contract between zinfer's pipeline runtime and its stages.
//!
//! A pipeline turns one zenoh sample into one outcome in four phases (a stage may split a message into several model
//! inputs, [`Part`]s, or none, as the sensor `window` stage does; the outcome then carries one prediction per part):
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
//!
//! # Writing a stage
//!
//! Implement [`Stage`], give it a typed options struct that rejects unknown keys, and register a factory under
//! the name that TOML's `type = "..."` will use. Then hand that registry to zinferd's command line
//! (`zinferd::cli::main(registry)`: run, check, send and bench all know the stage) or start the daemon with it
//! (`zinferd::run(config, Arc::new(registry), shutdown)`). `examples/watch-anomaly/` is a whole crate that does it
//! from outside the workspace: an image decoder whose [`Input::Tensors`] feed a uint8 model, and an anomaly head
//! whose [`Prediction::Anomaly`] reads a threshold from the manifest's `[head]` table.
//!
//! Inputs are open ([`Input::Bytes`], [`Input::Tensors`] beside text and sensor samples), and predictions are typed
//! ([`Prediction`]: a classification, scores, an embedding, an anomaly verdict), each with its own wire fields.
//!
//! ```
//! use zinfer_stage_api::{BuildContext, BuildError, Input, Item, Reason, Registry, Stage, StageError, parse_options};
//!
//! /// Rejects texts shorter than `min_chars` before they reach the model.
//! struct MinLength {
//!     min_chars: usize,
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct MinLengthOptions {
//!     min_chars: usize,
//! }
//!
//! impl Stage for MinLength {
//!     fn name(&self) -> &str {
//!         "min_length"
//!     }
//!
//!     fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
//!         let Input::Text(text) = &item.input else { return Ok(()) };
//!         if text.chars().count() < self.min_chars {
//!             return Err(StageError::new(Reason::Custom("too_short"), format!("under {} characters", self.min_chars)));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn build(options: &toml::Table, _context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
//!     let options: MinLengthOptions = parse_options(options)?;
//!     Ok(Box::new(MinLength { min_chars: options.min_chars }))
//! }
//!
//! let mut registry = Registry::new();
//! registry.register_stage("min_length", Box::new(build));
//! assert_eq!(registry.stage_types().collect::<Vec<_>>(), ["min_length"]);
//!
//! // [[pipeline.preprocess]]
//! // type = "min_length"
//! // min_chars = 3
//! let mut stage = build(&toml::from_str("min_chars = 3").unwrap(), &context_for_docs()).unwrap();
//! let mut item = Item::new("id".into(), "key".into(), Input::Text("ok".into()));
//! assert_eq!(stage.process(&mut item).unwrap_err().reason.as_str(), "too_short");
//! # fn context_for_docs() -> BuildContext<'static> {
//! #     let manifest = Box::leak(Box::new(zinfer_stage_api::ModelManifest {
//! #         path: "m.toml".into(), name: "m".into(), version: "1".into(), task: "t".into(), model: "m.onnx".into(),
//! #         tokenizer: None, max_length: None, labels: vec!["a".into()], output: None, sha256: None, sensor: None,
//! #         golden: None, head: Default::default(),
//! #     }));
//! #     BuildContext { manifest, base_dir: std::path::Path::new(".") }
//! # }
//! ```

mod error;
mod item;
mod manifest;
mod registry;
mod tensor;

pub use error::{BuildError, Reason, StageError};
pub use item::{
    Anomaly, ClassScore, Classification, Input, Item, Padding, Part, Prediction, RawMessage, Request, Samples, Scores,
    StreamPosition,
};
pub use manifest::{GoldenSpec, ManifestError, ModelManifest, SensorSpec};
pub use registry::{BuildContext, DecoderFactory, Registry, StageFactory, parse_options};
pub use tensor::{ElementType, NamedTensor, Tensor, TensorData, TensorSpec, f16};

/// How much of a payload [`Decoder::peek_id`] may read; the daemon may hand it only this much of a payload it did
/// not copy (one too large to queue). Requests put their id first in practice (our clients and the protobuf field
/// order do); a peek that read a large payload to its end for every shed message would make overload dearer.
pub const PEEK_BYTES: usize = 4096;

/// Turns the bytes of one zenoh sample into a [`Request`].
///
/// A decoder is the first phase of every pipeline: it owns the payload formats (plain text, JSON, protobuf…) and the
/// payload size limit. It must reject bad input with a [`StageError`], never panic.
///
/// A decoder is shared between the pipeline's worker (which decodes) and the zenoh ingress (which peeks at the ids of
/// messages it cannot queue), hence `Sync`.
pub trait Decoder: Send + Sync {
    /// Decodes one message.
    fn decode(&self, message: &RawMessage) -> Result<Request, StageError>;

    /// The id the payload gives the request, found without decoding it: the daemon answers a message it sheds
    /// before decoding (queue full, superseded, memory, shutdown) or cannot decode with this id, so that the sender
    /// can match the notice to its request. It runs on the overload path, so it must cost little whatever the
    /// payload: read at most the first [`PEEK_BYTES`], allocate only the id. `None` (the default) when the format carries no id;
    /// the attachment's id, else a generated one, is used then.
    fn peek_id(&self, _message: &RawMessage) -> Option<String> {
        None
    }
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

    /// Whether the stage carries state from one message to the next (the `window` stage's streams in progress).
    /// When a pipeline steps between the models of its ladder, such a stage must go on preparing the messages
    /// of every rung rather than start over with the new rung's own copy, so the runtime keeps the first rung's.
    fn keeps_state(&self) -> bool {
        false
    }
}
