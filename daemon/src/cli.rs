//! The command line: `zinferd [--config FILE]... [run|check|send|bench|fleet]`, public so that a binary with stages
//! of its own is zinferd with a bigger registry:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let registry = zinferd::default_registry();
//!     // registry.register_stage("my_stage", my_stage_factory); ...
//!     zinferd::cli::main(registry)
//! }
//! ```
//!
//! Every command then knows the added stages: `run` and `check` build pipelines with them, `bench` measures them, and
//! the benchmarks' child daemons are this same binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zinfer_stage_api::Registry;

use crate::client::{Client, RequestFormat};

/// zinfer's streaming inference daemon: zenoh in, ONNX Runtime pipelines, results and telemetry out.
#[derive(Debug, Parser)]
#[command(name = "zinferd", version, about)]
struct Cli {
    /// Configuration file(s) or directories of `*.toml` files, merged in order (later ones override); ZINFER_*
    /// environment variables override all. Default: /etc/zinfer/zinferd.toml, then /etc/zinfer/conf.d/.
    #[arg(long = "config", short = 'c', global = true, value_name = "PATH")]
    config: Vec<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration, load the models and check them against their pipelines, then exit.
    Check,
    /// Publish one text to a running zinferd and print the result as JSON.
    Send(SendArgs),
    /// Measure inference directly vs. round-tripped through zenoh and a zinferd child, and the daemon's RSS.
    Bench(BenchArgs),
    /// Every daemon under a prefix, reached through zenoh (a router, or a daemon's own endpoint): one table row
    /// each, JSON with --json, or the whole fleet's metrics served to Prometheus with --prometheus.
    Fleet(FleetArgs),
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// Where to join the fleet's zenoh fabric: the site's router, or any daemon's endpoint.
    #[arg(long, default_value = crate::io::session::DEFAULT_LISTEN)]
    connect: String,
    /// A native zenoh config file for this client (TLS certificates, user and password of a secured fabric).
    #[arg(long, value_name = "FILE")]
    zenoh_config: Option<PathBuf>,
    /// The daemons' `telemetry.prefix`.
    #[arg(long, default_value = "zinfer")]
    prefix: String,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Time between the two status rounds that the rates (messages/s) come from, in milliseconds; 0: one round,
    /// no rates.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// How long a status round waits for the daemons' replies, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Serve the fleet's metrics in the Prometheus text format at http://ADDR/metrics (e.g. 0.0.0.0:9464),
    /// gathered at each scrape, until stopped.
    #[arg(long, value_name = "ADDR")]
    prometheus: Option<String>,
}

/// Which benchmark `zinferd bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    /// Model alone vs. in-process pipeline vs. zenoh round trip; idle RSS with and without the model.
    Latency,
    /// Open-loop load at 0.5×, 1×, 2× and 10× the measured capacity, and the gain of dynamic batching.
    Load,
    /// A sensor pipeline: windows per second and per-window latency, direct vs. over zenoh.
    Sensor,
    /// Mixed traffic to every pipeline with bursts and a reload every minute: RSS slope, p99 per minute, and
    /// whether every message got exactly one outcome.
    Soak,
    /// Capacity with one vs. two daemons sharing the input behind a zenoh router (1 ONNX Runtime thread each), and
    /// the router's added latency against a direct peer connection.
    Fleet,
    /// Messages per second one zenoh router forwards from --sessions publishing sessions to one subscriber.
    Router,
    /// Ready time and peak memory of a text pipeline per setting that moves them (arena, memory pattern,
    /// max_batch), and of a daemon without a pipeline.
    Footprint,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The benchmark.
    #[arg(value_enum, default_value = "latency")]
    mode: BenchMode,
    /// load: the deadline of every message, in milliseconds.
    #[arg(long, default_value_t = 100)]
    deadline_ms: u64,
    /// load: the child daemons' memory budget, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mb: u64,
    /// load: seconds per load level; router: seconds of publishing.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// router: publishing sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// router: bytes per message (680: a text result in JSON).
    #[arg(long, default_value_t = 680)]
    payload: usize,
    /// The pipeline to measure (default: the first).
    #[arg(long)]
    pipeline: Option<String>,
    /// latency: the text to classify.
    #[arg(long, default_value = "A moving, beautifully acted film that stays with you long after the credits.")]
    text: String,
    /// latency, sensor: timed iterations (windows) per measurement.
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    /// latency, sensor: untimed warm-up iterations before each measurement.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// latency: milliseconds of idle before the round's first model run and before its round trip, as between
    /// messages that come one at a time (0: none, the rounds run back to back).
    #[arg(long, default_value_t = 0)]
    idle_ms: u64,
    /// The key to publish on (default: the pipeline's input with its trailing wildcard replaced by `bench`).
    #[arg(long)]
    key: Option<String>,
    /// footprint: requests in the burst whose peak memory is measured.
    #[arg(long, default_value_t = 500)]
    burst: usize,
    /// footprint: lone requests timed after the burst.
    #[arg(long, default_value_t = 100)]
    lone: usize,
    /// footprint: rounds over every variant.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// soak: how long, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// soak: seconds between reloads (SIGHUP to the child).
    #[arg(long, default_value_t = 60.0)]
    reload_every_s: f64,
    /// soak: steady text requests per second, per text pipeline.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// soak: one second in ten, text requests at this multiple of the capacity measured at the start.
    #[arg(long, default_value_t = 3.0)]
    burst_multiple: f64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The key to publish on (it must match a pipeline's `input`); with --query, the key to ask:
    /// `<telemetry prefix>/infer/<pipeline>`, e.g. `zinfer/infer/sentiment`.
    #[arg(long)]
    key: String,
    /// Ask the pipeline's queryable and print its one reply, instead of publishing and waiting for the result.
    /// The timeout is the request's deadline at the daemon.
    #[arg(long)]
    query: bool,
    /// The text to classify.
    text: String,
    /// The daemon's endpoint.
    #[arg(long, default_value = crate::io::session::DEFAULT_LISTEN)]
    connect: String,
    /// A native zenoh config file for this client (TLS certificates, user and password of a secured fabric).
    #[arg(long, value_name = "FILE")]
    zenoh_config: Option<PathBuf>,
    /// The pipeline's `output_prefix`.
    #[arg(long, default_value = "zinfer/out")]
    output_prefix: String,
    /// How to encode the request.
    #[arg(long, value_enum, default_value = "json")]
    format: RequestFormat,
    /// The request id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// How long to wait for the daemon and the result, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Parses the command line and runs it with `registry`'s stages; the process's exit code.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match execute(cli, Arc::new(registry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zinferd: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr as plain lines, filtered by RUST_LOG (default `info`). Under systemd (JOURNAL_STREAM set) the
/// timestamp is left out: journald stamps every line itself.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zenoh=warn,zenoh_transport=warn,ort=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The configuration files given, or the installed ones: `/etc/zinfer/zinferd.toml`, then `/etc/zinfer/conf.d/*.toml`
/// (if that directory exists) in name order.
fn config_files(cli: &Cli) -> Vec<PathBuf> {
    if !cli.config.is_empty() {
        return cli.config.clone();
    }
    let mut files = vec![PathBuf::from("/etc/zinfer/zinferd.toml")];
    let drop_ins = PathBuf::from("/etc/zinfer/conf.d");
    if drop_ins.is_dir() {
        files.push(drop_ins);
    }
    files
}

fn execute(cli: Cli, registry: Arc<Registry>) -> anyhow::Result<()> {
    match &cli.command {
        None | Some(Command::Run) => {
            let files = config_files(&cli);
            let config = crate::config::load(&files)?;
            // SIGHUP reads the same files (and directories) again.
            let loader: crate::service::Loader = Box::new(move || crate::config::load(&files));
            let notifier = crate::service::systemd::Notifier::from_env();
            runtime()?.block_on(async {
                crate::service::serve(config, registry, loader, notifier, crate::signals::controls()).await
            })?;
            Ok(())
        }
        Some(Command::Check) => {
            let config = crate::config::load(&config_files(&cli))?;
            let pipelines = crate::build_pipelines(&config, &registry)?;
            crate::check_memory(&config, &pipelines)?;
            for (settings, pipeline) in config.pipelines.iter().zip(&pipelines) {
                println!(
                    "pipeline `{}`: {} -> {}/<key>, model {} {} ({}), providers {:?}",
                    settings.name,
                    settings.input,
                    settings.output_prefix,
                    settings.manifest.name,
                    settings.manifest.version,
                    settings.manifest.model.display(),
                    pipeline.model().providers()
                );
                match pipeline.golden() {
                    Some((run, spec)) => {
                        let failures = crate::pipeline::golden::failures(run, spec);
                        println!(
                            "  golden inputs ({}): {}; tolerance: top-1 >= {}, deviation <= {}, mean <= {}: {}",
                            spec.file.display(),
                            crate::pipeline::golden::summary(run),
                            spec.min_agreement,
                            spec.max_deviation,
                            spec.max_mean_deviation,
                            if failures.is_empty() {
                                "pass".to_owned()
                            } else {
                                format!("FAIL ({})", failures.join("; "))
                            }
                        );
                    }
                    None => println!("  golden inputs: none (no [golden] in the manifest, or drift_guard = \"off\")"),
                }
                if let Some(ladder) = &settings.ladder {
                    for (index, rung) in ladder.rungs.iter().enumerate() {
                        println!(
                            "  ladder rung {}: model {} {} ({}), built and warmed up{}",
                            index + 1,
                            rung.name,
                            rung.version,
                            rung.model.display(),
                            if rung.golden.is_some() && settings.drift_guard != crate::config::DriftGuardMode::Off {
                                ", golden inputs checked"
                            } else {
                                ""
                            }
                        );
                    }
                    println!(
                        "  ladder: one rung down after {} ms of memory pressure or missed deadlines, up after {} ms \
                         without",
                        ladder.down_after.as_millis(),
                        ladder.up_after.as_millis()
                    );
                }
            }
            println!("configuration OK ({} pipeline(s))", pipelines.len());
            Ok(())
        }
        Some(Command::Send(args)) => runtime()?.block_on(send(args)),
        Some(Command::Fleet(args)) => fleet(args),
        Some(Command::Bench(args)) => {
            let (markdown, json) = match args.mode {
                BenchMode::Latency => {
                    let options = crate::bench::latency::BenchOptions {
                        config: config_files(&cli),
                        registry: Arc::clone(&registry),
                        pipeline: args.pipeline.clone(),
                        text: args.text.clone(),
                        iterations: args.iterations,
                        warmup: args.warmup,
                        key: args.key.clone(),
                        idle: Duration::from_millis(args.idle_ms),
                    };
                    let report = runtime()?.block_on(crate::bench::latency::run(&options))?;
                    (crate::bench::latency::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Load => {
                    let options = crate::bench::load::LoadOptions {
                        config: config_files(&cli),
                        registry: Arc::clone(&registry),
                        pipeline: args.pipeline.clone(),
                        deadline_ms: args.deadline_ms,
                        memory_mb: args.memory_mb,
                        seconds: args.seconds,
                        key: args.key.clone(),
                    };
                    let report = runtime()?.block_on(crate::bench::load::run(&options))?;
                    (crate::bench::load::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Soak => {
                    let options = crate::bench::soak::SoakOptions {
                        config: config_files(&cli),
                        minutes: args.minutes,
                        reload_every_s: args.reload_every_s,
                        rate: args.rate,
                        burst_multiple: args.burst_multiple,
                    };
                    let report = runtime()?.block_on(crate::bench::soak::run(&options))?;
                    (crate::bench::soak::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Fleet => {
                    let options = crate::bench::fleet::FleetOptions {
                        config: config_files(&cli),
                        pipeline: args.pipeline.clone(),
                        deadline_ms: args.deadline_ms,
                        memory_mb: args.memory_mb,
                        iterations: args.iterations,
                        key: args.key.clone(),
                    };
                    let report = runtime()?.block_on(crate::bench::fleet::run(&options))?;
                    (crate::bench::fleet::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Router => {
                    let options = crate::bench::router::RouterOptions {
                        sessions: args.sessions,
                        payload: args.payload,
                        seconds: args.seconds,
                    };
                    let report = runtime()?.block_on(crate::bench::router::run(&options))?;
                    (crate::bench::router::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Footprint => {
                    let options = crate::bench::footprint::FootprintOptions {
                        config: config_files(&cli),
                        pipeline: args.pipeline.clone(),
                        burst: args.burst,
                        lone: args.lone,
                        rounds: args.rounds,
                        key: args.key.clone(),
                    };
                    let report = runtime()?.block_on(crate::bench::footprint::run(&options))?;
                    (crate::bench::footprint::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
                BenchMode::Sensor => {
                    let options = crate::bench::sensor::SensorBenchOptions {
                        config: config_files(&cli),
                        registry: Arc::clone(&registry),
                        pipeline: args.pipeline.clone(),
                        windows: args.iterations,
                        warmup: args.warmup,
                        key: args.key.clone(),
                    };
                    let report = runtime()?.block_on(crate::bench::sensor::run(&options))?;
                    (crate::bench::sensor::markdown(&report), serde_json::to_string_pretty(&report)?)
                }
            };
            print!("{}\n\n{markdown}", crate::bench::cpu_line());
            if let Some(path) = &args.json {
                std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn fleet(args: &FleetArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let client = runtime.block_on(Client::connect_with(&args.connect, args.zenoh_config.as_deref()))?;
    let timeout = Duration::from_millis(args.timeout_ms);
    if let Some(address) = &args.prometheus {
        zinfer_fleet::exporter::serve(address, runtime.handle(), client.session(), &args.prefix, timeout)?;
        return Ok(());
    }
    let gather = || runtime.block_on(zinfer_fleet::gather(client.session(), &args.prefix, timeout));
    // A session that has just opened may not have heard of every daemon yet: give routing a moment.
    std::thread::sleep(Duration::from_millis(200));
    let interval = Duration::from_millis(args.interval_ms);
    let before = if interval.is_zero() { Vec::new() } else { gather()? };
    std::thread::sleep(interval);
    let after = gather()?;
    anyhow::ensure!(
        !after.is_empty(),
        "no zinferd answered on `{}/status` within {timeout:?}: is --connect a router or daemon of the fleet, and \
         --prefix the daemons' telemetry.prefix?",
        args.prefix
    );
    let rows = zinfer_fleet::table::rows(&before, &after, interval);
    let text = if args.json { serde_json::to_string_pretty(&rows)? + "\n" } else { zinfer_fleet::table::render(&rows) };
    // A reader that stops early (`| head`) is not an error.
    use std::io::Write as _;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => return Err(error.into()),
        _ => {}
    }
    runtime.block_on(client.close());
    Ok(())
}

async fn send(args: &SendArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = Client::connect_with(&args.connect, args.zenoh_config.as_deref()).await?;
    let id = args.id.clone().unwrap_or_else(|| format!("send-{}", std::process::id()));
    let result = if args.query {
        client.query(&args.key, &id, args.format.encode(&id, &args.text), timeout).await?
    } else {
        client.wait_for_subscriber(&args.key, timeout).await?;
        let pending = client.request(&args.key, &args.output_prefix, &id, &args.text, args.format).await?;
        pending.result(timeout).await?
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    client.close().await;
    Ok(())
}
