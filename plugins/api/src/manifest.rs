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
    /// The model's golden inputs and how closely it must reproduce their reference outputs: its `[golden]` table.
    pub golden: Option<GoldenSpec>,
    /// Settings made with the model for the stage that reads its outputs (its `[head]` table, free-form: an
    /// anomaly threshold chosen on validation data, say). They travel with the model file, so a stage reads them
    /// here rather than from each daemon config; parse them with [`crate::parse_options`] into a typed struct.
    pub head: toml::Table,
}

/// Golden inputs that travel with a model, and the tolerance its answers on them must meet where it runs.
///
/// The model toolkit writes them: inputs from the validation split, the reference outputs of the fp32 model the
/// shipped (int8) file was made from, and tolerances derived from what the int8 model itself scored when it was
/// made. A different ONNX Runtime build, a CPU whose int8 kernels round differently, or a wrong file pushed by an
/// update shows up as answers outside them.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenSpec {
    /// The golden file (JSON: `cases`, each an input and its reference `scores`).
    pub file: PathBuf,
    /// Least fraction of cases whose largest score must be the reference's (a classifier's top-1 class); default 0,
    /// not checked (a model whose outputs are not a ranking: scores, an embedding).
    pub min_agreement: f64,
    /// Largest difference allowed between any score and its reference (probabilities for a classifier).
    pub max_deviation: f64,
    /// Largest mean, over the cases, of each case's largest score difference.
    pub max_mean_deviation: f64,
    /// Whether the references are the softmax of the model's output (a classifier that outputs logits) or the
    /// output itself (a model that outputs probabilities, or no classes at all).
    pub softmax: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGolden {
    file: PathBuf,
    #[serde(default)]
    min_agreement: f64,
    max_deviation: f64,
    max_mean_deviation: f64,
    compare: Option<GoldenCompare>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum GoldenCompare {
    Softmax,
    Raw,
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
    golden: Option<RawGolden>,
    #[serde(default)]
    head: toml::Table,
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
        let classifier = !raw.labels.is_empty();
        let golden = raw.golden.map(|golden| resolve_golden(golden, dir, path, classifier)).transpose()?;
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
            golden,
            head: raw.head,
        })
    }
}

/// `compare` defaults to "softmax" for a manifest with labels (the toolkit's models output logits), "raw" otherwise.
fn resolve_golden(raw: RawGolden, dir: &Path, path: &Path, classifier: bool) -> Result<GoldenSpec, ManifestError> {
    let file = dir.join(&raw.file);
    if !file.is_file() {
        return Err(ManifestError::MissingFile { path: path.to_owned(), key: "golden.file", file });
    }
    let fraction = |value: f64| (0.0..=1.0).contains(&value);
    if !fraction(raw.min_agreement) {
        return Err(ManifestError::Parse {
            path: path.to_owned(),
            message: format!(
                "[golden]: `min_agreement` is a fraction of the cases, 0 to 1 (got {})",
                raw.min_agreement
            ),
        });
    }
    for (key, value) in [("max_deviation", raw.max_deviation), ("max_mean_deviation", raw.max_mean_deviation)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(ManifestError::Parse {
                path: path.to_owned(),
                message: format!("[golden]: `{key}` must be a finite number, 0 or more (got {value})"),
            });
        }
    }
    Ok(GoldenSpec {
        file,
        min_agreement: raw.min_agreement,
        max_deviation: raw.max_deviation,
        max_mean_deviation: raw.max_mean_deviation,
        softmax: raw.compare.map_or(classifier, |compare| compare == GoldenCompare::Softmax),
    })
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

        std::fs::write(dir.join("g.json"), b"{}").expect("write");
        let golden = |agreement: &str| {
            format!(
                "{ok}[golden]\nfile = \"g.json\"\nmin_agreement = {agreement}\nmax_deviation = 0.2\n\
                 max_mean_deviation = 0.05\n"
            )
        };
        let spec = ModelManifest::parse(&golden("0.9"), &path).expect("a golden table").golden.expect("golden");
        assert_eq!((spec.file, spec.min_agreement, spec.softmax), (dir.join("g.json"), 0.9, true));
        let raw = golden("0.9") + "compare = \"raw\"\n";
        assert!(!ModelManifest::parse(&raw, &path).expect("compare").golden.expect("golden").softmax);
        let error = ModelManifest::parse(&golden("1.5"), &path).expect_err("agreement above 1");
        assert!(error.to_string().contains("`min_agreement` is a fraction"), "{error}");
        let error = ModelManifest::parse(&golden("0.9").replace("g.json", "absent.json"), &path)
            .expect_err("a missing golden file");
        assert!(error.to_string().contains("golden.file"), "{error}");

        let head = ModelManifest::parse(&format!("{ok}[head]\nthreshold = 0.25\n"), &path).expect("a [head] table");
        assert_eq!(head.head.get("threshold").and_then(toml::Value::as_float), Some(0.25));

        let typo = format!("{ok}lables = []\n");
        let error = ModelManifest::parse(&typo, &path).expect_err("unknown key");
        assert!(error.to_string().contains("lables"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
