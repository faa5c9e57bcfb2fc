//! `zinferd bench footprint`: what the daemon costs in memory and start-up time, under each setting that moves it,
//! side by side in one run.
//!
//! For each variant of the measured pipeline (as configured; each combination of ONNX Runtime's memory arena and
//! memory pattern; no `max_batch_tokens` cap; the code that loading touched kept resident; `max_batch = 1`), and for
//! a daemon with no pipeline at all, a child zinferd is started with `NOTIFY_SOCKET` pointing at this process: ready
//! time is from the spawn to its `READY=1`, what systemd waits for. Its VmHWM then is the start-up peak (the model's
//! load and warm-up at the largest shape). A burst of text requests of mixed lengths follows, all published at once
//! so that batches of every size form, and the VmHWM once every one is answered is the peak in service. Last, lone
//! requests one at a time give the daemon's own `total_us` median, to show what a setting costs in latency, and
//! VmRSS after them what stays resident in service. Variants are interleaved over the rounds, so that drift of a
//! shared machine spreads over all of them.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zenoh::bytes::Encoding;

use super::load::{TEXTS, child_config};
use super::{ChildDaemon, Placement, spawn_daemon_with_env};
use crate::client::{Client, decode_result};
use crate::config::Config;

/// What to run.
#[derive(Debug, Clone)]
pub struct FootprintOptions {
    /// The configuration files (as for `run`).
    pub config: Vec<PathBuf>,
    /// The pipeline to measure (default: the first); it must take text.
    pub pipeline: Option<String>,
    /// Requests in the burst.
    pub burst: usize,
    /// Lone requests timed after the burst.
    pub lone: usize,
    /// Rounds over all variants.
    pub rounds: usize,
    /// The key to publish on (default: derived from the pipeline's input).
    pub key: Option<String>,
}

/// One variant's figures in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Spawn to `READY=1`, milliseconds.
    pub ready_ms: f64,
    /// VmHWM at `READY=1`, bytes: the start-up peak.
    pub startup_peak_bytes: u64,
    /// VmHWM once the burst was answered, bytes (0 for the daemon without a pipeline).
    pub peak_bytes: u64,
    /// Outcomes received for the burst.
    pub answered: usize,
    /// Median of the daemon's `total_us` over the lone requests.
    pub lone_total_p50_us: f64,
    /// VmRSS once the lone requests were answered, bytes: what stays resident in service (0 without a pipeline).
    pub rss_after_bytes: u64,
}

/// A variant and its samples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Variant {
    /// What differs from the configuration.
    pub name: String,
    /// One per round.
    pub samples: Vec<Sample>,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FootprintReport {
    /// The pipeline measured.
    pub pipeline: String,
    /// Its model.
    pub model: String,
    /// Its `max_batch` as configured.
    pub max_batch: usize,
    /// Requests per burst.
    pub burst: usize,
    /// The variants, the daemon without a pipeline last.
    pub variants: Vec<Variant>,
}

/// A setting the benchmark compares: a name, `max_batch` (`None`: as configured) and pipeline keys.
type Setting = (&'static str, Option<usize>, Vec<(&'static str, toml::Value)>);

/// The settings the benchmark compares: as configured, then each combination of the memory arena and pattern, no
/// token cap, the loaded code kept resident, and `max_batch = 1` with and without both.
fn variants() -> Vec<Setting> {
    let memory = |arena: bool, pattern: bool| {
        vec![
            ("session.memory_arena", toml::Value::Boolean(arena)),
            ("session.memory_pattern", toml::Value::Boolean(pattern)),
        ]
    };
    vec![
        ("as configured", None, vec![]),
        ("arena on, pattern on", None, memory(true, true)),
        ("arena on, pattern off", None, memory(true, false)),
        ("arena off, pattern on", None, memory(false, true)),
        ("arena off, pattern off", None, memory(false, false)),
        ("no token cap (max_batch × max_length)", None, vec![("max_batch_tokens", toml::Value::Integer(1 << 20))]),
        ("code kept after load", None, vec![("daemon.page_out_after_load", toml::Value::Boolean(false))]),
        ("max_batch = 1", Some(1), vec![]),
        ("arena off, pattern off, max_batch = 1", Some(1), memory(false, false)),
    ]
}

/// Runs the benchmark.
pub async fn run(options: &FootprintOptions) -> anyhow::Result<FootprintReport> {
    let config = crate::config::load(&options.config)?;
    let settings = config.pipelines[super::pipeline_index(&config, options.pipeline.as_deref())?].clone();
    let key = super::request_key(options.key.as_deref(), &settings.input, "footprint");
    let scratch = tempfile::tempdir().context("temp dir")?;
    // No deadline to miss and no budget to shed under: the footprint of each setting, not its shedding.
    let limits = (60_000, 4096);
    let mut all: Vec<Variant> = variants()
        .iter()
        .map(|(name, _, _)| Variant { name: (*name).to_owned(), samples: Vec::new() })
        .chain([Variant { name: "no pipeline".into(), samples: Vec::new() }])
        .collect();
    for round in 0..options.rounds.max(1) {
        for (index, (name, max_batch, extra)) in variants().into_iter().enumerate() {
            let pipeline = child_config(&settings, limits, max_batch.unwrap_or(settings.max_batch), &extra)?;
            let file = scratch.path().join(format!("footprint-{index}.toml"));
            std::fs::write(&file, pipeline)?;
            let tag = format!("footprint-{index}-{round}");
            let (daemon, _notify, ready_ms, startup_peak_bytes) =
                start(scratch.path(), &config, Some(&[file]), &tag).await?;
            let client = Client::connect(&daemon.endpoint).await?;
            let result = drive(&client, &daemon, &key, &settings.output_prefix, options).await;
            client.close().await;
            daemon.stop();
            let (peak_bytes, answered, lone_total_p50_us, rss_after_bytes) =
                result.with_context(|| format!("variant `{name}`"))?;
            let sample =
                Sample { ready_ms, startup_peak_bytes, peak_bytes, answered, lone_total_p50_us, rss_after_bytes };
            all[index].samples.push(sample);
        }
        let tag = format!("footprint-none-{round}");
        let (daemon, _notify, ready_ms, startup_peak_bytes) = start(scratch.path(), &config, None, &tag).await?;
        daemon.stop();
        let sample = Sample {
            ready_ms,
            startup_peak_bytes,
            peak_bytes: 0,
            answered: 0,
            lone_total_p50_us: 0.0,
            rss_after_bytes: 0,
        };
        if let Some(last) = all.last_mut() {
            last.samples.push(sample);
        }
    }
    Ok(FootprintReport {
        pipeline: settings.name.clone(),
        model: settings.manifest.name.clone(),
        max_batch: settings.max_batch,
        burst: options.burst,
        variants: all,
    })
}

/// Starts a child with `NOTIFY_SOCKET` set and waits for its `READY=1`: the child, the socket (to keep while it runs:
/// it goes on sending status lines), the milliseconds it took and its VmHWM then.
async fn start(
    dir: &Path,
    config: &Config,
    files: Option<&[PathBuf]>,
    name: &str,
) -> anyhow::Result<(ChildDaemon, UnixDatagram, f64, u64)> {
    let socket_path = dir.join(format!("{name}.notify"));
    let socket = UnixDatagram::bind(&socket_path).context("binding the notify socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let started = Instant::now();
    let env = [("NOTIFY_SOCKET", socket_path.display().to_string())];
    let daemon = spawn_daemon_with_env(dir, config, files, name, Placement::Own, &env).await?;
    let mut buffer = [0u8; 512];
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            daemon.stop();
            bail!("the benchmark's zinferd sent no READY=1 within 60 s");
        }
        let Ok(read) = socket.recv(&mut buffer) else { continue };
        if String::from_utf8_lossy(&buffer[..read]).lines().any(|line| line == "READY=1") {
            break;
        }
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let (_, startup_peak) = daemon.rss()?;
    Ok((daemon, socket, ready_ms, startup_peak))
}

/// The burst, then the lone requests: (VmHWM after the burst, outcomes of the burst, median lone `total_us`, VmRSS
/// after the lone requests).
async fn drive(
    client: &Client,
    daemon: &ChildDaemon,
    key: &str,
    output_prefix: &str,
    options: &FootprintOptions,
) -> anyhow::Result<(u64, usize, f64, u64)> {
    client.wait_for_subscriber(key, Duration::from_secs(10)).await?;
    let results = client
        .session()
        .declare_subscriber(zinfer_proto::keys::result(output_prefix, key))
        .with(zenoh::handlers::FifoChannel::new(options.burst.max(1) * 2))
        .await
        .map_err(|error| anyhow::anyhow!("subscribing to results: {error}"))?;
    for index in 0..options.burst {
        publish(client, key, &format!("burst-{index}"), TEXTS[index % TEXTS.len()]).await?;
    }
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered < options.burst && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), results.recv_async()).await {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let (_, peak) = daemon.rss()?;
    let mut totals = Vec::with_capacity(options.lone);
    for index in 0..options.lone {
        publish(client, key, &format!("lone-{index}"), TEXTS[index % TEXTS.len()]).await?;
        let sample = tokio::time::timeout(Duration::from_secs(10), results.recv_async())
            .await
            .context("no result within 10 s")?
            .map_err(|error| anyhow::anyhow!("results: {error}"))?;
        let result = decode_result(&sample)?;
        totals.push(result.timings.map_or(0, |timings| timings.total_us));
    }
    totals.sort_unstable();
    let median = totals.get(totals.len() / 2).copied().unwrap_or(0) as f64;
    let (resident, _) = daemon.rss()?;
    Ok((peak, answered, median, resident))
}

/// Publishes a JSON text request with its id in the payload.
async fn publish(client: &Client, key: &str, id: &str, text: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "id": id, "text": text });
    client
        .session()
        .put(key, body.to_string())
        .encoding(Encoding::APPLICATION_JSON)
        .await
        .map_err(|error| anyhow::anyhow!("publishing: {error}"))
}

/// The report as a Markdown table: each figure as the range over the rounds.
pub fn markdown(report: &FootprintReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let range = |values: Vec<f64>, digits: usize| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if values.is_empty() {
            "–".to_owned()
        } else if (high - low).abs() < f64::EPSILON {
            format!("{low:.digits$}")
        } else {
            format!("{low:.digits$}–{high:.digits$}")
        }
    };
    let mut out = format!(
        "## Footprint of pipeline `{}` (model {}, max_batch {} as configured)\n\nEach figure is the range over the \
         rounds. Ready: spawn to READY=1. Start-up peak: VmHWM at READY=1. Peak in service: VmHWM once a burst of \
         {} texts of mixed lengths, published at once, was answered. Lone total: median of the daemon's own \
         `total_us` over lone requests after the burst. RSS in service: VmRSS after them.\n\n\
         | variant | ready ms | start-up peak MiB | peak in service MiB | RSS in service MiB | answered | lone total p50 \
         µs |\n\
         |---|---|---|---|---|---|---|\n",
        report.pipeline, report.model, report.max_batch, report.burst
    );
    for variant in &report.variants {
        let samples = &variant.samples;
        let pick = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
        let served = variant.name != "no pipeline";
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            variant.name,
            range(pick(&|s| s.ready_ms), 0),
            range(pick(&|s| mib(s.startup_peak_bytes)), 1),
            if served { range(pick(&|s| mib(s.peak_bytes)), 1) } else { "–".into() },
            if served { range(pick(&|s| mib(s.rss_after_bytes)), 1) } else { "–".into() },
            if served { range(pick(&|s| s.answered as f64), 0) } else { "–".into() },
            if served { range(pick(&|s| s.lone_total_p50_us), 0) } else { "–".into() },
        ));
    }
    out
}
