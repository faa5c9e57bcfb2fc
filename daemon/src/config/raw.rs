//! The configuration as written in TOML: serde structs that reject unknown keys, with the defaults.
//!
//! Every key is documented in `configs/example.toml`; keep the two in step (a test parses that file). Field docs
//! would repeat that file, hence the `allow` below.
#![allow(missing_docs)]

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use zinfer_ort::SessionConfig;

/// The whole file (after layering files and environment overrides).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub zenoh: RawZenoh,
    #[serde(default)]
    pub onnxruntime: RawOnnxRuntime,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<RawPipeline>,
}

/// `[zenoh]`: how the daemon joins the zenoh network.
///
/// Without `config_file`, unset keys take zinferd's defaults (peer, `tcp/127.0.0.1:7447`, no multicast
/// scouting). With it, keys set here override the file and unset keys keep the file's values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZenoh {
    pub mode: Option<ZenohMode>,
    pub listen: Option<Vec<String>>,
    pub connect: Option<Vec<String>>,
    pub multicast_scouting: Option<bool>,
    /// A native zenoh JSON5 config (TLS, access control…).
    pub config_file: Option<PathBuf>,
}

/// zenoh session modes zinferd supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZenohMode {
    Peer,
    Client,
}

impl ZenohMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Client => "client",
        }
    }
}

/// `[onnxruntime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnnxRuntime {
    pub library: Option<PathBuf>,
}

/// `[telemetry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default)]
    pub encoding: WireEncoding,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self { prefix: default_prefix(), interval_ms: default_interval_ms(), encoding: WireEncoding::Json }
    }
}

fn default_prefix() -> String {
    "zinfer".to_owned()
}

fn default_interval_ms() -> u64 {
    1000
}

/// `[daemon]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    #[serde(default = "default_reload_timeout_ms")]
    pub reload_timeout_ms: u64,
    pub memory_mb: Option<u64>,
    #[serde(default = "default_memory_soft_percent")]
    pub memory_soft_percent: u8,
    #[serde(default = "default_memory_reserve_mb")]
    pub memory_reserve_mb: u64,
    #[serde(default = "default_memory_sample_ms")]
    pub memory_sample_ms: u64,
    #[serde(default = "default_true")]
    pub page_out_after_load: bool,
}

impl Default for RawDaemon {
    fn default() -> Self {
        Self {
            drain_timeout_ms: default_drain_timeout_ms(),
            reload_timeout_ms: default_reload_timeout_ms(),
            memory_mb: None,
            memory_soft_percent: default_memory_soft_percent(),
            memory_reserve_mb: default_memory_reserve_mb(),
            memory_sample_ms: default_memory_sample_ms(),
            page_out_after_load: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_memory_soft_percent() -> u8 {
    85
}

fn default_memory_reserve_mb() -> u64 {
    32
}

fn default_memory_sample_ms() -> u64 {
    50
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

fn default_reload_timeout_ms() -> u64 {
    300_000
}

/// How results and telemetry are serialised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    #[default]
    Json,
    Protobuf,
}

/// `[[pipeline]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: String,
    pub input: String,
    #[serde(default = "default_output_prefix")]
    pub output_prefix: String,
    #[serde(default)]
    pub result_encoding: WireEncoding,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    pub deadline_ms: Option<u64>,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    pub max_batch_tokens: Option<usize>,
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
    #[serde(default)]
    pub overload: OverloadPolicy,
    #[serde(default = "default_latest_per_key")]
    pub latest_per_key: usize,
    #[serde(default)]
    pub share: ShareMode,
    pub max_in_flight: Option<usize>,
    #[serde(default)]
    pub result_congestion_control: CongestionPolicy,
    #[serde(default)]
    pub result_priority: PriorityLevel,
    /// The model manifest.
    pub model: PathBuf,
    #[serde(default = "default_decoder")]
    pub decode: StageSpec,
    #[serde(default)]
    pub preprocess: Vec<StageSpec>,
    #[serde(default)]
    pub postprocess: Vec<StageSpec>,
    #[serde(default)]
    pub session: SessionConfig,
    pub instances: Option<usize>,
    #[serde(default)]
    pub drift_guard: DriftGuardMode,
    pub drift_check_every_s: Option<u64>,
    pub ladder: Option<RawLadder>,
}

/// `[pipeline.ladder]`: smaller models for the same task that the pipeline steps down to under pressure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLadder {
    /// Model manifests below `model`, largest first.
    pub rungs: Vec<PathBuf>,
    #[serde(default = "default_ladder_down_after_ms")]
    pub down_after_ms: u64,
    #[serde(default = "default_ladder_up_after_ms")]
    pub up_after_ms: u64,
}

fn default_ladder_down_after_ms() -> u64 {
    2_000
}

fn default_ladder_up_after_ms() -> u64 {
    30_000
}

/// `drift_guard`: what a model that fails its golden inputs (the manifest's `[golden]`) does to its pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftGuardMode {
    /// Refuse the model: start-up fails, a reload keeps the serving generation.
    #[default]
    Refuse,
    /// Log the failure and serve anyway.
    Warn,
    /// Do not run the golden inputs.
    Off,
}

fn default_output_prefix() -> String {
    "zinfer/out".to_owned()
}

fn default_queue_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_latest_per_key() -> usize {
    1
}

/// `overload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverloadPolicy {
    #[default]
    Fifo,
    Latest,
}

/// `share`: whether, and by what, daemons serving the same pipeline under one telemetry prefix split its input
/// (see `io::share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareMode {
    /// Every daemon takes every message it receives.
    #[default]
    None,
    /// By the sample's key: a stream stays on one daemon (sensor windows).
    Key,
    /// By the whole message: spreads even one key's stateless messages.
    Message,
}

/// `result_congestion_control`: what zenoh does with a result when the network cannot take it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionPolicy {
    #[default]
    Block,
    Drop,
}

/// `result_priority`: zenoh's priority classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorityLevel {
    RealTime,
    InteractiveHigh,
    InteractiveLow,
    DataHigh,
    #[default]
    Data,
    DataLow,
    Background,
}

fn default_max_batch() -> usize {
    8
}

fn default_queue_capacity() -> usize {
    64
}

fn default_decoder() -> StageSpec {
    StageSpec { kind: "text".to_owned(), options: toml::Table::new() }
}

/// A stage table: its `type` and the rest of its keys, which the stage's own factory parses.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    pub kind: String,
    pub options: toml::Table,
}

impl<'de> Deserialize<'de> for StageSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut options = toml::Table::deserialize(deserializer)?;
        match options.remove("type") {
            Some(toml::Value::String(kind)) => Ok(Self { kind, options }),
            Some(other) => Err(serde::de::Error::custom(format!(
                "`type` must be a string naming a registered stage, found {}",
                other.type_str()
            ))),
            None => Err(serde::de::Error::custom("missing `type` (the stage to use, e.g. \"tokenize\")")),
        }
    }
}
