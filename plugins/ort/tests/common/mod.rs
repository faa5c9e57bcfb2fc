//! What this crate's tests share: the repository root, and models loaded through the ONNX Runtime library from
//! `scripts/install-onnxruntime.sh` (or ORT_DYLIB_PATH).

use std::path::PathBuf;

use zinfer_ort::{Model, OrtEnvironment, SessionConfig};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model at `relative` (to the repository root) in a session configured by `config`, one thread by default.
pub fn load_with(relative: &str, config: &SessionConfig) -> Model {
    try_load_with(relative, config).expect("model")
}

/// [`load_with`], or ONNX Runtime's refusal.
#[allow(dead_code)]
pub fn try_load_with(relative: &str, config: &SessionConfig) -> Result<Model, zinfer_ort::OrtError> {
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(format!(".ort/{}/lib/libonnxruntime.so", std::env::consts::ARCH)));
    let environment = OrtEnvironment::load(&library).expect("run scripts/install-onnxruntime.sh first");
    Model::load(&environment, &repo().join(relative), config, 1)
}
