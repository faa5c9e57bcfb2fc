//! A generation: the pipelines one configuration describes, with their worker threads and their egress.
//!
//! The daemon starts with generation 1; every successful reload starts the next one beside it and retires the
//! previous: its admissions are handed back (so no new message reaches it), its workers answer what they already
//! hold, and its egresses publish those outcomes and end. Nothing is shared between generations but the zenoh
//! session and the memory governor, so an old pipeline can finish in peace while the new one serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{self, Config};
use crate::io::egress::Route;
use crate::io::ingress::Admission;
use crate::memory::Governor;
use crate::pipeline::{self, Pipeline};
use crate::telemetry::metrics::{PipelineDescription, PipelineMetrics};

/// The running pipelines of one configuration.
pub struct Generation {
    /// 1 at start, one more per successful reload.
    pub number: u64,
    /// The configuration it runs.
    pub config: Config,
    /// Per pipeline, the admission not yet handed to an ingress.
    admissions: Vec<Option<Admission>>,
    metrics: Vec<Arc<PipelineMetrics>>,
    workers: Vec<JoinHandle<()>>,
    egresses: Vec<tokio::task::JoinHandle<()>>,
    abandon: Arc<AtomicBool>,
}

/// A pipeline's entry point, to attach to a subscription.
pub struct Entry {
    /// The pipeline's name.
    pub name: String,
    /// Its input key expression.
    pub input: String,
    /// Whether daemons split its input.
    pub share: config::ShareMode,
    /// Where its results go.
    pub output_prefix: String,
    /// Where its messages go.
    pub admission: Admission,
}

impl Generation {
    /// Starts a worker per pipeline and an egress per pipeline that publishes its outcomes: a route whose results
    /// zenoh holds back (a slow subscriber with `block`) stalls only its own pipeline.
    pub fn start(
        number: u64,
        config: Config,
        pipelines: Vec<Pipeline>,
        session: &zenoh::Session,
        governor: &Arc<Governor>,
    ) -> Result<Self, crate::Error> {
        let abandon = Arc::new(AtomicBool::new(false));
        let mut egresses = Vec::new();
        let mut workers = Vec::new();
        let mut admissions = Vec::new();
        let mut all_metrics = Vec::new();
        for (index, (pipeline, settings)) in pipelines.into_iter().zip(&config.pipelines).enumerate() {
            let models: Vec<_> = pipeline.rungs().iter().map(|rung| rung.identity.clone()).collect();
            let stages = pipeline.stage_names();
            let identity = models[0].clone();
            let providers = pipeline.model().providers().to_vec();
            tracing::info!(
                pipeline = %settings.name, input = %settings.input, model = %identity.name,
                version = %identity.version, providers = ?providers, intra_threads = pipeline.model().intra_threads(),
                instances = pipeline.instances(), generation = number, "pipeline ready"
            );
            let memory = pipeline.memory();
            let metrics = Arc::new(PipelineMetrics::new(
                PipelineDescription {
                    name: settings.name.clone(),
                    input: settings.input.clone(),
                    model: identity.clone(),
                    ladder: if models.len() > 1 { models.clone() } else { Vec::new() },
                    providers,
                    memory: zinfer_proto::ModelMemory {
                        load_bytes: memory.load_bytes,
                        working_bytes: memory.working_bytes,
                        warm_up_batch: crate::pipeline::build::warm_up_rows(
                            settings,
                            pipeline.model(),
                            &settings.manifest,
                        ) as u32,
                        warm_up_length: crate::pipeline::build::warm_up_length(pipeline.model(), &settings.manifest)
                            as u32,
                    },
                    session: zinfer_proto::SessionSettings {
                        intra_threads: pipeline.model().intra_threads() as u32,
                        spinning: settings.session.spinning,
                        optimization: format!("{:?}", settings.session.optimization).to_lowercase(),
                        memory_arena: settings.session.memory_arena,
                        memory_pattern: settings.session.memory_pattern,
                        instances: pipeline.instances() as u32,
                    },
                    generation: number,
                    stages: stages.clone(),
                },
                settings.max_in_flight,
            ));
            if let Some((run, spec)) = pipeline.golden() {
                metrics.record_drift_check(run, spec);
            }
            let overload = match settings.overload {
                config::OverloadPolicy::Fifo => pipeline::queue::Overload::Fifo,
                config::OverloadPolicy::Latest => {
                    pipeline::queue::Overload::Latest { per_key: settings.latest_per_key }
                }
            };
            // Unbounded on purpose, yet bounded: every entry is an outcome owed for an accepted message, and admission
            // accepts none beyond `max_in_flight` owed (see `PipelineMetrics::try_receive`). Neither the zenoh
            // callback nor the worker ever waits for room here.
            let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
            let (queue, queue_rx) = pipeline::queue::bounded(settings.queue_capacity, settings.queue_bytes, overload);
            let decoder = pipeline.decoder();
            let context = pipeline::worker::WorkerContext {
                max_batch: settings.max_batch,
                max_batch_tokens: settings.max_batch_tokens,
                outcomes: outcomes.clone(),
                abandon: Arc::clone(&abandon),
                metrics: Arc::clone(&metrics),
                memory: Arc::clone(governor),
            };
            workers.push(pipeline::worker::spawn(&settings.name, pipeline, queue_rx, context)?);
            admissions.push(Some(Admission {
                queue,
                outcomes,
                pipeline: index,
                metrics: Arc::clone(&metrics),
                decoder,
                max_payload: settings.queue_bytes,
                encoding: settings.result_encoding,
            }));
            let route = Route {
                name: settings.name.clone(),
                output_prefix: settings.output_prefix.clone(),
                encoding: settings.result_encoding,
                congestion_control: settings.result_congestion_control,
                priority: settings.result_priority,
                models,
                metrics: Arc::clone(&metrics),
                stages,
            };
            // Only the admission and the worker hold senders: the egress ends when both are gone.
            egresses.push(tokio::spawn(crate::io::egress::publish(session.clone(), route, outcomes_rx)));
            all_metrics.push(metrics);
        }
        Ok(Self { number, config, admissions, metrics: all_metrics, workers, egresses, abandon })
    }

    /// Every pipeline's entry point, once: the caller attaches them to subscriptions.
    pub fn take_entries(&mut self) -> Vec<Entry> {
        self.admissions
            .iter_mut()
            .zip(&self.config.pipelines)
            .filter_map(|(admission, settings)| {
                admission.take().map(|admission| Entry {
                    name: settings.name.clone(),
                    input: settings.input.clone(),
                    share: settings.share,
                    output_prefix: settings.output_prefix.clone(),
                    admission,
                })
            })
            .collect()
    }

    /// The pipelines' counters, in configuration order.
    pub fn metrics(&self) -> &[Arc<PipelineMetrics>] {
        &self.metrics
    }

    /// Stops taking messages (admissions not attached are dropped; attached ones go when their ingress is closed
    /// or retargeted) and lets the workers finish what they hold.
    pub fn retire(mut self) -> Retiring {
        self.admissions.clear();
        Retiring {
            number: self.number,
            workers: self.workers,
            metrics: self.metrics,
            egresses: self.egresses,
            abandon: self.abandon,
        }
    }
}

/// A generation that takes no new messages and is finishing the ones it holds.
pub struct Retiring {
    number: u64,
    workers: Vec<JoinHandle<()>>,
    metrics: Vec<Arc<PipelineMetrics>>,
    egresses: Vec<tokio::task::JoinHandle<()>>,
    abandon: Arc<AtomicBool>,
}

impl Retiring {
    /// Its workers still running that have shown no progress for longer than `stall_after`, named with their
    /// generation, and for how long: a worker wedged in a model run stays wedged after a reload replaced it.
    pub fn stalled(&self, stall_after: Duration) -> Vec<(String, Duration)> {
        self.workers
            .iter()
            .zip(&self.metrics)
            .filter(|(worker, _)| !worker.is_finished())
            .map(|(_, metrics)| {
                (format!("{} (generation {}, retiring)", metrics.name(), self.number), metrics.since_beat())
            })
            .filter(|(_, silent)| *silent > stall_after)
            .collect()
    }

    /// Its pipelines' counters.
    pub fn metrics(&self) -> &[Arc<PipelineMetrics>] {
        &self.metrics
    }

    /// Whether every outcome it owed has been published and its workers have exited (so its models are dropped).
    pub fn is_finished(&self) -> bool {
        self.egresses.iter().all(|egress| egress.is_finished())
            && self.workers.iter().all(|worker| worker.is_finished())
    }

    /// Waits (until `deadline`) for its outcomes to be published; past the deadline, what is still queued is answered
    /// `dropped: shutdown`, and a publisher stuck in zenoh is given `grace` more before it is abandoned. Returns
    /// whether every outcome was published.
    pub async fn finish(mut self, deadline: Instant, grace: Duration) -> bool {
        let mut complete = true;
        if tokio::time::timeout_at(deadline, join_all(&mut self.egresses)).await.is_err() {
            tracing::warn!(
                generation = self.number,
                "drain timeout passed; answering the remaining queued messages `dropped: shutdown`"
            );
            self.abandon.store(true, Ordering::Relaxed);
            // A result stuck in zenoh (a blocked peer) must not keep the daemon from exiting forever.
            if tokio::time::timeout(grace, join_all(&mut self.egresses)).await.is_err() {
                tracing::error!(
                    generation = self.number,
                    "outcomes could not be published within the grace period; exiting without them"
                );
                self.egresses.iter().for_each(|egress| egress.abort());
                complete = false;
            }
        }
        for worker in self.workers {
            // A worker stuck in a model run cannot be joined; the process exit ends it.
            if !complete && !worker.is_finished() {
                tracing::error!(generation = self.number, "a pipeline worker is stuck; leaving it behind");
                continue;
            }
            let joined = tokio::task::spawn_blocking(move || worker.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(generation = self.number, "a pipeline worker panicked while finishing");
            }
        }
        complete
    }
}

/// Waits for every egress to end (each one's handle may be polled again after a timeout).
async fn join_all(egresses: &mut [tokio::task::JoinHandle<()>]) {
    for egress in egresses {
        if !egress.is_finished() {
            let _ = egress.await;
        }
    }
}
