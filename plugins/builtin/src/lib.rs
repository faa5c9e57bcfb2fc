//! zinfer's built-in pipeline stages, and the one function that registers them.
//!
//! | type       | phase       | what it does                                                        |
//! |------------|-------------|---------------------------------------------------------------------|
//! | `text`     | decode      | plain UTF-8, JSON `{"id", "text"}` or protobuf `TextRequest`        |
//! | `tokenize` | preprocess  | WordPiece/BPE via a `tokenizer.json` → `input_ids`, masks           |
//! | `classify` | postprocess | softmax over logits → label, score, all scores, top-k, threshold    |
//! | `scores`   | postprocess | a float output as it is → values (regression), optionally named      |
//! | `embed`    | postprocess | token vectors → one vector: mean/first pooling, L2 normalisation    |
//! | `sensor`   | decode      | packed f32, JSON `{"t", "values"}` or protobuf `SensorFrame`        |
//! | `validate` | preprocess  | sensor frame checks: channels, finite values, timestamps, size      |
//! | `window`   | preprocess  | per-source ring buffers → normalised windows, gaps, out-of-order    |
//!
//! Each stage lives in its own module with its typed options struct; the module docs list the options.

pub mod classify;
pub mod decode;
pub mod embed;
pub mod scores;
pub mod sensor;
pub mod tokenize;

use zinfer_stage_api::Registry;

/// Registers every built-in decoder and stage under its TOML `type` name.
pub fn register_builtins(registry: &mut Registry) {
    registry.register_decoder(decode::text::TYPE, Box::new(decode::text::build));
    registry.register_stage(tokenize::TYPE, Box::new(tokenize::build));
    registry.register_stage(classify::TYPE, Box::new(classify::build));
    registry.register_stage(scores::TYPE, Box::new(scores::build));
    registry.register_stage(embed::TYPE, Box::new(embed::build));
    registry.register_decoder(decode::sensor::TYPE, Box::new(decode::sensor::build));
    registry.register_stage(sensor::validate::TYPE, Box::new(sensor::validate::build));
    registry.register_stage(sensor::window::TYPE, Box::new(sensor::window::build));
}

/// A registry holding the built-ins only.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    register_builtins(&mut registry);
    registry
}
