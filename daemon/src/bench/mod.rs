//! Benchmarks that measure zinferd as its users see it: a real child `zinferd` on loopback, driven over zenoh.
//!
//! - [`latency`] (`zinferd bench`): model alone vs. in-process pipeline vs. zenoh round trip; idle RSS.
//! - [`load`] (`zinferd bench load`): open-loop load at multiples of the measured capacity, with deadlines, shedding
//!   and memory against the budget; and the throughput gain of dynamic batching.
//! - [`sensor`] (`zinferd bench sensor`): windows per second and per-window latency, direct vs. over zenoh.
//! - [`footprint`] (`zinferd bench footprint`): ready time and peak memory per setting that moves them.
//! - [`soak`] (`zinferd bench soak`): a long run of mixed traffic with reloads: RSS slope, latency per minute, and
//!   whether every message got exactly one outcome.
//!
//! They report; they assert nothing. Compare numbers from one run only: these machines are shared and noisy.

pub mod fleet;
pub mod footprint;
pub mod latency;
pub mod load;
pub mod router;
pub mod sensor;
pub mod soak;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zinfer_proto::keys;

use crate::client::Client;
use crate::config::Config;

/// The CPU the figures come from: its model name and the flags that decide ONNX Runtime's kernels (int8 dot
/// products above all), so that figures from different sessions are never compared blind.
pub fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
            .and_then(|line| line.split_once(':'))
            .map(|(_, value)| value.trim().to_owned())
    };
    let model = field("model name").or_else(|| field("CPU part")).unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    const TELLING: [&str; 12] = [
        "fma",
        "avx",
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "amx_bf16",
        "asimd",
        "asimddp",
        "i8mm",
        "sve",
    ];
    let telling: Vec<&str> = flags.split_whitespace().filter(|flag| TELLING.contains(flag)).collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "CPU: {model}, {cores} core(s), flags {}",
        if telling.is_empty() { "none of note".into() } else { telling.join(" ") }
    )
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Summary {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let micros = |duration: Duration| duration.as_secs_f64() * 1e6;
        let at = |quantile: f64| {
            let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
            samples.get(index).copied().map_or(0.0, micros)
        };
        let mean = samples.iter().copied().map(micros).sum::<f64>() / samples.len().max(1) as f64;
        Self { count: samples.len(), p50_us: at(0.5), p99_us: at(0.99), mean_us: mean }
    }
}

/// Rounds per block: `bench latency` and `bench sensor` time the in-process ways of each round of a block, then the
/// block's round trips one after the other, so that this process's model runs do not sit between the daemon's.
const BLOCK: usize = 25;

/// The rounds `0..rounds` in blocks of [`BLOCK`].
pub(crate) fn blocks(rounds: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..rounds).step_by(BLOCK).map(move |start| start..(start + BLOCK).min(rounds))
}

/// The daemon's own timings of a series of results, by stage: `queue`, `decode`, `preprocess`, `inference`,
/// `postprocess`, and `other`, the total less those (handing the outcome to the egress, encoding, the put).
#[derive(Default)]
pub(crate) struct DaemonStages {
    samples: [Vec<Duration>; 6],
}

impl DaemonStages {
    const NAMES: [&str; 6] = ["queue", "decode", "preprocess", "inference", "postprocess", "other"];

    /// Adds one result's timings.
    pub(crate) fn push(&mut self, timings: &zinfer_proto::StageTimings) {
        let parts =
            [timings.queue_us, timings.decode_us, timings.preprocess_us, timings.inference_us, timings.postprocess_us];
        let other = timings.total_us.saturating_sub(parts.iter().sum());
        for (samples, micros) in self.samples.iter_mut().zip(parts.into_iter().chain([other])) {
            samples.push(Duration::from_micros(micros));
        }
    }

    /// Each stage's summary, in order.
    pub(crate) fn summaries(self) -> Vec<(String, Summary)> {
        Self::NAMES
            .into_iter()
            .zip(self.samples)
            .map(|(stage, samples)| (stage.to_owned(), Summary::of(samples)))
            .collect()
    }
}

/// A zenoh session in this process in `mode` (`"router"`, `"peer"` or `"client"`), multicast scouting off, that
/// `link`s (`"listen"` or `"connect"`) on `endpoint`.
pub(crate) async fn open_session(mode: &str, link: &str, endpoint: &str) -> anyhow::Result<zenoh::Session> {
    let mut config = zenoh::Config::default();
    for (key, value) in [
        ("mode".to_owned(), format!("\"{mode}\"")),
        (format!("{link}/endpoints"), format!("[\"{endpoint}\"]")),
        ("scouting/multicast/enabled".to_owned(), "false".to_owned()),
    ] {
        config.insert_json5(&key, &value).map_err(|error| anyhow::anyhow!("{mode} config {key}: {error}"))?;
    }
    zenoh::open(config).await.map_err(|error| anyhow::anyhow!("opening a {mode} session: {error}"))
}

/// A zenoh session in this process in `mode`, listening on a free loopback port; with its endpoint.
pub(crate) async fn open_listening(mode: &str) -> anyhow::Result<(zenoh::Session, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    Ok((open_session(mode, "listen", &endpoint).await?, endpoint))
}

/// A `zinferd` child process started by a benchmark.
pub(crate) struct ChildDaemon {
    child: Child,
    /// Its loopback endpoint.
    pub endpoint: String,
    prefix: String,
}

impl ChildDaemon {
    /// Waits until the daemon's liveliness token is visible, lets it settle, and reads its RSS.
    pub(crate) async fn settled_rss(&self) -> anyhow::Result<u64> {
        let client = Client::connect(&self.endpoint).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replies = client.session().liveliness().get(keys::alive(&self.prefix)).await;
            let alive = match replies {
                Ok(replies) => matches!(
                    tokio::time::timeout(Duration::from_secs(1), replies.recv_async()).await,
                    Ok(Ok(reply)) if reply.result().is_ok()
                ),
                Err(_) => false,
            };
            if alive {
                break;
            }
            if Instant::now() > deadline {
                bail!("the benchmark's zinferd did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.close().await;
        // Let start-up allocations settle (thread stacks, zenoh buffers) before reading.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(self.rss()?.0)
    }

    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmRSS, VmHWM) in bytes, from /proc.
    pub(crate) fn rss(&self) -> anyhow::Result<(u64, u64)> {
        process_rss(self.child.id())
    }
}

/// The child's telemetry snapshot, from its status queryable.
pub(crate) async fn status_of(client: &Client, daemon: &ChildDaemon) -> anyhow::Result<zinfer_proto::Telemetry> {
    let replies = client
        .session()
        .get(keys::status(&daemon.prefix))
        .await
        .map_err(|error| anyhow::anyhow!("querying the daemon's status: {error}"))?;
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.recv_async())
        .await
        .context("no status reply within 10 s")?
        .map_err(|error| anyhow::anyhow!("status query: {error}"))?;
    let sample = reply.result().map_err(|error| anyhow::anyhow!("status query answered an error: {error:?}"))?;
    serde_json::from_slice(&sample.payload().to_bytes()).context("decoding the status reply")
}

/// (VmRSS, VmHWM) of process `pid` in bytes, from /proc.
pub(crate) fn process_rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    crate::memory::process_memory(&pid.to_string()).context("reading the daemon's /proc status")
}

/// The index of the pipeline named `name`, or of the first pipeline.
pub(crate) fn pipeline_index(config: &Config, name: Option<&str>) -> anyhow::Result<usize> {
    match name {
        Some(name) => config.pipelines.iter().position(|p| p.name == name).context("no pipeline of that name"),
        None if config.pipelines.is_empty() => bail!("the configuration has no [[pipeline]] to measure"),
        None => Ok(0),
    }
}

/// The key a benchmark publishes on: its own option, else the pipeline's input with a trailing wildcard replaced
/// by `leaf`.
pub(crate) fn request_key(option: Option<&str>, input: &str, leaf: &str) -> String {
    option.map_or_else(|| format!("{}/{leaf}", input.trim_end_matches("/**").trim_end_matches("/*")), str::to_owned)
}

/// Where a benchmark's child zinferd sits on the zenoh fabric.
pub(crate) enum Placement<'a> {
    /// A peer listening on a free loopback port of its own, under a telemetry prefix of its own.
    Own,
    /// A client of the router at `router`, under `prefix` (daemons under one prefix share pipelines they share).
    Behind {
        /// The router's endpoint.
        router: &'a str,
        /// The telemetry prefix.
        prefix: &'a str,
    },
}

/// Starts a child zinferd at `placement`: with the user's config files plus an override (`files`), or with no
/// pipeline at all (`None`).
pub(crate) async fn spawn_daemon(
    dir: &Path,
    config: &Config,
    files: Option<&[PathBuf]>,
    name: &str,
    placement: Placement<'_>,
) -> anyhow::Result<ChildDaemon> {
    spawn_daemon_with_env(dir, config, files, name, placement, &[]).await
}

/// As [`spawn_daemon`], with `env` added to the child's environment.
pub(crate) async fn spawn_daemon_with_env(
    dir: &Path,
    config: &Config,
    files: Option<&[PathBuf]>,
    name: &str,
    placement: Placement<'_>,
    env: &[(&str, String)],
) -> anyhow::Result<ChildDaemon> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let (endpoint, prefix, zenoh) = match placement {
        Placement::Own => {
            let endpoint = format!("tcp/127.0.0.1:{port}");
            let zenoh = format!("mode = \"peer\"\nlisten = [\"{endpoint}\"]\nconnect = []");
            (endpoint, format!("zinfer-bench/{name}/{port}"), zenoh)
        }
        Placement::Behind { router, prefix } => {
            let zenoh = format!("mode = \"client\"\nlisten = []\nconnect = [\"{router}\"]");
            (router.to_owned(), prefix.to_owned(), zenoh)
        }
    };
    let overrides = format!("[zenoh]\n{zenoh}\nmulticast_scouting = false\n[telemetry]\nprefix = \"{prefix}\"\n");
    let override_file = dir.join(format!("{name}.toml"));
    std::fs::write(&override_file, overrides)?;
    let mut command = Command::new(std::env::current_exe().context("locating zinferd")?);
    for file in files.unwrap_or_default() {
        command.arg("--config").arg(file);
    }
    command.arg("--config").arg(&override_file);
    if let Some(library) = &config.ort_library {
        command.env("ORT_DYLIB_PATH", library);
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    let child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting zinferd for the benchmark")?;
    Ok(ChildDaemon { child, endpoint, prefix })
}
