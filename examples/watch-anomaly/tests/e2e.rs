//! The example end to end, from outside: its own binary (zinferd's command line with this crate's registry) on
//! `configs/example.toml`, a real zenoh session on loopback, the shipped anomaly model and the uint8 fixture through
//! a real ONNX Runtime.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use zenoh::bytes::Encoding;
use zinfer_proto::{SensorFrame, outcome};
use zinferd::client::Client;

const WAIT: Duration = Duration::from_secs(60);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// zinfer's ONNX Runtime: `ORT_DYLIB_PATH`, else what scripts/install-onnxruntime.sh put in the repository.
fn ort_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let path = crate_dir().join(format!("../../.ort/{}/lib/libonnxruntime.so", std::env::consts::ARCH));
    assert!(path.is_file(), "{} is missing: run scripts/install-onnxruntime.sh first", path.display());
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The example config, then a layer that moves it to `port` on loopback and names this machine's ONNX Runtime.
fn configs(port: u16, dir: &Path) -> Vec<PathBuf> {
    let layer = dir.join("test.toml");
    let text = format!(
        "[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n\n[telemetry]\nprefix = \"zt/example/{port}\"\n\n\
         [onnxruntime]\nlibrary = \"{}\"\n",
        ort_library().display()
    );
    std::fs::write(&layer, text).expect("write the test layer");
    vec![crate_dir().join("configs/example.toml"), layer]
}

fn watch_anomaly(configs: &[PathBuf], command: &str) -> Command {
    let mut process = Command::new(env!("CARGO_BIN_EXE_watch-anomaly"));
    for config in configs {
        process.arg("--config").arg(config);
    }
    process.arg(command);
    process
}

/// The daemon, stopped with SIGTERM (as systemd would) when the test is done, killed if the test fails first.
struct Daemon(Child);

impl Daemon {
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the daemon") {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop within {WAIT:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A recording the model toolkit exported beside the model: raw readings, one row of 6 channels per sample.
fn recording(file: &str) -> Vec<Vec<f32>> {
    let path = crate_dir().join("../../models/zinfer-watch-anomaly").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("a JSON recording");
    serde_json::from_value(json["samples"].clone()).expect("samples: rows of floats")
}

fn manifest_threshold() -> f32 {
    let path = crate_dir().join("../../models/zinfer-watch-anomaly/manifest.toml");
    let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("TOML");
    manifest["head"]["threshold"].as_float().expect("[head] threshold") as f32
}

/// A binary PGM image `width` pixels wide.
fn pgm(width: usize, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = format!("P5\n{width} {}\n255\n", pixels.len() / width).into_bytes();
    bytes.extend_from_slice(pixels);
    bytes
}

#[test]
fn check_builds_both_pipelines_with_the_example_stages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = watch_anomaly(&configs(free_port(), dir.path()), "check").output().expect("run check");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "check failed: {printed}");
    assert!(printed.contains("watch-anomaly") && printed.contains("gray8"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_head_and_a_uint8_model_answer_over_zenoh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = watch_anomaly(&configs(port, dir.path()), "run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start watch-anomaly");
    let daemon = Daemon(child);
    let client = Client::connect(&format!("tcp/127.0.0.1:{port}")).await.expect("client");
    client.wait_for_subscriber("sensor/in/anomaly/normal", WAIT).await.expect("the sensor pipeline subscribes");
    client.wait_for_subscriber("camera/in/gray8/cam1", WAIT).await.expect("the image pipeline subscribes");

    // Each recording is its own stream (the key names it), sent as 12 frames of 50 samples: 11 windows of 100
    // samples at the model's hop of 50. Every window gets the head's verdict against the model's own threshold.
    let threshold = manifest_threshold();
    let mut flagged = Vec::new();
    for name in ["normal", "anomaly"] {
        let key = format!("sensor/in/anomaly/{name}");
        let results = client.results("zinfer/out", &key).await.expect("subscribe to results");
        let mut windows = Vec::new();
        for (index, chunk) in recording(&format!("test_recording_{name}.json")).chunks(50).enumerate() {
            let frame = SensorFrame {
                channel_count: 6,
                values: chunk.iter().flatten().copied().collect(),
                ..SensorFrame::default()
            };
            let id = format!("{name}-{index}");
            let payload = (frame.encode_to_vec(), Encoding::APPLICATION_PROTOBUF);
            let result = client.round_trip(&results, &key, &id, payload, WAIT).await.expect("a result per frame");
            assert_eq!((result.outcome.as_str(), result.id.as_str()), (outcome::OK, id.as_str()), "{result:?}");
            assert_eq!(result.label, None, "an anomaly head fills no classification fields");
            if let Some(last) = result.windows.last() {
                assert_eq!(result.anomaly, last.anomaly, "the result repeats its last window's verdict");
            }
            windows.extend(result.windows);
        }
        assert_eq!(windows.len(), 11, "{name}: windows of 600 samples");
        let verdicts: Vec<_> = windows.iter().map(|window| window.anomaly.expect("every window judged")).collect();
        for verdict in &verdicts {
            assert!(verdict.score.is_finite() && verdict.score >= 0.0, "{verdict:?}");
            assert_eq!(verdict.threshold, threshold, "the manifest's threshold");
            assert_eq!(verdict.anomalous, verdict.score > threshold, "{verdict:?}");
        }
        flagged.push(verdicts.iter().filter(|verdict| verdict.anomalous).count());
    }
    let (normal, anomaly) = (flagged[0], flagged[1]);
    assert!(normal <= 5 && anomaly >= 6, "flagged windows: {normal}/11 normal, {anomaly}/11 of the unseen exercise");

    // Raw pixels reach the model as uint8, and its two values come back named.
    let key = "camera/in/gray8/cam1";
    let results = client.results("zinfer/out", key).await.expect("subscribe to results");
    let ramp: Vec<u8> = (0..64).map(|pixel| pixel * 4).collect();
    let image = (pgm(8, &ramp), Encoding::APPLICATION_OCTET_STREAM);
    let result = client.round_trip(&results, key, "frame-1", image, WAIT).await.expect("a result");
    assert_eq!(result.outcome, outcome::OK, "{result:?}");
    let values = result.values.expect("a scores head's values");
    assert_eq!(values.names, ["brightness", "contrast"]);
    let expected = [126.0 / 255.0, 252.0 / 255.0];
    assert!(values.values.iter().zip(expected).all(|(got, want)| (got - want).abs() < 1e-6), "{values:?}");
    let names: Vec<&str> = result.stages.iter().map(|stage| stage.name.as_str()).collect();
    assert_eq!(names, ["pixels", "scores"]);

    // Junk and a wrong size are the sender's errors, answered with the sender's id; the pipeline carries on.
    for (id, payload, reason) in
        [("junk", b"GIF89a".to_vec(), "bad_pgm"), ("small", pgm(4, &[9; 16]), "wrong_image_size")]
    {
        let image = (payload, Encoding::APPLICATION_OCTET_STREAM);
        let result = client.round_trip(&results, key, id, image, WAIT).await.expect("an outcome");
        assert_eq!((result.outcome.as_str(), result.reason.as_str(), result.id.as_str()), (outcome::ERROR, reason, id));
    }
    let image = (pgm(8, &[255; 64]), Encoding::APPLICATION_OCTET_STREAM);
    let result = client.round_trip(&results, key, "frame-2", image, WAIT).await.expect("a result");
    assert_eq!(result.values.expect("values").values, [1.0, 0.0]);
    client.close().await;

    let status = daemon.stop();
    assert!(status.success(), "watch-anomaly exits cleanly on SIGTERM: {status}");
}
