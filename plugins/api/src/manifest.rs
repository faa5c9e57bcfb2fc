//! The model manifest: the small TOML file next to a model that says what the model is and how to feed it.
//!
//! It exists so that labels, maximum length and the tokenizer travel with the model file instead of being repeated
//! in every daemon config. Paths inside it are relative to the manifest's own folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A model manifest, with its paths resolved against the manifest's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelManifest {
    /// The file the manifest was read from.
    pub path: PathBuf,
    /// Model name, published in every result.
    pub name: String,
    /// Model version, published in every result.
    pub version: String,
    /// What the model does, e.g. `text-classification`.
    pub task: String,
    /// The ONNX file.
    pub model: PathBuf,
    /// The tokenizer (`tokenizer.json`), for text models.
    pub tokenizer: Option<PathBuf>,
    /// The longest input the model accepts, in tokens (or samples).
    pub max_length: Option<usize>,
    /// Class labels, in the order of the model's output columns; empty for a model whose task has none (a
    /// regression or embedding model, read by a head of its own). The `classify` stage requires them.
    pub labels: Vec<String>,
    /// The output the classification head reads; `None` means the model's first output.
    pub output: Option<String>,
    /// Expected SHA-256 of the ONNX file (lower-case hex), checked at start-up when present.
    pub sha256: Option<String>,
    /// How to feed a sensor model: its `[sensor]` table.
    pub sensor: Option<SensorSpec>,
}

/// A sensor model's input: which channels, at what rate, in windows of what length, normalised how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    /// The model input that takes a window (float32, `[batch, window, channels]`).
    pub input: String,
    /// Channel names, in the order of the input's last axis.
    pub channels: Vec<String>,
    /// The rate the model was trained at.
    pub sample_rate_hz: f64,
    /// Samples per window.
    pub window: usize,
    /// Samples between the starts of consecutive windows, as trained and evaluated.
    pub hop: usize,
    /// Per-channel mean of the training data: the window stage feeds `(x - mean) / std`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the training data.
    pub std: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default = "default_task")]
    task: String,
    model: PathBuf,
    tokenizer: Option<PathBuf>,
    max_length: Option<usize>,
    #[serde(default)]
    labels: Vec<String>,
    output: Option<String>,
    sha256: Option<String>,
    sensor: Option<SensorSpec>,
}

fn default_task() -> String {
    "text-classification".to_owned()
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or has unknown/missing keys.
    #[error("model manifest {path} is invalid: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// A file the manifest names does not exist.
    #[error("model manifest {path}: key `{key}` names {file}, which does not exist")]
    MissingFile {
        /// The manifest path.
        path: PathBuf,
        /// The manifest key.
        key: &'static str,
        /// The resolved file path.
        file: PathBuf,
    },
}

impl ModelManifest {
    /// Reads a manifest and checks that the files it names exist.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses manifest text read from `path` (used to resolve relative paths and in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text)
            .map_err(|error| ManifestError::Parse { path: path.to_owned(), message: error.to_string() })?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let model = dir.join(&raw.model);
        if !model.is_file() {
            return Err(ManifestError::MissingFile { path: path.to_owned(), key: "model", file: model });
        }
        let tokenizer = raw.tokenizer.map(|tokenizer| dir.join(tokenizer));
        if let Some(file) = tokenizer.as_ref().filter(|file| !file.is_file()) {
            return Err(ManifestError::MissingFile { path: path.to_owned(), key: "tokenizer", file: file.clone() });
        }
        if let Some(sensor) = &raw.sensor {
            let channels = sensor.channels.len();
            let invalid = |message: String| ManifestError::Parse { path: path.to_owned(), message };
            if channels == 0 || sensor.mean.len() != channels || sensor.std.len() != channels {
                return Err(invalid(format!(
                    "[sensor]: `channels`, `mean` and `std` need one entry per channel ({channels} channels, {} means, \
                     {} standard deviations)",
                    sensor.mean.len(),
                    sensor.std.len()
                )));
            }
            if sensor.std.iter().any(|std| !(std.is_finite() && *std > 0.0)) {
                return Err(invalid("[sensor]: every `std` must be a positive number".to_owned()));
            }
            // `nan` and `inf` are valid TOML floats; a mean of either would turn every reading into NaN.
            if sensor.mean.iter().any(|mean| !mean.is_finite()) {
                return Err(invalid("[sensor]: every `mean` must be a finite number (not nan or inf)".to_owned()));
            }
            let rate_ok = sensor.sample_rate_hz.is_finite() && sensor.sample_rate_hz > 0.0;
            if sensor.window == 0 || sensor.hop == 0 || !rate_ok {
                return Err(invalid("[sensor]: `window`, `hop` and `sample_rate_hz` must be positive".to_owned()));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            name: raw.name,
            version: raw.version,
            task: raw.task,
            model,
            tokenizer,
            max_length: raw.max_length,
            labels: raw.labels,
            output: raw.output,
            sha256: raw.sha256.map(|hash| hash.to_ascii_lowercase()),
            sensor: raw.sensor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_and_rejects_missing_files() {
        let dir = std::env::temp_dir().join(format!("zinfer-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("m.onnx"), b"x").expect("write");
        let path = dir.join("manifest.toml");
        let ok = "name = \"m\"\nversion = \"1\"\nmodel = \"m.onnx\"\nlabels = [\"a\", \"b\"]\n";
        let manifest = ModelManifest::parse(ok, &path).expect("valid manifest");
        assert_eq!(manifest.model, dir.join("m.onnx"));
        assert_eq!(manifest.labels, ["a", "b"]);
        let unlabelled = ModelManifest::parse(&ok.replace("labels = [\"a\", \"b\"]\n", ""), &path)
            .expect("labels are optional: a regression or embedding model has none");
        assert!(unlabelled.labels.is_empty());

        let missing = ok.replace("m.onnx", "absent.onnx");
        let error = ModelManifest::parse(&missing, &path).expect_err("missing model file");
        assert!(error.to_string().contains("absent.onnx"), "{error}");

        let sensor = |mean: &str| {
            format!(
                "{ok}[sensor]\ninput = \"x\"\nchannels = [\"a\", \"b\"]\nsample_rate_hz = 50.0\nwindow = 4\nhop = 2\n\
                 mean = [0.0, {mean}]\nstd = [1.0, 1.0]\n"
            )
        };
        ModelManifest::parse(&sensor("0.5"), &path).expect("a finite mean");
        for mean in ["nan", "inf", "-inf"] {
            let error = ModelManifest::parse(&sensor(mean), &path).expect_err("a non-finite mean");
            assert!(error.to_string().contains("`mean` must be a finite number"), "{mean}: {error}");
        }

        let typo = format!("{ok}lables = []\n");
        let error = ModelManifest::parse(&typo, &path).expect_err("unknown key");
        assert!(error.to_string().contains("lables"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
