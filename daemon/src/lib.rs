//! zinferd: a streaming inference daemon. Messages arrive over zenoh, run through a pipeline of stages and an
//! ONNX model, and leave as results; the daemon reports on itself as it goes.
//!
//! Where a message goes:
//!
//! ```text
//! zenoh ─▶ io::ingress ──bounded queue──▶ pipeline::worker (decode ─▶ preprocess ─▶ model ─▶ postprocess)
//!             │ (queue full: dropped)                         │
//!             └───────────────────────────▶ io::egress ◀──────┘ ─▶ zenoh <output_prefix>/<input key>
//!                                               │
//!                                     telemetry::metrics ─▶ telemetry (<prefix>/telemetry, /status, /alive)
//! ```
//!
//! - [`config`] reads layered TOML and `ZINFER_*` overrides and validates them.
//! - [`pipeline`] builds stages through the registry and runs them on a worker thread that owns the model.
//! - [`io`] holds the zenoh session, the ingress and the egress.
//! - [`telemetry`] counts, samples and publishes.
//!
//! [`run`] takes the configuration and a shutdown future, in the style of mini-redis: the caller owns the signal,
//! so tests can run a daemon in-process and stop it deterministically.

pub mod bench;
pub mod client;
pub mod config;
pub mod io;
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
use pipeline::Pipeline;
use telemetry::metrics::PipelineMetrics;
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

/// Runs the daemon until `shutdown` resolves, then drains: no new messages, in-flight ones finish and their
/// outcomes are published (within `daemon.drain_timeout_ms`; the rest are answered `dropped: shutdown`).
pub async fn run(config: Config, registry: &Registry, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    // Models load before the session opens: a bad model must not leave a half-started daemon on the network.
    let pipelines = build_pipelines(&config, registry)?;
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
        let metrics =
            Arc::new(PipelineMetrics::new(settings.name.clone(), settings.input.clone(), identity.clone(), providers));
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
    let reporter =
        Reporter::start(&session, Arc::new(Telemetry::new(zid.clone(), all_metrics)), &config.telemetry).await?;
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
    reporter.stop().await;
    if let Err(error) = session.close().await {
        tracing::warn!(%error, "closing the zenoh session failed");
    }
    tracing::info!("zinferd stopped cleanly");
    Ok(())
}
