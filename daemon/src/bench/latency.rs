//! `zinferd bench` (latency): what the daemon costs on top of the model, measured in one run on one machine.
//!
//! For one pipeline of the given configuration it measures, each way once per round, in turn (so that the machine's
//! drifting speed affects every way alike):
//! 1. the model run alone (`Model::run` on pre-tokenised input), in this process, four ways: at the text's own
//!    length and padded to its bucket, each with one intra-op thread and with the configured threads. The first,
//!    own length on one thread, is the floor: what the model itself needs for this message, against which the
//!    daemon's overhead is reported;
//! 2. the whole pipeline in this process (decode → tokenize → model → classify), no zenoh;
//! 3. the same message round-tripped through zenoh and a real `zinferd` child process on loopback, by a client that
//!    keeps one subscription to its results (as a client that sends more than one request does);
//! 4. zenoh's own round trip with the same client: an echo peer in this process answers each request at once,
//!    from zenoh's callback, with a result of the daemon's size. Round trip less echo is what the daemon adds to
//!    what any zenoh service costs; the echo shares this process's zenoh threads with the client (a second process
//!    would add nothing the daemon's own round trip does not already show);
//! 5. the idle RSS of a `zinferd` child without any pipeline, and of the one with the model loaded (before the rounds).
//!
//! With `--idle-ms`, each round waits that long before its first model run and again before its round trip: a
//! message that comes alone meets a model whose caches the idle time has cooled, and on this project's machines
//! that costs more than the daemon adds (measured with Python's ONNX Runtime on an Intel Xeon: 0.7 ms back to back,
//! 0.9 ms after 10 ms idle, 1.7–1.9 ms after 50 ms, 2.5 ms after 200 ms). The first run after the idle wait is then
//! the floor a lone message should be compared with.
//!
//! Requests are sequential (one in flight), so latencies are service times, not queueing. This is a benchmark,
//! not a test: it asserts nothing about speed, it reports.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zinfer_stage_api::{Input, Item, RawMessage};

use super::{Placement, Summary, spawn_daemon};
use crate::client::{Client, RequestFormat};
use crate::pipeline::Envelope;

/// What to run.
#[derive(Clone)]
pub struct BenchOptions {
    /// The configuration files (as for `run`).
    pub config: Vec<PathBuf>,
    /// The pipeline to measure (default: the first).
    pub pipeline: Option<String>,
    /// The text to classify.
    pub text: String,
    /// Timed iterations per measurement (after `warmup` untimed ones).
    pub iterations: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// The key to publish on (default: the pipeline's input with a trailing wildcard replaced by `bench`).
    pub key: Option<String>,
    /// The stages pipelines are built from (zinferd's own, plus an embedder's).
    pub registry: std::sync::Arc<zinfer_stage_api::Registry>,
    /// Idle time before each round's first model run and before its round trip.
    pub idle: Duration,
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// The pipeline measured.
    pub pipeline: String,
    /// The model.
    pub model: String,
    /// Tokens in the benchmark text (special tokens included).
    pub tokens: usize,
    /// Intra-op threads of the model.
    pub intra_threads: usize,
    /// `Model::run` alone, as the pipeline runs a lone message (own length, configured threads).
    pub inference_direct: Summary,
    /// `Model::run` alone at the text's own length on one intra-op thread: the floor.
    pub floor: Summary,
    /// The same, on the first run of its round: after the previous round's runs of the other ways and `idle_ms` of
    /// idle, as a lone message meets its model.
    pub floor_after_idle: Summary,
    /// The idle wait before each round's first model run and before its round trip, in milliseconds.
    pub idle_ms: u64,
    /// `Model::run` alone padded to the text's bucket, one thread (what a lone message cost before it ran at its
    /// own length); `None` without buckets.
    pub padded_one_thread: Option<Summary>,
    /// `Model::run` alone padded to the text's bucket, configured threads; `None` without buckets.
    pub padded: Option<Summary>,
    /// The CPU the figures come from.
    pub cpu: String,
    /// The whole pipeline in-process.
    pub pipeline_direct: Summary,
    /// Round trip through zenoh and the daemon.
    pub round_trip: Summary,
    /// Round trip through zenoh to an echo peer that answers at once with a result of the same size.
    pub zenoh_echo: Summary,
    /// The daemon's own view of the round trips: arrival to publish.
    pub daemon_total: Summary,
    /// The daemon's own timings of the round trips by stage (`queue`, `decode`, `preprocess`, `inference`,
    /// `postprocess`) and `other`: the total less the stages (handing the outcome to the egress, encoding, the put).
    pub daemon_stages: Vec<(String, Summary)>,
    /// Idle RSS of zinferd with no pipeline, bytes.
    pub idle_rss_without_model: u64,
    /// Idle RSS of zinferd with the model loaded (before any request), bytes.
    pub idle_rss_with_model: u64,
    /// RSS of the loaded daemon after the round trips, bytes.
    pub rss_after_requests: u64,
    /// Peak RSS (VmHWM) of the loaded daemon after the round trips, bytes.
    pub peak_rss_after_requests: u64,
}

/// Runs the benchmark.
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let config = crate::config::load(&options.config)?;
    let index = super::pipeline_index(&config, options.pipeline.as_deref())?;
    let settings = config.pipelines[index].clone();
    let registry = &options.registry;
    let mut pipeline = crate::build_pipelines(&config, registry)?.swap_remove(index);
    let iterations = options.iterations.max(1);

    // The features the preprocessing stages produce for the text, and them padded to the text's bucket; a second
    // build of the pipeline runs the model on one thread.
    let mut item = Item::new("bench".into(), "bench".into(), Input::Text(options.text.clone()));
    pipeline.preprocess_only(&mut item)?;
    let tokens = item.features.first().map_or(0, |feature| feature.tensor.shape.iter().product());
    let features = item.features.clone();
    let padded_features = item.padding.as_ref().map(|padding| {
        let mut padded = features.clone();
        for feature in &mut padded {
            feature.tensor.pad_first_axis(padding.group, padding.value(&feature.name));
        }
        padded
    });
    let mut one_thread_config = config.clone();
    one_thread_config.pipelines[index].session.intra_threads = Some(1);
    let mut one_thread = crate::build_pipelines(&one_thread_config, registry)?.swap_remove(index);
    let intra_threads = pipeline.model().intra_threads();

    // The idle RSS of a daemon without any model, then of the one with the model, which then serves the round trips.
    let scratch = tempfile::tempdir().context("temp dir")?;
    let bare = spawn_daemon(scratch.path(), &config, None, "bare", Placement::Own).await?;
    let idle_rss_without_model = bare.settled_rss().await?;
    bare.stop();
    let loaded = spawn_daemon(scratch.path(), &config, Some(&options.config), "loaded", Placement::Own).await?;
    let idle_rss_with_model = loaded.settled_rss().await?;
    let client = Client::connect(&loaded.endpoint).await?;
    let key = super::request_key(options.key.as_deref(), &settings.input, "bench");
    client.wait_for_subscriber(&key, Duration::from_secs(10)).await?;
    let results = client.results(&settings.output_prefix, &key).await?;
    // One untimed round trip first: its result is what the echo peer answers with (the daemon's size).
    let request = |id: &str| RequestFormat::Text.encode(id, &options.text);
    let first =
        client.round_trip(&results, &key, "bench-first", request("bench-first"), Duration::from_secs(10)).await?;
    let echo = Echo::open(&options.text, first).await?;

    // Every way is measured once per round, and the rounds run in blocks (`super::blocks`): first every in-process
    // way of each round of the block, then the block's round trips. This machine's speed drifts by tens of percent over
    // seconds (other tenants), which separate long runs of one way would report as differences between the ways;
    // a block takes well under a second. The daemon's model runs in another process, on its own copy of the weights:
    // with this process's model runs between each of its messages, as in a round-by-round alternation, the
    // daemon's inference stage took 1150-1200 µs against 823-846 µs with nothing between them, the floor being
    // 826-853 µs (measured here). A client does not run three copies of the model between its requests, so the
    // round trips of a block follow each other.
    // The in-process ways are timed on their second run of the round, as in a loop of runs: the other ways' runs
    // between them would otherwise leave them with cold caches and a floor 10-15% slower than the model's own cost
    // (measured). The first run of the floor's way in a round is timed too: it follows the other ways' runs and the
    // idle wait, as a lone message meets its model.
    let mut floor_after_idle = Vec::with_capacity(iterations);
    let model_runs = |pipeline: &mut crate::pipeline::Pipeline, features: &[zinfer_stage_api::NamedTensor]| {
        let started = Instant::now();
        pipeline.model_mut().run(&[features]).context("model run")?;
        let first = started.elapsed();
        let started = Instant::now();
        pipeline.model_mut().run(&[features]).context("model run")?;
        anyhow::Ok((first, started.elapsed()))
    };
    let model_run = |pipeline: &mut crate::pipeline::Pipeline, features: &[zinfer_stage_api::NamedTensor]| {
        model_runs(pipeline, features).map(|(_, second)| second)
    };
    let mut timed: [Vec<Duration>; 7] = Default::default();
    let mut stages = super::DaemonStages::default();
    let mut daemon_totals = Vec::with_capacity(iterations);
    let rounds = options.warmup + iterations;
    for block in super::blocks(rounds) {
        let mut in_process_ways = Vec::with_capacity(block.len());
        for _ in block.clone() {
            idle(options.idle).await;
            let (first, floor) = model_runs(&mut one_thread, &features)?;
            let direct = model_run(&mut pipeline, &features)?;
            let padded = match &padded_features {
                Some(padded) => Some((model_run(&mut one_thread, padded)?, model_run(&mut pipeline, padded)?)),
                None => None,
            };
            let message = RawMessage {
                key: "bench".into(),
                payload: options.text.clone().into_bytes(),
                encoding: "text/plain".into(),
                attachment_id: None,
            };
            pipeline.process(Envelope::new(message.clone(), "bench".into()));
            let started = Instant::now();
            let processed = pipeline.process(Envelope::new(message, "bench".into()));
            let in_process = started.elapsed();
            if let crate::pipeline::outcome::Verdict::Failed(error) = &processed.verdict {
                bail!("the pipeline failed on the benchmark text: {error}");
            }
            let (padded_one, padded_configured) = padded.unzip();
            in_process_ways.push((first, [Some(floor), Some(direct), padded_one, padded_configured, Some(in_process)]));
        }

        for (round, (first, ways)) in block.zip(in_process_ways) {
            let id = format!("bench-{round}");
            idle(options.idle).await;
            let started = Instant::now();
            let result = client.round_trip(&results, &key, &id, request(&id), Duration::from_secs(10)).await?;
            let round_trip = started.elapsed();
            if result.outcome != zinfer_proto::outcome::OK {
                bail!("the daemon answered {}: {} ({})", result.outcome, result.reason, result.message);
            }
            let echoed = echo.round_trip(&format!("echo-{round}")).await?;
            if round < options.warmup {
                continue;
            }
            floor_after_idle.push(first);
            for (samples, took) in timed.iter_mut().zip(ways.into_iter().chain([Some(round_trip), Some(echoed)])) {
                samples.extend(took);
            }
            let timings = result.timings.unwrap_or_default();
            daemon_totals.push(Duration::from_micros(timings.total_us));
            stages.push(&timings);
        }
    }
    drop(results);
    client.close().await;
    echo.close().await;
    let (rss_after_requests, peak_rss_after_requests) = loaded.rss()?;
    loaded.stop();
    drop((pipeline, one_thread));

    let [floor, inference_direct, padded_one_thread, padded, pipeline_direct, round_trip, zenoh_echo] = timed;
    let padded_summary = |samples: Vec<Duration>| (!samples.is_empty()).then(|| Summary::of(samples));
    Ok(BenchReport {
        pipeline: settings.name.clone(),
        model: format!("{} {}", settings.manifest.name, settings.manifest.version),
        tokens,
        intra_threads,
        inference_direct: Summary::of(inference_direct),
        floor: Summary::of(floor),
        floor_after_idle: Summary::of(floor_after_idle),
        idle_ms: u64::try_from(options.idle.as_millis()).unwrap_or(u64::MAX),
        padded_one_thread: padded_summary(padded_one_thread),
        padded: padded_summary(padded),
        cpu: super::cpu_line(),
        pipeline_direct: Summary::of(pipeline_direct),
        round_trip: Summary::of(round_trip),
        zenoh_echo: Summary::of(zenoh_echo),
        daemon_total: Summary::of(daemon_totals),
        daemon_stages: stages.summaries(),
        idle_rss_without_model,
        idle_rss_with_model,
        rss_after_requests,
        peak_rss_after_requests,
    })
}

/// An echo peer in this process that answers each request at once, from zenoh's callback, with the result it is
/// given (one of the daemon's) under the request's id, and the client that asks it, through the same calls as the
/// daemon's round trips.
struct Echo {
    peer: zenoh::Session,
    client: Client,
    results: crate::client::Results,
    text: String,
}

impl Echo {
    const KEY: &str = "zinfer-bench/echo/in";
    const OUTPUT_PREFIX: &str = "zinfer-bench/echo/out";

    async fn open(text: &str, answer: zinfer_proto::Result) -> anyhow::Result<Self> {
        let (peer, endpoint) = super::open_listening("peer").await?;
        let publisher = peer.clone();
        let result_key = zinfer_proto::keys::result(Self::OUTPUT_PREFIX, Self::KEY);
        peer.declare_subscriber(Self::KEY)
            .callback(move |sample| {
                let mut result = answer.clone();
                result.id = sample
                    .attachment()
                    .map(|id| String::from_utf8_lossy(&id.to_bytes()).into_owned())
                    .unwrap_or_default();
                let (bytes, encoding) = crate::io::egress::encode(&result, crate::config::WireEncoding::Json);
                let put = publisher.put(&result_key, bytes).encoding(encoding).attachment(result.id.into_bytes());
                if let Err(error) = zenoh::Wait::wait(put) {
                    tracing::warn!(%error, "the echo peer could not answer");
                }
            })
            .background()
            .await
            .map_err(|error| anyhow::anyhow!("the echo peer's subscriber: {error}"))?;
        let client = Client::connect(&endpoint).await?;
        client.wait_for_subscriber(Self::KEY, Duration::from_secs(10)).await?;
        let results = client.results(Self::OUTPUT_PREFIX, Self::KEY).await?;
        Ok(Self { peer, client, results, text: text.to_owned() })
    }

    /// One timed round trip of request `id`.
    async fn round_trip(&self, id: &str) -> anyhow::Result<Duration> {
        let request = RequestFormat::Text.encode(id, &self.text);
        let started = Instant::now();
        self.client.round_trip(&self.results, Self::KEY, id, request, Duration::from_secs(10)).await?;
        Ok(started.elapsed())
    }

    async fn close(self) {
        drop(self.results);
        self.client.close().await;
        let _ = self.peer.close().await;
    }
}

/// Waits `idle`, if any.
async fn idle(idle: Duration) {
    if !idle.is_zero() {
        tokio::time::sleep(idle).await;
    }
}

/// The report as a markdown table.
pub fn markdown(report: &BenchReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let row = |name: &str, summary: &Summary| {
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |\n",
            summary.count, summary.p50_us, summary.p99_us, summary.mean_us
        )
    };
    let mut text = format!(
        "pipeline `{}`, model {}, {} tokens, {} intra-op thread(s)\n\n\
         | measurement | n | median µs | p99 µs | mean µs |\n|---|---|---|---|---|\n",
        report.pipeline, report.model, report.tokens, report.intra_threads
    );
    text += &row("model alone, own length, 1 thread (the floor)", &report.floor);
    let after_idle = match report.idle_ms {
        0 => "… the same, first run after an idle wait (as a lone message meets it)".to_owned(),
        idle => format!("… the same, first run after {idle} ms idle (as a lone message meets it)"),
    };
    text += &row(&after_idle, &report.floor_after_idle);
    text += &row(&format!("model alone, own length, {} thread(s)", report.intra_threads), &report.inference_direct);
    if let Some(summary) = &report.padded_one_thread {
        text += &row("model alone, padded to its bucket, 1 thread", summary);
    }
    if let Some(summary) = &report.padded {
        text += &row(&format!("model alone, padded to its bucket, {} thread(s)", report.intra_threads), summary);
    }
    text += &row("whole pipeline (in process)", &report.pipeline_direct);
    text += &row("round trip via zenoh + zinferd", &report.round_trip);
    text += &row("round trip via zenoh to an echo peer (zenoh alone)", &report.zenoh_echo);
    text += &row("daemon's own total (arrival→publish)", &report.daemon_total);
    for (stage, summary) in &report.daemon_stages {
        text += &row(&format!("… of which {stage}"), summary);
    }
    let floor = report.floor.p50_us.max(1.0);
    if report.idle_ms > 0 {
        text += &format!(
            "\neach round waited {} ms before its first model run and before its round trip\n",
            report.idle_ms
        );
    }
    text += &format!(
        "\ndaemon's total / floor (median): {:.2}×; daemon's total / first run after idle (median): {:.2}×; \
         round trip − floor (median): {:.0} µs; \
         round trip − in-process pipeline (median): {:.0} µs; round trip − echo − floor (median): {:.0} µs\n\n\
         | zinferd RSS | MiB |\n|---|---|\n| idle, no pipeline | {:.1} |\n| idle, model loaded | {:.1} |\n\
         | after the round trips | {:.1} |\n| peak (VmHWM) after the round trips | {:.1} |\n",
        report.daemon_total.p50_us / floor,
        report.daemon_total.p50_us / report.floor_after_idle.p50_us.max(1.0),
        report.round_trip.p50_us - report.floor.p50_us,
        report.round_trip.p50_us - report.pipeline_direct.p50_us,
        report.round_trip.p50_us - report.zenoh_echo.p50_us - report.floor.p50_us,
        mib(report.idle_rss_without_model),
        mib(report.idle_rss_with_model),
        mib(report.rss_after_requests),
        mib(report.peak_rss_after_requests),
    );
    text
}
