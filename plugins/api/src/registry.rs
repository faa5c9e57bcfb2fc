//! The registry: how the daemon turns `type = "..."` tables from TOML into decoders and stages.
//!
//! The daemon never names a stage in its own code; it asks the registry. Built-in stages register themselves
//! (`zinfer_plugins::register_builtins`), and a user who embeds zinfer registers their own factory under a new name
//! before starting the daemon. Each factory parses its own options with [`parse_options`] into a typed config that
//! rejects unknown keys, so a typo in a stage's table is a start-up error that names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::{BuildError, Decoder, ModelManifest, Stage};

/// What a factory may look at while building its stage.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The manifest of the pipeline's model (labels, tokenizer, maximum length).
    pub manifest: &'a ModelManifest,
    /// The folder relative paths in the stage's options are resolved against (the config file's folder).
    pub base_dir: &'a Path,
}

impl BuildContext<'_> {
    /// Resolves a path from a stage option against [`BuildContext::base_dir`].
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { self.base_dir.join(path) }
    }
}

/// Builds a stage from its options table (without the `type` key).
pub type StageFactory =
    Box<dyn Fn(&toml::Table, &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> + Send + Sync>;

/// Builds a decoder from its options table (without the `type` key).
pub type DecoderFactory =
    Box<dyn Fn(&toml::Table, &BuildContext<'_>) -> Result<Box<dyn Decoder>, BuildError> + Send + Sync>;

/// Named factories for decoders and stages.
#[derive(Default)]
pub struct Registry {
    stages: BTreeMap<String, StageFactory>,
    decoders: BTreeMap<String, DecoderFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a stage factory under `name`, replacing any previous one.
    pub fn register_stage(&mut self, name: &str, factory: StageFactory) -> &mut Self {
        self.stages.insert(name.to_owned(), factory);
        self
    }

    /// Registers a decoder factory under `name`, replacing any previous one.
    pub fn register_decoder(&mut self, name: &str, factory: DecoderFactory) -> &mut Self {
        self.decoders.insert(name.to_owned(), factory);
        self
    }

    /// Builds the stage registered as `kind`.
    pub fn build_stage(
        &self,
        kind: &str,
        options: &toml::Table,
        context: &BuildContext<'_>,
    ) -> Result<Box<dyn Stage>, BuildError> {
        let factory = self.stages.get(kind).ok_or_else(|| BuildError::UnknownType {
            what: "stage",
            name: kind.to_owned(),
            known: join(self.stages.keys()),
        })?;
        factory(options, context)
    }

    /// Builds the decoder registered as `kind`.
    pub fn build_decoder(
        &self,
        kind: &str,
        options: &toml::Table,
        context: &BuildContext<'_>,
    ) -> Result<Box<dyn Decoder>, BuildError> {
        let factory = self.decoders.get(kind).ok_or_else(|| BuildError::UnknownType {
            what: "decoder",
            name: kind.to_owned(),
            known: join(self.decoders.keys()),
        })?;
        factory(options, context)
    }

    /// The registered stage types, sorted.
    pub fn stage_types(&self) -> impl Iterator<Item = &str> {
        self.stages.keys().map(String::as_str)
    }

    /// The registered decoder types, sorted.
    pub fn decoder_types(&self) -> impl Iterator<Item = &str> {
        self.decoders.keys().map(String::as_str)
    }
}

fn join<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Parses a stage's options into its typed config, reporting the offending key on error.
///
/// Give the config struct `#[serde(deny_unknown_fields)]` so that typos are caught.
pub fn parse_options<T: DeserializeOwned>(options: &toml::Table) -> Result<T, BuildError> {
    let value = toml::Value::Table(options.clone());
    serde_path_to_error::deserialize(value).map_err(|error| {
        let key = error.path().to_string();
        BuildError::Option { key: if key == "." { String::new() } else { key }, reason: error.into_inner().to_string() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Options {
        top_k: usize,
        #[serde(default)]
        threshold: Option<f32>,
    }

    #[test]
    fn parse_options_names_the_bad_key() {
        let table: toml::Table = toml::from_str("top_k = \"three\"").expect("toml");
        let error = parse_options::<Options>(&table).expect_err("wrong type");
        assert!(matches!(&error, BuildError::Option { key, .. } if key == "top_k"), "{error}");

        let table: toml::Table = toml::from_str("top_k = 3\ntreshold = 0.5").expect("toml");
        let error = parse_options::<Options>(&table).expect_err("unknown key");
        assert!(error.to_string().contains("treshold"), "{error}");
    }
}
