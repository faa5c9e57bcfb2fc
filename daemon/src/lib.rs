//! zinferd: a streaming inference daemon. Messages arrive over zenoh, run through a pipeline of stages and an
//! ONNX model, and leave as results; the daemon reports on itself as it goes.
//!
//! Where a message goes:
//!
//! ```text
//! zenoh ─▶ io::ingress ─▶ pipeline::queue: arrived ─▶ (decode, preprocess) ─▶ ready, EDF ─▶ model (batched)
//!             │ (full: dropped, or           └──── one bound over all three ────┘            ─▶ postprocess
//!             │  superseded under latest)        pipeline::worker: prepares, sheds expired, runs      │
//!             └───────────────────────────▶ io::egress ◀─────────────────────────────────────────────┘
//!                                               │        ─▶ zenoh <output_prefix>/<input key>
//!                                     telemetry::metrics ─▶ telemetry (<prefix>/telemetry, /status, /alive)
//! ```
//!
//! What a message is on the way, one type per hand-over:
//!
//! ```text
//! zenoh Sample ─▶ Envelope ─decode─▶ Request ─▶ Item ─preprocess─▶ Prepared ─model, postprocess─▶ Outcome ─▶ zinfer.v1.Result
//!               (RawMessage,         (the        (what the      (an Item and     (in a Job:         (verdict,       (the wire)
//!                arrival, query)      decoder's)  stages share)  its deadline)    a batch)           timings, ids)
//! ```
//!
//! A message answered before it is decoded (shed at the door or in the queue) goes from its `Envelope` straight to
//! an `Outcome`, with the sender's id. [`zinfer_stage_api`] owns `RawMessage`, `Request` and `Item`, the types a
//! stage sees; the rest are [`pipeline`]'s.
//!
//! A query on `<prefix>/infer/<pipeline>` enters the same ingress and queue as a published message and leaves the
//! egress as its reply. With a pipeline's `share` set, `io::share` decides at the ingress which of the daemons
//! serving that pipeline takes each message, and follows what the others took until they answer it, so that a
//! survivor answers what a member that died still owed (docs/fleet.md).
//!
//! - [`config`] reads layered TOML and `ZINFER_*` overrides and validates them.
//! - [`pipeline`] builds stages through the registry and runs them on a worker thread that owns the model:
//!   deadlines, earliest-deadline-first order, overload policies and dynamic batching live in its worker, and so
//!   does the model ladder, which steps to a smaller model for the same task under pressure and back.
//! - [`memory`] probes what each model costs at start-up and governs RSS against the budget while running.
//! - [`io`] holds the zenoh session, the ingress (subscriber and queryable), the egress (results and replies) and
//!   the membership of daemons that share a pipeline.
//! - [`telemetry`] counts, samples and publishes.
//! - [`service`] runs it all as a long-running service: configuration generations swapped on reload (SIGHUP),
//!   worker health and the systemd watchdog, and the drain at shutdown; [`signals`] maps Unix signals onto it.
//! - [`mod@bench`] measures all of it from the outside.
//! - [`cli`] is zinferd's whole command line (run, check, send, bench, fleet) for any registry: the `zinferd` binary
//!   calls it with the built-in stages, a third party's binary with its own added.
//!
//! [`run`] takes the configuration and a shutdown future, in the style of mini-redis: the caller owns the signal,
//! so tests can run a daemon in-process and stop it deterministically. [`service::serve`] is the same with reloads
//! and a service manager.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod io;
pub mod memory;
pub mod pipeline;
pub mod service;
pub mod signals;
pub mod telemetry;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use zinfer_ort::OrtEnvironment;
use zinfer_stage_api::Registry;

use config::{Config, ConfigError};
use memory::Governor;
use pipeline::Pipeline;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (names file, key and reason).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// ONNX Runtime could not be found or loaded.
    #[error(transparent)]
    Ort(#[from] zinfer_ort::OrtError),
    /// zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The memory budget cannot hold the models.
    #[error("{0}")]
    Memory(String),
    /// Shutdown could not publish every outcome it owed (a worker stuck, or zenoh blocked).
    #[error("shutdown could not publish every outcome it owed; see the log for the pipelines concerned")]
    Drain,
}

/// The registry with zinfer's built-in stages. Embedders add their own stages to it before calling [`run`].
pub fn default_registry() -> Registry {
    zinfer_plugins::builtin_registry()
}

/// Finds and loads ONNX Runtime as the config and environment say.
pub fn load_onnxruntime(config: &Config) -> Result<OrtEnvironment, Error> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|value| !value.is_empty()).map(PathBuf::from);
    let library = zinfer_ort::library::locate(config.ort_library.as_deref(), from_env.as_deref())?;
    let environment = OrtEnvironment::load(&library)?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(environment)
}

/// Builds every pipeline (loading ONNX Runtime and the models): everything `run` does before touching the network.
pub fn build_pipelines(config: &Config, registry: &Arc<Registry>) -> Result<Vec<Pipeline>, Error> {
    if config.pipelines.is_empty() {
        tracing::warn!("the configuration has no [[pipeline]]; zinferd will only publish telemetry");
        return Ok(Vec::new());
    }
    let ort = load_onnxruntime(config)?;
    let cores = telemetry::system::physical_cores();
    let defaults =
        pipeline::build::Defaults { intra_threads: default_intra_threads(cores), instances: DEFAULT_INSTANCES };
    (0..config.pipelines.len())
        .map(|index| pipeline::build::build(config, index, registry, &ort, defaults).map_err(Error::from))
        .collect()
}

/// ONNX Runtime threads per operator when a pipeline's `session.intra_threads` is unset: half the physical cores,
/// at least one.
///
/// Measured on 2 cores (`zinferd bench latency` and `bench load`, shipped sentiment model, back to back): one thread
/// answers a lone message in 1.78-1.88 ms where two take 2.12-2.18 ms (a second thread has to be woken for a run of
/// about a millisecond), and both give the same throughput under overload (721-800 vs 737-820 ok/s): the other
/// core is busy anyway with zenoh, tokenization and publishing. Half the cores keeps that share free on larger
/// boards too; more cores were not measured, so set `intra_threads` from `bench load` there.
pub fn default_intra_threads(physical_cores: usize) -> usize {
    (physical_cores / 2).max(1)
}

/// Sessions per pipeline when its `instances` is unset: one.
///
/// Measured on 2 cores (`zinferd bench load`, shipped sentiment model, 100 ms deadline, two rounds back to back):
/// a second instance raised the measured capacity from 1,012 and 822 to 1,223 and 1,114 ok/s, and the ok rate at 2×
/// capacity from 851 and 836 to 1,031 and 1,075 ok/s (1.2-1.3×); at 10× overload shedding takes the CPU and both gave
/// 774-805 ok/s. It cost 18 MiB of peak RSS (77 → 95 MiB: each session holds its own weights and arena), and a
/// lone message the same (it runs on the worker's own session either way). On an edge board memory is the scarcer
/// resource, so one instance is the default; the sensor model (0.2 ms per window, where preparing the window costs
/// as much) gained nothing from a second (6,708 vs 5,326 windows/s). With idle cores and memory to spare, measure
/// `instances = 2` with `bench load`.
pub const DEFAULT_INSTANCES: usize = 1;

/// Checks the memory budget (`daemon.memory_mb`, else the cgroup's limit) against what the process measures now,
/// with every model loaded and warmed up, plus `daemon.memory_reserve_mb` for the runtime. Returns the governor that
/// enforces the budget from here on.
pub fn check_memory(config: &Config, pipelines: &[Pipeline]) -> Result<Governor, Error> {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let budget = memory::budget(config.memory.budget_mb);
    let governor = Governor::new(budget, config.memory.soft_percent);
    let (Some(budget), Some(usage)) = (governor.budget(), governor.usage()) else {
        return Ok(governor);
    };
    let measured = "it measures";
    let (rss, what) = (usage.read(), usage.describe());
    let reserve = config.memory.reserve_mb * 1024 * 1024;
    let models: Vec<String> = config
        .pipelines
        .iter()
        .zip(pipelines)
        .map(|(settings, pipeline)| {
            let memory = pipeline.memory();
            let shape = pipeline::build::warm_up_shape(pipeline.model(), &settings.manifest);
            format!(
                "pipeline `{}`: model {:.1} MiB + working memory {:.1} MiB at {} × ({shape})",
                settings.name,
                mib(memory.load_bytes),
                mib(memory.working_bytes),
                pipeline::build::warm_up_rows(settings, pipeline.model(), &settings.manifest),
            )
        })
        .collect();
    tracing::info!(budget_mib = mib(budget), usage_mib = mib(rss), usage = what, models = ?models, "memory probed");
    if rss + reserve > budget {
        let source = if config.memory.budget_mb.is_some() { "daemon.memory_mb" } else { "the cgroup's memory limit" };
        return Err(Error::Memory(format!(
            "the memory budget of {:.1} MiB ({source}) cannot hold zinferd: {measured} {:.1} MiB ({what}) with its \
             models loaded and warmed up ({}) and needs {:.1} MiB more at run time (daemon.memory_reserve_mb). Raise \
             the budget, or lower max_batch, max_batch_tokens or the models' max_length",
            mib(budget),
            mib(rss),
            if models.is_empty() { "no models".to_owned() } else { models.join("; ") },
            mib(reserve)
        )));
    }
    Ok(governor)
}

/// Runs the daemon until `shutdown` resolves, then drains: no new messages, in-flight ones finish and their
/// outcomes are published (within `daemon.drain_timeout_ms`; the rest are answered `dropped: shutdown`).
///
/// This is the embedding entry point without reloads or a service manager; [`service::serve`] has both.
pub async fn run(config: Config, registry: Arc<Registry>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let (control, commands) = mpsc::channel(1);
    let forward = async move {
        shutdown.await;
        let _ = control.send(service::Control::Shutdown).await;
        // Keep the sender: a closed channel would also mean shutdown.
        std::future::pending::<()>().await;
    };
    let no_reload: service::Loader =
        Box::new(|| Err(ConfigError::whole(None, "this daemon was started without a configuration to reload")));
    tokio::select! {
        result = service::serve(config, registry, no_reload, service::systemd::Notifier::from_env(), commands) => result,
        () = forward => Ok(()),
    }
}
