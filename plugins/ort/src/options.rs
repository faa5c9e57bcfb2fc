//! Session configuration: the `[pipeline.session]` table of a pipeline.

use serde::{Deserialize, Serialize};

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    /// No graph optimisation.
    Disable,
    /// Redundancy elimination and constant folding.
    Basic,
    /// Plus node fusions (attention, GELU, layer norm).
    Extended,
    /// Plus layout optimisations.
    All,
}

/// Execution providers zinferd can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    /// The default CPU provider; always available, always the last resort.
    Cpu,
    /// NVIDIA CUDA (Jetson, desktop GPUs), if the ONNX Runtime build has it.
    Cuda,
    /// NVIDIA TensorRT, if the ONNX Runtime build has it.
    Tensorrt,
}

impl ExecutionProviderKind {
    /// The name used in config and telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }
}

/// How to build a model's session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Threads for one operator; `None` means the machine's physical core count.
    pub intra_threads: Option<usize>,
    /// Let idle intra-op threads spin. Off by default: spinning burns a core (and battery, and thermal headroom)
    /// between messages for a few microseconds of latency.
    #[serde(default)]
    pub spinning: bool,
    /// Graph optimisation level.
    #[serde(default = "default_optimization")]
    pub optimization: OptimizationLevel,
    /// ONNX Runtime's CPU memory arena: faster allocation, but it keeps what it grew to.
    #[serde(default = "default_true")]
    pub memory_arena: bool,
    /// Pre-plan memory for repeated shapes. Off by default: with the shipped sentiment model (`zinferd bench
    /// footprint` and `bench load`, release build, 2-core AMD EPYC) it cost 6-7 MiB of peak RSS for no capacity or
    /// latency that the runs' noise could show; text lengths vary, so the plans rarely repeat.
    #[serde(default)]
    pub memory_pattern: bool,
    /// Providers in order of preference; the CPU provider is always appended as the fallback.
    #[serde(default = "default_providers")]
    pub execution_providers: Vec<ExecutionProviderKind>,
    /// A serving run still going after this many milliseconds is cancelled (`RunOptions::terminate`); 0 disables
    /// it. Warm-ups are exempt.
    #[serde(default = "default_run_timeout_ms")]
    pub run_timeout_ms: u64,
    /// ONNX Runtime session configuration entries, passed as they are (`SessionOptions::AddConfigEntry`), for the
    /// knobs zinferd has no key of its own for, e.g. `"session.disable_prepacking" = "1"`. ONNX Runtime's
    /// `onnxruntime_session_options_config_keys.h` lists them.
    #[serde(default)]
    pub config_entries: std::collections::BTreeMap<String, String>,
}

fn default_run_timeout_ms() -> u64 {
    10_000
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            intra_threads: None,
            spinning: false,
            optimization: default_optimization(),
            memory_arena: true,
            memory_pattern: false,
            execution_providers: default_providers(),
            run_timeout_ms: default_run_timeout_ms(),
            config_entries: Default::default(),
        }
    }
}

fn default_optimization() -> OptimizationLevel {
    OptimizationLevel::All
}

fn default_true() -> bool {
    true
}

fn default_providers() -> Vec<ExecutionProviderKind> {
    vec![ExecutionProviderKind::Cpu]
}
