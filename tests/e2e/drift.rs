//! The drift guard, attacked the way a bad update would: a model file that is valid ONNX, matches the sha256 of its
//! (updated) manifest, but whose weights were perturbed. It must be refused at start-up, by `zinferd check`, and at
//! a reload (the serving model goes on serving); the shipped models must pass; the periodic check must show in
//! telemetry.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zinferd::client::RequestFormat;

use crate::support::{
    Daemon, NotifySocket, WAIT, base_config, copy_package, free_port, ort_library, repo_root, shipped_pipeline, status,
    wait_for_service,
};

/// A copy of a shipped model package in a folder of its own, to damage.
struct Package {
    dir: tempfile::TempDir,
}

impl Package {
    fn copy(name: &str) -> Self {
        Self { dir: copy_package(name) }
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("manifest.toml")
    }

    fn model(&self) -> PathBuf {
        self.dir.path().join("model.onnx")
    }

    /// Adds pseudo-random noise of up to ±`amplitude` to every element of the model's 8-bit weight tensors, then
    /// writes the new file's sha256 into the manifest, as an update that shipped the wrong weights would.
    fn perturb(&self, amplitude: u8) {
        let mut bytes = std::fs::read(self.model()).expect("read the model");
        let weights = eight_bit_initializers(&bytes);
        assert!(!weights.is_empty(), "the model has 8-bit weights to perturb");
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for range in weights {
            for byte in &mut bytes[range] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state % (2 * u64::from(amplitude) + 1)) as i16 - i16::from(amplitude);
                *byte = (i16::from(*byte as i8) + noise).clamp(-128, 127) as i8 as u8;
            }
        }
        std::fs::write(self.model(), &bytes).expect("write the model");
        self.update_checksum();
    }

    fn update_checksum(&self) {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(std::fs::read(self.model()).expect("read the model"))
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let manifest = std::fs::read_to_string(self.manifest()).expect("read the manifest");
        let updated: Vec<String> = manifest
            .lines()
            .map(|line| if line.starts_with("sha256 = ") { format!("sha256 = \"{hash}\"") } else { line.to_owned() })
            .collect();
        std::fs::write(self.manifest(), updated.join("\n") + "\n").expect("write the manifest");
    }
}

/// The byte ranges of the raw data of every 8-bit (INT8 or UINT8) initializer of an ONNX model, found by walking
/// the protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.data_type = 2 and
/// raw_data = 9). Changing bytes inside them keeps the file a valid model of the same structure.
fn eight_bit_initializers(model: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    for graph in fields(model, 0..model.len()).filter(|(field, _)| *field == 7).map(|(_, range)| range) {
        for tensor in fields(model, graph).filter(|(field, _)| *field == 5).map(|(_, range)| range) {
            let (mut data_type, mut raw) = (0, None);
            for (field, range) in fields(model, tensor) {
                match field {
                    2 => data_type = varint(model, &mut range.start.clone()),
                    9 => raw = Some(range),
                    _ => {}
                }
            }
            // 2 = UINT8, 3 = INT8 (onnx.proto's TensorProto.DataType); small tensors are zero points, not weights.
            if let Some(raw) = raw.filter(|raw| matches!(data_type, 2 | 3) && raw.len() >= 1024) {
                ranges.push(raw);
            }
        }
    }
    ranges
}

/// The fields of the protobuf message in `bytes[range]`: number, and the range of a length-delimited field's
/// payload or of a varint's bytes (fixed-width fields are skipped over).
fn fields(bytes: &[u8], range: Range<usize>) -> impl Iterator<Item = (u64, Range<usize>)> + '_ {
    let mut at = range.start;
    std::iter::from_fn(move || {
        while at < range.end {
            let key = varint(bytes, &mut at);
            let (field, wire) = (key >> 3, key & 7);
            let start = at;
            match wire {
                0 => {
                    varint(bytes, &mut at);
                    return Some((field, start..at));
                }
                1 => at += 8,
                2 => {
                    let length = varint(bytes, &mut at) as usize;
                    let payload = at..at + length;
                    at += length;
                    return Some((field, payload));
                }
                5 => at += 4,
                other => panic!("protobuf wire type {other} at byte {start}: not an ONNX model?"),
            }
        }
        None
    })
}

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

fn write_config(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("zinferd.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

fn zinferd(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("ORT_DYLIB_PATH", ort_library())
        .output()
        .expect("run zinferd")
}

/// The shipped packages, each with the shipped configuration whose pipeline serves it (the ladder's smaller rung
/// with the default one's).
const SHIPPED: [(&str, &str); 3] = [
    ("zinfer-sentiment-small", "default.toml"),
    ("zinfer-sentiment-tiny", "default.toml"),
    ("zinfer-watch-small", "sensor.toml"),
];

#[test]
fn the_shipped_models_pass_their_golden_inputs() {
    for (package, config) in SHIPPED {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = repo_root().join("models").join(package).join("manifest.toml");
        let port = free_port();
        let text = base_config(port, &format!("zt/driftok/{port}")) + &shipped_pipeline(config, &manifest, "ok", "");
        let output = zinferd(&["check"], &write_config(dir.path(), &text));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{package}: {}", String::from_utf8_lossy(&output.stderr));
        let line = stdout.lines().find(|line| line.contains("golden inputs")).expect("a golden inputs line");
        assert!(line.contains(&format!("{package}/golden.json")) && line.ends_with(": pass"), "{line}");
        eprintln!("{package}: {line}");
    }
}

/// Refused by `zinferd check` and by `zinferd run`, naming the key, the model and what to do. Valid ONNX with a
/// matching checksum: with `drift_guard = "warn"` the same file passes `check` (which reports the failure).
#[test]
fn a_model_with_perturbed_weights_is_refused_at_start_up() {
    for (name, config) in SHIPPED {
        let package = Package::copy(name);
        package.perturb(24);
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let refuse =
            base_config(port, &format!("zt/drift/{port}")) + &shipped_pipeline(config, &package.manifest(), "d", "");
        let path = write_config(dir.path(), &refuse);
        for command in [&["check"][..], &[][..]] {
            let output = zinferd(command, &path);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{name}: zinferd {command:?} accepted the perturbed model");
            for needle in ["`pipeline[0].model`", "does not reproduce its golden inputs", "drift_guard = \"warn\""] {
                assert!(stderr.contains(needle), "{name}: `{needle}` missing from:\n{stderr}");
            }
            assert!(!stderr.contains("panicked"), "{stderr}");
            if command.is_empty() {
                eprintln!("{name}: {}", stderr.lines().last().unwrap_or_default());
            }
        }
        let warn = write_config(dir.path(), &refuse.replace("output_prefix", "drift_guard = \"warn\"\noutput_prefix"));
        let output = zinferd(&["check"], &warn);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(": FAIL ("), "{name}: the failure is reported: {stdout}");
    }
}

/// A pipeline whose stages refuse the golden inputs (texts over its token limit, with `overflow = "reject"`) cannot
/// vouch for its model: refused under "refuse", saying which stage refused; served under "warn", and `check` says
/// the inputs could not run.
#[test]
fn golden_inputs_the_stages_refuse_are_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo_root().join("models/zinfer-sentiment-small/manifest.toml");
    let port = free_port();
    let strict = (base_config(port, &format!("zt/driftstrict/{port}"))
        + &shipped_pipeline("default.toml", &manifest, "s", ""))
        .replace("type = \"tokenize\"", "type = \"tokenize\"\noverflow = \"reject\"\nmax_length = 8")
        .replace("buckets = [16, 32, 64, 128]", "");
    let output = zinferd(&["check"], &write_config(dir.path(), &strict));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("could not run") && stderr.contains("the `tokenize` stage refused it"), "{stderr}");
    let warn = strict.replace("output_prefix", "drift_guard = \"warn\"\noutput_prefix");
    let output = zinferd(&["check"], &write_config(dir.path(), &warn));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("FAIL (could not run: golden case"), "{stdout}");
}

/// Served under `drift_guard = "warn"`, a model outside its tolerance stays visible where an operator looks: the
/// service's status line (`systemctl status`) names the pipeline and the failure, and telemetry counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_served_despite_failing_its_golden_inputs_shows_in_the_status_line() {
    let package = Package::copy("zinfer-sentiment-small");
    package.perturb(24);
    let notify = NotifySocket::bind();
    let port = free_port();
    let prefix = format!("zt/driftwarn/{port}");
    let config = base_config(port, &prefix)
        + &shipped_pipeline("default.toml", &package.manifest(), "w", "drift_guard = \"warn\"");
    let daemon = Daemon::start_with_env(&config, port, &notify.env(Duration::from_secs(3)));
    let ready = notify.wait_for("READY=1", WAIT, |message| message.contains("READY=1"));
    assert!(ready.contains("pipeline `w`: golden inputs FAILED: top-1 "), "{ready}");
    let client = daemon.client().await;
    let drift = status(&client, &prefix).await.pipelines[0].drift.clone().expect("drift");
    assert_eq!((drift.checks, drift.failures, drift.passed), (1, 1, false), "{drift:?}");
    assert!(daemon.log().contains("serving it anyway"), "{}", daemon.log());
    client.close().await;
}

/// A reload into the perturbed file fails and generation 1 keeps answering, with the same scores as before; once
/// the good file is back, the reload succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_into_a_perturbed_model_keeps_the_serving_model() {
    let package = Package::copy("zinfer-sentiment-small");
    let good = std::fs::read(package.model()).expect("the good model");
    let good_manifest = std::fs::read(package.manifest()).expect("the good manifest");
    let port = free_port();
    let prefix = format!("zt/driftreload/{port}");
    let config = base_config(port, &prefix) + &shipped_pipeline("default.toml", &package.manifest(), "r", "");
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/r/x", WAIT).await.expect("zinferd subscribes");
    let classify = async |id: &str| {
        let pending = client
            .request("in/r/x", "out", id, "a quietly devastating film", RequestFormat::Json)
            .await
            .expect("publish");
        let result = pending.result(WAIT).await.unwrap_or_else(|error| panic!("no result for {id}: {error}"));
        assert_eq!(result.outcome, "ok", "{result:?}");
        result.scores.iter().map(|score| score.score).collect::<Vec<f32>>()
    };
    let before = classify("before").await;

    package.perturb(24);
    daemon.signal("HUP");
    let service = wait_for_service(&mut daemon, client.session(), &prefix, |service| service.reloads_failed == 1).await;
    assert_eq!((service.generation, service.reloads_ok), (1, 0), "{service:?}");
    assert!(service.last_reload_error.contains("does not reproduce its golden inputs"), "{service:?}");
    eprintln!("reload refused with: {}", service.last_reload_error);
    assert_eq!(classify("after-refused-reload").await, before, "generation 1 still serves the good model");

    std::fs::write(package.model(), &good).expect("restore the model");
    std::fs::write(package.manifest(), &good_manifest).expect("restore the manifest");
    daemon.signal("HUP");
    let service = wait_for_service(&mut daemon, client.session(), &prefix, |service| service.reloads_ok == 1).await;
    assert_eq!(service.generation, 2, "{service:?}");
    assert_eq!(classify("after-good-reload").await, before);
    client.close().await;
}

/// With `drift_check_every_s = 1` the worker runs the golden inputs again while it serves, and status shows each
/// run; messages sent meanwhile are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_shows_in_telemetry() {
    let package = Package::copy("zinfer-sentiment-small");
    let port = free_port();
    let prefix = format!("zt/driftevery/{port}");
    let config = base_config(port, &prefix)
        + &shipped_pipeline("default.toml", &package.manifest(), "p", "drift_check_every_s = 1");
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/p/x", WAIT).await.expect("zinferd subscribes");
    let first = status(&client, &prefix).await.pipelines[0].drift.clone().expect("the start-up check in status");
    assert_eq!((first.checks, first.failures, first.cases), (1, 0, 32), "{first:?}");
    assert!(first.passed && first.error.is_empty(), "{first:?}");
    let mut served = 0;
    let deadline = std::time::Instant::now() + WAIT;
    let drift = loop {
        let pending = client
            .request("in/p/x", "out", &format!("m{served}"), "an honest, moving film", RequestFormat::Json)
            .await
            .expect("publish");
        let result = pending.result(WAIT).await.expect("a result");
        assert_eq!(result.outcome, "ok", "{result:?}");
        served += 1;
        let drift = status(&client, &prefix).await.pipelines[0].drift.clone().expect("drift");
        if drift.checks >= 3 {
            break drift;
        }
        assert!(std::time::Instant::now() < deadline, "no third check within {WAIT:?}: {drift:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(drift.passed && drift.failures == 0 && drift.age_ms < 2_000, "{drift:?}");
    assert_eq!((drift.cases, drift.agreeing), (first.cases, first.agreeing), "the same model, the same answers");
    assert!((drift.max_deviation - first.max_deviation).abs() < 1e-9, "{drift:?} vs {first:?}");
    assert!(drift.min_agreement > 0.0 && drift.max_deviation_allowed > drift.max_deviation, "{drift:?}");
    eprintln!("{} checks while serving {served} messages: {drift:?}", drift.checks);
    client.close().await;
}
