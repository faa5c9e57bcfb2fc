//! ONNX Runtime for zinfer: the only crate that links `ort`.
//!
//! - [`library`] finds `libonnxruntime.so` (config key, `ORT_DYLIB_PATH`, then conventional places) and reports
//!   everywhere it looked when it is missing, because `ort`'s `load-dynamic` would otherwise panic on first use.
//! - [`environment`] loads the library once per process and keeps ONNX Runtime's environment alive.
//! - [`options`] is the typed session configuration (threads, optimisation level, arena, execution providers).
//! - [`model`] commits a session, reads the model's signature, checks it against what the stages produce and
//!   consume, and runs batches of per-item tensors.
//!
//! A [`model::Model`] is meant to be owned by exactly one thread (the pipeline's worker, or one of its extra
//! instances): there is no lock around the session, and `run` takes `&mut self`.

pub mod environment;
pub mod library;
pub mod model;
pub mod options;
mod watchdog;

pub use environment::OrtEnvironment;
pub use model::{Model, ModelSignature};
pub use options::{ExecutionProviderKind, OptimizationLevel, SessionConfig};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    /// No ONNX Runtime library was found anywhere we looked.
    #[error(
        "ONNX Runtime shared library not found. Looked in:\n{}\nInstall it with `scripts/install-onnxruntime.sh` \
         (it extracts libonnxruntime.so from the pinned PyPI `onnxruntime` wheel into .ort/), then set \
         `onnxruntime.library` in the config or ORT_DYLIB_PATH to the file",
        .searched.iter().map(|line| format!("  - {line}")).collect::<Vec<_>>().join("\n")
    )]
    LibraryNotFound {
        /// Each place looked at, with why it did not qualify.
        searched: Vec<String>,
    },
    /// The library was found but could not be loaded (wrong architecture, too old, not ONNX Runtime…).
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    LibraryLoad {
        /// The library path.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// The environment was already initialised from another library file in this process.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded {
        /// The library in use.
        loaded: String,
        /// The library asked for now.
        requested: String,
    },
    /// Creating the session (reading the model, registering providers) failed.
    #[error("cannot load model {path}: {reason}")]
    Session {
        /// The model file.
        path: String,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model's inputs/outputs do not match what the pipeline's stages produce/consume.
    #[error("model {path} does not fit the pipeline: {reason}")]
    Signature {
        /// The model file.
        path: String,
        /// What does not match.
        reason: String,
    },
    /// A run failed (bad shapes, ONNX Runtime error).
    #[error("inference failed: {0}")]
    Run(String),
    /// A run overran the session's `run_timeout_ms` and was cancelled.
    #[error("inference cancelled after the run timeout of {0:?}")]
    Timeout(std::time::Duration),
}
