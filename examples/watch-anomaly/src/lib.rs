//! Stages for zinfer written outside its repository, as any user would write them: the proof that a pipeline which
//! is not a classification needs no change to zinferd.
//!
//! - [`anomaly`]: a head that reads an autoencoder's reconstruction error (the shipped
//!   `models/zinfer-watch-anomaly`, trained by zinfer's model toolkit on normal smartwatch exercise windows) and
//!   flags a window whose error crosses the threshold chosen with the model. The windows come from zinfer's own
//!   `sensor` decoder and `window` stage.
//! - [`gray8`]: a decoder of binary PGM images and a stage that hands their bytes to a model as a uint8 tensor; with
//!   zinfer's `scores` head, it serves `fixtures/gray8`, a model whose input is raw pixels.
//!
//! [`registry`] is zinfer's built-in registry plus these; `src/main.rs` hands it to zinferd's command line, and
//! `configs/example.toml` wires both pipelines.

pub mod anomaly;
pub mod gray8;

use zinfer_stage_api::Registry;

/// Registers this crate's decoder and stages under their TOML `type` names.
pub fn register(registry: &mut Registry) {
    registry.register_stage(anomaly::TYPE, Box::new(anomaly::build));
    registry.register_decoder(gray8::DECODER, Box::new(gray8::build_decoder));
    registry.register_stage(gray8::STAGE, Box::new(gray8::build_stage));
}

/// zinfer's built-in decoders and stages, and this crate's.
pub fn registry() -> Registry {
    let mut registry = zinferd::default_registry();
    register(&mut registry);
    registry
}
