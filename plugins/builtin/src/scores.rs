//! The `scores` stage: a head that publishes a model output's values as they are (a regression's targets, or
//! scores a task gives no labels).
//!
//! Options:
//! - `output`: the model output to read (default: the manifest's `output`, else the model's first output).
//! - `names`: one name per value, published beside them (default: the manifest's `labels`, else none).
//!
//! The output must be float32. Without names it is read whole, row-major, whatever its shape; with names it must be
//! one value per name (one axis per item), which start-up checks against the model when the output is named.

use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, ElementType, Item, Prediction, Reason, Scores, Stage, StageError, TensorSpec,
    parse_options,
};

/// The registry name.
pub const TYPE: &str = "scores";

/// Options of the `scores` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoresOptions {
    output: Option<String>,
    names: Option<Vec<String>>,
}

/// Builds the head from its options and the manifest.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let options: ScoresOptions = parse_options(options)?;
    let names = options.names.unwrap_or_else(|| context.manifest.labels.clone());
    Ok(Box::new(ScoresHead { output: options.output.or_else(|| context.manifest.output.clone()), names }))
}

/// The head itself.
#[derive(Debug)]
pub struct ScoresHead {
    /// `None`: the model's first output.
    output: Option<String>,
    names: Vec<String>,
}

impl Stage for ScoresHead {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let tensor = item
            .output_or_first(self.output.as_deref())
            .ok_or_else(|| StageError::new(Reason::MissingInput, "the model produced no output for the scores head"))?;
        let values = tensor.tensor.as_f32().ok_or_else(|| {
            StageError::new(Reason::BadModelOutput, format!("output `{}` is not float32", tensor.name))
        })?;
        if !self.names.is_empty() && self.names.len() != values.len() {
            return Err(StageError::new(
                Reason::BadModelOutput,
                format!("output `{}` has {} values for {} names", tensor.name, values.len(), self.names.len()),
            ));
        }
        let values = values.to_vec();
        item.prediction = Some(Prediction::Scores(Scores { names: self.names.clone(), values }));
        Ok(())
    }

    fn consumes(&self) -> Vec<TensorSpec> {
        let Some(output) = self.output.as_ref().filter(|_| !self.names.is_empty()) else { return Vec::new() };
        vec![TensorSpec::new(output.clone(), ElementType::F32, vec![Some(self.names.len())])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zinfer_stage_api::{Input, NamedTensor, Tensor};

    fn item(values: Vec<f32>) -> Item {
        let mut item = Item::new("1".into(), "k".into(), Input::Bytes(vec![1, 2]));
        item.outputs.push(NamedTensor { name: "y".into(), tensor: Tensor::f32_vector(values) });
        item
    }

    #[test]
    fn publishes_the_values_with_their_names() {
        let mut head = ScoresHead { output: Some("y".into()), names: vec!["t".into(), "h".into()] };
        let mut item = item(vec![21.5, 0.4]);
        head.process(&mut item).expect("scores");
        let Some(Prediction::Scores(scores)) = item.prediction else { panic!("scores") };
        assert_eq!((scores.names, scores.values), (vec!["t".to_owned(), "h".to_owned()], vec![21.5, 0.4]));

        let mut unnamed = ScoresHead { output: None, names: Vec::new() };
        let mut item = super::tests::item(vec![1.0, 2.0, 3.0]);
        unnamed.process(&mut item).expect("the first output, unnamed");
        let Some(Prediction::Scores(scores)) = item.prediction else { panic!("scores") };
        assert_eq!(scores.values, [1.0, 2.0, 3.0]);
        assert!(scores.names.is_empty());
    }

    #[test]
    fn a_count_that_differs_from_the_names_is_an_error() {
        let mut head = ScoresHead { output: Some("y".into()), names: vec!["t".into()] };
        let error = head.process(&mut item(vec![1.0, 2.0])).expect_err("2 values, 1 name");
        assert_eq!(error.reason, Reason::BadModelOutput);
        let mut absent = ScoresHead { output: Some("z".into()), names: Vec::new() };
        assert_eq!(absent.process(&mut item(vec![1.0])).expect_err("no z").reason, Reason::MissingInput);
    }
}
