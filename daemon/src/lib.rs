//! zinferd: a streaming inference daemon. Messages arrive over zenoh, run through a pipeline of stages and an
//! ONNX model, and leave as results; the daemon reports on itself as it goes.
//!
//! Where a message goes:
//!
//! ```text
//! zenoh ─▶ io::ingress ──bounded queue──▶ pipeline::worker: decode ─▶ preprocess ─▶ EDF queue ─▶ model (batched)
//!             │ (queue full: dropped)            │ (expired, superseded, memory: shed)        ─▶ postprocess
//!             └───────────────────────────▶ io::egress ◀───────────────────────────────────────────┘
//!                                               │        ─▶ zenoh <output_prefix>/<input key>
//!                                     telemetry::metrics ─▶ telemetry (<prefix>/telemetry, /status, /alive)
//! ```
//!
//! - [`config`] reads layered TOML and `ZINFER_*` overrides and validates them.
//! - [`pipeline`] builds stages through the registry and runs them on a worker thread that owns the model:
//!   deadlines, earliest-deadline-first order, overload policies and dynamic batching live in its worker.
//! - [`memory`] probes what each model costs at start-up and governs RSS against the budget while running.
//! - [`io`] holds the zenoh session, the ingress and the egress.
//! - [`telemetry`] counts, samples and publishes.
//! - [`mod@bench`] measures all of it from the outside.
//!
//! [`run`] takes the configuration and a shutdown future, in the style of mini-redis: the caller owns the signal,
//! so tests can run a daemon in-process and stop it deterministically.

pub mod bench;
pub mod client;
pub mod config;
pub mod io;
pub mod memory;
pub mod pipeline;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use zinfer_ort::OrtEnvironment;
use zinfer_stage_api::Registry;

use config::{Config, ConfigError};
use io::egress::Route;
use io::ingress::{Admission, IdGenerator, Ingress, IngressContext};
use memory::Governor;
use pipeline::Pipeline;
use telemetry::metrics::{PipelineDescription, PipelineMetrics};
use telemetry::{Reporter, Telemetry};

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
pub fn build_pipelines(config: &Config, registry: &Registry) -> Result<Vec<Pipeline>, Error> {
    if config.pipelines.is_empty() {
        tracing::warn!("the configuration has no [[pipeline]]; zinferd will only publish telemetry");
        return Ok(Vec::new());
    }
    let ort = load_onnxruntime(config)?;
    let threads = telemetry::system::physical_cores();
    (0..config.pipelines.len())
        .map(|index| pipeline::build::build(config, index, registry, &ort, threads).map_err(Error::from))
        .collect()
}

/// Checks the memory budget (`daemon.memory_mb`, else the cgroup's limit) against what the process measures now,
/// with every model loaded and warmed up, plus `daemon.memory_reserve_mb` for the runtime. Returns the governor that
/// enforces the budget from here on.
pub fn check_memory(config: &Config, pipelines: &[Pipeline]) -> Result<Governor, Error> {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let budget = memory::budget_bytes(config.memory.budget_mb);
    let governor = Governor::new(budget, config.memory.soft_percent);
    let Some(budget) = budget else {
        return Ok(governor);
    };
    let rss = memory::rss_bytes();
    let reserve = config.memory.reserve_mb * 1024 * 1024;
    let models: Vec<String> = config
        .pipelines
        .iter()
        .zip(pipelines)
        .map(|(settings, pipeline)| {
            let memory = pipeline.memory();
            format!(
                "pipeline `{}`: model {:.1} MiB + working memory {:.1} MiB at {} × {} tokens",
                settings.name,
                mib(memory.load_bytes),
                mib(memory.working_bytes),
                settings.max_batch,
                settings.manifest.max_length.unwrap_or(512)
            )
        })
        .collect();
    tracing::info!(budget_mib = mib(budget), rss_mib = mib(rss), models = ?models, "memory probed");
    if rss + reserve > budget {
        let source = if config.memory.budget_mb.is_some() { "daemon.memory_mb" } else { "the cgroup's memory limit" };
        return Err(Error::Memory(format!(
            "the memory budget of {:.1} MiB ({source}) cannot hold zinferd: it measures {:.1} MiB with its models              loaded and warmed up ({}) and needs {:.1} MiB more at run time (daemon.memory_reserve_mb). Raise the              budget, or lower max_batch or the models' max_length",
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
pub async fn run(config: Config, registry: &Registry, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    // Models load before the session opens: a bad model must not leave a half-started daemon on the network.
    let pipelines = build_pipelines(&config, registry)?;
    let governor = Arc::new(check_memory(&config, &pipelines)?);
    let session = io::session::open(&config.zenoh).await?;
    let zid = session.zid().to_string();
    let ids = Arc::new(IdGenerator::new(zid.clone()));
    let abandon = Arc::new(AtomicBool::new(false));
    // Unbounded on purpose: every entry is an outcome owed for a message already admitted (and so already in
    // memory); blocking here would block zenoh's callback. Admission (queue capacity) is what bounds it.
    let (outcomes, outcomes_rx) = mpsc::unbounded_channel();

    let mut routes = Vec::new();
    let mut workers = Vec::new();
    let mut admissions = Vec::new();
    for (index, (pipeline, settings)) in pipelines.into_iter().zip(&config.pipelines).enumerate() {
        let identity = pipeline::build::identity(settings);
        let providers = pipeline.model().providers().to_vec();
        tracing::info!(
            pipeline = %settings.name, input = %settings.input, model = %identity.name, version = %identity.version,
            providers = ?providers, intra_threads = pipeline.model().intra_threads(), "pipeline ready"
        );
        let memory = pipeline.memory();
        let metrics = Arc::new(PipelineMetrics::new(PipelineDescription {
            name: settings.name.clone(),
            input: settings.input.clone(),
            model: identity.clone(),
            providers,
            memory: zinfer_proto::ModelMemory {
                load_bytes: memory.load_bytes,
                working_bytes: memory.working_bytes,
                warm_up_batch: settings.max_batch as u32,
                warm_up_length: settings.manifest.max_length.unwrap_or(512) as u32,
            },
            session: zinfer_proto::SessionSettings {
                intra_threads: pipeline.model().intra_threads() as u32,
                spinning: settings.session.spinning,
                optimization: format!("{:?}", settings.session.optimization).to_lowercase(),
                memory_arena: settings.session.memory_arena,
                memory_pattern: settings.session.memory_pattern,
            },
        }));
        let (queue, queue_rx) = std::sync::mpsc::sync_channel(settings.queue_capacity);
        let context = pipeline::worker::WorkerContext {
            index,
            capacity: settings.queue_capacity,
            max_batch: settings.max_batch,
            capacity_bytes: settings.queue_bytes,
            overload: match settings.overload {
                config::OverloadPolicy::Fifo => pipeline::worker::Overload::Fifo,
                config::OverloadPolicy::Latest => {
                    pipeline::worker::Overload::Latest { per_key: settings.latest_per_key }
                }
            },
            outcomes: outcomes.clone(),
            abandon: Arc::clone(&abandon),
            metrics: Arc::clone(&metrics),
            memory: Arc::clone(&governor),
        };
        workers.push(pipeline::worker::spawn(&settings.name, pipeline, queue_rx, context)?);
        admissions.push((Admission { queue, outcomes: outcomes.clone() }, Arc::clone(&metrics)));
        routes.push(Route {
            name: settings.name.clone(),
            output_prefix: settings.output_prefix.clone(),
            encoding: settings.result_encoding,
            congestion_control: settings.result_congestion_control,
            priority: settings.result_priority,
            model: identity,
            metrics,
        });
    }
    // From here on only admissions and workers hold senders: the egress ends when they are all gone.
    drop(outcomes);
    let all_metrics: Vec<_> = routes.iter().map(|route| Arc::clone(&route.metrics)).collect();
    let mut egress = tokio::spawn(io::egress::publish(session.clone(), Arc::new(routes), outcomes_rx));

    let mut ingresses = Vec::new();
    for (index, (admission, metrics)) in admissions.into_iter().enumerate() {
        let context = IngressContext { pipeline: index, metrics, ids: Arc::clone(&ids) };
        ingresses.push(Ingress::open(&session, &config.pipelines[index].input, admission, context).await?);
    }
    let telemetry = Arc::new(Telemetry::new(zid.clone(), all_metrics, Arc::clone(&governor)));
    let reporter = Reporter::start(&session, telemetry, &config.telemetry).await?;
    let sampler = memory::spawn_sampler(Arc::clone(&governor), config.memory.sample_interval);
    tracing::info!(zid = %zid, pipelines = config.pipelines.len(), "zinferd ready");

    shutdown.await;
    tracing::info!("shutting down: no new messages; finishing the ones in flight");
    for ingress in ingresses {
        ingress.close().await;
    }
    if tokio::time::timeout(config.drain_timeout, &mut egress).await.is_err() {
        tracing::warn!(
            timeout_ms = config.drain_timeout.as_millis() as u64,
            "drain timeout passed; answering the remaining queued messages `dropped: shutdown`"
        );
        abandon.store(true, Ordering::Relaxed);
        // A result stuck in zenoh (a blocked peer) must not keep the daemon from exiting forever.
        if tokio::time::timeout(config.drain_timeout, &mut egress).await.is_err() {
            tracing::error!("outcomes could not be published within a second drain timeout; exiting without them");
            egress.abort();
        }
    }
    for worker in workers {
        let joined = tokio::task::spawn_blocking(move || worker.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("a pipeline worker panicked during shutdown");
        }
    }
    sampler.abort();
    reporter.stop().await;
    if let Err(error) = session.close().await {
        tracing::warn!(%error, "closing the zenoh session failed");
    }
    tracing::info!("zinferd stopped cleanly");
    Ok(())
}
