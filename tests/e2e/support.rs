//! Test harness: a real `zinferd` process on a free loopback port (or in client mode behind a zenoh router the
//! test runs in process) with a per-test temp dir, that a test may kill and restart, and zenoh clients.
//!
//! Every wait is bounded; nothing sleeps to synchronise except bounded polling of a condition.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use zinfer_proto as proto;
use zinferd::client::Client;

/// Generous bound for any single wait in these tests (debug builds on a loaded 2-core CI machine).
pub const WAIT: Duration = Duration::from_secs(30);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("daemon/ has a parent").to_owned()
}

/// The fixture model's manifest.
pub fn fixture_manifest() -> PathBuf {
    repo_root().join("models/fixture/manifest.toml")
}

/// The ONNX Runtime library for child processes: ORT_DYLIB_PATH if set, else the one install-onnxruntime.sh puts
/// in the checkout.
pub fn ort_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let path = repo_root().join(format!(".ort/{}/lib/libonnxruntime.so", std::env::consts::ARCH));
    assert!(path.is_file(), "{} is missing: run scripts/install-onnxruntime.sh first", path.display());
    path
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The `[zenoh]` and `[telemetry]` part of a test config, plus what the test adds.
pub fn base_config(port: u16, prefix: &str) -> String {
    format!("[zenoh]\nmode = \"peer\"\nlisten = [\"tcp/127.0.0.1:{port}\"]\nmulticast_scouting = false\n\n")
        + &service_tables(prefix)
}

/// As [`base_config`] for a peer that also connects to the daemon listening on `peer_port` (two daemons under one
/// prefix, reaching each other without a router).
pub fn base_config_connected(port: u16, peer_port: u16, prefix: &str) -> String {
    base_config(port, prefix).replacen(
        "multicast_scouting",
        &format!("connect = [\"tcp/127.0.0.1:{peer_port}\"]\nmulticast_scouting"),
        1,
    )
}

/// As [`base_config`] for a daemon in client mode behind the router at `router`: it listens on nothing (zinferd's
/// default listen endpoint would otherwise apply) and reaches everything through that router.
pub fn base_config_behind(router: &str, prefix: &str) -> String {
    format!("[zenoh]\nmode = \"client\"\nconnect = [\"{router}\"]\nlisten = []\nmulticast_scouting = false\n\n")
        + &service_tables(prefix)
}

fn service_tables(prefix: &str) -> String {
    format!("[telemetry]\nprefix = \"{prefix}\"\ninterval_ms = 100\n\n[daemon]\ndrain_timeout_ms = 20000\n\n")
}

/// The pipeline table of a shipped configuration (`configs/<file>`), on `manifest`, reading `in/<name>/**` and
/// publishing under `out/`, with `extra` keys.
pub fn shipped_pipeline(file: &str, manifest: &Path, name: &str, extra: &str) -> String {
    let config = std::fs::read_to_string(repo_root().join("configs").join(file)).expect("a shipped config");
    let table = &config[config.find("[[pipeline]]").expect("a pipeline")..];
    let model_line = table.lines().find(|line| line.starts_with("model = ")).expect("a model line");
    let input_line = table.lines().find(|line| line.starts_with("input = ")).expect("an input line");
    let name_line = table.lines().find(|line| line.starts_with("name = ")).expect("a name line");
    table
        .replacen(model_line, &format!("model = \"{}\"\n{extra}", manifest.display()), 1)
        .replacen(input_line, &format!("input = \"in/{name}/**\""), 1)
        .replacen(name_line, &format!("name = \"{name}\""), 1)
        .replace("output_prefix = \"zinfer/out\"", "output_prefix = \"out\"")
}

/// A text pipeline on the fixture model, with extra keys appended to its table (`extra`) and extra stage options.
pub fn text_pipeline(name: &str, input: &str, extra: &str, tokenize: &str, decode: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"{name}\"\ninput = \"{input}\"\noutput_prefix = \"out\"\nmodel = \"{model}\"\n{extra}\n\
         [pipeline.decode]\ntype = \"text\"\n{decode}\n\
         [[pipeline.preprocess]]\ntype = \"tokenize\"\n{tokenize}\n\
         [[pipeline.postprocess]]\ntype = \"classify\"\ntop_k = 2\n\n",
        model = fixture_manifest().display()
    )
}

/// A pipeline on the stall model (tests/fixtures/stall), whose run never ends for a real message.
pub fn stall_pipeline(name: &str, run_timeout_ms: u64) -> String {
    spin_pipeline("stall", name, "", run_timeout_ms)
}

/// A pipeline on one of the models of scripts/fixture/make_stall_model.py that spin ONNX Runtime on purpose.
pub fn spin_pipeline(fixture: &str, name: &str, pipeline_keys: &str, run_timeout_ms: u64) -> String {
    let manifest = repo_root().join(format!("tests/fixtures/{fixture}/manifest.toml"));
    format!(
        "[[pipeline]]\nname = \"{name}\"\ninput = \"in/{name}/**\"\noutput_prefix = \"out\"\nmodel = \"{}\"\n\
         {pipeline_keys}\n[pipeline.decode]\ntype = \"text\"\n[[pipeline.preprocess]]\ntype = \"tokenize\"\n\
         [[pipeline.postprocess]]\ntype = \"classify\"\n[pipeline.session]\nrun_timeout_ms = {run_timeout_ms}\n\n",
        manifest.display()
    )
}

/// A zinferd running one text pipeline `name` on the fixture model, subscribed to `in/<name>/**` and publishing
/// results under `out/`, and a client that has seen its subscriber.
pub struct TextDaemon {
    /// The daemon.
    pub daemon: Daemon,
    /// A connected client.
    pub client: Client,
    /// The daemon's telemetry prefix.
    pub prefix: String,
}

/// Starts a [`TextDaemon`]; `extra` goes into the pipeline table (it may open sub-tables such as
/// `[pipeline.session]`), `tokenize` and `decode` into those stages' tables.
pub async fn start_text(name: &str, extra: &str, tokenize: &str, decode: &str) -> TextDaemon {
    let port = free_port();
    let prefix = format!("zt/{name}/{port}");
    let config = base_config(port, &prefix) + &text_pipeline(name, &format!("in/{name}/**"), extra, tokenize, decode);
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber(&format!("in/{name}/x"), WAIT).await.expect("zinferd subscribes");
    TextDaemon { daemon, client, prefix }
}

/// A running zinferd.
pub struct Daemon {
    child: Option<Child>,
    /// The per-test folder (config, logs), removed when the daemon is dropped.
    dir: tempfile::TempDir,
    /// The endpoint it listens on, or for a daemon in client mode the router it connects to.
    pub endpoint: String,
    log: PathBuf,
    config: PathBuf,
    /// The extra environment it was started with, for [`Daemon::restart`].
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` (which must listen on `port`) and starts zinferd on it; returns once it accepts TCP.
    pub fn start(config: &str, port: u16) -> Self {
        Self::start_with_env(config, port, &[])
    }

    /// As [`Daemon::start`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(config: &str, port: u16, env: &[(&str, String)]) -> Self {
        let mut daemon = Self::spawn(config, format!("tcp/127.0.0.1:{port}"), env);
        daemon.wait_listening(port);
        daemon
    }

    /// Writes `config` (a daemon in client mode, which listens on nothing) and starts zinferd on it, connecting
    /// through the router at `router`; returns at once: wait for it with [`Daemon::wait_subscribed`].
    pub fn start_behind(config: &str, router: &str) -> Self {
        Self::spawn(config, router.to_owned(), &[])
    }

    fn spawn(config: &str, endpoint: String, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("zinferd.toml");
        std::fs::write(&path, config).expect("write config");
        let log = dir.path().join("zinferd.log");
        let env = env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
        let mut daemon = Self { child: None, dir, endpoint, log, config: path, env };
        daemon.child = Some(daemon.launch());
        daemon
    }

    /// Starts the process; its stderr is appended to the log, so a restarted daemon's log holds every run.
    fn launch(&self) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_zinferd"))
            .arg("--config")
            .arg(&self.config)
            .env("ORT_DYLIB_PATH", ort_library())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn zinferd")
    }

    /// Starts zinferd again on the same config, folder and environment after it exited (e.g. after
    /// [`Daemon::kill`]); returns once it accepts TCP on `port` again.
    pub fn restart(&mut self, port: u16) {
        assert!(self.child.is_none(), "restart only a daemon that has exited");
        self.child = Some(self.launch());
        self.wait_listening(port);
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            self.assert_running();
            assert!(Instant::now() < deadline, "zinferd did not listen within {WAIT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics, with the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
            panic!("zinferd exited with {status}:\n{}", self.log());
        }
    }

    /// Waits (bounded) until `session` sees a subscriber on `key`, checking all along that the process is alive.
    pub async fn wait_subscribed(&mut self, session: &zenoh::Session, key: &str) {
        let publisher = session.declare_publisher(key.to_owned()).await.expect("declare a publisher");
        let deadline = Instant::now() + WAIT;
        while !publisher.matching_status().await.is_ok_and(|status| status.matching()) {
            self.assert_running();
            assert!(Instant::now() < deadline, "nothing subscribed to {key} within {WAIT:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// A client connected to it.
    pub async fn client(&self) -> Client {
        Client::connect(&self.endpoint).await.expect("client session")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGKILL and reaps the process: no drain, no goodbye on the network.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait_exit()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`HUP`, `TERM`…).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// The configuration file it was started with (a reload reads it again).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The per-test folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("zinferd did not exit within {WAIT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The results subscriber the tests declare.
pub type Results = zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>;

/// A results subscriber on `key` with room for every result of a test that reads them only at the end: a full
/// channel would hold up the client's session, and with it the status replies the test waits for meanwhile.
pub async fn subscribe_buffered(client: &Client, key: &str) -> Results {
    let session = client.session();
    session.declare_subscriber(key.to_owned()).with(zenoh::handlers::FifoChannel::new(4096)).await.expect("subscribe")
}

/// A copy of the shipped model package `models/<name>` in a folder of its own, to change.
pub fn copy_package(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(repo_root().join("models").join(name)).expect("the shipped package") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("a file name"))).expect("copy");
    }
    dir
}

/// The next sample on `results`, within [`WAIT`].
pub async fn next_sample(results: &Results) -> zenoh::sample::Sample {
    tokio::time::timeout(WAIT, results.recv_async()).await.expect("a result in time").expect("sample")
}

/// The next result on `results`, within [`WAIT`], decoded.
pub async fn next_result(results: &Results) -> proto::Result {
    zinferd::client::decode_result(&next_sample(results).await).expect("decode")
}

/// Collects `count` outcomes from `results`, keyed by id: panics on a duplicate, or when the next one takes longer
/// than [`WAIT`] (with the daemon's log).
pub async fn collect_outcomes(results: &Results, count: usize, daemon: &Daemon) -> BTreeMap<String, proto::Result> {
    let mut all = BTreeMap::new();
    while all.len() < count {
        let sample = tokio::time::timeout(WAIT, results.recv_async())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} outcomes:\n{}", all.len(), daemon.log()))
            .expect("sample");
        let result = zinferd::client::decode_result(&sample).expect("decode");
        let id = result.id.clone();
        assert!(all.insert(id.clone(), result).is_none(), "duplicate outcome for {id}");
    }
    all
}

/// Asks the daemon's status queryable for a telemetry snapshot.
pub async fn status(client: &Client, prefix: &str) -> proto::Telemetry {
    try_status(client.session(), prefix).await.expect("a status reply")
}

/// Asks the status queryable through `session`; `None` when nothing answers (no daemon reachable right now).
pub async fn try_status(session: &zenoh::Session, prefix: &str) -> Option<proto::Telemetry> {
    let key = proto::keys::status(prefix);
    let replies = session.get(key).await.expect("status query");
    let reply = tokio::time::timeout(WAIT, replies.recv_async()).await.expect("status reply in time").ok()?;
    let sample = reply.result().expect("an ok reply");
    Some(serde_json::from_slice(&sample.payload().to_bytes()).expect("status is JSON telemetry"))
}

/// A zenoh router in this process, in place of `zenohd` (as zenoh's own tests/acl.rs runs one): it listens on
/// `tcp/127.0.0.1:<port>` only and does not scout.
pub async fn open_router(port: u16) -> zenoh::Session {
    open_session("router", &[("listen/endpoints", format!("[\"tcp/127.0.0.1:{port}\"]"))]).await
}

/// A zenoh session in client mode that reaches everything through the router at `router`.
pub async fn open_client(router: &str) -> zenoh::Session {
    open_session("client", &[("connect/endpoints", format!("[\"{router}\"]")), ("listen/endpoints", "[]".into())]).await
}

async fn open_session(mode: &str, keys: &[(&str, String)]) -> zenoh::Session {
    try_open_session(mode, keys).await.unwrap_or_else(|error| panic!("open a {mode} session: {error}"))
}

/// A zenoh session of `mode` with `keys` (JSON5 values) and multicast scouting off, or zenoh's refusal to open it
/// (e.g. a client that cannot connect to its router).
pub async fn try_open_session(mode: &str, keys: &[(&str, String)]) -> Result<zenoh::Session, zenoh::Error> {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", &format!("\"{mode}\"")).expect("mode");
    config.insert_json5("scouting/multicast/enabled", "false").expect("multicast off");
    for (key, value) in keys {
        config.insert_json5(key, value).unwrap_or_else(|error| panic!("{key} = {value}: {error}"));
    }
    tokio::time::timeout(WAIT, zenoh::open(config))
        .await
        .unwrap_or_else(|_| panic!("a {mode} session did not open within {WAIT:?}"))
}

/// Polls status through `session` until its service state satisfies `done`; returns that state.
pub async fn wait_for_service(
    daemon: &mut Daemon,
    session: &zenoh::Session,
    prefix: &str,
    done: impl Fn(&proto::ServiceState) -> bool,
) -> proto::ServiceState {
    let deadline = Instant::now() + WAIT;
    loop {
        daemon.assert_running();
        let service = try_status(session, prefix).await.and_then(|snapshot| snapshot.service);
        match service {
            Some(service) if done(&service) => return service,
            last => assert!(Instant::now() < deadline, "the service state did not change in {WAIT:?}: {last:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls status until `done` holds for the first pipeline (bounded). A poll that gets no reply is tried again: once
/// in three CI runs, right after zenoh had cut off and reconnected another client of the daemon (the 30 s stall
/// test), one status query got no reply (cause not found); only a status that stays silent until the deadline fails.
pub async fn wait_for_stats(
    client: &Client,
    prefix: &str,
    what: &str,
    done: impl Fn(&proto::PipelineStats) -> bool,
) -> proto::Telemetry {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some(snapshot) = try_status(client.session(), prefix).await {
            if snapshot.pipelines.first().is_some_and(&done) {
                return snapshot;
            }
            last = Some(snapshot);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last snapshot: {last:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How close an int8 model's outputs (probabilities) come to the references the toolkit computed with Python's ONNX
/// Runtime on another machine. ONNX Runtime picks its int8 kernels by instruction set: the machines earlier CI runs
/// used (VNNI, per the stack notes) matched the references to 1e-4. Without VNNI, x86's u8×s8 kernels sum pairs in
/// 16 bits and saturate (ONNX Runtime's documented reason for `reduce_range`): on an AVX2-only AMD EPYC, Python's
/// ONNX Runtime itself gave the fixture's probabilities 3.8e-3 away, identical to zinferd's, and zinferd gave one
/// sensor window 0.13 away (0.526 for 0.657, same label). With AMX (an Intel Xeon with `amx_int8` and AVX-512 VNNI),
/// Python's ONNX Runtime 1.31.1 gave the sensor fixture's probabilities up to 2.3e-4 away (window 10 of
/// `test_recording.json`), identical to zinferd's to the last digit printed: 1e-3 there. Only the tolerance moves;
/// labels must match everywhere.
pub fn int8_tolerance() -> f64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |wanted: &[&str]| cpuinfo.split_whitespace().any(|flag| wanted.contains(&flag));
    match std::env::consts::ARCH {
        "x86_64" if has(&["amx_int8"]) => 1e-3,
        "x86_64" if has(&["avx512_vnni", "avx_vnni"]) => 1e-4,
        "x86_64" => 0.2,
        _ => 1e-4,
    }
}

/// The golden cases the toolkit computed with Python tokenizers + onnxruntime on the fixture model.
#[derive(serde::Deserialize)]
pub struct Golden {
    pub labels: Vec<String>,
    pub cases: Vec<GoldenCase>,
}

/// One golden case.
#[derive(serde::Deserialize)]
pub struct GoldenCase {
    pub text: String,
    pub probs: Vec<f64>,
    pub label: String,
}

/// Reads models/fixture/golden.json.
pub fn golden() -> Golden {
    let text = std::fs::read_to_string(repo_root().join("models/fixture/golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

impl Golden {
    /// Publishes every case's text on `key`, `rounds` times over, as fast as zenoh takes them (blocking rather than
    /// dropping), each with the attachment id `<round>-<case index>`; returns how many it sent.
    pub async fn publish_rounds(&self, client: &Client, key: &str, rounds: usize) -> usize {
        for round in 0..rounds {
            for (index, case) in self.cases.iter().enumerate() {
                client
                    .session()
                    .put(key, case.text.clone())
                    .attachment(format!("{round}-{index}"))
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .await
                    .expect("put");
            }
        }
        rounds * self.cases.len()
    }

    /// The case a `<round>-<case index>` id names.
    pub fn case_of(&self, id: &str) -> &GoldenCase {
        let index: usize = id.split('-').nth(1).and_then(|index| index.parse().ok()).expect("id round-index");
        &self.cases[index]
    }
}

/// Publishes `payload` on `key` with blocking congestion control, so zenoh delivers all of a burst to the daemon.
pub async fn put(client: &Client, key: &str, payload: Vec<u8>, encoding: zenoh::bytes::Encoding) {
    client
        .session()
        .put(key, payload)
        .encoding(encoding)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .expect("put");
}

/// The resident set size of process `pid`, from /proc, as the daemon measures its own (e2e_alone's reload tests).
#[allow(dead_code)]
pub fn rss_bytes(pid: u32) -> u64 {
    let (rss, _) = zinferd::memory::process_memory(&pid.to_string()).expect("the daemon's /proc status");
    assert!(rss > 0, "a VmRSS line in /proc/{pid}/status");
    rss
}

/// The anonymous part of process `pid`'s resident memory (its heap and other private memory), in bytes: what grows
/// when the daemon holds more, unlike code pages, which come and go with what runs (see `page_out_after_load`).
pub fn anon_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "RssAnon")
}

/// A size line of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`…), in bytes, as the daemon reads its own.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let bytes = zinferd::memory::status_bytes(&pid.to_string(), field).expect("the daemon's /proc status");
    assert!(bytes > 0, "a {field} line in /proc/{pid}/status");
    bytes
}

/// The service manager's end of the notify protocol: every datagram the daemon sends, in order, with the time it
/// arrived (empty strings are read timeouts that keep the reader polling).
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    messages: Receiver<(Instant, String)>,
}

impl NotifySocket {
    pub fn bind() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let (sender, messages) = channel();
        // Ends when the test drops the receiver (the next send fails).
        std::thread::spawn(move || {
            let mut buffer = vec![0; 4096];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(length) => {
                        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
                        if sender.send((Instant::now(), message)).is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        if sender.send((Instant::now(), String::new())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { _dir: dir, path, messages }
    }

    pub fn env(&self, watchdog: Duration) -> Vec<(&'static str, String)> {
        vec![("NOTIFY_SOCKET", self.path.display().to_string()), ("WATCHDOG_USEC", watchdog.as_micros().to_string())]
    }

    /// The next datagram that satisfies `wanted`, within `within`.
    pub fn wait_for(&self, what: &str, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        self.wait_for_stamped(what, within, |_, message| wanted(message)).1
    }

    /// The next datagram that satisfies `wanted`, within `within`, and when it arrived; `wanted` sees every
    /// datagram before it too.
    pub fn wait_for_stamped(
        &self,
        what: &str,
        within: Duration,
        mut wanted: impl FnMut(Instant, &str) -> bool,
    ) -> (Instant, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok((at, message)) if !message.is_empty() && wanted(at, &message) => return (at, message),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no notification {what} within {within:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the notify socket reader stopped"),
            }
        }
    }

    /// Every datagram that arrives during `period`.
    pub fn collect(&self, period: Duration) -> Vec<String> {
        self.collect_stamped(period).into_iter().map(|(_, message)| message).collect()
    }

    /// Every datagram that arrives during `period`, and when.
    pub fn collect_stamped(&self, period: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + period;
        let mut all = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.messages.recv_timeout(left) {
                Ok((at, message)) if !message.is_empty() => all.push((at, message)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        all
    }
}

/// Runs `zinferd [--config <config>] bench <args> --json <report>` in a temp dir, with the tests' ONNX Runtime;
/// asserts that it succeeded and returns what it printed and its JSON report.
pub fn run_bench(config: Option<&str>, args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_zinferd"));
    command.current_dir(dir.path()).env("ORT_DYLIB_PATH", ort_library());
    if let Some(config) = config {
        let path = dir.path().join("zinferd.toml");
        std::fs::write(&path, config).expect("write config");
        command.arg("--config").arg(&path);
    }
    let output = command.arg("bench").args(args).arg("--json").arg(&json).output().expect("run zinferd bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    (stdout, report)
}
