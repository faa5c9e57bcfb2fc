//! The daemon as a long-running service: start-up, reloads, health, and the drain at shutdown.
//!
//! [`serve`] owns the zenoh session, one subscription per pipeline, and the current [`generation::Generation`]. It
//! waits for [`Control`] commands (the binary maps SIGHUP and SIGTERM onto them) and ticks a health check:
//!
//! - **Reload**: the new configuration is read, its models are loaded and warmed up *beside* the running ones and
//!   checked against the memory budget. Only if all of that succeeds does each subscription switch to the new
//!   pipeline of the same name and input, atomically per message: a message published during the reload is
//!   answered by exactly one generation. The previous generation then finishes what it holds and ends. Any failure
//!   leaves the previous generation serving and is reported in the log, in telemetry and in the status line.
//! - **Health**: every pipeline worker beats at least every [`HEARTBEAT`](crate::pipeline::worker::HEARTBEAT)
//!   while it turns; one that has not beaten for half the watchdog period (or 10 s without a watchdog) is stalled.
//!   The watchdog is pinged only while no worker is stalled, so a wedged model run gets the service restarted.
//!   The health check goes on while a reload loads its models, which can take longer than the watchdog period
//!   (a TensorRT engine build takes minutes): the running generation is serving meanwhile and is what it checks.
//! - **Shutdown**: no new messages; every generation's in-flight messages finish and their outcomes are published
//!   within `daemon.drain_timeout_ms`, after which the rest are answered `dropped: shutdown`.
//!
//! Only `[[pipeline]]` tables (and the model files they name) are reloaded. `[zenoh]`, `[telemetry]`, the memory keys
//! of `[daemon]` and `ort_library` belong to the process: a reload that changes them says so and keeps the old
//! values until a restart.

pub mod generation;
pub mod systemd;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use zinfer_stage_api::Registry;

use crate::config::{Config, ConfigError, ShareMode};
use crate::io::ingress::{IdGenerator, Ingress, Names, Overlap, Prefixes, inputs_intersect};
use crate::memory::Governor;
use crate::telemetry::{Reporter, Telemetry};
use crate::{Error, build_pipelines, check_memory, io, memory};
use generation::{Entry, Generation, Retiring};
use systemd::Notifier;

/// What the daemon is asked to do while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Read the configuration again and swap in its pipelines if they load (SIGHUP).
    Reload,
    /// Stop taking messages, finish those in flight, exit (SIGTERM, SIGINT).
    Shutdown,
}

/// Reads the configuration again, for a reload.
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// After the drain timeout, how long the outcomes of the messages dropped for it may take to publish.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A worker silent for this long counts as stalled when no watchdog period says otherwise.
const STALL_WITHOUT_WATCHDOG: Duration = Duration::from_secs(10);

/// Runs the daemon until `control` says [`Control::Shutdown`] (or closes), then drains.
pub async fn serve(
    config: Config,
    registry: Arc<Registry>,
    loader: Loader,
    notifier: Notifier,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), Error> {
    // Before any model loads, so that its weights already live in blocks a retiring generation can give back.
    memory::allocator::tune_for_reloads();
    // Models load before the session opens: a bad model must not leave a half-started daemon on the network.
    let pipelines = build_pipelines(&config, &registry)?;
    let governor = Arc::new(check_memory(&config, &pipelines)?);
    let session = io::session::open(&config.zenoh).await?;
    let zid = session.zid().to_string();
    let ids = Arc::new(IdGenerator::new(zid.clone()));
    // Held until the session closes, after the drain: the members sharing a pipeline with this daemon learn from
    // its end that it will answer nothing more (see `io::share::watch`). `share` changes only at a restart, so a
    // daemon that shares nothing now never needs it.
    let session_token = if config.pipelines.iter().any(|pipeline| pipeline.share != ShareMode::None) {
        let key = zinfer_proto::keys::session(&config.telemetry.prefix, &zid);
        let declared = session.liveliness().declare_token(&key).await;
        Some(declared.map_err(|error| Error::Zenoh(format!("cannot declare the liveliness token `{key}`: {error}")))?)
    } else {
        None
    };

    let mut current = Generation::start(1, config, pipelines, &session, &governor)?;
    let telemetry = Arc::new(Telemetry::new(zid.clone(), Arc::clone(&governor)));
    telemetry.set_generation(current.number, current.metrics(), &current.config.sources);
    let mut reporter = Reporter::start(&session, Arc::clone(&telemetry), &current.config.telemetry).await?;
    let mut subscriptions = Vec::new();
    let mut prefixes = Prefixes::default();
    let prefix = current.config.telemetry.prefix.clone();
    for entry in current.take_entries() {
        subscriptions.push(subscribe(&session, entry, &prefix, None, Arc::clone(&ids), &mut prefixes).await?);
    }
    reporter.announce(&session, &current.config.telemetry).await?;
    memory::settle_after_load(current.config.memory.page_out_after_load);
    let sampler = memory::spawn_sampler(Arc::clone(&governor), current.config.memory.sample_interval);
    let health = Health::for_watchdog(notifier.watchdog());
    let mut service = Service {
        health,
        session,
        ids,
        prefixes,
        governor,
        telemetry,
        notifier,
        subscriptions,
        retiring: Vec::new(),
        progress: Progress::default(),
        abandoned_load: None,
        _session_token: session_token,
    };
    tracing::info!(zid = %zid, pipelines = current.config.pipelines.len(), "zinferd ready");
    let status = service.status_line(&current, &[]);
    service.notifier.ready(&status);

    let mut ticker = tokio::time::interval(service.health.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = control.recv() => match command {
                Some(Control::Reload) => {
                    let (next, stop) = service.reload(current, &registry, &loader, &mut control).await;
                    current = next;
                    if stop {
                        break;
                    }
                }
                Some(Control::Shutdown) | None => break,
            },
            _ = ticker.tick() => service.check_health(&current),
        }
    }

    tracing::info!("shutting down: no new messages; finishing the ones in flight");
    service.notifier.stopping("draining: finishing the messages in flight");
    // First the token that says "serving", then the subscribers; status and telemetry go on through the drain.
    reporter.withdraw().await;
    for subscription in service.subscriptions.drain(..) {
        subscription.ingress.close().await;
    }
    let drain_timeout = current.config.drain_timeout;
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let mut finishing = std::mem::take(&mut service.retiring);
    finishing.push(current.retire());
    let mut complete = true;
    for generation in finishing {
        complete &= generation.finish(deadline, DRAIN_GRACE.max(drain_timeout)).await;
    }
    sampler.abort();
    reporter.stop().await;
    if let Err(error) = service.session.close().await {
        tracing::warn!(%error, "closing the zenoh session failed");
    }
    if let Some(load) = service.abandoned_load.take() {
        tracing::info!(
            complete,
            "drained; waiting for the abandoned reload's model load to finish before exiting (ONNX Runtime cannot be \
             torn down under it)"
        );
        let _ = tokio::task::spawn_blocking(move || load.join()).await;
    }
    if !complete {
        return Err(Error::Drain);
    }
    tracing::info!("zinferd stopped cleanly");
    Ok(())
}

/// A subscription and the pipeline it feeds.
struct Subscription {
    name: String,
    input: String,
    ingress: Ingress,
}

/// Messages answered, as of the previous status line.
#[derive(Default)]
struct Progress {
    at: Option<Instant>,
    answered: u64,
    generation: u64,
}

/// Opens the subscription that admits into `entry`'s pipeline, under the telemetry `prefix`.
async fn subscribe(
    session: &zenoh::Session,
    entry: Entry,
    prefix: &str,
    overlap: Option<Arc<Overlap>>,
    ids: Arc<IdGenerator>,
    prefixes: &mut Prefixes,
) -> Result<Subscription, Error> {
    let Entry { name, input, share, output_prefix, admission } = entry;
    let names = Names { prefix, name: &name, share, output_prefix: &output_prefix };
    let ingress = Ingress::open(session, &input, names, admission, overlap, ids, prefixes).await?;
    Ok(Subscription { name, input, ingress })
}

/// What lives across generations.
struct Service {
    health: Health,
    session: zenoh::Session,
    ids: Arc<IdGenerator>,
    prefixes: Prefixes,
    governor: Arc<Governor>,
    telemetry: Arc<Telemetry>,
    notifier: Notifier,
    subscriptions: Vec<Subscription>,
    retiring: Vec<Retiring>,
    progress: Progress,
    /// A model load that a shutdown abandoned: waited for before the process exits, because ONNX Runtime's own
    /// teardown at exit crashes under a thread that is still inside it (seen: SIGSEGV).
    abandoned_load: Option<std::thread::JoinHandle<()>>,
    /// [`zinfer_proto::keys::session`], gone with the session.
    _session_token: Option<zenoh::liveliness::LivelinessToken>,
}

impl Service {
    /// Tries to swap in the configuration `loader` reads now; on any failure keeps `current` serving. Returns the
    /// generation serving afterwards, and whether a shutdown was asked for meanwhile (the caller stops then).
    async fn reload(
        &mut self,
        current: Generation,
        registry: &Arc<Registry>,
        loader: &Loader,
        control: &mut mpsc::Receiver<Control>,
    ) -> (Generation, bool) {
        tracing::info!(generation = current.number, "reloading the configuration");
        self.notifier.reloading();
        let mut stop = false;
        let (next, error) = match self.start_next(&current, registry, loader, control, &mut stop).await {
            Ok(next) => {
                tracing::info!(generation = next.number, "reload complete: the new pipelines serve");
                self.retiring.push(current.retire());
                self.telemetry.set_generation(next.number, next.metrics(), &next.config.sources);
                self.report_retiring();
                (next, None)
            }
            Err(reason) => {
                tracing::error!(generation = current.number, %reason, "reload failed; the running pipelines keep serving");
                (current, Some(reason))
            }
        };
        self.telemetry.record_reload(error.as_deref(), unix_ms());
        if !stop {
            let status = self.status_line(&next, &[]);
            self.notifier.ready(&status);
        }
        (next, stop)
    }

    /// Builds the next generation and attaches it to the subscriptions. Nothing changes unless it returns `Ok`.
    async fn start_next(
        &mut self,
        current: &Generation,
        registry: &Arc<Registry>,
        loader: &Loader,
        control: &mut mpsc::Receiver<Control>,
        stop: &mut bool,
    ) -> Result<Generation, String> {
        let config = loader().map_err(|error| error.to_string())?;
        for key in restart_only_changes(&current.config, &config) {
            tracing::warn!(key, "this setting changed but takes effect only at a restart; the old value stays");
        }
        let pipelines = self.load(current, &config, registry, control, stop).await?;
        // Measured with both generations loaded: that is what the process holds until the old one finishes.
        check_memory(&config, &pipelines).map_err(|error| {
            format!("{error} (during a reload both configurations' models are loaded; restart instead)")
        })?;
        let mut next = Generation::start(current.number + 1, config, pipelines, &self.session, &self.governor)
            .map_err(|error| error.to_string())?;

        // A pipeline keeps its subscription when its input is unchanged (renamed or not): the subscription switches
        // to the new pipeline per message, so none is lost or answered twice. A new input needs a new subscription.
        let mut entries = next.take_entries();
        let mut claimed = vec![false; self.subscriptions.len()];
        let mut switch = Vec::new();
        for same_name in [true, false] {
            let mut unmatched = Vec::new();
            for entry in entries.drain(..) {
                let existing = self.subscriptions.iter().zip(&claimed).position(|(subscription, claimed)| {
                    !claimed && subscription.input == entry.input && (!same_name || subscription.name == entry.name)
                });
                match existing {
                    Some(index) => {
                        claimed[index] = true;
                        switch.push((index, entry));
                    }
                    None => unmatched.push(entry),
                }
            }
            entries = unmatched;
        }
        // New inputs are subscribed first: if one cannot be declared, nothing has been switched yet; opening the new
        // input only after closing the old one would lose the messages in between (measured: dozens in a dense
        // stream). Until the old subscription closes below (well under a millisecond), a message on a key both
        // inputs match reaches both: each new subscription shares an overlap with the one it replaces (same name,
        // else any closing one whose input intersects), which admits such a message once.
        let mut opened = Vec::new();
        let mut overlapping = Vec::new();
        for entry in entries {
            let mut replaced: Vec<usize> = self.unclaimed(&claimed, |subscription| subscription.name == entry.name);
            if replaced.is_empty() {
                replaced = self.unclaimed(&claimed, |subscription| inputs_intersect(&subscription.input, &entry.input));
            }
            let inputs: Vec<&str> = std::iter::once(entry.input.as_str())
                .chain(replaced.iter().map(|&index| self.subscriptions[index].input.as_str()))
                .collect();
            let overlap = Overlap::new(&inputs);
            for &index in &replaced {
                self.subscriptions[index].ingress.set_overlap(overlap.clone());
                overlapping.push(index);
            }
            let ids = Arc::clone(&self.ids);
            // The telemetry prefix, hence the query keys' prefix, changes only at a restart.
            let prefix = &current.config.telemetry.prefix;
            match subscribe(&self.session, entry, prefix, overlap, ids, &mut self.prefixes).await {
                Ok(subscription) => opened.push(subscription),
                Err(error) => {
                    for subscription in opened {
                        subscription.ingress.close().await;
                    }
                    for index in overlapping {
                        self.subscriptions[index].ingress.set_overlap(None);
                    }
                    drop(switch);
                    // Its workers hold no message yet: they end as soon as their admissions are gone.
                    self.retiring.push(next.retire());
                    return Err(error.to_string());
                }
            }
        }
        for (index, entry) in switch {
            // The previous admission is dropped here: the old worker drains its queue and ends.
            let subscription = &mut self.subscriptions[index];
            if subscription.ingress.share() != entry.share {
                tracing::warn!(pipeline = %entry.name, "`share` changed but takes effect only at a restart");
            } else if entry.share != ShareMode::None
                && subscription.ingress.results() != zinfer_proto::keys::result(&entry.output_prefix, &entry.input)
            {
                tracing::warn!(
                    pipeline = %entry.name,
                    "`output_prefix` changed: the other members' results are followed on the old one until a restart"
                );
            }
            drop(subscription.ingress.retarget(entry.admission));
            if subscription.name != entry.name {
                let prefix = &current.config.telemetry.prefix;
                if let Err(error) = subscription.ingress.rename(&self.session, prefix, &entry.name).await {
                    // Queries under the old name still reach the renamed pipeline.
                    tracing::error!(pipeline = %entry.name, %error, "the renamed pipeline's queryable could not be declared");
                }
            }
            subscription.name = entry.name;
        }
        let previous = std::mem::take(&mut self.subscriptions);
        for (subscription, keep) in previous.into_iter().zip(claimed) {
            if keep {
                self.subscriptions.push(subscription);
            } else {
                tracing::info!(pipeline = %subscription.name, input = %subscription.input, "subscription closed by the reload");
                subscription.ingress.close().await;
            }
        }
        // The subscriptions they replaced are closed: a message now reaches one subscription only.
        for subscription in &opened {
            subscription.ingress.set_overlap(None);
        }
        self.subscriptions.extend(opened);
        Ok(next)
    }

    /// The subscriptions a reload is about to close (not `claimed` by a new pipeline) that `pick` selects.
    fn unclaimed(&self, claimed: &[bool], pick: impl Fn(&Subscription) -> bool) -> Vec<usize> {
        (0..self.subscriptions.len()).filter(|&index| !claimed[index] && pick(&self.subscriptions[index])).collect()
    }

    /// Pings the watchdog if every worker made progress lately, and refreshes the status line.
    fn check_health(&mut self, current: &Generation) {
        let finishing = self.retiring.len();
        self.retiring.retain(|generation| !generation.is_finished());
        if self.retiring.len() != finishing {
            self.report_retiring();
            memory::settle_after_load(current.config.memory.page_out_after_load);
        }
        let stalled = self.health.stalled(current, &self.retiring);
        let status = self.status_line(current, &stalled);
        self.health.report(&stalled, &status, true, &self.notifier, &self.telemetry);
    }

    /// Tells telemetry which retired generations still owe outcomes.
    fn report_retiring(&self) {
        let metrics = self.retiring.iter().flat_map(|generation| generation.metrics().iter().cloned()).collect();
        self.telemetry.set_retiring(metrics);
    }

    /// Loads and warms up `config`'s models on a thread of their own (seconds of CPU, minutes for a TensorRT
    /// engine build), while this task goes on checking `current`'s health every tick with a status line that says a
    /// reload is loading, and listens for commands: a shutdown abandons the load (its models are dropped when it
    /// ends; the process waits for it only after the drain) so that the drain starts at once. After `daemon.reload_timeout_ms` the
    /// load counts as hung and the watchdog pings stop, so that systemd restarts the daemon.
    async fn load(
        &mut self,
        current: &Generation,
        config: &Config,
        registry: &Arc<Registry>,
        control: &mut mpsc::Receiver<Control>,
        stop: &mut bool,
    ) -> Result<Vec<crate::pipeline::Pipeline>, String> {
        let (done, mut built) = tokio::sync::oneshot::channel();
        let (config_for_load, registry) = (config.clone(), Arc::clone(registry));
        let loading = std::thread::Builder::new()
            .name("zinfer-reload".into())
            .spawn(move || {
                let _ = done.send(build_pipelines(&config_for_load, &registry));
            })
            .map_err(|error| format!("cannot start the thread that loads the models: {error}"))?;
        let (limit, started) = (config.reload_timeout, Instant::now());
        let mut said_hung = false;
        let mut ticker = tokio::time::interval(self.health.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut built => {
                    let pipelines = result.map_err(|_| "the thread that loaded the models died".to_owned())?;
                    return pipelines.map_err(|error| error.to_string());
                }
                command = control.recv() => match command {
                    Some(Control::Reload) => tracing::info!("already reloading; the new request is folded into it"),
                    Some(Control::Shutdown) | None => {
                        tracing::info!("shutdown asked for while a reload loads its models: the reload is abandoned");
                        self.abandoned_load = Some(loading);
                        *stop = true;
                        return Err("abandoned: zinferd is shutting down".to_owned());
                    }
                },
                _ = ticker.tick() => {
                    let loading = started.elapsed();
                    let hung = loading > limit;
                    if hung && !said_hung {
                        tracing::error!(
                            ?loading,
                            "the reload is still loading its models after daemon.reload_timeout_ms; watchdog pings stop"
                        );
                        said_hung = true;
                    }
                    let (number, seconds) = (current.number, loading.as_secs_f64());
                    let mut status = if hung {
                        format!(
                            "generation {number} serving; reload HUNG: loading models for {seconds:.0} s, over \
                             daemon.reload_timeout_ms ({} ms); watchdog pings stopped",
                            limit.as_millis()
                        )
                    } else {
                        format!("generation {number} serving; reloading: loading models for {seconds:.0} s")
                    };
                    self.retiring.retain(|generation| !generation.is_finished());
                    let stalled = self.health.stalled(current, &self.retiring);
                    for (name, silent) in &stalled {
                        status.push_str(&stalled_note(name, *silent));
                    }
                    self.health.report(&stalled, &status, !hung, &self.notifier, &self.telemetry);
                }
            }
        }
    }

    /// One line for `systemctl status`: throughput, queues, memory, and anything wrong.
    fn status_line(&mut self, current: &Generation, stalled: &[(String, Duration)]) -> String {
        let metrics = current.metrics();
        let answered: u64 = metrics.iter().map(|metrics| metrics.answered()).sum();
        let now = Instant::now();
        let rate = match self.progress.at {
            Some(at) if self.progress.generation == current.number && now > at => {
                answered.saturating_sub(self.progress.answered) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.progress = Progress { at: Some(now), answered, generation: current.number };
        let mib = |bytes: u64| bytes / (1024 * 1024);
        let memory = match self.governor.budget() {
            Some(budget) => {
                format!("RSS {}/{} MiB ({:?})", mib(self.governor.rss()), mib(budget), self.governor.pressure())
                    .to_lowercase()
            }
            None => format!("RSS {} MiB", mib(self.governor.rss())),
        };
        let mut line = format!(
            "generation {}: {} pipeline(s), {answered} answered, {rate:.1} msg/s, {memory}",
            current.number,
            metrics.len()
        );
        for (name, silent) in stalled {
            line.push_str(&stalled_note(name, *silent));
        }
        for metrics in metrics {
            if let Some(problem) = metrics.drift_problem() {
                line.push_str(&format!("; pipeline `{}`: golden inputs FAILED: {problem}", metrics.name()));
            }
        }
        if let Some(error) = self.telemetry.last_reload_error() {
            line.push_str(&format!("; last reload FAILED: {error}"));
        }
        line
    }
}

/// When a worker counts as stalled, and how often health is checked.
#[derive(Debug, Clone, Copy)]
struct Health {
    stall_after: Duration,
    tick: Duration,
}

impl Health {
    /// Stalled after half the watchdog period; checked three times per period (at least every second), so a ping
    /// that is due is never more than a third of the period late.
    fn for_watchdog(watchdog: Option<Duration>) -> Self {
        Self {
            stall_after: watchdog.map_or(STALL_WITHOUT_WATCHDOG, |period| period / 2),
            tick: watchdog.map_or(Duration::from_secs(1), |period| (period / 3).min(Duration::from_secs(1))),
        }
    }

    /// The pipelines of `current`, and the workers of `retiring` generations still finishing, that have been silent
    /// too long, and for how long.
    fn stalled(&self, current: &Generation, retiring: &[Retiring]) -> Vec<(String, Duration)> {
        current
            .metrics()
            .iter()
            .map(|metrics| (metrics.name().to_owned(), metrics.since_beat()))
            .filter(|(_, silent)| *silent > self.stall_after)
            .chain(retiring.iter().flat_map(|generation| generation.stalled(self.stall_after)))
            .collect()
    }

    /// Records `stalled` in telemetry (logging a new stall once) and pings the watchdog with `status` if nothing is
    /// stalled and `may_ping`; otherwise only updates the status line.
    fn report(
        &self,
        stalled: &[(String, Duration)],
        status: &str,
        may_ping: bool,
        notifier: &Notifier,
        telemetry: &Telemetry,
    ) {
        let was_stalled = telemetry.set_stalled(stalled.iter().map(|(name, _)| name.clone()).collect());
        if !stalled.is_empty() && !was_stalled {
            tracing::error!(pipelines = ?stalled, "pipeline worker(s) stalled: no progress; watchdog pings stop");
        }
        if stalled.is_empty() && may_ping {
            notifier.ping(status);
        } else {
            notifier.status(status);
        }
    }
}

fn stalled_note(name: &str, silent: Duration) -> String {
    format!("; STALLED: pipeline `{name}` no progress for {:.1} s", silent.as_secs_f64())
}

/// The settings a reload cannot change, by key, where `next` differs from `current`.
fn restart_only_changes(current: &Config, next: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if current.zenoh != next.zenoh {
        changed.push("zenoh");
    }
    if current.telemetry != next.telemetry {
        changed.push("telemetry");
    }
    if current.memory != next.memory {
        changed.push("daemon (memory keys)");
    }
    if current.ort_library != next.ort_library {
        changed.push("ort_library");
    }
    changed
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64)
}
