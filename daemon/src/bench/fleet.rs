//! `zinferd bench fleet`: what a second daemon behind a zenoh router adds, and what the router costs.
//!
//! 1. Throughput at equal deadline: the pipeline's capacity (as `bench load` measures it: the offered rate doubles
//!    until the `ok` rate falls behind) with one daemon behind a router, then with two that share the input
//!    (`share = "message"`), each limited to one ONNX Runtime thread. The ratio is the fleet's scaling; on one
//!    machine the daemons share its cores (and the router and the load generator run there too), so it measures
//!    the sharing's overhead as much as the gain.
//! 2. The router's added latency: lone messages, one at a time, to a daemon reached directly (peer to peer) and to
//!    one reached through the router, in the same run.
//!
//! The router is a zenoh session in router mode inside this process, listening on loopback only.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::load::{Target, child_config, saturate};
use super::{ChildDaemon, Placement, Summary, spawn_daemon};
use crate::client::{Client, RequestFormat};
use crate::config::{Config, PipelineConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The configuration files (as for `run`).
    pub config: Vec<std::path::PathBuf>,
    /// The pipeline to drive (default: the first).
    pub pipeline: Option<String>,
    /// Deadline for every message, milliseconds.
    pub deadline_ms: u64,
    /// Memory budget of each child daemon, MiB.
    pub memory_mb: u64,
    /// Lone messages timed per path for the router's added latency.
    pub iterations: usize,
    /// The key to publish on (default: derived from the pipeline's input).
    pub key: Option<String>,
}

/// The run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// The pipeline driven.
    pub pipeline: String,
    /// Deadline per message, ms.
    pub deadline_ms: u64,
    /// Capacity with one daemon behind the router, `ok`/s.
    pub capacity_one_per_s: f64,
    /// Capacity with two daemons sharing the input behind the router, `ok`/s.
    pub capacity_two_per_s: f64,
    /// Two over one.
    pub scaling: f64,
    /// How the two split the messages of the last capacity step: `ok` results per daemon.
    pub split: Vec<u64>,
    /// Round trips of lone messages to a daemon reached peer to peer.
    pub direct: Summary,
    /// Round trips of lone messages through the router.
    pub routed: Summary,
}

/// Runs the fleet benchmark.
pub async fn run(options: &FleetOptions) -> anyhow::Result<FleetReport> {
    let config = crate::config::load(&options.config)?;
    let settings = config.pipelines[super::pipeline_index(&config, options.pipeline.as_deref())?].clone();
    let key = super::request_key(options.key.as_deref(), &settings.input, "fleet");
    let scratch = tempfile::tempdir().context("temp dir")?;
    let limits = (options.deadline_ms, options.memory_mb);
    let one_thread = ("session.intra_threads", toml::Value::Integer(1));
    let shared =
        child_config(&settings, limits, settings.max_batch, &[one_thread.clone(), ("share", "message".into())])?;

    let (router, endpoint) = super::open_listening("router").await?;
    let mut runs = Vec::new();
    for daemons in [1, 2] {
        let prefix = format!("zinfer-bench/fleet{daemons}/{}", std::process::id());
        let target = start_behind(scratch.path(), &config, &shared, &endpoint, &prefix, daemons).await?;
        await_members(&target, &prefix, &key, daemons).await?;
        let before = answered_by(&target, &prefix).await?;
        let capacity = saturate(&target, &key, &settings.output_prefix).await?;
        let after = answered_by(&target, &prefix).await?;
        target.stop();
        runs.push((
            capacity,
            after.iter().zip(before.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a - b).collect::<Vec<u64>>(),
        ));
    }

    let lone = child_config(&settings, limits, settings.max_batch, &[one_thread])?;
    let direct = lone_round_trips(scratch.path(), &config, &settings, &lone, &key, None, options.iterations).await?;
    let routed =
        lone_round_trips(scratch.path(), &config, &settings, &lone, &key, Some(&endpoint), options.iterations).await?;
    drop(router);

    let (capacity_one, _) = runs[0].clone();
    let (capacity_two, split) = runs[1].clone();
    Ok(FleetReport {
        pipeline: settings.name.clone(),
        deadline_ms: options.deadline_ms,
        capacity_one_per_s: capacity_one,
        capacity_two_per_s: capacity_two,
        scaling: capacity_two / capacity_one.max(1e-9),
        split,
        direct,
        routed,
    })
}

/// The report as markdown.
pub fn markdown(report: &FleetReport) -> String {
    format!(
        "pipeline `{}`, deadline {} ms, each daemon 1 ONNX Runtime thread, behind one zenoh router on loopback\n\n\
         | daemons | capacity ok/s |\n|---|---|\n| 1 | {:.0} |\n| 2 (share = \"message\") | {:.0} |\n\n\
         scaling 2 over 1: {:.2}× (messages per daemon in the two-daemon run: {:?})\n\n\
         lone messages, round trip: direct (peer to peer) p50 {:.0} µs, p99 {:.0} µs; through the router p50 {:.0} µs, \
         p99 {:.0} µs; the router adds {:.0} µs at p50\n",
        report.pipeline,
        report.deadline_ms,
        report.capacity_one_per_s,
        report.capacity_two_per_s,
        report.scaling,
        report.split,
        report.direct.p50_us,
        report.direct.p99_us,
        report.routed.p50_us,
        report.routed.p99_us,
        report.routed.p50_us - report.direct.p50_us,
    )
}

/// Starts `count` daemons running `pipeline` behind the router, under one prefix.
async fn start_behind(
    dir: &std::path::Path,
    config: &Config,
    pipeline: &str,
    router: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Target> {
    let file = dir.join(format!("fleet{count}-pipeline.toml"));
    std::fs::write(&file, pipeline)?;
    let mut daemons = Vec::new();
    for index in 0..count {
        let placement = Placement::Behind { router, prefix };
        let daemon =
            spawn_daemon(dir, config, Some(std::slice::from_ref(&file)), &format!("fleet{count}-{index}"), placement)
                .await?;
        daemon.settled_rss().await?;
        daemons.push(daemon);
    }
    let client = Client::connect(router).await?;
    Ok(Target { daemons, client })
}

/// Publishes probes until every daemon says it sees `count` members (each counts at every sample it receives).
async fn await_members(target: &Target, prefix: &str, key: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    target.client.wait_for_subscriber(key, Duration::from_secs(10)).await?;
    for probe in 0.. {
        target
            .client
            .session()
            .put(key.to_owned(), format!("probe {probe}"))
            .await
            .map_err(|error| anyhow::anyhow!("publishing a probe: {error}"))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let snapshots = zinfer_fleet::gather(target.client.session(), prefix, Duration::from_secs(2)).await?;
        let seen: Vec<u64> = snapshots.iter().filter_map(|s| s.pipelines.first()).map(|p| p.share_members).collect();
        if seen.len() == count && (count == 1 || seen.iter().all(|members| *members == count as u64)) {
            // Let the probes' results go by before measuring.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemons did not see each other within 30 s (members seen: {seen:?})");
        }
    }
    Ok(())
}

/// `ok` results so far per daemon, in zenoh id order.
async fn answered_by(target: &Target, prefix: &str) -> anyhow::Result<Vec<u64>> {
    let snapshots = zinfer_fleet::gather(target.client.session(), prefix, Duration::from_secs(2)).await?;
    Ok(snapshots.iter().map(|snapshot| snapshot.pipelines.iter().map(|p| p.completed).sum()).collect())
}

/// Round trips of `iterations` lone messages to one daemon running `pipeline`: reached directly (`router` `None`),
/// or through the router.
async fn lone_round_trips(
    dir: &std::path::Path,
    config: &Config,
    settings: &PipelineConfig,
    pipeline: &str,
    key: &str,
    router: Option<&str>,
    iterations: usize,
) -> anyhow::Result<Summary> {
    let name = if router.is_some() { "routed" } else { "direct" };
    let file = dir.join(format!("{name}-pipeline.toml"));
    std::fs::write(&file, pipeline)?;
    let prefix = format!("zinfer-bench/{name}/{}", std::process::id());
    let placement = match router {
        Some(router) => Placement::Behind { router, prefix: &prefix },
        None => Placement::Own,
    };
    let daemon: ChildDaemon = spawn_daemon(dir, config, Some(&[file]), name, placement).await?;
    daemon.settled_rss().await?;
    let client = Client::connect(&daemon.endpoint).await?;
    client.wait_for_subscriber(key, Duration::from_secs(10)).await?;
    // The first 20 warm the path up.
    const WARM_UP: usize = 20;
    let results = client.results(&settings.output_prefix, key).await?;
    let mut samples = Vec::with_capacity(iterations);
    for index in 0..WARM_UP + iterations {
        let id = format!("{name}-{index}");
        let request = RequestFormat::Json.encode(&id, "a fine and moving film");
        let started = Instant::now();
        client.round_trip(&results, key, &id, request, Duration::from_secs(10)).await?;
        if index >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    let summary = Summary::of(samples);
    drop(results);
    client.close().await;
    daemon.stop();
    Ok(summary)
}
