//! Telemetry: what the daemon says about itself, published every `telemetry.interval_ms` on
//! `<prefix>/telemetry`, answered on demand by the `<prefix>/status` queryable, and a liveliness token
//! `<prefix>/alive` held while it serves.
//!
//! Telemetry is put with zenoh's default `CongestionControl::Drop`: a snapshot superseded by the next one is not
//! worth blocking the daemon for, unlike a result.
//!
//! The status queryable is declared before the pipelines' subscribers and the liveliness token after them, so a
//! client that sees either the token or a subscriber can query the status, and one that waits for the token finds
//! the subscribers declared. At shutdown the token goes first, before the subscribers; status and telemetry stay up
//! through the drain.

pub mod metrics;
pub mod names;
pub mod system;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zenoh::Wait;
use zinfer_proto::{self as proto, keys};

use crate::config::TelemetryConfig;
use crate::io::egress::encode;
use crate::memory::Governor;
use metrics::PipelineMetrics;
use system::SystemSampler;

/// The source of telemetry snapshots.
pub struct Telemetry {
    started: Instant,
    zid: String,
    /// Host name and board model, read once.
    machine: (String, String),
    sampler: Mutex<SystemSampler>,
    /// The current generation's pipelines: a reload swaps them.
    pipelines: RwLock<Vec<Arc<PipelineMetrics>>>,
    /// The pipelines of generations a reload retired that still owe outcomes: until they have published the last one
    /// they are reported too (each with its `generation`), so the outcomes they publish after the swap are counted
    /// somewhere a client can see, and every generation's books balance.
    retiring: RwLock<Vec<Arc<PipelineMetrics>>>,
    service: Mutex<proto::ServiceState>,
    memory: Arc<Governor>,
}

impl Telemetry {
    /// Telemetry for a daemon with session id `zid`; pipelines come with [`Telemetry::set_generation`].
    pub fn new(zid: String, memory: Arc<Governor>) -> Self {
        Self {
            started: Instant::now(),
            zid,
            machine: (system::host_name(), system::board_model()),
            sampler: Mutex::new(SystemSampler::new()),
            pipelines: RwLock::new(Vec::new()),
            retiring: RwLock::new(Vec::new()),
            service: Mutex::new(proto::ServiceState::default()),
            memory,
        }
    }

    /// The pipelines of the configuration now in force.
    pub fn set_generation(&self, number: u64, pipelines: &[Arc<PipelineMetrics>], sources: &[PathBuf]) {
        *self.pipelines.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pipelines.to_vec();
        let mut service = self.service();
        service.generation = number;
        service.config_files = sources.iter().map(|path| path.display().to_string()).collect();
    }

    /// The pipelines of the retired generations that are still finishing.
    pub fn set_retiring(&self, pipelines: Vec<Arc<PipelineMetrics>>) {
        *self.retiring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pipelines;
    }

    /// The outcome of a reload: `None` when it succeeded, else why it failed.
    pub fn record_reload(&self, error: Option<&str>, at_ms: u64) {
        let mut service = self.service();
        service.last_reload_ms = at_ms;
        match error {
            None => {
                service.reloads_ok += 1;
                service.last_reload = "ok".to_owned();
                service.last_reload_error.clear();
            }
            Some(error) => {
                service.reloads_failed += 1;
                service.last_reload = "failed".to_owned();
                service.last_reload_error = format!("{error}; the previous configuration keeps serving");
            }
        }
    }

    /// Why the latest reload failed, if it did.
    pub fn last_reload_error(&self) -> Option<String> {
        let service = self.service();
        (service.last_reload == "failed").then(|| service.last_reload_error.clone())
    }

    /// The pipelines whose worker is stalled now; returns whether any was already stalled.
    pub fn set_stalled(&self, names: Vec<String>) -> bool {
        let mut service = self.service();
        let was = !service.stalled_pipelines.is_empty();
        service.stalled_pipelines = names;
        was
    }

    fn service(&self) -> std::sync::MutexGuard<'_, proto::ServiceState> {
        self.service.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh snapshot.
    pub fn snapshot(&self) -> proto::Telemetry {
        let (process, system) = self.sampler.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sample();
        let pipelines = self.pipelines.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let retiring = self.retiring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        proto::Telemetry {
            timestamp_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            zid: self.zid.clone(),
            hostname: self.machine.0.clone(),
            board: self.machine.1.clone(),
            process: Some(process),
            system: Some(system),
            pipelines: pipelines.iter().chain(retiring.iter()).map(|pipeline| pipeline.snapshot()).collect(),
            memory: Some(proto::MemoryStats {
                budget_bytes: self.memory.budget().unwrap_or(0),
                soft_threshold_bytes: self.memory.soft_threshold().unwrap_or(0),
                rss_bytes: self.memory.rss(),
                pressure: format!("{:?}", self.memory.pressure()).to_lowercase(),
            }),
            service: Some(self.service().clone()),
        }
    }
}

/// The running telemetry publisher, status queryable and, once [`Reporter::announce`] declared it, liveliness token.
pub struct Reporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    queryable: zenoh::query::Queryable<()>,
    token: Option<zenoh::liveliness::LivelinessToken>,
}

impl Reporter {
    /// Declares the status queryable and starts publishing.
    pub async fn start(
        session: &zenoh::Session,
        telemetry: Arc<Telemetry>,
        config: &TelemetryConfig,
    ) -> Result<Self, crate::Error> {
        let status_key = keys::status(&config.prefix);
        let encoding = config.encoding;
        let status = Arc::clone(&telemetry);
        let reply_key = status_key.clone();
        // A snapshot reads /proc and computes latency quantiles: that runs on tokio's blocking pool, not on the
        // zenoh thread that delivers the query (which also delivers the pipelines' messages).
        let runtime = tokio::runtime::Handle::current();
        let queryable = session
            .declare_queryable(status_key.clone())
            .callback(move |query| {
                let (status, reply_key) = (Arc::clone(&status), reply_key.clone());
                runtime.spawn_blocking(move || {
                    let (bytes, encoding) = encode(&status.snapshot(), encoding);
                    if let Err(error) = query.reply(reply_key, bytes).encoding(encoding).wait() {
                        tracing::warn!(%error, "answering a status query failed");
                    }
                });
            })
            .await
            .map_err(|error| declare_error(&format!("the status queryable `{status_key}`"), error))?;

        let (stop, mut stopped) = watch::channel(false);
        let session = session.clone();
        let key = keys::telemetry(&config.prefix);
        let interval = config.interval;
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                // Sampling reads /proc; keep it off the reactor threads.
                let source = Arc::clone(&telemetry);
                let Ok(snapshot) = tokio::task::spawn_blocking(move || source.snapshot()).await else {
                    break;
                };
                let (bytes, encoding) = encode(&snapshot, encoding);
                if let Err(error) = session.put(&key, bytes).encoding(encoding).await {
                    tracing::warn!(%error, "publishing telemetry failed");
                }
            }
        });
        Ok(Self { stop, task, queryable, token: None })
    }

    /// Declares the liveliness token `<prefix>/alive`: the daemon is serving.
    pub async fn announce(&mut self, session: &zenoh::Session, config: &TelemetryConfig) -> Result<(), crate::Error> {
        let alive_key = keys::alive(&config.prefix);
        let token = session
            .liveliness()
            .declare_token(alive_key.clone())
            .await
            .map_err(|error| declare_error(&format!("the liveliness token `{alive_key}`"), error))?;
        self.token = Some(token);
        Ok(())
    }

    /// Withdraws the liveliness token: the daemon no longer takes messages. Telemetry and status go on.
    pub async fn withdraw(&mut self) {
        if let Some(token) = self.token.take()
            && let Err(error) = token.undeclare().await
        {
            tracing::warn!(%error, "withdrawing the liveliness token failed");
        }
    }

    /// Withdraws the liveliness token if it is still declared, stops publishing and withdraws the queryable.
    pub async fn stop(mut self) {
        self.withdraw().await;
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(error) = self.queryable.undeclare().await {
            tracing::warn!(%error, "undeclaring the status queryable failed");
        }
    }
}

fn declare_error(what: &str, error: zenoh::Error) -> crate::Error {
    crate::Error::Zenoh(format!("cannot declare {what}: {error}"))
}
