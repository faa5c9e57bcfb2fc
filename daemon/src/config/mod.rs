//! Configuration, in two phases: read, then validate.
//!
//! 1. [`load`] layers the TOML files in order (later files override earlier ones) and then `ZINFER_*`
//!    environment variables (`ZINFER_TELEMETRY__INTERVAL_MS=500` sets `telemetry.interval_ms`; `__` separates
//!    levels; `ZINFER_ZENOH__LISTEN` and `ZINFER_ZENOH__CONNECT` take comma-separated lists), and deserialises the
//!    result into the [`raw`] structs, which reject unknown keys.
//! 2. It then validates what serde cannot: key expressions, files (the model manifest and the files it names),
//!    zenoh endpoints, ranges. The result, [`Config`], is what the daemon runs on.
//!
//! Every error is a [`ConfigError`] naming the file the offending key came from (tracked by the `config` crate),
//! the key's full path, and what is wrong. Building the stages and loading the model (which can also fail on a
//! key) happens later, in `pipeline::build`, and reports errors the same way through [`Config::error_at`].

pub mod raw;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat};
use zinfer_ort::SessionConfig;
use zinfer_stage_api::ModelManifest;

pub use raw::{
    CongestionPolicy, DriftGuardMode, OverloadPolicy, PriorityLevel, ShareMode, StageSpec, WireEncoding, ZenohMode,
};
use raw::{RawConfig, RawPipeline};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The files it was read from, in order.
    pub sources: Vec<PathBuf>,
    /// How to join zenoh.
    pub zenoh: ZenohConfig,
    /// The configured ONNX Runtime library, resolved against its file.
    pub ort_library: Option<PathBuf>,
    /// Telemetry.
    pub telemetry: TelemetryConfig,
    /// How long SIGTERM waits for in-flight messages before dropping the rest.
    pub drain_timeout: Duration,
    /// How long a reload may spend loading its models before the watchdog pings stop.
    pub reload_timeout: Duration,
    /// The memory budget.
    pub memory: MemoryConfig,
    /// The pipelines.
    pub pipelines: Vec<PipelineConfig>,
    /// Where each key came from, for errors raised after validation.
    origins: Origins,
}

/// `[zenoh]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ZenohConfig {
    /// Peer or client (default peer).
    pub mode: Option<ZenohMode>,
    /// Endpoints to listen on (default `tcp/127.0.0.1:7447`).
    pub listen: Option<Vec<String>>,
    /// Endpoints to connect to (default none).
    pub connect: Option<Vec<String>>,
    /// Multicast scouting on/off (default off).
    pub multicast_scouting: Option<bool>,
    /// A native zenoh JSON5 config to start from.
    pub config_file: Option<PathBuf>,
}

/// The memory keys of `[daemon]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// The hard RSS ceiling in MiB; `None`: the cgroup's limit, if any.
    pub budget_mb: Option<u64>,
    /// Percent of the budget above which batches and queues shrink.
    pub soft_percent: u8,
    /// RSS the runtime may need beyond what the start-up probe measured (zenoh buffers, queued messages).
    pub reserve_mb: u64,
    /// How often RSS is sampled.
    pub sample_interval: Duration,
    /// Once models are loaded (at start-up and after each reload), hand the pages of code and read-only data that
    /// only loading touched back to the kernel.
    pub page_out_after_load: bool,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Prefix of the telemetry, status and liveliness keys.
    pub prefix: String,
    /// Publishing period.
    pub interval: Duration,
    /// Serialisation of snapshots.
    pub encoding: WireEncoding,
}

/// One `[[pipeline]]`, validated.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Unique name, used in results and telemetry.
    pub name: String,
    /// The key expression it subscribes to.
    pub input: String,
    /// Results go to `<output_prefix>/<input key>`.
    pub output_prefix: String,
    /// Serialisation of results.
    pub result_encoding: WireEncoding,
    /// Messages that may wait in the pipeline's queue (arrived, being prepared, prepared); beyond this, new ones are
    /// dropped with `queue_full`, or under `latest` evict the oldest.
    pub queue_capacity: usize,
    /// Per-message deadline in milliseconds from arrival (a request may carry a tighter one).
    pub deadline_ms: Option<u64>,
    /// Most messages per model run.
    pub max_batch: usize,
    /// Most tokens per model run where the model's input length varies per message (text): rows × the padded
    /// length. A run always takes at least one message. Fixed-shape inputs (sensor windows) are bounded by
    /// `max_batch` alone.
    pub max_batch_tokens: usize,
    /// Most payload bytes waiting.
    pub queue_bytes: usize,
    /// What gives when the queue is full.
    pub overload: OverloadPolicy,
    /// With `latest`: messages kept per key.
    pub latest_per_key: usize,
    /// Whether daemons serving this pipeline under the same telemetry prefix split its input, and by what.
    pub share: ShareMode,
    /// Most outcomes the pipeline may owe at once (messages queued, running, or answered and waiting to be
    /// published); beyond it new messages are refused at the door, with no outcome, and counted.
    pub max_in_flight: usize,
    /// zenoh congestion control for results.
    pub result_congestion_control: CongestionPolicy,
    /// zenoh priority for results.
    pub result_priority: PriorityLevel,
    /// The model manifest (files checked).
    pub manifest: ModelManifest,
    /// The decoder's table.
    pub decode: StageSpec,
    /// Preprocessing stage tables, in order.
    pub preprocess: Vec<StageSpec>,
    /// Postprocessing stage tables, in order.
    pub postprocess: Vec<StageSpec>,
    /// ONNX Runtime session options.
    pub session: SessionConfig,
    /// Sessions of the model that run batches side by side (each with `session.intra_threads` threads); `None` for
    /// the default, [`crate::DEFAULT_INSTANCES`].
    pub instances: Option<usize>,
    /// What a model that fails its golden inputs does to the pipeline.
    pub drift_guard: DriftGuardMode,
    /// Run the golden inputs again this often while serving (between messages); `None`: only at start-up and reload.
    pub drift_check_every: Option<std::time::Duration>,
    /// Smaller models the pipeline steps down to under pressure; `None`: `model` alone.
    pub ladder: Option<LadderConfig>,
    /// The folder relative paths in this pipeline's stage tables are resolved against.
    pub base_dir: PathBuf,
    /// The key of this pipeline's table, e.g. `pipeline[0]`.
    pub key: String,
}

/// `[pipeline.ladder]`, validated: the models below the pipeline's `model`, and when to step between them (see
/// [`crate::pipeline::ladder`]).
#[derive(Debug, Clone)]
pub struct LadderConfig {
    /// The manifests below `model`, largest first (files checked; same task and labels as `model`).
    pub rungs: Vec<ModelManifest>,
    /// Pressure this long steps one rung down.
    pub down_after: Duration,
    /// No pressure this long steps one rung up.
    pub up_after: Duration,
}

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the key came from (or `environment`), when known.
    pub file: Option<String>,
    /// The key's full path, e.g. `pipeline[0].decode.max_bytes`.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl Config {
    /// An error about `key` (a full key path), attributed to the file that set it.
    pub fn error_at(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.origins, key, reason)
    }
}

impl ConfigError {
    fn at(origins: &Origins, key: &str, reason: impl Into<String>) -> Self {
        Self { file: origins.file_of(key), key: Some(key.to_owned()), reason: reason.into() }
    }

    /// An error about a whole file (or none), not one key.
    pub fn whole(file: Option<String>, reason: impl Into<String>) -> Self {
        Self { file, key: None, reason: reason.into() }
    }
}

/// Reads and validates `files` plus the process's `ZINFER_*` environment. A directory among `files` stands for the
/// `*.toml` files in it, in name order (`/etc/zinfer/conf.d/10-board.toml` before `20-site.toml`).
pub fn load(files: &[PathBuf]) -> Result<Config, ConfigError> {
    load_with_env(files, None)
}

/// As [`load`], with an explicit environment instead of the process's (for tests).
pub fn load_with_env(files: &[PathBuf], env: Option<HashMap<String, String>>) -> Result<Config, ConfigError> {
    let files = &expand_directories(files)?;
    if files.is_empty() {
        return Err(ConfigError::whole(None, "no configuration file given; pass one with --config FILE"));
    }
    let mut builder = config::Config::builder();
    for file in files {
        if !file.is_file() {
            return Err(ConfigError::whole(
                Some(file.display().to_string()),
                "no such file; pass an existing TOML file with --config",
            ));
        }
        builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml).required(true));
    }
    builder = builder.add_source(
        Environment::with_prefix("ZINFER")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("zenoh.listen")
            .with_list_parse_key("zenoh.connect")
            .source(env),
    );
    let merged = builder.build().map_err(|error| match error {
        // The config crate names the file relative to the working directory; name it as the user did.
        config::ConfigError::FileParse { uri, cause } => {
            ConfigError::whole(uri.map(|uri| as_given(files, &uri)), format!("not valid TOML: {cause}"))
        }
        other => ConfigError::whole(None, other.to_string()),
    })?;
    let origins = Origins { merged: merged.clone(), files: files.to_vec() };
    let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let (key, reason) = describe_serde_error(&path, &inner);
        ConfigError { file: origins.file_of(&key), key: Some(key), reason }
    })?;
    validate(raw, files, origins)
}

/// Turns a deserialisation error at `path` into a full key and a reason.
fn describe_serde_error(path: &str, error: &config::ConfigError) -> (String, String) {
    let join = |field: &str| {
        if path == "." { field.to_owned() } else { format!("{path}.{field}") }
    };
    match error {
        config::ConfigError::Type { unexpected, expected, .. } => {
            return (path.to_owned(), format!("wrong type: expected {expected}, found {unexpected}"));
        }
        // The config crate glues parent and field together (`pipeline[0]input`): keep the field.
        config::ConfigError::NotFound(glued) => {
            let field = glued.rsplit([']', '.']).next().unwrap_or(glued);
            return (join(field), "required key is missing".to_owned());
        }
        _ => {}
    }
    // The config crate appends " for key `…`" (and sometimes the file); we report both separately.
    let message = error.to_string();
    let message = message.split(" for key `").next().unwrap_or_default().to_owned();
    if message.starts_with("unknown field") {
        // serde_path_to_error already put the unknown key at the end of `path`.
        return (path.to_owned(), format!("{message}; check its spelling"));
    }
    if let Some(field) = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
        return (join(field), "required key is missing".to_owned());
    }
    (path.to_owned(), message)
}

/// Replaces each directory in `files` by its `*.toml` files, sorted by name.
fn expand_directories(files: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut expanded = Vec::new();
    for path in files {
        if !path.is_dir() {
            expanded.push(path.clone());
            continue;
        }
        let unreadable = |error: std::io::Error| {
            ConfigError::whole(
                Some(path.display().to_string()),
                format!("cannot read this configuration directory: {error}"),
            )
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path).map_err(unreadable)? {
            let file = entry.map_err(unreadable)?.path();
            if file.extension().is_some_and(|extension| extension == "toml") && file.is_file() {
                found.push(file);
            }
        }
        found.sort();
        expanded.extend(found);
    }
    Ok(expanded)
}

/// Where each key came from: the merged `config::Config`, which remembers every value's origin, and the files as
/// the user named them (the `config` crate records some origins relative to the working directory instead).
#[derive(Debug, Clone)]
struct Origins {
    merged: config::Config,
    files: Vec<PathBuf>,
}

impl Origins {
    /// The file that set `key` (or a value inside it), or the closest enclosing key that has an origin.
    fn file_of(&self, key: &str) -> Option<String> {
        let mut walked = key.to_owned();
        loop {
            if let Some(origin) = lookup(&self.merged.cache, &walked).and_then(origin_within) {
                return Some(as_given(&self.files, origin));
            }
            match walked.rfind(['.', '[']) {
                Some(cut) => walked.truncate(cut),
                None => return self.file_declaring(key),
            }
        }
    }

    /// The last of the files whose TOML has `key`'s top-level table. The config crate keeps an empty table with no
    /// origin at all (`[telemetyr]` holding only comments: found by the config fuzz target), so this reads the
    /// files again, as leniently as the config crate does (invalid UTF-8 replaced); it only runs for such keys.
    fn file_declaring(&self, key: &str) -> Option<String> {
        let top = key.split(['.', '[']).next()?;
        let declares = |file: &&PathBuf| {
            let text = std::fs::read(file).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            text.and_then(|text| toml::from_str::<toml::Table>(&text).ok()).is_some_and(|table| table.contains_key(top))
        };
        self.files.iter().rev().find(declares).map(|file| file.display().to_string())
    }

    /// The folder relative paths in `key` are resolved against: its file's folder, else the working directory.
    fn base_dir_of(&self, key: &str) -> PathBuf {
        self.file_of(key)
            .map(PathBuf::from)
            .filter(|file| file.is_file())
            .and_then(|file| file.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    fn resolve(&self, key: &str, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { self.base_dir_of(key).join(path) }
    }
}

/// The origin of `value`, else of the first value inside it that has one. A table that a dotted header creates
/// implicitly (`[[pipeline.preprocess]]` without a `[[pipeline]]` before it) has no origin of its own, only its
/// contents do (found by the config fuzz target).
fn origin_within(value: &config::Value) -> Option<&str> {
    value.origin().or_else(|| match &value.kind {
        config::ValueKind::Table(table) => table.values().find_map(origin_within),
        config::ValueKind::Array(array) => array.iter().find_map(origin_within),
        _ => None,
    })
}

/// The path, as the user gave it among `files`, of the file that `origin` denotes, else `origin` itself (e.g.
/// `environment`).
fn as_given(files: &[PathBuf], origin: &str) -> String {
    let canonical = |path: &Path| std::fs::canonicalize(path).ok();
    let target = canonical(Path::new(origin));
    files
        .iter()
        .find(|file| target.is_some() && canonical(file) == target)
        .map_or_else(|| origin.to_owned(), |file| file.display().to_string())
}

/// Walks a key path like `pipeline[0].decode.max_bytes` through the merged value tree. (`config::Config::get`
/// would deserialise a copy and lose the origin.)
fn lookup<'a>(root: &'a config::Value, key: &str) -> Option<&'a config::Value> {
    let mut value = root;
    for part in key.split('.') {
        let (name, indices) = part.split_once('[').map_or((part, ""), |(name, rest)| (name, rest));
        if !name.is_empty() {
            let config::ValueKind::Table(table) = &value.kind else {
                return None;
            };
            value = table.get(name)?;
        }
        for index in indices.split('[').filter(|index| !index.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            let config::ValueKind::Array(array) = &value.kind else {
                return None;
            };
            value = array.get(index)?;
        }
    }
    Some(value)
}

fn validate(raw: RawConfig, files: &[PathBuf], origins: Origins) -> Result<Config, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::at(&origins, key, reason);

    let zenoh = ZenohConfig {
        mode: raw.zenoh.mode,
        listen: raw.zenoh.listen,
        connect: raw.zenoh.connect,
        multicast_scouting: raw.zenoh.multicast_scouting,
        config_file: raw.zenoh.config_file.map(|file| origins.resolve("zenoh.config_file", &file)),
    };
    if let Some(file) = zenoh.config_file.as_ref().filter(|file| !file.is_file()) {
        return Err(err("zenoh.config_file", format!("{} does not exist", file.display())));
    }
    crate::io::session::zenoh_config(&zenoh).map_err(|(key, reason)| err(&format!("zenoh.{key}"), reason))?;

    let ort_library = raw.onnxruntime.library.map(|file| origins.resolve("onnxruntime.library", &file));
    if let Some(file) = ort_library.as_ref().filter(|file| !file.is_file()) {
        return Err(err(
            "onnxruntime.library",
            format!("{} does not exist; run scripts/install-onnxruntime.sh or fix the path", file.display()),
        ));
    }

    if raw.daemon.memory_mb == Some(0) {
        return Err(err("daemon.memory_mb", "must be at least 1 (leave it out to use the cgroup's limit)".into()));
    }
    if !(1..=100).contains(&raw.daemon.memory_soft_percent) {
        return Err(err("daemon.memory_soft_percent", "must be between 1 and 100".into()));
    }
    if raw.daemon.memory_sample_ms < 5 {
        return Err(err("daemon.memory_sample_ms", "must be at least 5".into()));
    }
    if raw.daemon.reload_timeout_ms < 1000 {
        return Err(err(
            "daemon.reload_timeout_ms",
            "must be at least 1000: a reload loading for longer stops the watchdog pings, so a smaller value would \
             get every reload restarted"
                .into(),
        ));
    }
    check_publish_prefix(&raw.telemetry.prefix).map_err(|reason| err("telemetry.prefix", reason))?;
    if raw.telemetry.interval_ms < 10 {
        return Err(err("telemetry.interval_ms", "must be at least 10".into()));
    }
    let telemetry = TelemetryConfig {
        prefix: raw.telemetry.prefix.trim_end_matches('/').to_owned(),
        interval: Duration::from_millis(raw.telemetry.interval_ms),
        encoding: raw.telemetry.encoding,
    };

    let mut pipelines = Vec::with_capacity(raw.pipelines.len());
    for (index, pipeline) in raw.pipelines.into_iter().enumerate() {
        let key = format!("pipeline[{index}]");
        let validated = validate_pipeline(pipeline, &key, &origins)?;
        if pipelines.iter().any(|other: &PipelineConfig| other.name == validated.name) {
            return Err(err(&format!("{key}.name"), format!("`{}` is used by another pipeline", validated.name)));
        }
        pipelines.push(validated);
    }

    check_feedback_loops(&pipelines, &telemetry.prefix, &origins)?;

    Ok(Config {
        sources: files.to_vec(),
        zenoh,
        ort_library,
        telemetry,
        drain_timeout: Duration::from_millis(raw.daemon.drain_timeout_ms),
        reload_timeout: Duration::from_millis(raw.daemon.reload_timeout_ms),
        memory: MemoryConfig {
            budget_mb: raw.daemon.memory_mb,
            soft_percent: raw.daemon.memory_soft_percent,
            reserve_mb: raw.daemon.memory_reserve_mb,
            sample_interval: Duration::from_millis(raw.daemon.memory_sample_ms),
            page_out_after_load: raw.daemon.page_out_after_load,
        },
        pipelines,
        origins,
    })
}

/// Outcomes the default `max_in_flight` allows to wait for publication beyond what the queues hold: enough for a
/// burst of drop notices at zenoh's delivery rate (a few milliseconds of it), a few MiB at most.
pub const DEFAULT_PUBLISH_BACKLOG: usize = 8192;

/// Default `max_batch_tokens`: the activations of one run, and so the arena ONNX Runtime keeps and the peak RSS,
/// grow with rows × length. With the shipped sentiment model (`zinferd bench footprint`, README) a cap of 256
/// tokens keeps batches of 8 short texts (the common case) and runs long ones two at a time.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 256;

fn validate_pipeline(raw: RawPipeline, key: &str, origins: &Origins) -> Result<PipelineConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError::at(origins, &format!("{key}.{field}"), reason);
    let name_ok = !raw.name.is_empty() && raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(err("name", format!("`{}` must be non-empty and use only letters, digits, - and _", raw.name)));
    }
    zenoh::key_expr::KeyExpr::try_from(raw.input.as_str())
        .map_err(|error| err("input", format!("`{}` is not a valid zenoh key expression: {error}", raw.input)))?;
    check_publish_prefix(&raw.output_prefix).map_err(|reason| err("output_prefix", reason))?;
    if raw.queue_capacity == 0 {
        return Err(err("queue_capacity", "must be at least 1".into()));
    }
    if raw.queue_bytes == 0 {
        return Err(err("queue_bytes", "must be at least 1".into()));
    }
    if raw.latest_per_key == 0 {
        return Err(err("latest_per_key", "must be at least 1".into()));
    }
    if !(1..=1024).contains(&raw.max_batch) {
        return Err(err("max_batch", format!("{} is not between 1 and 1024", raw.max_batch)));
    }
    if raw.max_batch_tokens == Some(0) {
        return Err(err("max_batch_tokens", "must be at least 1 (leave it out for the default)".into()));
    }
    if raw.max_in_flight == Some(0) {
        return Err(err("max_in_flight", "must be at least 1 (leave it out for the default)".into()));
    }
    if raw.deadline_ms == Some(0) {
        return Err(err("deadline_ms", "must be at least 1 (leave it out for no deadline)".into()));
    }
    if let Some(instances) = raw.instances.filter(|instances| !(1..=64).contains(instances)) {
        return Err(err("instances", format!("{instances} is not between 1 and 64 (leave it out for the default)")));
    }
    if raw.session.intra_threads == Some(0) {
        return Err(err("session.intra_threads", "must be at least 1 (leave it out for one per physical core)".into()));
    }
    if raw.drift_check_every_s == Some(0) {
        return Err(err("drift_check_every_s", "must be at least 1 (leave it out to check only at start-up)".into()));
    }
    let manifest_key = format!("{key}.model");
    let manifest_path = origins.resolve(&manifest_key, &raw.model);
    let manifest = ModelManifest::load(&manifest_path).map_err(|error| err("model", error.to_string()))?;
    if raw.drift_check_every_s.is_some() && (manifest.golden.is_none() || raw.drift_guard == DriftGuardMode::Off) {
        return Err(err(
            "drift_check_every_s",
            "needs golden inputs to run: a model manifest with a [golden] table, and drift_guard not \"off\"".into(),
        ));
    }
    let ladder = raw.ladder.map(|ladder| validate_ladder(ladder, &manifest, key, origins)).transpose()?;
    Ok(PipelineConfig {
        name: raw.name,
        input: raw.input,
        output_prefix: raw.output_prefix.trim_end_matches('/').to_owned(),
        result_encoding: raw.result_encoding,
        queue_capacity: raw.queue_capacity,
        deadline_ms: raw.deadline_ms,
        max_batch: raw.max_batch,
        max_batch_tokens: raw.max_batch_tokens.unwrap_or(DEFAULT_MAX_BATCH_TOKENS),
        queue_bytes: raw.queue_bytes,
        overload: raw.overload,
        share: raw.share,
        latest_per_key: raw.latest_per_key,
        max_in_flight: raw.max_in_flight.unwrap_or(2 * raw.queue_capacity + raw.max_batch + DEFAULT_PUBLISH_BACKLOG),
        result_congestion_control: raw.result_congestion_control,
        result_priority: raw.result_priority,
        manifest,
        decode: raw.decode,
        preprocess: raw.preprocess,
        postprocess: raw.postprocess,
        session: raw.session,
        instances: raw.instances,
        drift_guard: raw.drift_guard,
        drift_check_every: raw.drift_check_every_s.map(std::time::Duration::from_secs),
        ladder,
        base_dir: origins.base_dir_of(key),
        key: key.to_owned(),
    })
}

/// Checks `[pipeline.ladder]`: each rung a manifest for the same task and labels as the pipeline's `model`, so that
/// the pipeline's stages and its results mean the same whichever rung serves.
fn validate_ladder(
    raw: raw::RawLadder,
    top: &ModelManifest,
    key: &str,
    origins: &Origins,
) -> Result<LadderConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError::at(origins, &format!("{key}.ladder.{field}"), reason);
    if raw.rungs.is_empty() {
        return Err(err("rungs", "lists no model: name at least one smaller model, or leave [ladder] out".into()));
    }
    if raw.down_after_ms == 0 || raw.up_after_ms == 0 {
        let field = if raw.down_after_ms == 0 { "down_after_ms" } else { "up_after_ms" };
        return Err(err(field, "must be at least 1".into()));
    }
    let mut rungs = Vec::with_capacity(raw.rungs.len());
    for (index, path) in raw.rungs.iter().enumerate() {
        let rung_key = format!("{key}.ladder.rungs");
        let field = format!("rungs[{index}]");
        let manifest =
            ModelManifest::load(&origins.resolve(&rung_key, path)).map_err(|error| err(&field, error.to_string()))?;
        if manifest.task != top.task || manifest.labels != top.labels || manifest.sensor != top.sensor {
            return Err(err(
                &field,
                format!(
                    "model {} is not for the same task as `model` ({}): a rung must have the same task, labels and \
                     sensor layout, so that the pipeline's stages and results mean the same on every rung",
                    manifest.name, top.name
                ),
            ));
        }
        if manifest.path == top.path || rungs.iter().any(|rung: &ModelManifest| rung.path == manifest.path) {
            return Err(err(&field, format!("model {} is already on the ladder", manifest.name)));
        }
        rungs.push(manifest);
    }
    Ok(LadderConfig {
        rungs,
        down_after: Duration::from_millis(raw.down_after_ms),
        up_after: Duration::from_millis(raw.up_after_ms),
    })
}

/// Refuses a pipeline input that overlaps a key space zinferd publishes on (telemetry, status and liveliness under
/// the telemetry prefix; every pipeline's results under its output prefix): the daemon would take in its own output,
/// and each result could come back as a new message, without end.
fn check_feedback_loops(pipelines: &[PipelineConfig], telemetry: &str, origins: &Origins) -> Result<(), ConfigError> {
    use zinfer_proto::keys;
    let about_itself = [keys::telemetry(telemetry), keys::status(telemetry), keys::alive(telemetry)];
    let published: Vec<(String, String)> = about_itself
        .into_iter()
        .map(|key| (key, "zinferd publishes about itself (telemetry.prefix)".to_owned()))
        .chain(pipelines.iter().map(|pipeline| {
            (format!("{}/**", pipeline.output_prefix), format!("pipeline `{}` publishes its results", pipeline.name))
        }))
        .collect();
    for pipeline in pipelines {
        let Ok(input) = zenoh::key_expr::KeyExpr::try_from(pipeline.input.as_str()) else { continue };
        for (space, what) in &published {
            let Ok(space_expr) = zenoh::key_expr::KeyExpr::try_from(space.as_str()) else { continue };
            if input.intersects(&space_expr) {
                return Err(ConfigError::at(
                    origins,
                    &format!("{}.input", pipeline.key),
                    format!(
                        "`{}` overlaps `{space}`, where {what}: zinferd would take in its own output. Narrow the \
                         input, or move that prefix out of its way",
                        pipeline.input
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A prefix zinferd publishes under must be a key expression without wildcards.
fn check_publish_prefix(prefix: &str) -> Result<(), String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.contains('*') || trimmed.contains('$') {
        return Err(format!("`{prefix}` must not contain wildcards: zinferd publishes under it"));
    }
    zenoh::key_expr::KeyExpr::try_from(trimmed)
        .map(drop)
        .map_err(|error| format!("`{prefix}` is not a valid zenoh key expression: {error}"))
}

#[cfg(test)]
mod tests;
