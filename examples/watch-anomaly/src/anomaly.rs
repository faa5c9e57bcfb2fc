//! The `anomaly` stage: a head that turns a model's anomaly score into a verdict.
//!
//! The model computes the score itself (for `zinfer-watch-anomaly`, the mean squared error of its reconstruction of
//! the window): the head reads it and compares it with the threshold. The threshold belongs to the model, not to a
//! deployment: the toolkit chose it on validation data and wrote it into the manifest's `[head]` table, so a new
//! model version brings its own. A config may still override it, e.g. to trade recall for fewer alarms.
//!
//! Options:
//! - `output`: the model output holding one score per input (default: the manifest's `output`, else `score`).
//! - `threshold`: overrides the manifest's `[head] threshold`.
//!
//! Each anomalous input also counts in the pipeline's telemetry counter `anomalies`.

use serde::Deserialize;
use zinfer_stage_api::{
    Anomaly, BuildContext, BuildError, ElementType, Item, Prediction, Reason, Stage, StageError, TensorSpec,
    parse_options,
};

/// The registry name.
pub const TYPE: &str = "anomaly";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    output: Option<String>,
    threshold: Option<f32>,
}

/// What this head reads from the manifest's `[head]` table (other keys are the model's business).
#[derive(Debug, Deserialize)]
struct HeadSettings {
    threshold: Option<f32>,
}

/// Builds the head from its options and the model's `[head]` table.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let options: Options = parse_options(options)?;
    let settings: HeadSettings = parse_options(&context.manifest.head)?;
    let threshold = options.threshold.or(settings.threshold).ok_or_else(|| BuildError::Option {
        key: "threshold".into(),
        reason: format!(
            "model `{}` has no `[head] threshold` in its manifest: set `threshold` on this stage, or use a model \
             package made by the toolkit's anomaly recipe",
            context.manifest.name
        ),
    })?;
    if !threshold.is_finite() {
        return Err(BuildError::Option { key: "threshold".into(), reason: format!("{threshold} is not a number") });
    }
    let output = options.output.or_else(|| context.manifest.output.clone()).unwrap_or_else(|| "score".to_owned());
    Ok(Box::new(AnomalyHead { output, threshold }))
}

/// The head itself.
#[derive(Debug)]
pub struct AnomalyHead {
    output: String,
    threshold: f32,
}

impl Stage for AnomalyHead {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let output = item.output(&self.output).ok_or_else(|| {
            StageError::new(Reason::MissingInput, format!("the model produced no output `{}`", self.output))
        })?;
        let score = match output.tensor.as_f32() {
            Some(&[score]) if score.is_finite() => score,
            _ => {
                return Err(StageError::new(
                    Reason::BadModelOutput,
                    format!("output `{}` is not one finite float32 score per input", self.output),
                ));
            }
        };
        let verdict = Anomaly::new(score, self.threshold);
        if verdict.anomalous {
            item.count("anomalies", 1);
        }
        item.prediction = Some(Prediction::Anomaly(verdict));
        Ok(())
    }

    fn consumes(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::new(self.output.clone(), ElementType::F32, Vec::new())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zinfer_stage_api::{Input, NamedTensor, Samples, Tensor, TensorData};

    fn item(score: f32) -> Item {
        let mut item = Item::new("1".into(), "k".into(), Input::Samples(Samples::default()));
        let tensor = Tensor { shape: Vec::new(), data: TensorData::F32(vec![score]) };
        item.outputs.push(NamedTensor { name: "score".into(), tensor });
        item
    }

    #[test]
    fn flags_a_score_above_the_threshold_and_counts_it() {
        let mut head = AnomalyHead { output: "score".into(), threshold: 0.5 };
        let mut quiet = item(0.5);
        head.process(&mut quiet).expect("a score");
        assert_eq!(
            quiet.prediction,
            Some(Prediction::Anomaly(Anomaly { score: 0.5, threshold: 0.5, anomalous: false }))
        );
        assert!(quiet.counters.is_empty());
        let mut odd = item(0.75);
        head.process(&mut odd).expect("a score");
        assert!(matches!(odd.prediction, Some(Prediction::Anomaly(Anomaly { anomalous: true, .. }))));
        assert_eq!(odd.counters, [("anomalies", 1)]);
    }

    #[test]
    fn a_missing_or_non_finite_score_is_an_error() {
        let mut head = AnomalyHead { output: "score".into(), threshold: 0.5 };
        assert_eq!(head.process(&mut item(f32::NAN)).expect_err("NaN").reason, Reason::BadModelOutput);
        let mut other = AnomalyHead { output: "error".into(), threshold: 0.5 };
        assert_eq!(other.process(&mut item(0.1)).expect_err("no `error`").reason, Reason::MissingInput);
    }
}
