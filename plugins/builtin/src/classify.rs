//! The `classify` stage: a classification head over the model's logits.
//!
//! Options:
//! - `output`: the model output to read (default: the manifest's `output`, else `logits`).
//! - `activation` = `"softmax"` (default; for logits) | `"none"` (the model already outputs probabilities).
//! - `top_k`: how many classes to list in `top_k`, best first (default 1; 0 means all).
//! - `threshold`: if set, a winning score below it yields no label (the scores are still published).
//!
//! Labels come from the model manifest; their count is checked against the model's output at start-up.

use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, ClassScore, Classification, ElementType, Item, Prediction, Reason, Stage, StageError,
    TensorSpec, parse_options,
};

/// The registry name.
pub const TYPE: &str = "classify";

const DEFAULT_OUTPUT: &str = "logits";

/// How raw model outputs become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Softmax over the classes.
    Softmax,
    /// Use the outputs as they are.
    None,
}

/// Options of the `classify` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// The model output to read.
    pub output: Option<String>,
    /// Activation over the output.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Classes listed in `top_k`; 0 lists all.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Minimum winning score for a label.
    pub threshold: Option<f32>,
}

fn default_activation() -> Activation {
    Activation::Softmax
}

fn default_top_k() -> usize {
    1
}

/// Builds the head from its options and the manifest's labels.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let config: ClassifyConfig = parse_options(options)?;
    if let Some(threshold) = config.threshold.filter(|threshold| !(0.0..=1.0).contains(threshold)) {
        return Err(BuildError::Option {
            key: "threshold".into(),
            reason: format!("{threshold} is not a probability between 0 and 1"),
        });
    }
    if context.manifest.labels.is_empty() {
        return Err(BuildError::Option {
            key: String::new(),
            reason: format!(
                "the classify stage names the model's output columns with the manifest's `labels`, and `{}` lists \
                 none: add `labels = [...]` in output order, or use a head of your own for a task without classes",
                context.manifest.name
            ),
        });
    }
    let output =
        config.output.clone().or_else(|| context.manifest.output.clone()).unwrap_or_else(|| DEFAULT_OUTPUT.to_owned());
    Ok(Box::new(Classify::new(output, context.manifest.labels.clone(), config)))
}

/// The head itself.
#[derive(Debug)]
pub struct Classify {
    output: String,
    labels: Vec<String>,
    config: ClassifyConfig,
}

impl Classify {
    /// A head reading `output`, naming its columns with `labels`.
    pub fn new(output: String, labels: Vec<String>, config: ClassifyConfig) -> Self {
        Self { output, labels, config }
    }
}

/// Numerically stable softmax.
pub fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|value| (value - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|value| value / sum).collect()
}

impl Stage for Classify {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let tensor = item.output(&self.output).ok_or_else(|| {
            StageError::new(Reason::MissingInput, format!("the model produced no output `{}`", self.output))
        })?;
        let raw = tensor.tensor.as_f32().ok_or_else(|| {
            StageError::new(Reason::BadModelOutput, format!("output `{}` is not float32", self.output))
        })?;
        if raw.len() != self.labels.len() {
            return Err(StageError::new(
                Reason::BadModelOutput,
                format!("output `{}` has {} values for {} labels", self.output, raw.len(), self.labels.len()),
            ));
        }
        if raw.iter().any(|value| !value.is_finite()) {
            return Err(StageError::new(Reason::BadModelOutput, "the model produced a non-finite score"));
        }
        let values = match self.config.activation {
            Activation::Softmax => softmax(raw),
            Activation::None => raw.to_vec(),
        };
        let scores: Vec<ClassScore> =
            self.labels.iter().zip(&values).map(|(label, &score)| ClassScore { label: label.clone(), score }).collect();
        let mut ranked = scores.clone();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        let best = ranked.first().cloned().ok_or_else(|| StageError::new(Reason::BadModelOutput, "no classes"))?;
        let keep = if self.config.top_k == 0 { ranked.len() } else { self.config.top_k.min(ranked.len()) };
        ranked.truncate(keep);
        let confident = self.config.threshold.is_none_or(|threshold| best.score >= threshold);
        item.prediction = Some(Prediction::Classification(Classification {
            label: confident.then_some(best.label),
            score: best.score,
            scores,
            top_k: ranked,
        }));
        Ok(())
    }

    fn consumes(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::new(self.output.clone(), ElementType::F32, vec![Some(self.labels.len())])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zinfer_stage_api::{Input, NamedTensor, Tensor};

    fn head(top_k: usize, threshold: Option<f32>) -> Classify {
        let config = ClassifyConfig { output: None, activation: Activation::Softmax, top_k, threshold };
        Classify::new("logits".into(), vec!["neg".into(), "pos".into(), "neutral".into()], config)
    }

    #[test]
    fn a_manifest_without_labels_is_refused_by_classify_only() {
        let dir = std::env::temp_dir().join(format!("zinfer-classify-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("m.onnx"), b"x").expect("write");
        let text = "name = \"regressor\"\nversion = \"1\"\nmodel = \"m.onnx\"\n";
        let manifest = zinfer_stage_api::ModelManifest::parse(text, &dir.join("manifest.toml")).expect("no labels");
        let context = BuildContext { manifest: &manifest, base_dir: &dir };
        let Err(error) = build(&toml::Table::new(), &context) else { panic!("classify without labels") };
        let error = error.to_string();
        assert!(error.contains("labels") && error.contains("regressor"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn item(logits: Vec<f32>) -> Item {
        let mut item = Item::new("1".into(), "k".into(), Input::Text("t".into()));
        item.outputs.push(NamedTensor { name: "logits".into(), tensor: Tensor::f32_vector(logits) });
        item
    }

    #[test]
    fn softmax_labels_and_top_k() {
        let mut item = item(vec![0.0, 2.0, 1.0]);
        head(2, None).process(&mut item).expect("classify");
        let Some(Prediction::Classification(prediction)) = item.prediction else { panic!("a classification") };
        assert_eq!(prediction.label.as_deref(), Some("pos"));
        let expected = softmax(&[0.0, 2.0, 1.0]);
        assert!((prediction.score - expected[1]).abs() < 1e-6);
        assert!((prediction.scores.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-5);
        let top: Vec<&str> = prediction.top_k.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(top, ["pos", "neutral"]);
    }

    #[test]
    fn threshold_withholds_the_label() {
        let mut item = item(vec![0.0, 0.1, 0.0]);
        head(0, Some(0.9)).process(&mut item).expect("classify");
        let Some(Prediction::Classification(prediction)) = item.prediction else { panic!("a classification") };
        assert_eq!(prediction.label, None);
        assert_eq!(prediction.top_k.len(), 3);
    }

    #[test]
    fn wrong_output_shape_is_an_error() {
        let mut item = item(vec![0.0, 1.0]);
        let error = head(1, None).process(&mut item).expect_err("2 values for 3 labels");
        assert_eq!(error.reason, Reason::BadModelOutput);
    }
}
