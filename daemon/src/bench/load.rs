//! `zinferd bench load`: open-loop load at 0.5×, 1×, 2× and 10× the measured capacity, through zenoh and a real
//! `zinferd` child, with every message under a deadline and the process under a memory budget; and the throughput
//! gain of dynamic batching over batch size 1 at the same deadline, measured in the same run.
//!
//! Capacity is measured, not assumed: the offered rate doubles from 250/s, one second per step, until the daemon
//! completes less than 90% of what it is offered; capacity is the highest `ok` rate seen. (Offering "as fast as
//! possible" would measure less: under extreme overload, admitting and answering the messages it sheds costs the
//! daemon CPU too.) Each level then publishes at a fixed rate (open loop: the sender does not wait for results)
//! for a fixed time and waits for every outcome.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zenoh::qos::CongestionControl;
use zinfer_proto::{keys, outcome};

use super::{ChildDaemon, Placement, Summary, spawn_daemon};
use crate::client::{Client, decode_result};
use crate::config::{Config, PipelineConfig, StageSpec};

/// What to run.
#[derive(Clone)]
pub struct LoadOptions {
    /// The configuration files (as for `run`).
    pub config: Vec<PathBuf>,
    /// The pipeline to drive (default: the first).
    pub pipeline: Option<String>,
    /// Deadline for every message, milliseconds.
    pub deadline_ms: u64,
    /// Memory budget of the child daemons, MiB.
    pub memory_mb: u64,
    /// Seconds per load level.
    pub seconds: f64,
    /// The key to publish on (default: derived from the pipeline's input).
    pub key: Option<String>,
    /// The stages pipelines are built from (zinferd's own, plus an embedder's).
    pub registry: std::sync::Arc<zinfer_stage_api::Registry>,
}

/// One load level's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelReport {
    /// Offered load as a multiple of the measured capacity.
    pub multiple: f64,
    /// Offered rate, messages per second.
    pub offered_per_s: f64,
    /// Messages published.
    pub sent: usize,
    /// `ok` results per second over the level's duration.
    pub throughput_per_s: f64,
    /// Client-side latency (publish → result) of `ok` results.
    pub latency: Summary,
    /// The same per text of [`TEXTS`], in its order: the texts cost the model different times (3 to 50 tokens),
    /// so the tail of `latency` mixes the long texts' own cost with waiting; one text's p99 over its p50 is the
    /// waiting alone.
    pub latency_by_text: Vec<Summary>,
    /// Share of published messages that completed within their deadline.
    pub deadline_met_ratio: f64,
    /// Outcomes by `outcome/reason` (`ok`, `expired/deadline_unreachable`, `dropped/queue_full`, …).
    pub outcomes: BTreeMap<String, usize>,
    /// Messages without any outcome after the drain wait (must be 0).
    pub unaccounted: usize,
    /// Outcomes whose id matches no published request (must be 0: drop notices carry the request's id too).
    pub unmatched: usize,
    /// Highest RSS of the daemon sampled during the level, bytes.
    pub peak_rss_bytes: u64,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// The pipeline driven.
    pub pipeline: String,
    /// Deadline per message, ms.
    pub deadline_ms: u64,
    /// The child daemons' budget, bytes.
    pub budget_bytes: u64,
    /// Max batch of the batched daemon.
    pub max_batch: usize,
    /// Measured capacity with dynamic batching, `ok`/s.
    pub capacity_per_s: f64,
    /// Measured capacity at batch size 1, `ok`/s.
    pub capacity_batch1_per_s: f64,
    /// The levels.
    pub levels: Vec<LevelReport>,
    /// What finding a request's id costs on the overload path (the decoder's bounded peek at a JSON request, done for
    /// every message shed undecoded), nanoseconds per message, measured in this process.
    pub id_peek_ns: f64,
}

/// Texts of varied length, so that several sequence buckets are exercised.
pub(crate) const TEXTS: [&str; 6] = [
    "Brilliant!",
    "A dull, lifeless mess that wastes a talented cast.",
    "One of the best movies of the year: funny, warm and beautifully acted from start to finish.",
    "The plot is predictable and the jokes fall flat, but the score is lovely and the leads try hard.",
    "An ambitious, sprawling and occasionally brilliant film that loses its way in the second hour, yet the \
     performances and the score carry it to a moving, if overlong, finale that stays with you.",
    "boring",
];

/// Runs the load benchmark.
pub async fn run(options: &LoadOptions) -> anyhow::Result<LoadReport> {
    let config = crate::config::load(&options.config)?;
    let settings = config.pipelines[super::pipeline_index(&config, options.pipeline.as_deref())?].clone();
    let key = super::request_key(options.key.as_deref(), &settings.input, "load");
    let scratch = tempfile::tempdir().context("temp dir")?;
    let duration = Duration::from_secs_f64(options.seconds.max(0.5));
    let limits = (options.deadline_ms, options.memory_mb);

    // Batch size 1 first: its capacity is the baseline of the batching gain.
    let single = start(scratch.path(), &config, &child_config(&settings, limits, 1, &[])?, "batch1").await?;
    let capacity_batch1 = saturate(&single, &key, &settings.output_prefix).await?;
    single.stop();

    let pipeline = child_config(&settings, limits, settings.max_batch, &[])?;
    let batched = start(scratch.path(), &config, &pipeline, "batched").await?;
    let capacity = saturate(&batched, &key, &settings.output_prefix).await?;
    let mut levels = Vec::new();
    for multiple in [0.5, 1.0, 2.0, 10.0] {
        let rate = capacity * multiple;
        levels.push(drive(&batched, &key, &settings.output_prefix, rate, duration, multiple).await?);
    }
    batched.stop();
    let id_peek_ns = measure_id_peek(&settings, &options.registry)?;

    Ok(LoadReport {
        pipeline: settings.name.clone(),
        deadline_ms: options.deadline_ms,
        budget_bytes: options.memory_mb * 1024 * 1024,
        max_batch: settings.max_batch,
        capacity_per_s: capacity,
        capacity_batch1_per_s: capacity_batch1,
        levels,
        id_peek_ns,
    })
}

/// The request the benchmark publishes as its `sent`-th message: JSON with its id, so that the daemon has to find
/// the id in the payload (not in an attachment) for every message it sheds.
fn request(sent: usize) -> (String, Vec<u8>) {
    let id = format!("load-{sent}");
    let body = serde_json::json!({ "id": id, "text": TEXTS[sent % TEXTS.len()] }).to_string().into_bytes();
    (id, body)
}

/// Times the pipeline's decoder's id peek over the benchmark's own requests.
fn measure_id_peek(settings: &PipelineConfig, registry: &zinfer_stage_api::Registry) -> anyhow::Result<f64> {
    let context = zinfer_stage_api::BuildContext { manifest: &settings.manifest, base_dir: &settings.base_dir };
    let decoder = registry
        .build_decoder(&settings.decode.kind, &settings.decode.options, &context)
        .map_err(|error| anyhow::anyhow!("building the decoder: {error}"))?;
    let messages: Vec<_> = (0..TEXTS.len())
        .map(|sent| zinfer_stage_api::RawMessage {
            key: "bench".into(),
            payload: request(sent).1,
            encoding: zenoh::bytes::Encoding::APPLICATION_JSON.to_string(),
            attachment_id: None,
        })
        .collect();
    const ROUNDS: usize = 200_000;
    let started = Instant::now();
    let found = (0..ROUNDS).filter(|round| decoder.peek_id(&messages[round % messages.len()]).is_some()).count();
    let elapsed = started.elapsed();
    if found != ROUNDS {
        bail!("the decoder found the id in {found} of {ROUNDS} JSON requests");
    }
    Ok(elapsed.as_nanos() as f64 / ROUNDS as f64)
}

/// The report as markdown.
pub fn markdown(report: &LoadReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut text = format!(
        "pipeline `{}`, deadline {} ms, budget {:.0} MiB, max_batch {}\n\n\
         measured capacity: {:.0} ok/s with dynamic batching, {:.0} ok/s at batch size 1 \
         (batching gain {:.2}×, same deadline)\n\n\
         | load | offered/s | sent | ok/s | p50 ms | p99 ms | deadline met | shed and errors | unaccounted | unmatched ids | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        report.pipeline,
        report.deadline_ms,
        mib(report.budget_bytes),
        report.max_batch,
        report.capacity_per_s,
        report.capacity_batch1_per_s,
        report.capacity_per_s / report.capacity_batch1_per_s.max(1e-9),
    );
    for level in &report.levels {
        let shed: Vec<String> = level
            .outcomes
            .iter()
            .filter(|(name, _)| name.as_str() != outcome::OK)
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        text += &format!(
            "| {:.1}× | {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.1}% | {} | {} | {} | {:.1} |\n",
            level.multiple,
            level.offered_per_s,
            level.sent,
            level.throughput_per_s,
            level.latency.p50_us / 1000.0,
            level.latency.p99_us / 1000.0,
            level.deadline_met_ratio * 100.0,
            if shed.is_empty() { "none".to_owned() } else { shed.join(", ") },
            level.unaccounted,
            level.unmatched,
            mib(level.peak_rss_bytes),
        );
    }
    text += "\nlatency of `ok` results per text (ms, p50 / p99, and p99 over p50: the waiting a text meets, apart from \
             the other texts' own cost)\n\n| load |";
    for (index, sample) in TEXTS.iter().enumerate() {
        let words = sample.split_whitespace().count();
        text += &format!(" text {} ({words} words) |", index + 1);
    }
    text += &format!("\n|---|{}\n", "---|".repeat(TEXTS.len()));
    for level in &report.levels {
        text += &format!("| {:.1}× |", level.multiple);
        for summary in &level.latency_by_text {
            text += &format!(
                " {:.2} / {:.2} ({:.1}×) |",
                summary.p50_us / 1000.0,
                summary.p99_us / 1000.0,
                summary.p99_us / summary.p50_us.max(1.0)
            );
        }
        text.push('\n');
    }
    let shed_per_s = |level: &LevelReport| {
        level.outcomes.iter().filter(|(name, _)| name.starts_with("dropped/")).map(|(_, count)| *count).sum::<usize>()
            as f64
            / level.sent.max(1) as f64
            * level.offered_per_s
    };
    let busiest = report.levels.iter().map(shed_per_s).fold(0.0, f64::max);
    text += &format!(
        "\nid peek on the overload path (the request's id read from each JSON message shed undecoded): {:.0} ns per \
         message; at the highest shed rate above ({busiest:.0}/s) {:.2}% of one core\n",
        report.id_peek_ns,
        busiest * report.id_peek_ns / 1e7,
    );
    text
}

/// The daemons a load is driven into (one, or several sharing the pipeline behind a router) and the client that
/// drives it.
pub(crate) struct Target {
    pub(crate) daemons: Vec<ChildDaemon>,
    pub(crate) client: Client,
}

impl Target {
    /// Stops every daemon.
    pub(crate) fn stop(self) {
        self.daemons.into_iter().for_each(ChildDaemon::stop);
    }
}

/// Starts a child running only the pipeline `pipeline` (from [`child_config`]), on a loopback port of its own.
async fn start(dir: &Path, config: &Config, pipeline: &str, name: &str) -> anyhow::Result<Target> {
    let file = dir.join(format!("{name}-pipeline.toml"));
    std::fs::write(&file, pipeline)?;
    let daemon = spawn_daemon(dir, config, Some(&[file]), name, Placement::Own).await?;
    daemon.settled_rss().await?;
    let client = Client::connect(&daemon.endpoint).await?;
    Ok(Target { daemons: vec![daemon], client })
}

/// A configuration with just this pipeline, rebuilt from its validated settings, with `max_batch`, the benchmark's
/// deadline and budget, and `extra` keys in the pipeline table (a dotted key goes into a sub-table:
/// `session.intra_threads`; `daemon.<key>` into the `[daemon]` table).
pub(crate) fn child_config(
    settings: &PipelineConfig,
    (deadline_ms, memory_mb): (u64, u64),
    max_batch: usize,
    extra: &[(&str, toml::Value)],
) -> anyhow::Result<String> {
    let stage = |spec: &StageSpec| {
        let mut table = spec.options.clone();
        table.insert("type".into(), spec.kind.clone().into());
        toml::Value::Table(table)
    };
    let mut pipeline = toml::Table::new();
    pipeline.insert("name".into(), settings.name.clone().into());
    pipeline.insert("input".into(), settings.input.clone().into());
    pipeline.insert("output_prefix".into(), settings.output_prefix.clone().into());
    let manifest = std::path::absolute(&settings.manifest.path)?;
    pipeline.insert("model".into(), manifest.display().to_string().into());
    pipeline.insert("queue_capacity".into(), (settings.queue_capacity as i64).into());
    pipeline.insert("max_batch".into(), (max_batch as i64).into());
    pipeline.insert("max_batch_tokens".into(), (settings.max_batch_tokens as i64).into());
    pipeline.insert("deadline_ms".into(), (deadline_ms as i64).into());
    pipeline.insert("decode".into(), stage(&settings.decode));
    pipeline.insert("preprocess".into(), toml::Value::Array(settings.preprocess.iter().map(stage).collect()));
    pipeline.insert("postprocess".into(), toml::Value::Array(settings.postprocess.iter().map(stage).collect()));
    pipeline.insert("session".into(), toml::Value::try_from(&settings.session)?);
    if let Some(instances) = settings.instances {
        pipeline.insert("instances".into(), (instances as i64).into());
    }
    let mut daemon = toml::Table::new();
    daemon.insert("memory_mb".into(), (memory_mb as i64).into());
    for (key, value) in extra {
        match key.split_once('.') {
            Some(("daemon", key)) => {
                daemon.insert(key.to_owned(), value.clone());
            }
            Some((table, key)) => {
                if let Some(toml::Value::Table(table)) = pipeline.get_mut(table) {
                    table.insert(key.to_owned(), value.clone());
                }
            }
            None => {
                pipeline.insert((*key).to_owned(), value.clone());
            }
        }
    }
    let mut document = toml::Table::new();
    document.insert("daemon".into(), toml::Value::Table(daemon));
    document.insert("pipeline".into(), toml::Value::Array(vec![toml::Value::Table(pipeline)]));
    Ok(toml::to_string(&document)?)
}

/// Capacity: the highest `ok` rate seen while the offered rate doubles until the daemon falls behind.
pub(crate) async fn saturate(target: &Target, key: &str, output_prefix: &str) -> anyhow::Result<f64> {
    let mut rate = 250.0;
    let mut best: f64 = 0.0;
    for _ in 0..10 {
        let level = drive(target, key, output_prefix, rate, Duration::from_secs(1), 0.0).await?;
        best = best.max(level.throughput_per_s);
        if level.throughput_per_s < 0.9 * rate {
            break;
        }
        rate *= 2.0;
    }
    if best <= 0.0 {
        bail!("no message completed while measuring capacity");
    }
    Ok(best)
}

#[derive(Default)]
struct Collected {
    /// When each request was published, and which of [`TEXTS`] it carried.
    sent: HashMap<String, (Instant, usize)>,
    results: Vec<(String, String, Option<bool>, Instant)>,
}

/// Publishes at `rate` per second (as fast as possible if infinite) for `duration`, then waits for every outcome.
async fn drive(
    target: &Target,
    key: &str,
    output_prefix: &str,
    rate: f64,
    duration: Duration,
    multiple: f64,
) -> anyhow::Result<LevelReport> {
    let session = target.client.session();
    let collected = Arc::new(Mutex::new(Collected::default()));
    let sink = Arc::clone(&collected);
    // A callback, not a channel: the benchmark must never push back on the daemon.
    let subscriber = session
        .declare_subscriber(keys::result(output_prefix, key))
        .callback(move |sample| {
            let received = Instant::now();
            if let Ok(result) = decode_result(&sample) {
                let name = if result.reason.is_empty() {
                    result.outcome.clone()
                } else {
                    format!("{}/{}", result.outcome, result.reason)
                };
                let mut collected = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                collected.results.push((result.id, name, result.deadline_met, received));
            }
        })
        .await
        .map_err(|error| anyhow::anyhow!("subscribing to results: {error}"))?;
    target.client.wait_for_subscriber(key, Duration::from_secs(10)).await?;

    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let pids: Vec<u32> = target.daemons.iter().map(ChildDaemon::pid).collect();
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop_sampling));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Several daemons: what they hold together.
                let rss: u64 = pids.iter().map(|pid| super::process_rss(*pid).map_or(0, |(rss, _)| rss)).sum();
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while sent < due && started.elapsed() < duration {
            let (id, body) = request(sent);
            let text = sent % TEXTS.len();
            collected.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sent.insert(id, (Instant::now(), text));
            session
                .put(key.to_owned(), body)
                .encoding(zenoh::bytes::Encoding::APPLICATION_JSON)
                .congestion_control(CongestionControl::Block)
                .await
                .map_err(|error| anyhow::anyhow!("publishing: {error}"))?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    // Every published message gets an outcome; give the daemon time to answer the backlog.
    let drain_until = Instant::now() + Duration::from_secs(30);
    while collected.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).results.len() < sent
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    drop(subscriber);

    let collected = collected.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut outcomes = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut by_text: Vec<Vec<Duration>> = vec![Vec::new(); TEXTS.len()];
    let mut met = 0usize;
    let mut unmatched = 0;
    for (id, name, deadline_met, received) in &collected.results {
        *outcomes.entry(name.clone()).or_insert(0) += 1;
        unmatched += usize::from(!collected.sent.contains_key(id));
        if name == outcome::OK {
            if let Some(&(sent_at, text)) = collected.sent.get(id) {
                let latency = received.saturating_duration_since(sent_at);
                latencies.push(latency);
                by_text[text].push(latency);
            }
            met += usize::from(*deadline_met == Some(true));
        }
    }
    let ok = outcomes.get(outcome::OK).copied().unwrap_or(0);
    Ok(LevelReport {
        multiple,
        offered_per_s: rate,
        sent,
        throughput_per_s: ok as f64 / elapsed.as_secs_f64(),
        latency: Summary::of(latencies),
        latency_by_text: by_text.into_iter().map(Summary::of).collect(),
        deadline_met_ratio: if sent == 0 { 0.0 } else { met as f64 / sent as f64 },
        outcomes,
        unaccounted: sent.saturating_sub(collected.results.len()),
        unmatched,
        peak_rss_bytes: peak.load(std::sync::atomic::Ordering::Relaxed),
    })
}
