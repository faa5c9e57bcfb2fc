//! Fuzz target for the configuration loader: arbitrary TOML text, written to a file, through `zinferd::config`.
//!
//! The loader is the daemon's first contact with an operator's typos, so besides never panicking it promises that
//! every error names the file and the key at fault, or says that the whole file is (when it is not TOML at all). The
//! file sits in a scratch folder beside a link to the repository's `models/`, where the shipped configs expect it,
//! so the committed corpus (`tests/__fuzz__/config_loader/corpus/`, the shipped configs) gets past validation and
//! the fuzzer mutates configs that are nearly right. Validation reads the model manifests but never loads a model,
//! so no ONNX Runtime is needed. A plain `cargo test` replays the corpus and runs [`ITERATIONS`] random inputs;
//! `cargo bolero test` runs it coverage-guided (README, "Fuzzing").

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

/// Random inputs in a plain `cargo test`, after the corpus (`BOLERO_RANDOM_ITERATIONS` overrides it).
const ITERATIONS: usize = 1_000;

/// A scratch copy of the layout the shipped configs assume: `configs/<file>` next to `models/`.
struct Layout {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Layout {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        std::os::unix::fs::symlink(&models, dir.path().join("models")).expect("link models/");
        std::fs::create_dir(dir.path().join("configs")).expect("mkdir configs/");
        let file = dir.path().join("configs/fuzz.toml");
        Self { _dir: dir, file }
    }
}

#[test]
fn config_loader() {
    let layout = AssertUnwindSafe(Layout::new());
    bolero::check!().with_iterations(ITERATIONS).for_each(|text: &[u8]| {
        std::fs::write(&layout.file, text).expect("write the config");
        let file = layout.file.display().to_string();
        match zinferd::config::load_with_env(std::slice::from_ref(&layout.file), Some(HashMap::new())) {
            Ok(config) => {
                assert_eq!(config.sources, std::slice::from_ref(&layout.file));
                let mut names = HashSet::new();
                for pipeline in &config.pipelines {
                    assert!(names.insert(pipeline.name.clone()), "duplicate pipeline name {}", pipeline.name);
                    assert!(pipeline.manifest.model.is_file(), "{}: the model file was checked", pipeline.key);
                    assert!((1..=1024).contains(&pipeline.max_batch) && pipeline.queue_capacity >= 1);
                }
                assert!(config.telemetry.interval.as_millis() >= 10);
            }
            Err(error) => {
                let shown = error.to_string();
                assert_eq!(error.file.as_deref(), Some(file.as_str()), "the error names the file: {shown}");
                assert!(!error.reason.trim().is_empty(), "the error says what is wrong: {shown}");
                match &error.key {
                    Some(key) => {
                        assert!(!key.trim().is_empty(), "an empty key: {shown}");
                        assert!(shown.contains(&format!("key `{key}`")), "{shown}");
                    }
                    // Without a key the whole file is at fault, which only a file that is not TOML can be.
                    None => assert!(error.reason.starts_with("not valid TOML"), "no key named: {shown}"),
                }
            }
        }
    });
}
