//! `zinferd check` (and start-up) reject bad configurations with an error naming the file, the key and the reason,
//! and a missing ONNX Runtime with the list of places searched, never a panic.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{base_config, fixture_manifest, ort_library, text_pipeline};

fn check_in(dir: &Path, config: &str, ort: Option<&Path>) -> (Output, String) {
    let path = dir.join("zinferd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_zinferd"));
    command.current_dir(dir).arg("check").arg("--config").arg(&path).env_remove("ORT_DYLIB_PATH");
    if let Some(ort) = ort {
        command.env("ORT_DYLIB_PATH", ort);
    }
    let output = command.output().expect("run zinferd check");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

/// Runs `zinferd check` and asserts it fails with a message containing the config file, `key` and `reason`.
fn rejects(config: &str, key: &str, reason: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (output, stderr) = check_in(dir.path(), config, Some(&ort_library()));
    assert!(!output.status.success(), "check accepted a bad config:\n{config}");
    // The config crate reports the file relative to the working directory when it is below it.
    for needle in ["zinferd.toml: ", key, reason] {
        assert!(stderr.contains(needle), "expected `{needle}` in the error:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn good() -> String {
    base_config(17447, "zt/check") + &text_pipeline("check", "in/check/**", "", "", "")
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (output, stderr) = check_in(dir.path(), &good(), Some(&ort_library()));
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK (1 pipeline(s))"));
}

#[test]
fn unknown_key() {
    rejects(&good().replace("interval_ms = 100", "intervall_ms = 100"), "`telemetry.intervall_ms`", "unknown field");
}

#[test]
fn unknown_stage_option() {
    let config = good().replace("top_k = 2", "top_k = 2\ntopk = 3");
    rejects(&config, "`pipeline[0].postprocess[0].topk`", "unknown field");
}

#[test]
fn wrong_type() {
    rejects(&good().replace("interval_ms = 100", "interval_ms = \"fast\""), "`telemetry.interval_ms`", "wrong type");
}

#[test]
fn wrong_type_in_a_stage() {
    let config = good().replace("top_k = 2", "top_k = \"two\"");
    rejects(&config, "`pipeline[0].postprocess[0].top_k`", "invalid type");
}

#[test]
fn unknown_stage_type() {
    let config = good().replace("type = \"classify\"", "type = \"clasify\"");
    rejects(&config, "`pipeline[0].postprocess[0].type`", "unknown stage type `clasify`");
}

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = std::fs::read_to_string(fixture_manifest()).expect("manifest");
    let broken = dir.path().join("manifest.toml");
    std::fs::write(&broken, manifest.replace("model = \"model.onnx\"", "model = \"gone.onnx\"")).expect("write");
    let config = good().replace(&fixture_manifest().display().to_string(), &broken.display().to_string());
    rejects(&config, "`pipeline[0].model`", "gone.onnx");
}

#[test]
fn missing_manifest() {
    let config = good().replace(&fixture_manifest().display().to_string(), "no/such/manifest.toml");
    rejects(&config, "`pipeline[0].model`", "no/such/manifest.toml");
}

#[test]
fn missing_tokenizer() {
    let config = good().replace("type = \"tokenize\"", "type = \"tokenize\"\ntokenizer = \"absent-tokenizer.json\"");
    rejects(&config, "`pipeline[0].preprocess[0].tokenizer`", "absent-tokenizer.json");
}

#[test]
fn bad_key_expression() {
    rejects(&good().replace("in/check/**", "in//check"), "`pipeline[0].input`", "not a valid zenoh key expression");
}

#[test]
fn wildcard_in_output_prefix() {
    rejects(
        &good().replace("output_prefix = \"out\"", "output_prefix = \"out/*\""),
        "`pipeline[0].output_prefix`",
        "wildcards",
    );
}

#[test]
fn corrupt_model_checksum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = std::fs::read_to_string(fixture_manifest()).expect("manifest");
    let model = fixture_manifest().with_file_name("model.onnx");
    let tokenizer = fixture_manifest().with_file_name("tokenizer.json");
    let rewritten = manifest
        .replace("model = \"model.onnx\"", &format!("model = \"{}\"", model.display()))
        .replace("tokenizer = \"tokenizer.json\"", &format!("tokenizer = \"{}\"", tokenizer.display()))
        .replace("sha256 = \"", "sha256 = \"00");
    let broken = dir.path().join("manifest.toml");
    std::fs::write(&broken, rewritten).expect("write");
    let config = good().replace(&fixture_manifest().display().to_string(), &broken.display().to_string());
    rejects(&config, "`pipeline[0].model`", "sha256");
}

#[test]
fn missing_onnxruntime_lists_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (output, stderr) = check_in(dir.path(), &good(), None);
    assert!(!output.status.success(), "{stderr}");
    for needle in
        ["ONNX Runtime shared library not found", "ORT_DYLIB_PATH: not set", ".ort/", "install-onnxruntime.sh"]
    {
        assert!(stderr.contains(needle), "expected `{needle}` in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn environment_overrides_are_validated_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zinferd.toml");
    std::fs::write(&path, good()).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .args(["check", "--config"])
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_library())
        .env("ZINFER_TELEMETRY__INTERVAL_MS", "5")
        .output()
        .expect("run zinferd check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("`telemetry.interval_ms`") && stderr.contains("at least 10"), "{stderr}");
}
