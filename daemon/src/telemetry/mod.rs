//! Telemetry: what the daemon says about itself, published every `telemetry.interval_ms` on
//! `<prefix>/telemetry`, answered on demand by the `<prefix>/status` queryable, and a liveliness token
//! `<prefix>/alive` held while it runs.
//!
//! Telemetry is put with zenoh's default `CongestionControl::Drop`: a snapshot superseded by the next one is not
//! worth blocking the daemon for, unlike a result.

pub mod metrics;
pub mod names;
pub mod system;

use std::sync::{Arc, Mutex};
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
    sampler: Mutex<SystemSampler>,
    pipelines: Vec<Arc<PipelineMetrics>>,
    memory: Arc<Governor>,
}

impl Telemetry {
    /// Telemetry for a daemon with session id `zid` and these pipelines.
    pub fn new(zid: String, pipelines: Vec<Arc<PipelineMetrics>>, memory: Arc<Governor>) -> Self {
        Self { started: Instant::now(), zid, sampler: Mutex::new(SystemSampler::new()), pipelines, memory }
    }

    /// A fresh snapshot.
    pub fn snapshot(&self) -> proto::Telemetry {
        let (process, system) = self.sampler.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sample();
        proto::Telemetry {
            timestamp_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            zid: self.zid.clone(),
            process: Some(process),
            system: Some(system),
            pipelines: self.pipelines.iter().map(|pipeline| pipeline.snapshot()).collect(),
            memory: Some(proto::MemoryStats {
                budget_bytes: self.memory.budget().unwrap_or(0),
                soft_threshold_bytes: self.memory.soft_threshold().unwrap_or(0),
                rss_bytes: self.memory.rss(),
                pressure: format!("{:?}", self.memory.pressure()).to_lowercase(),
            }),
        }
    }
}

/// The running telemetry publisher, status queryable and liveliness token.
pub struct Reporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    queryable: zenoh::query::Queryable<()>,
    token: zenoh::liveliness::LivelinessToken,
}

impl Reporter {
    /// Declares the queryable and the token and starts publishing.
    pub async fn start(
        session: &zenoh::Session,
        telemetry: Arc<Telemetry>,
        config: &TelemetryConfig,
    ) -> Result<Self, crate::Error> {
        let zenoh_error =
            |what: &str, error: zenoh::Error| crate::Error::Zenoh(format!("cannot declare {what}: {error}"));
        let status_key = keys::status(&config.prefix);
        let encoding = config.encoding;
        let status = Arc::clone(&telemetry);
        let reply_key = status_key.clone();
        let queryable = session
            .declare_queryable(status_key.clone())
            .callback(move |query| {
                let (bytes, encoding) = encode(&status.snapshot(), encoding);
                if let Err(error) = query.reply(reply_key.clone(), bytes).encoding(encoding).wait() {
                    tracing::warn!(%error, "answering a status query failed");
                }
            })
            .await
            .map_err(|error| zenoh_error(&format!("the status queryable `{status_key}`"), error))?;
        let alive_key = keys::alive(&config.prefix);
        let token = session
            .liveliness()
            .declare_token(alive_key.clone())
            .await
            .map_err(|error| zenoh_error(&format!("the liveliness token `{alive_key}`"), error))?;

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
        Ok(Self { stop, task, queryable, token })
    }

    /// Stops publishing and withdraws the queryable and the liveliness token.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(error) = self.queryable.undeclare().await {
            tracing::warn!(%error, "undeclaring the status queryable failed");
        }
        if let Err(error) = self.token.undeclare().await {
            tracing::warn!(%error, "withdrawing the liveliness token failed");
        }
    }
}
