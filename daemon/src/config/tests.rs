//! Loading and validating configuration from real files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn pipeline_toml(manifest: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"p\"\ninput = \"in/**\"\nmodel = \"{manifest}\"\n[[pipeline.preprocess]]\ntype = \"tokenize\"\n"
    )
}

#[test]
fn every_shipped_config_is_valid() {
    let configs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
        .expect("configs/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    assert!(configs.len() >= 2, "{configs:?}");
    let installed = tempfile::tempdir().expect("temp dir");
    for path in configs {
        let path = as_if_installed(&path, installed.path());
        let config = load_with_env(std::slice::from_ref(&path), Some(HashMap::new()))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(!config.pipelines.is_empty(), "{}", path.display());
    }
}

/// The packaged config (configs/zinferd.toml) names the paths the .deb installs to; checked here with those paths
/// mapped back into the checkout. Other configs are returned as they are.
fn as_if_installed(path: &Path, dir: &Path) -> PathBuf {
    if path.file_name().is_none_or(|name| name != "zinferd.toml") {
        return path.to_owned();
    }
    let text = std::fs::read_to_string(path).expect("read config");
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(format!(".ort/{}/lib/libonnxruntime.so", std::env::consts::ARCH)));
    let mapped = text
        .replace("/usr/share/zinfer/models", &repo().join("models").display().to_string())
        .replace("/usr/lib/zinfer/libonnxruntime.so.1.31.1", &ort.display().to_string());
    write(dir, "zinferd.toml", &mapped)
}

#[test]
fn defaults_are_loopback_peer_without_scouting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml");
    let file = write(dir.path(), "a.toml", &pipeline_toml(&manifest.display().to_string()));
    let config = load_with_env(&[file], Some(HashMap::new())).expect("valid");
    assert_eq!(config.telemetry.prefix, "zinfer");
    assert_eq!(config.telemetry.interval, Duration::from_secs(1));
    let pipeline = &config.pipelines[0];
    assert_eq!((pipeline.output_prefix.as_str(), pipeline.queue_capacity), ("zinfer/out", 64));
    assert_eq!(pipeline.decode.kind, "text");
    let native = crate::io::session::zenoh_config(&config.zenoh).expect("zenoh config");
    let json = format!("{native}");
    assert!(json.contains("tcp/127.0.0.1:7447"), "{json}");
}

#[test]
fn a_directory_stands_for_its_toml_files_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml");
    let main = write(dir.path(), "zinferd.toml", &pipeline_toml(&manifest.display().to_string()));
    let drop_ins = dir.path().join("conf.d");
    std::fs::create_dir(&drop_ins).expect("mkdir");
    write(&drop_ins, "20-site.toml", "[telemetry]\nprefix = \"site\"\n");
    write(&drop_ins, "10-board.toml", "[telemetry]\nprefix = \"board\"\ninterval_ms = 250\n");
    write(&drop_ins, "README", "not a config file: ignored");
    let config = load_with_env(&[main.clone(), drop_ins.clone()], Some(HashMap::new())).expect("valid");
    assert_eq!(config.telemetry.prefix, "site", "20-site.toml comes after 10-board.toml");
    assert_eq!(config.telemetry.interval, Duration::from_millis(250));
    assert_eq!(config.sources, vec![main, drop_ins.join("10-board.toml"), drop_ins.join("20-site.toml")]);

    write(&drop_ins, "30-broken.toml", "[telemetry]\ninterval_ms = \"soon\"\n");
    let error = load_with_env(&[dir.path().join("zinferd.toml"), drop_ins.clone()], Some(HashMap::new()))
        .expect_err("a bad drop-in fails");
    assert!(error.to_string().contains("30-broken.toml"), "names the drop-in: {error}");
}

#[test]
fn later_files_and_the_environment_override_earlier_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml");
    let base = write(
        dir.path(),
        "base.toml",
        &format!("[telemetry]\ninterval_ms = 500\nprefix = \"a\"\n{}", pipeline_toml(&manifest.display().to_string())),
    );
    let site = write(dir.path(), "site.toml", "[telemetry]\nprefix = \"b\"\n");
    let env = HashMap::from([
        ("ZINFER_TELEMETRY__INTERVAL_MS".to_owned(), "250".to_owned()),
        ("ZINFER_ZENOH__LISTEN".to_owned(), "tcp/127.0.0.1:7001,tcp/127.0.0.1:7002".to_owned()),
    ]);
    let config = load_with_env(&[base, site], Some(env)).expect("valid");
    assert_eq!(config.telemetry.prefix, "b");
    assert_eq!(config.telemetry.interval, Duration::from_millis(250));
    assert_eq!(
        config.zenoh.listen.as_deref(),
        Some(&["tcp/127.0.0.1:7001".to_owned(), "tcp/127.0.0.1:7002".to_owned()][..])
    );
}

#[test]
fn relative_paths_resolve_against_the_file_that_sets_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("models");
    std::fs::create_dir(&model_dir).expect("mkdir");
    let fixture = repo().join("models/fixture");
    for file in ["model.onnx", "tokenizer.json", "manifest.toml"] {
        std::fs::copy(fixture.join(file), model_dir.join(file)).expect("copy fixture");
    }
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).expect("mkdir");
    let file = write(&conf_d, "p.toml", &pipeline_toml("../models/manifest.toml"));
    let config = load_with_env(&[file], Some(HashMap::new())).expect("valid");
    assert_eq!(config.pipelines[0].manifest.model, conf_d.join("../models/model.onnx"));
}

#[test]
fn errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml");
    let good = write(dir.path(), "good.toml", &pipeline_toml(&manifest.display().to_string()));
    let bad = write(dir.path(), "bad.toml", "[telemetry]\nprefix = \"x/*\"\n");
    let error = load_with_env(&[good.clone(), bad.clone()], Some(HashMap::new())).expect_err("wildcard prefix");
    assert_eq!(error.key.as_deref(), Some("telemetry.prefix"));
    assert!(error.file.as_deref().is_some_and(|file| file.ends_with("bad.toml")), "{error}");

    let missing = write(dir.path(), "missing.toml", "[[pipeline]]\nname = \"p\"\nmodel = \"m.toml\"\n");
    let error = load_with_env(&[missing], Some(HashMap::new())).expect_err("no input");
    assert_eq!(error.key.as_deref(), Some("pipeline[0].input"), "{error}");
    assert!(error.reason.contains("missing"), "{error}");

    let broken = write(dir.path(), "broken.toml", "[telemetry\n");
    let error = load_with_env(std::slice::from_ref(&broken), Some(HashMap::new())).expect_err("not TOML");
    // Named as given, not relative to the working directory as the config crate reports it (found by fuzzing).
    assert_eq!(error.file, Some(broken.display().to_string()), "{error}");

    // A stage table without its [[pipeline]]: `pipeline` is then an implicit table with no origin of its own.
    let headless = write(dir.path(), "headless.toml", "[[pipeline.preprocess]]\ntype = \"tokenize\"\n");
    let error = load_with_env(std::slice::from_ref(&headless), Some(HashMap::new())).expect_err("not a list");
    assert_eq!(error.key.as_deref(), Some("pipeline"), "{error}");
    assert_eq!(error.file, Some(headless.display().to_string()), "{error}");

    // A misspelt table holding only comments: an empty table, which has no origin in the config crate.
    let commented = write(dir.path(), "commented.toml", "[telemetyr]\n# prefix = \"x\"\n");
    let error = load_with_env(&[good.clone(), commented.clone()], Some(HashMap::new())).expect_err("unknown table");
    assert_eq!(error.key.as_deref(), Some("telemetyr"), "{error}");
    assert_eq!(error.file, Some(commented.display().to_string()), "{error}");

    let env = HashMap::from([("ZINFER_DAEMON__DRAIN_TIMEOUT_MS".to_owned(), "soon".to_owned())]);
    let error = load_with_env(std::slice::from_ref(&good), Some(env)).expect_err("not a number");
    assert_eq!(error.key.as_deref(), Some("daemon.drain_timeout_ms"), "{error}");

    let hasty = write(dir.path(), "hasty.toml", "[daemon]\nreload_timeout_ms = 200\n");
    let error = load_with_env(&[good, hasty], Some(HashMap::new())).expect_err("a reload timeout under 1 s");
    assert_eq!(error.key.as_deref(), Some("daemon.reload_timeout_ms"), "{error}");
    assert!(error.file.as_deref().is_some_and(|file| file.ends_with("hasty.toml")), "{error}");
}

#[test]
fn a_periodic_drift_check_needs_golden_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let load = |manifest: &str, keys: &str| {
        let text = pipeline_toml(&repo().join(manifest).display().to_string())
            .replace("[[pipeline.preprocess]]", &format!("{keys}\n[[pipeline.preprocess]]"));
        load_with_env(&[write(dir.path(), "drift.toml", &text)], Some(HashMap::new()))
    };
    let shipped = "models/zinfer-sentiment-small/manifest.toml";
    let config = load(shipped, "drift_check_every_s = 60").expect("golden inputs to run");
    let pipeline = &config.pipelines[0];
    assert_eq!(pipeline.drift_check_every, Some(std::time::Duration::from_secs(60)));
    assert_eq!(pipeline.drift_guard, DriftGuardMode::Refuse, "the default");
    for (manifest, keys, reason) in [
        ("models/fixture/manifest.toml", "drift_check_every_s = 60", "needs golden inputs"),
        (shipped, "drift_guard = \"off\"\ndrift_check_every_s = 60", "needs golden inputs"),
        (shipped, "drift_check_every_s = 0", "at least 1"),
        (shipped, "drift_guard = \"loose\"", "loose"),
    ] {
        let error = load(manifest, keys).expect_err(keys);
        assert!(error.key.as_deref().is_some_and(|key| key.starts_with("pipeline[0].drift_")), "{error}");
        assert!(error.reason.contains(reason), "{keys}: {error}");
    }
}

#[test]
fn duplicate_pipeline_names_are_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml").display().to_string();
    let file = write(dir.path(), "dup.toml", &(pipeline_toml(&manifest) + &pipeline_toml(&manifest)));
    let error = load_with_env(&[file], Some(HashMap::new())).expect_err("duplicate");
    assert_eq!(error.key.as_deref(), Some("pipeline[1].name"), "{error}");
}

#[test]
fn a_native_zenoh_file_keeps_what_the_toml_does_not_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "zenoh.json5", "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:7999\"] } }");
    let manifest = repo().join("models/fixture/manifest.toml").display().to_string();
    let file = write(
        dir.path(),
        "z.toml",
        &format!(
            "[zenoh]\nconfig_file = \"zenoh.json5\"\nconnect = [\"tcp/127.0.0.1:7998\"]\n{}",
            pipeline_toml(&manifest)
        ),
    );
    let config = load_with_env(&[file], Some(HashMap::new())).expect("valid");
    assert_eq!(config.zenoh.config_file, Some(dir.path().join("zenoh.json5")));
    let native = format!("{}", crate::io::session::zenoh_config(&config.zenoh).expect("zenoh config"));
    assert!(native.contains("tcp/127.0.0.1:7999"), "the file's listen endpoint stays: {native}");
    assert!(native.contains("tcp/127.0.0.1:7998"), "the TOML's connect endpoint is added: {native}");

    let bad = write(dir.path(), "bad.toml", "[zenoh]\nlisten = [\"nonsense\"]\n");
    let error = load_with_env(&[bad], Some(HashMap::new())).expect_err("bad endpoint");
    assert_eq!(error.key.as_deref(), Some("zenoh.listen"), "{error}");
}

#[test]
fn an_input_that_would_ingest_the_daemons_own_output_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml").display().to_string();
    let pipeline = |name: &str, input: &str, output: &str| {
        format!(
            "[[pipeline]]\nname = \"{name}\"\ninput = \"{input}\"\noutput_prefix = \"{output}\"\nmodel = \"{manifest}\"\n\
             [[pipeline.preprocess]]\ntype = \"tokenize\"\n"
        )
    };
    let cases = [
        // Its own results: zinfer/out/zinfer/in/a is under zinfer/** too.
        (
            "own.toml",
            "[telemetry]\nprefix = \"tm\"\n".to_owned() + &pipeline("a", "zinfer/**", "zinfer/out"),
            "pipeline[0].input",
            "zinfer/out/**",
        ),
        // Another pipeline's results.
        (
            "other.toml",
            pipeline("a", "in/a/**", "out/a") + &pipeline("b", "out/*/in/**", "out/b"),
            "pipeline[1].input",
            "out/a/**",
        ),
        // Telemetry, status and liveliness (prefix "zinfer" by default).
        ("telemetry.toml", pipeline("a", "*/telemetry", "out"), "pipeline[0].input", "zinfer/telemetry"),
        ("status.toml", pipeline("a", "zinfer/s$*", "out"), "pipeline[0].input", "zinfer/status"),
    ];
    for (file, text, key, overlap) in cases {
        let path = write(dir.path(), file, &text);
        let error = load_with_env(&[path], Some(HashMap::new())).expect_err(file);
        assert_eq!(error.key.as_deref(), Some(key), "{file}: {error}");
        assert!(error.file.as_deref().is_some_and(|path| path.ends_with(file)), "{file}: {error}");
        assert!(error.reason.contains(overlap) && error.reason.contains("its own"), "{file}: {error}");
    }
    let apart =
        write(dir.path(), "apart.toml", &(pipeline("a", "in/a/**", "out/a") + &pipeline("b", "in/b/*", "out/b")));
    load_with_env(&[apart], Some(HashMap::new())).expect("inputs apart from every output are fine");
}

#[test]
fn a_client_does_not_listen_unless_told_to() {
    // A client-mode zinferd beside a local zenohd on 7447 must not try to listen there too.
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = repo().join("models/fixture/manifest.toml").display().to_string();
    let client = write(
        dir.path(),
        "client.toml",
        &format!("[zenoh]\nmode = \"client\"\nconnect = [\"tcp/127.0.0.1:7998\"]\n{}", pipeline_toml(&manifest)),
    );
    let config = load_with_env(&[client], Some(HashMap::new())).expect("valid");
    let native = format!("{}", crate::io::session::zenoh_config(&config.zenoh).expect("zenoh config"));
    // zenoh's own defaults name no endpoint for a client (only for peers and routers, which this is not).
    assert!(!native.contains("tcp/127.0.0.1:7447"), "a client must not listen on zinferd's default: {native}");
    assert!(native.contains("tcp/127.0.0.1:7998"), "{native}");
}

#[test]
fn a_ladder_names_smaller_models_for_the_same_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let load = |ladder: &str| {
        let text = pipeline_toml(&repo().join("models/zinfer-sentiment-small/manifest.toml").display().to_string())
            + &format!("[pipeline.ladder]\n{ladder}\n");
        load_with_env(&[write(dir.path(), "ladder.toml", &text)], Some(HashMap::new()))
    };
    let fixture = repo().join("models/fixture/manifest.toml").display().to_string();
    let config = load(&format!("rungs = [\"{fixture}\"]\ndown_after_ms = 500")).expect("a valid ladder");
    let ladder = config.pipelines[0].ladder.as_ref().expect("the ladder");
    assert_eq!(ladder.rungs.iter().map(|rung| rung.name.as_str()).collect::<Vec<_>>(), ["zinfer-fixture-tiny-bert"]);
    assert_eq!(ladder.down_after, std::time::Duration::from_millis(500));
    assert_eq!(ladder.up_after, std::time::Duration::from_secs(30), "the default");

    let watch = repo().join("models/zinfer-watch-small/manifest.toml").display().to_string();
    let shipped = repo().join("models/zinfer-sentiment-small/manifest.toml").display().to_string();
    for (ladder, key, reason) in [
        ("rungs = []".to_owned(), "pipeline[0].ladder.rungs", "lists no model"),
        (String::new(), "pipeline[0].ladder.rungs", "missing"),
        (format!("rungs = [\"{watch}\"]"), "pipeline[0].ladder.rungs[0]", "not for the same task"),
        (format!("rungs = [\"{shipped}\"]"), "pipeline[0].ladder.rungs[0]", "already on the ladder"),
        (format!("rungs = [\"{fixture}\", \"{fixture}\"]"), "pipeline[0].ladder.rungs[1]", "already on the ladder"),
        ("rungs = [\"nowhere/manifest.toml\"]".to_owned(), "pipeline[0].ladder.rungs[0]", "nowhere"),
        (format!("rungs = [\"{fixture}\"]\nup_after_ms = 0"), "pipeline[0].ladder.up_after_ms", "at least 1"),
        (format!("rungs = [\"{fixture}\"]\nsideways = 1"), "pipeline[0]", "sideways"),
    ] {
        let error = load(&ladder).expect_err(&ladder);
        assert!(error.key.as_deref().is_some_and(|at| at.starts_with(key)), "{ladder}: {error}");
        assert!(error.reason.contains(reason), "{ladder}: {error}");
        assert!(error.file.as_deref().is_some_and(|file| file.ends_with("ladder.toml")), "{ladder}: {error}");
    }
}
