//! The `embed` stage: a head that turns a model's token vectors into one vector for the input (a sentence
//! embedding), for search and similarity rather than classes.
//!
//! Options:
//! - `output`: the model output to read (default: the manifest's `output`, else the model's first output).
//! - `pooling` = `"mean"` (default: the average of the token vectors the attention mask keeps) | `"first"` (the
//!   first token's, e.g. BERT's `[CLS]`) | `"none"` (the output already is one vector).
//! - `mask`: the model input that says which tokens are real (default `attention_mask`; int64, int32, uint8 or
//!   bool, non-zero = real); without it in the item, mean pooling averages every row.
//! - `normalize`: scale the vector to unit length (default true), so that a dot product is the cosine similarity.
//!
//! For `mean` and `first` the output is `[tokens, width]` per item; for `none`, `[width]`.

use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, Item, Prediction, Reason, Stage, StageError, TensorData, parse_options,
};

/// The registry name.
pub const TYPE: &str = "embed";

/// How token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean of the tokens the mask keeps.
    Mean,
    /// The first token's vector.
    First,
    /// The output is one vector already.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedOptions {
    output: Option<String>,
    #[serde(default = "default_pooling")]
    pooling: Pooling,
    #[serde(default = "default_mask")]
    mask: String,
    #[serde(default = "default_normalize")]
    normalize: bool,
}

fn default_pooling() -> Pooling {
    Pooling::Mean
}

fn default_mask() -> String {
    "attention_mask".to_owned()
}

fn default_normalize() -> bool {
    true
}

/// Builds the head from its options and the manifest.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let options: EmbedOptions = parse_options(options)?;
    let output = options.output.clone().or_else(|| context.manifest.output.clone());
    Ok(Box::new(Embed { output, options }))
}

/// The head itself.
#[derive(Debug)]
struct Embed {
    /// `None`: the model's first output.
    output: Option<String>,
    options: EmbedOptions,
}

impl Stage for Embed {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let tensor = item
            .output_or_first(self.output.as_deref())
            .ok_or_else(|| StageError::new(Reason::MissingInput, "the model produced no output for the embed head"))?;
        let bad = |why: String| StageError::new(Reason::BadModelOutput, format!("output `{}` {why}", tensor.name));
        let values = tensor.tensor.as_f32().ok_or_else(|| bad("is not float32".into()))?;
        let shape = &tensor.tensor.shape;
        // A stage of one's own may hand on a tensor whose data disagrees with its shape; pooling would read past it
        // or average fewer tokens than it claims.
        let expected = shape.iter().product::<usize>();
        if values.len() != expected {
            return Err(bad(format!("holds {} values, its shape {shape:?} says {expected}", values.len())));
        }
        let mut vector = match (self.options.pooling, shape.as_slice()) {
            (Pooling::None, [_]) => values.to_vec(),
            (Pooling::First, [tokens, width]) if *tokens > 0 => values[..*width].to_vec(),
            (Pooling::Mean, [_, width]) => {
                let mask = match item.feature(&self.options.mask).map(|mask| &mask.tensor.data) {
                    None => None,
                    Some(TensorData::I64(mask)) => Some(mask.iter().map(|&keep| keep != 0).collect()),
                    Some(TensorData::I32(mask)) => Some(mask.iter().map(|&keep| keep != 0).collect()),
                    Some(TensorData::U8(mask)) => Some(mask.iter().map(|&keep| keep != 0).collect()),
                    Some(TensorData::Bool(mask)) => Some(mask.clone()),
                    Some(_) => {
                        return Err(StageError::new(
                            Reason::MissingInput,
                            format!("mask `{}` is not int64, int32, uint8 or bool", self.options.mask),
                        ));
                    }
                };
                let kept = |row: usize| mask.as_ref().is_none_or(|mask: &Vec<bool>| mask.get(row) == Some(&true));
                let mut sum = vec![0.0f32; *width];
                let mut count = 0usize;
                for (row, token) in values.chunks_exact((*width).max(1)).enumerate() {
                    if kept(row) {
                        sum.iter_mut().zip(token).for_each(|(total, value)| *total += value);
                        count += 1;
                    }
                }
                if count == 0 {
                    return Err(StageError::new(Reason::MissingInput, "the mask keeps no token to average"));
                }
                sum.iter_mut().for_each(|total| *total /= count as f32);
                sum
            }
            (pooling, shape) => {
                return Err(bad(format!("has shape {shape:?}, which {pooling:?} pooling cannot read")));
            }
        };
        if vector.iter().any(|value| !value.is_finite()) {
            return Err(bad("holds a non-finite value".into()));
        }
        if self.options.normalize {
            let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
            if norm > 0.0 {
                vector.iter_mut().for_each(|value| *value /= norm);
            }
        }
        item.prediction = Some(Prediction::Embedding(vector));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zinfer_stage_api::{ElementType, Input, NamedTensor, Tensor};

    fn head(pooling: Pooling, normalize: bool) -> Embed {
        let options = EmbedOptions { output: None, pooling, mask: default_mask(), normalize };
        Embed { output: Some("hidden".into()), options }
    }

    /// Three tokens of width 2; the mask keeps the first two.
    fn item() -> Item {
        let mut item = Item::new("1".into(), "k".into(), Input::Text("t".into()));
        let hidden = Tensor { shape: vec![3, 2], data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 100.0, 100.0]) };
        item.outputs.push(NamedTensor { name: "hidden".into(), tensor: hidden });
        let mut mask = Tensor { shape: vec![3], data: TensorData::empty(ElementType::I64) };
        mask.data = TensorData::I64(vec![1, 1, 0]);
        item.features.push(NamedTensor { name: "attention_mask".into(), tensor: mask });
        item
    }

    fn embedding(item: Item) -> Vec<f32> {
        let Some(Prediction::Embedding(vector)) = item.prediction else { panic!("an embedding") };
        vector
    }

    #[test]
    fn mean_pooling_averages_the_kept_tokens_only() {
        let mut item = item();
        head(Pooling::Mean, false).process(&mut item).expect("embed");
        assert_eq!(embedding(item), [2.0, 3.0]);
    }

    #[test]
    fn normalised_to_unit_length() {
        let mut item = item();
        head(Pooling::First, true).process(&mut item).expect("embed");
        let vector = embedding(item);
        let expected = [1.0 / 5f32.sqrt(), 2.0 / 5f32.sqrt()];
        assert!(vector.iter().zip(expected).all(|(got, want)| (got - want).abs() < 1e-6), "{vector:?}");
    }

    #[test]
    fn a_shape_the_pooling_cannot_read_is_an_error() {
        let mut whole = item();
        let error = head(Pooling::None, true).process(&mut whole).expect_err("[3, 2] is not one vector");
        assert_eq!(error.reason, Reason::BadModelOutput);
        let mut empty = item();
        empty.features[0].tensor.data = TensorData::I64(vec![0, 0, 0]);
        let error = head(Pooling::Mean, true).process(&mut empty).expect_err("nothing kept");
        assert_eq!(error.reason, Reason::MissingInput);
        let mut floats = item();
        floats.features[0].tensor.data = TensorData::F32(vec![1.0, 1.0, 0.0]);
        let error = head(Pooling::Mean, true).process(&mut floats).expect_err("a float mask");
        assert!(error.detail.contains("not int64"), "{error:?}");
    }

    #[test]
    fn a_tensor_shorter_than_its_shape_is_an_error_for_every_pooling() {
        for pooling in [Pooling::None, Pooling::First, Pooling::Mean] {
            let mut short = item();
            if pooling == Pooling::None {
                short.outputs[0].tensor.shape = vec![6];
            }
            short.outputs[0].tensor.data = TensorData::F32(vec![1.0, 2.0, 3.0]);
            let error = head(pooling, false).process(&mut short).expect_err("3 values for a shape of 6");
            assert_eq!(error.reason, Reason::BadModelOutput, "{pooling:?}: {error:?}");
        }
    }

    #[test]
    fn a_bool_mask_works_like_an_integer_one() {
        let mut item = item();
        item.features[0].tensor.data = TensorData::Bool(vec![true, true, false]);
        head(Pooling::Mean, false).process(&mut item).expect("embed");
        assert_eq!(embedding(item), [2.0, 3.0]);
    }
}
