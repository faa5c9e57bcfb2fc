//! The `tokenize` stage: text → `input_ids`, `attention_mask`, `token_type_ids` with a Hugging Face
//! `tokenizer.json` (WordPiece, BPE, Unigram: whatever the file describes), via the `tokenizers` crate.
//!
//! Options:
//! - `tokenizer`: path to a `tokenizer.json` (default: the one the model manifest names).
//! - `max_length`: most tokens per text, special tokens included (default: the manifest's `max_length`, else 512;
//!   may not exceed the manifest's).
//! - `overflow` = `"truncate"` (default; keeps the final special token) | `"reject"` (error outcome
//!   `too_many_tokens`).
//! - `buckets`: length classes for batching, e.g. `[16, 32, 64, 128]` (default: none: only texts of equal length
//!   share a run). Texts in the same bucket (the smallest that holds them) may share a model run: the pipeline then
//!   pads them (pad token, attention mask 0) to the longest of that run. A text that runs alone is not padded:
//!   padding spends FLOPs, and pays only when it lets a batch form.
//! - `pad_token`: the token padding uses (default `[PAD]`).
//!
//! The tokenizer file's own padding and truncation settings are ignored: the pipeline decides both, so a file
//! exported with `padding="max_length"` cannot silently inflate every request.

use std::path::PathBuf;

use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};
use zinfer_stage_api::{
    BuildContext, BuildError, ElementType, Input, Item, NamedTensor, Reason, Stage, StageError, Tensor, TensorSpec,
    parse_options,
};

/// The registry name.
pub const TYPE: &str = "tokenize";

/// Input names the stage writes, as BERT-style exports name them.
pub const INPUT_IDS: &str = "input_ids";
/// See [`INPUT_IDS`].
pub const ATTENTION_MASK: &str = "attention_mask";
/// See [`INPUT_IDS`].
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";

const DEFAULT_MAX_LENGTH: usize = 512;

/// What to do with a text longer than `max_length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Cut it to `max_length` tokens, keeping the closing special token.
    Truncate,
    /// Refuse it with a `too_many_tokens` error outcome.
    Reject,
}

/// Options of the `tokenize` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// The `tokenizer.json`; defaults to the manifest's.
    pub tokenizer: Option<PathBuf>,
    /// Most tokens per text.
    pub max_length: Option<usize>,
    /// Overflow policy.
    #[serde(default = "default_overflow")]
    pub overflow: Overflow,
    /// Sequence lengths to pad to.
    #[serde(default)]
    pub buckets: Vec<usize>,
    /// The padding token.
    #[serde(default = "default_pad_token")]
    pub pad_token: String,
}

fn default_pad_token() -> String {
    "[PAD]".to_owned()
}

fn default_overflow() -> Overflow {
    Overflow::Truncate
}

/// Builds the stage: loads and configures the tokenizer.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let config: TokenizeConfig = parse_options(options)?;
    let path = match (&config.tokenizer, &context.manifest.tokenizer) {
        (Some(path), _) => context.resolve(path),
        (None, Some(path)) => path.clone(),
        (None, None) => {
            return Err(BuildError::Option {
                key: "tokenizer".into(),
                reason: format!(
                    "no tokenizer: set `tokenizer` here or `tokenizer` in the model manifest {}",
                    context.manifest.path.display()
                ),
            });
        }
    };
    let model_max = context.manifest.max_length;
    let max_length = config.max_length.or(model_max).unwrap_or(DEFAULT_MAX_LENGTH);
    if max_length < 2 {
        return Err(BuildError::option("max_length", "must be at least 2"));
    }
    if let Some(model_max) = model_max.filter(|&model_max| max_length > model_max) {
        return Err(BuildError::Option {
            key: "max_length".into(),
            reason: format!("{max_length} exceeds the model's max_length of {model_max} (from its manifest)"),
        });
    }
    let mut stage = Tokenize::from_file(&path, max_length, config.overflow)?;
    if !config.buckets.is_empty() {
        let mut buckets = config.buckets.clone();
        buckets.sort_unstable();
        buckets.dedup();
        if buckets[0] == 0 || buckets.last().is_some_and(|&largest| largest > max_length) {
            return Err(BuildError::Option {
                key: "buckets".into(),
                reason: format!("bucket lengths must be between 1 and max_length ({max_length}); got {buckets:?}"),
            });
        }
        let pad_id = stage.tokenizer.token_to_id(&config.pad_token).ok_or_else(|| BuildError::Option {
            key: "pad_token".into(),
            reason: format!("`{}` is not in the tokenizer's vocabulary", config.pad_token),
        })?;
        stage.buckets = Some(Buckets { lengths: buckets, pad_id: i64::from(pad_id) });
    }
    Ok(Box::new(stage))
}

/// Length classes for batching, and the token padding uses.
#[derive(Debug, Clone)]
struct Buckets {
    lengths: Vec<usize>,
    pad_id: i64,
}

/// The stage itself.
pub struct Tokenize {
    tokenizer: Tokenizer,
    max_length: usize,
    overflow: Overflow,
    buckets: Option<Buckets>,
}

impl Tokenize {
    /// Loads `path` and configures truncation for `max_length` and `overflow`.
    pub fn from_file(path: &std::path::Path, max_length: usize, overflow: Overflow) -> Result<Self, BuildError> {
        let file_error =
            |reason: String| BuildError::File { key: "tokenizer".into(), path: path.display().to_string(), reason };
        if !path.is_file() {
            return Err(file_error("file not found; check the path in the stage or the manifest".into()));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|error| file_error(error.to_string()))?;
        tokenizer.with_padding(None);
        let truncation = match overflow {
            Overflow::Truncate => Some(TruncationParams { max_length, ..TruncationParams::default() }),
            Overflow::Reject => None,
        };
        tokenizer.with_truncation(truncation).map_err(|error| file_error(error.to_string()))?;
        Ok(Self { tokenizer, max_length, overflow, buckets: None })
    }
}

impl Stage for Tokenize {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let Input::Text(text) = &item.input else {
            return Err(StageError::new(Reason::MissingInput, "tokenize needs text; use the `text` decoder before it"));
        };
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|error| StageError::new(Reason::TokenizerFailed, error.to_string()))?;
        let length = encoding.len();
        if self.overflow == Overflow::Reject && length > self.max_length {
            return Err(StageError::new(
                Reason::TooManyTokens,
                format!("the text is {length} tokens long; this pipeline accepts at most {}", self.max_length),
            ));
        }
        let widen = |values: &[u32]| values.iter().map(|&value| i64::from(value)).collect::<Vec<i64>>();
        item.features = vec![
            NamedTensor { name: INPUT_IDS.into(), tensor: Tensor::i64_vector(widen(encoding.get_ids())) },
            NamedTensor {
                name: ATTENTION_MASK.into(),
                tensor: Tensor::i64_vector(widen(encoding.get_attention_mask())),
            },
            NamedTensor { name: TOKEN_TYPE_IDS.into(), tensor: Tensor::i64_vector(widen(encoding.get_type_ids())) },
        ];
        // Texts of one bucket may share a run, padded then to the longest of them; longer texts (up to max_length)
        // batch only with texts of their exact length.
        item.padding = self.buckets.as_ref().and_then(|buckets| {
            let bucket = buckets.lengths.iter().copied().find(|&bucket| bucket >= length)?;
            Some(zinfer_stage_api::Padding { group: bucket, values: vec![(INPUT_IDS.into(), buckets.pad_id)] })
        });
        Ok(())
    }

    fn produces(&self) -> Vec<TensorSpec> {
        [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS]
            .into_iter()
            .map(|name| TensorSpec::new(name, ElementType::I64, vec![None]))
            .collect()
    }
}
