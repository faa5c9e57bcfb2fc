//! `zinferd bench sensor`: windows per second and per-window latency of a sensor pipeline, direct vs. over zenoh,
//! in one run.
//!
//! The stream is synthetic (a sine per channel at the model's sample rate): a window's cost does not depend on
//! the readings. It is sent as packed f32 frames of `hop` samples after a first frame that fills the window, so
//! every frame completes exactly one window. Measured:
//! 1. the model alone on one window (in process);
//! 2. the whole pipeline in process (decode → validate → window → model → classify), one frame per window;
//! 3. sequential round trips of a frame through zenoh and a `zinferd` child: per-window latency as a client sees it;
//! 4. throughput over zenoh: frames published as fast as results return, with up to 16 unanswered.
//!
//! The first three are timed once each per round, in blocks of rounds as `bench latency` does (the in-process ways
//! of a block's rounds, then its round trips): a slow patch of a shared machine then falls on every way alike, and
//! their ratios hold, while the daemon's model runs do not each follow this process's. (Measured one after the
//! other, the daemon's ratio to the model run swung from 0.80× to 1.79× between two runs on one machine.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zenoh::bytes::Encoding;
use zinfer_stage_api::RawMessage;

use super::{Placement, Summary, spawn_daemon};
use crate::client::{Client, decode_result};
use crate::pipeline::Envelope;
use crate::pipeline::outcome::Verdict;

/// Most frames unanswered at once in the throughput run.
const IN_FLIGHT: usize = 16;

/// What to run.
#[derive(Clone)]
pub struct SensorBenchOptions {
    /// The configuration files (as for `run`).
    pub config: Vec<PathBuf>,
    /// The pipeline to measure (default: the first).
    pub pipeline: Option<String>,
    /// Windows timed per latency measurement (after `warmup` untimed ones), and frames in the throughput run.
    pub windows: usize,
    /// Untimed windows first.
    pub warmup: usize,
    /// The key to publish on (default: the pipeline's input with a trailing wildcard replaced by `bench`).
    pub key: Option<String>,
    /// The stages pipelines are built from (zinferd's own, plus an embedder's).
    pub registry: std::sync::Arc<zinfer_stage_api::Registry>,
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SensorBenchReport {
    /// The pipeline measured.
    pub pipeline: String,
    /// The model.
    pub model: String,
    /// Samples per window × channels.
    pub window: (usize, usize),
    /// Samples per frame (the hop).
    pub hop: usize,
    /// The model alone, per window.
    pub model_direct: Summary,
    /// The pipeline in process, per frame (one window each).
    pub pipeline_direct: Summary,
    /// In-process windows per second (sequential): timed windows over the time they took.
    pub pipeline_direct_windows_per_s: f64,
    /// Round trip of a frame through zenoh and the daemon.
    pub round_trip: Summary,
    /// The daemon's own arrival→publish time for those frames.
    pub daemon_total: Summary,
    /// Its parts, by stage (see `bench latency`'s `daemon_stages`).
    pub daemon_stages: Vec<(String, Summary)>,
    /// Windows per second over zenoh, up to 16 frames unanswered.
    pub zenoh_windows_per_s: f64,
    /// Frames in the throughput run answered other than `ok`, by `outcome/reason` (e.g. `dropped/superseded` when
    /// the pipeline sheds under its overload policy).
    pub zenoh_not_ok: std::collections::BTreeMap<String, usize>,
}

/// Runs the benchmark.
pub async fn run(options: &SensorBenchOptions) -> anyhow::Result<SensorBenchReport> {
    let config = crate::config::load(&options.config)?;
    let index = super::pipeline_index(&config, options.pipeline.as_deref())?;
    let settings = config.pipelines[index].clone();
    let spec = settings.manifest.sensor.clone().context("the pipeline's model has no [sensor] table")?;
    let (window, channels, hop) = (spec.window, spec.channels.len(), spec.hop);
    let registry = &options.registry;
    let mut pipelines = crate::build_pipelines(&config, registry)?;
    let mut pipeline = pipelines.swap_remove(index);
    let rounds = options.warmup + options.windows.max(1);
    let stream = Stream { channels, rate: spec.sample_rate_hz };

    // 1. The model alone on one normalised window.
    let features = vec![zinfer_stage_api::NamedTensor {
        name: spec.input.clone(),
        tensor: zinfer_stage_api::Tensor {
            shape: vec![window, channels],
            data: zinfer_stage_api::TensorData::F32(vec![0.1; window * channels]),
        },
    }];
    let timed = options.windows.max(1);
    let envelope = |payload: Vec<u8>| {
        let message = RawMessage {
            key: "bench/direct".into(),
            payload,
            encoding: "application/octet-stream".into(),
            attachment_id: None,
        };
        Envelope::new(message, "bench".into())
    };
    let scratch = tempfile::tempdir().context("temp dir")?;
    let daemon = spawn_daemon(scratch.path(), &config, Some(&options.config), "sensor", Placement::Own).await?;
    daemon.settled_rss().await?;
    let client = Client::connect(&daemon.endpoint).await?;
    let key = super::request_key(options.key.as_deref(), &settings.input, "bench");
    client.wait_for_subscriber(&key, Duration::from_secs(10)).await?;
    let results = client.results(&settings.output_prefix, &key).await?;
    let send = |id: String, payload: Vec<u8>| {
        let (client, key, results) = (&client, &key, &results);
        async move {
            let request = (payload, Encoding::APPLICATION_OCTET_STREAM);
            client.round_trip(results, key, &id, request, Duration::from_secs(10)).await
        }
    };
    // A first frame fills the window, in process and in the child; then each frame of `hop` samples completes one.
    check(pipeline.process(envelope(stream.frame(0, window))).verdict, 1)?;
    let first = send("fill".into(), stream.frame(0, window)).await?;
    if first.windows.len() != 1 {
        bail!("the first frame should complete one window; the daemon answered {first:?}");
    }
    let (mut models, mut pipelines_in_process, mut round_trips, mut totals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stages = super::DaemonStages::default();
    let mut next = window;
    for block in super::blocks(rounds) {
        let mut in_process_ways = Vec::with_capacity(block.len());
        for _ in block.clone() {
            let frame = stream.frame(next, hop);
            next += hop;
            // 1. The model alone on one normalised window, timed on its second run: the first after other work
            // meets cold caches, as `bench latency` found, and would flatter the daemon's ratio to it.
            pipeline.model_mut().run(&[features.as_slice()]).context("model run")?;
            let started = Instant::now();
            pipeline.model_mut().run(&[features.as_slice()]).context("model run")?;
            let model = started.elapsed();
            // 2. The pipeline in process.
            let started = Instant::now();
            check(pipeline.process(envelope(frame.clone())).verdict, 1)?;
            in_process_ways.push((model, started.elapsed(), frame));
        }
        // 3. The block's round trips through the child, one after the other (see `bench latency`'s blocks).
        for (round, (model, in_process, frame)) in block.zip(in_process_ways) {
            let started = Instant::now();
            let result = send(format!("rt-{round}"), frame).await?;
            let round_trip = started.elapsed();
            if result.windows.len() != 1 {
                bail!("a frame of one hop should complete one window; the daemon answered {result:?}");
            }
            if round >= options.warmup {
                models.push(model);
                pipelines_in_process.push(in_process);
                round_trips.push(round_trip);
                let timings = result.timings.unwrap_or_default();
                totals.push(Duration::from_micros(timings.total_us));
                stages.push(&timings);
            }
        }
    }
    drop(pipeline);
    let in_process_total: Duration = pipelines_in_process.iter().sum();
    let pipeline_direct_windows_per_s = timed as f64 / in_process_total.as_secs_f64().max(f64::EPSILON);

    // 4. Throughput: frames published as fast as results come back, at most IN_FLIGHT unanswered, on a fresh
    // source. A bound below the pipeline's queue (and `latest_per_key`) measures capacity rather than shedding.
    let results = client
        .session()
        .declare_subscriber(zinfer_proto::keys::result(&settings.output_prefix, &format!("{key}-flood")))
        .await
        .map_err(|error| anyhow::anyhow!("subscribing to the results: {error}"))?;
    let frames = options.windows.max(1) + 1;
    let in_flight = IN_FLIGHT.min(settings.queue_capacity).min(settings.latest_per_key).max(1);
    let (mut sent, mut answered, mut windows, mut not_ok) = (0, 0, 0, std::collections::BTreeMap::new());
    let started = Instant::now();
    while answered < frames {
        while sent < frames && sent - answered < in_flight {
            let (start, length) = if sent == 0 { (0, window) } else { (window + (sent - 1) * hop, hop) };
            client
                .session()
                .put(format!("{key}-flood"), stream.frame(start, length))
                .encoding(Encoding::APPLICATION_OCTET_STREAM)
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .map_err(|error| anyhow::anyhow!("publishing: {error}"))?;
            sent += 1;
        }
        let sample = tokio::time::timeout(Duration::from_secs(30), results.recv_async())
            .await
            .context("the throughput run's results stopped coming")?
            .map_err(|error| anyhow::anyhow!("results: {error}"))?;
        let result = decode_result(&sample)?;
        answered += 1;
        windows += result.windows.len();
        if result.outcome != zinfer_proto::outcome::OK {
            *not_ok.entry(format!("{}/{}", result.outcome, result.reason)).or_default() += 1;
        }
    }
    let zenoh_windows_per_s = windows as f64 / started.elapsed().as_secs_f64();
    client.close().await;
    daemon.stop();

    Ok(SensorBenchReport {
        pipeline: settings.name.clone(),
        model: format!("{} {}", settings.manifest.name, settings.manifest.version),
        window: (window, channels),
        hop,
        model_direct: Summary::of(models),
        pipeline_direct: Summary::of(pipelines_in_process),
        pipeline_direct_windows_per_s,
        round_trip: Summary::of(round_trips),
        daemon_total: Summary::of(totals),
        daemon_stages: stages.summaries(),
        zenoh_windows_per_s,
        zenoh_not_ok: not_ok,
    })
}

/// A synthetic stream: channel `c` is a sine of (c + 1) Hz.
struct Stream {
    channels: usize,
    rate: f64,
}

impl Stream {
    /// Packed little-endian f32 samples `start..start + length`.
    fn frame(&self, start: usize, length: usize) -> Vec<u8> {
        (start..start + length)
            .flat_map(|sample| {
                (0..self.channels).map(move |channel| {
                    let phase = 2.0 * std::f64::consts::PI * (channel + 1) as f64 * sample as f64 / self.rate;
                    phase.sin() as f32
                })
            })
            .flat_map(f32::to_le_bytes)
            .collect()
    }
}

fn check(verdict: Verdict, windows: usize) -> anyhow::Result<()> {
    match verdict {
        Verdict::Parts(done) if done.len() == windows => Ok(()),
        Verdict::Parts(done) => bail!("expected {windows} window(s) from the frame, got {}", done.len()),
        Verdict::Failed(error) => bail!("the pipeline failed on the benchmark stream: {error}"),
        other => bail!("the pipeline answered {other:?}; is it a sensor pipeline?"),
    }
}

/// The report as a markdown table.
pub fn markdown(report: &SensorBenchReport) -> String {
    let row = |name: &str, summary: &Summary| {
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |\n",
            summary.count, summary.p50_us, summary.p99_us, summary.mean_us
        )
    };
    let mut text = format!(
        "pipeline `{}`, model {}, windows of {} samples × {} channels, one window per frame of {} samples\n\n\
         | per window | n | median µs | p99 µs | mean µs |\n|---|---|---|---|---|\n",
        report.pipeline, report.model, report.window.0, report.window.1, report.hop
    );
    text += &row("model run only (in process)", &report.model_direct);
    text += &row("whole pipeline (in process)", &report.pipeline_direct);
    text += &row("round trip via zenoh + zinferd", &report.round_trip);
    text += &row("daemon's own total (arrival→publish)", &report.daemon_total);
    for (stage, summary) in &report.daemon_stages {
        text += &row(&format!("… of which {stage}"), summary);
    }
    // The same ratios `bench latency` gives for text: what the daemon adds per window to what the model costs.
    text += &format!(
        "\ndaemon's total / model run (median): {:.2}×; round trip − model run (median): {:.0} µs\n",
        report.daemon_total.p50_us / report.model_direct.p50_us.max(1.0),
        report.round_trip.p50_us - report.model_direct.p50_us
    );
    text += &format!(
        "\n| windows per second | |\n|---|---|\n| in process, sequential | {:.0} |\n\
         | over zenoh, up to 16 frames in flight | {:.0} |\n\nframes of that run not answered ok: {}\n",
        report.pipeline_direct_windows_per_s,
        report.zenoh_windows_per_s,
        if report.zenoh_not_ok.is_empty() { "none".to_owned() } else { format!("{:?}", report.zenoh_not_ok) }
    );
    text
}
