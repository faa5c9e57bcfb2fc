//! Loading ONNX Runtime once per process.
//!
//! ONNX Runtime allows one environment per process and `ort` holds it weakly, so we keep it in a process-wide
//! cell: every model shares it, and it lives as long as the process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::OrtError;

/// A loaded ONNX Runtime: the library path and the process's environment.
#[derive(Debug, Clone)]
pub struct OrtEnvironment {
    library: PathBuf,
    environment: Environment,
}

static LOADED: OnceLock<OrtEnvironment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

impl OrtEnvironment {
    /// Loads the library at `library` (once per process) and creates the environment.
    ///
    /// Telemetry is turned off: a daemon on a customer's board has no business phoning home.
    pub fn load(library: &Path) -> Result<Self, OrtError> {
        let _guard = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(loaded) = LOADED.get() {
            if loaded.library != library {
                return Err(OrtError::AlreadyLoaded {
                    loaded: loaded.library.display().to_string(),
                    requested: library.display().to_string(),
                });
            }
            return Ok(loaded.clone());
        }
        let load_error = |reason: String| OrtError::LibraryLoad { path: library.display().to_string(), reason };
        // `ort` asserts on a few "impossible" states of a foreign library; turn those into errors too.
        let built = std::panic::catch_unwind(|| {
            ort::init_from(library)
                .map_err(|error| error.to_string())?
                .with_name("zinferd")
                .with_telemetry(false)
                .build()
                .map_err(|error| error.to_string())
        })
        .map_err(|_| load_error("ONNX Runtime panicked while loading; is this really libonnxruntime?".into()))?
        .map_err(load_error)?;
        let loaded = Self { library: library.to_owned(), environment: built };
        Ok(LOADED.get_or_init(|| loaded).clone())
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ONNX Runtime's build description (version, commit, flags).
    pub fn build_info(&self) -> String {
        ort::info().to_owned()
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }
}
