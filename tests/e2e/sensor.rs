//! Sensor pipelines end to end: recordings from the sensor model's test split, published sample by sample over
//! zenoh, give the windows and labels the model toolkit computed for the same windows; sources keep separate
//! state; every bad-frame class gets its error outcome without disturbing the streams; overload stays bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use zenoh::bytes::Encoding;
use zenoh::qos::CongestionControl;
use zinfer_proto::{self as proto, outcome};
use zinferd::client::Client;

use crate::support::{
    Daemon, WAIT, base_config, collect_outcomes, copy_package, free_port, int8_tolerance, repo_root, status,
    subscribe_buffered,
};

fn model_dir() -> PathBuf {
    repo_root().join("models/zinfer-watch-small")
}

/// A recording the toolkit exported with its own ONNX Runtime evaluation of every window.
#[derive(serde::Deserialize)]
struct Recording {
    label: String,
    sample_rate_hz: f64,
    window: usize,
    hop: usize,
    samples: Vec<Vec<f32>>,
    windows: Vec<ExpectedWindow>,
}

#[derive(serde::Deserialize, Clone)]
struct ExpectedWindow {
    start: u64,
    label: String,
    probs: Vec<f32>,
}

/// The part of `recording` that its first `samples` samples make: the windows that end within them.
fn first_windows(recording: &Recording, samples: usize) -> Recording {
    let ends_within = |window: &&ExpectedWindow| window.start as usize + recording.window <= samples;
    Recording {
        label: recording.label.clone(),
        sample_rate_hz: recording.sample_rate_hz,
        window: recording.window,
        hop: recording.hop,
        samples: recording.samples[..samples].to_vec(),
        windows: recording.windows.iter().filter(ends_within).cloned().collect(),
    }
}

fn recording(file: &str) -> Recording {
    let path = model_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).expect("recording JSON")
}

/// A sensor pipeline on the shipped watch model; windows run at batch 1, as the toolkit evaluated them.
fn sensor_pipeline(name: &str, input: &str, extra: &str, validate: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"{name}\"\ninput = \"{input}\"\noutput_prefix = \"out\"\nmodel = \"{}\"\nmax_batch = 1\n\
         {extra}\n[pipeline.decode]\ntype = \"sensor\"\ndefault_format = \"json\"\n\
         [[pipeline.preprocess]]\ntype = \"validate\"\n{validate}\n[[pipeline.preprocess]]\ntype = \"window\"\n\
         [[pipeline.postprocess]]\ntype = \"classify\"\ntop_k = 3\n\n",
        model_dir().join("manifest.toml").display()
    )
}

fn json_sample(seconds: f64, values: &[f32]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "t": seconds, "values": values })).expect("json")
}

async fn put(client: &Client, key: &str, payload: Vec<u8>, encoding: Encoding, id: String) {
    client
        .session()
        .put(key, payload)
        .encoding(encoding)
        .attachment(id)
        .congestion_control(CongestionControl::Block)
        .await
        .expect("put");
}

/// Every window in `results` for `source`, by index.
fn windows_of(results: &BTreeMap<String, proto::Result>, source: &str) -> Vec<proto::WindowResult> {
    let mut windows: Vec<_> =
        results.values().flat_map(|result| result.windows.clone()).filter(|window| window.source == source).collect();
    windows.sort_by_key(|window| window.index);
    windows
}

/// The daemon's windows equal the toolkit's: same starts, same labels, probabilities within the int8 tolerance of
/// this CPU (1e-4 where the toolkit's references hold; see `int8_tolerance`).
fn assert_matches_toolkit(windows: &[proto::WindowResult], expected: &Recording, what: &str) {
    assert_eq!(windows.len(), expected.windows.len(), "{what}: window count");
    for (index, (got, want)) in windows.iter().zip(&expected.windows).enumerate() {
        assert_eq!((got.index, got.start_sample), (index as u64, want.start), "{what}: window {index}");
        assert_eq!(got.label.as_deref(), Some(want.label.as_str()), "{what}: window {index} label");
        let probs: Vec<f32> = got.scores.iter().map(|score| score.score).collect();
        let worst = probs.iter().zip(&want.probs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let tolerance = int8_tolerance() as f32;
        assert!(worst < tolerance, "{what}: window {index}: probs {probs:?} vs toolkit {:?}", want.probs);
    }
}

/// Publishes `recording`'s samples one per message on `key`, `speedup` times faster than real time, each with its
/// real-rate timestamp; ids are `<tag>-<sample>`.
async fn replay(
    client: &Client,
    key: &str,
    tag: &str,
    recording: &Recording,
    range: std::ops::Range<usize>,
    speedup: f64,
) {
    let period = 1.0 / recording.sample_rate_hz;
    for index in range {
        let payload = json_sample(index as f64 * period, &recording.samples[index]);
        put(client, key, payload, Encoding::APPLICATION_JSON, format!("{tag}-{index}")).await;
        tokio::time::sleep(Duration::from_secs_f64(period / speedup)).await;
    }
}

async fn start(name: &str, pipeline: &str) -> (Daemon, Client, String) {
    let port = free_port();
    let prefix = format!("zt/{name}/{port}");
    let daemon = Daemon::start(&(base_config(port, &prefix) + pipeline), port);
    let client = daemon.client().await;
    client.wait_for_subscriber(&format!("sensor/{name}/probe"), WAIT).await.expect("zinferd subscribes");
    (daemon, client, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_published_sample_by_sample_gives_the_toolkits_windows() {
    replay_matches_toolkit("replay", "").await;
}

/// The window stage keeps each source's state in the worker, whichever instance runs a window: on two instances a
/// replay gives the same windows, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replayed_on_two_instances_gives_the_toolkits_windows() {
    replay_matches_toolkit("replay2", "instances = 2").await;
}

/// A stream's window state survives a step down its pipeline's model ladder: half a recording is replayed, frames
/// of another source that can only miss their deadlines make the pipeline step down, then the other half follows;
/// the windows still equal the toolkit's, with none lost or restarted at the switch, and both models produced some.
/// The smaller rung is a copy of the watch model under another name (the only sensor model there is), so the
/// windows' scores stay comparable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_windows_across_a_step_down_the_ladder() {
    let copy = copy_package("zinfer-watch-small");
    let manifest = copy.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("name = \"zinfer-watch-small\"", "name = \"watch-rung\"")).expect("write");
    let ladder = format!(
        "\n[pipeline.ladder]\nrungs = [\"{}\"]\ndown_after_ms = 100\nup_after_ms = 60000\n",
        manifest.display()
    );
    let (daemon, client, prefix) =
        start("ladder", &(sensor_pipeline("ladder", "sensor/ladder/**", "", "") + &ladder)).await;
    let results = subscribe_buffered(&client, "out/sensor/ladder/**").await;
    let recording = recording("test_recording.json");
    let (key, count) = ("sensor/ladder/watch", recording.samples.len());

    replay(&client, key, "r", &recording, 0..count / 2, 10.0).await;
    let started = std::time::Instant::now();
    let mut hopeless = 0;
    loop {
        assert!(started.elapsed() < WAIT, "no step down:\n{}", daemon.log());
        let sent_at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64)
                - 1000;
        let frame = proto::SensorFrame {
            values: vec![0.0; 6],
            timestamps_us: vec![hopeless as i64 * 20_000],
            deadline_ms: 50,
            sent_at_ms,
            ..Default::default()
        };
        let id = format!("h-{hopeless}");
        put(&client, "sensor/ladder/other", frame.encode_to_vec(), Encoding::APPLICATION_PROTOBUF, id).await;
        hopeless += 1;
        if hopeless % 5 == 0
            && status(&client, &prefix).await.pipelines[0].ladder.as_ref().is_some_and(|ladder| ladder.active == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay(&client, key, "r", &recording, count / 2..count, 10.0).await;

    let outcomes = collect_outcomes(&results, count + hopeless, &daemon).await;
    let expired = outcomes.values().filter(|result| result.id.starts_with("h-")).all(|r| r.outcome == outcome::EXPIRED);
    assert!(expired, "every hopeless frame expired");
    assert_matches_toolkit(&windows_of(&outcomes, key), &recording, "across the switch");
    let models: std::collections::BTreeSet<&str> = outcomes
        .values()
        .filter(|result| !result.windows.is_empty())
        .filter_map(|result| result.model.as_ref().map(|model| model.name.as_str()))
        .collect();
    assert_eq!(models, ["watch-rung", "zinfer-watch-small"].into(), "both rungs produced windows");
    client.close().await;
}

/// Replays the test recording sample by sample into a sensor pipeline `name` with `extra` keys, and checks every
/// window against the toolkit's.
async fn replay_matches_toolkit(name: &str, extra: &str) {
    let recording = recording("test_recording.json");
    assert_eq!((recording.window, recording.hop), (100, 50), "the manifest's windowing");
    let (daemon, client, _) = start(name, &sensor_pipeline(name, &format!("sensor/{name}/**"), extra, "")).await;
    let results = client.session().declare_subscriber(format!("out/sensor/{name}/**")).await.expect("subscribe");

    // 10× real time: 600 samples at 50 Hz take 1.2 s.
    let count = recording.samples.len();
    let key = format!("sensor/{name}/watch");
    replay(&client, &key, "r", &recording, 0..count, 10.0).await;
    let outcomes = collect_outcomes(&results, count, &daemon).await;
    assert!(outcomes.values().all(|result| result.outcome == outcome::OK), "every sample is taken in");
    let windows = windows_of(&outcomes, &key);
    assert_matches_toolkit(&windows, &recording, name);
    // Every stage timed and named, the classify head's time summed over the windows a frame completed.
    for result in outcomes.values() {
        let names: Vec<&str> = result.stages.iter().map(|stage| stage.name.as_str()).collect();
        assert_eq!(names, ["validate", "window", "classify"], "{result:?}");
    }
    let agree = windows.iter().filter(|window| window.label.as_deref() == Some(recording.label.as_str())).count();
    eprintln!(
        "{} windows match the toolkit; {agree} of them say `{}`, the recording's class",
        windows.len(),
        recording.label
    );
    client.close().await;
}

/// Publishes the whole test recording as one JSON message to a sensor pipeline with `max_batch` and returns its
/// result and windows: all its windows complete at once.
async fn one_frame_recording(name: &str, max_batch: usize) -> (Recording, proto::Result, Vec<proto::WindowResult>) {
    let recording = recording("test_recording.json");
    let input = format!("sensor/{name}/**");
    let pipeline =
        sensor_pipeline(name, &input, "", "").replace("max_batch = 1\n", &format!("max_batch = {max_batch}\n"));
    let (daemon, client, _) = start(name, &pipeline).await;
    let results = client.session().declare_subscriber(format!("out/sensor/{name}/**")).await.expect("subscribe");
    let period = 1.0 / recording.sample_rate_hz;
    let frame: Vec<serde_json::Value> = (recording.samples.iter().enumerate())
        .map(|(index, values)| serde_json::json!({ "t": index as f64 * period, "values": values }))
        .collect();
    let payload = serde_json::to_vec(&frame).expect("json");
    let key = format!("sensor/{name}/watch");
    put(&client, &key, payload, Encoding::APPLICATION_JSON, "whole".to_owned()).await;
    let outcomes = collect_outcomes(&results, 1, &daemon).await;
    let windows = windows_of(&outcomes, &key);
    client.close().await;
    let result = outcomes.into_values().next().expect("one outcome");
    assert_eq!(result.outcome, outcome::OK, "{result:?}");
    assert!(recording.windows.len() > 4, "the recording makes several windows");
    (recording, result, windows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_more_windows_than_max_batch_runs_them_max_batch_at_a_time() {
    // max_batch = 1 runs the windows one by one, the shape the warm-up measured (and, with int8's per-run
    // quantisation ranges, the toolkit's numbers).
    let (recording, result, windows) = one_frame_recording("whole", 1).await;
    assert_matches_toolkit(&windows, &recording, "one frame");
    assert_eq!(result.timings.as_ref().map(|timings| timings.batch_size), Some(1), "{result:?}");

    // max_batch = 4: runs of 4, 4 and 3 windows; every window still gets its own result, in order.
    let (recording, result, windows) = one_frame_recording("whole4", 4).await;
    assert_eq!(result.timings.as_ref().map(|timings| timings.batch_size), Some(4), "{result:?}");
    assert_eq!(windows.len(), recording.windows.len());
    for (index, (got, want)) in windows.iter().zip(&recording.windows).enumerate() {
        assert_eq!((got.index, got.start_sample), (index as u64, want.start), "window {index}");
        assert_eq!(got.label.as_deref(), Some(want.label.as_str()), "window {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_interleaved_sources_keep_separate_state() {
    let (a, b) = (recording("test_recording.json"), recording("test_recording_b.json"));
    assert_ne!(a.label, b.label, "the two recordings are of different classes");
    let (daemon, client, _) = start("pair", &sensor_pipeline("pair", "sensor/pair/**", "", "")).await;
    let results = client.session().declare_subscriber("out/sensor/pair/**").await.expect("subscribe");

    // Sample by sample, alternating: left gets recording a, right gets recording b.
    let count = b.samples.len().min(a.samples.len());
    let period = 1.0 / a.sample_rate_hz;
    for index in 0..count {
        for (key, tag, recording) in [("sensor/pair/left", "l", &a), ("sensor/pair/right", "r", &b)] {
            let payload = json_sample(index as f64 * period, &recording.samples[index]);
            put(&client, key, payload, Encoding::APPLICATION_JSON, format!("{tag}-{index}")).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let outcomes = collect_outcomes(&results, 2 * count, &daemon).await;
    let left = windows_of(&outcomes, "sensor/pair/left");
    let right = windows_of(&outcomes, "sensor/pair/right");
    assert_matches_toolkit(&left, &first_windows(&a, count), "left");
    assert_matches_toolkit(&right, &first_windows(&b, count), "right");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_frame_gets_its_error_outcome_and_the_stream_carries_on() {
    let recording = recording("test_recording.json");
    let pipeline = sensor_pipeline("bad", "sensor/bad/**", "", "max_samples = 64");
    let (daemon, client, prefix) = start("bad", &pipeline).await;
    let results = client.session().declare_subscriber("out/sensor/bad/**").await.expect("subscribe");
    let key = "sensor/bad/watch";
    let good = &recording.samples[0];

    let packed = |values: &[f32]| values.iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>();
    let mut with_nan = good.clone();
    with_nan[2] = f32::NAN;
    let mut with_inf = good.clone();
    with_inf[4] = f32::INFINITY;
    let infinite = proto::SensorFrame { values: with_inf, timestamps_us: vec![1], ..Default::default() };
    let too_many: Vec<_> =
        (0..65).map(|index| serde_json::json!({ "t": 100.0 + index as f64 * 0.02, "values": good })).collect();
    let bad_frames: Vec<(&str, Vec<u8>, Encoding)> = vec![
        ("wrong_channel_count", json_sample(0.5, &good[..5]), Encoding::APPLICATION_JSON),
        ("non_finite_value", packed(&with_nan), Encoding::APPLICATION_OCTET_STREAM),
        ("non_finite_value", infinite.encode_to_vec(), Encoding::APPLICATION_PROTOBUF),
        (
            "non_monotonic_timestamps",
            serde_json::to_vec(&serde_json::json!([{ "t": 2.0, "values": good }, { "t": 1.0, "values": good }]))
                .expect("json"),
            Encoding::APPLICATION_JSON,
        ),
        ("frame_too_large", serde_json::to_vec(&too_many).expect("json"), Encoding::APPLICATION_JSON),
        ("malformed_json", b"{\"t\": 1, \"values\": [".to_vec(), Encoding::APPLICATION_JSON),
        ("wrong_channel_count", packed(&good[..4]), Encoding::APPLICATION_OCTET_STREAM),
    ];

    // The good stream, with a bad frame slipped in every 40 samples.
    let count = 300;
    let period = 1.0 / recording.sample_rate_hz;
    let mut bad_sent = BTreeMap::new();
    for index in 0..count {
        if index % 40 == 20 {
            let (reason, payload, encoding) = bad_frames[(index / 40) % bad_frames.len()].clone();
            let id = format!("bad-{index}");
            put(&client, key, payload, encoding, id.clone()).await;
            bad_sent.insert(id, reason);
        }
        let payload = json_sample(index as f64 * period, &recording.samples[index]);
        put(&client, key, payload, Encoding::APPLICATION_JSON, format!("good-{index}")).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The remaining classes once each.
    for (index, (reason, payload, encoding)) in bad_frames.iter().enumerate() {
        let id = format!("bad-tail-{index}");
        put(&client, key, payload.clone(), encoding.clone(), id.clone()).await;
        bad_sent.insert(id, reason);
    }
    let outcomes = collect_outcomes(&results, count + bad_sent.len(), &daemon).await;
    for (id, reason) in &bad_sent {
        let result = &outcomes[id];
        assert_eq!((result.outcome.as_str(), result.reason.as_str()), (outcome::ERROR, *reason), "{result:?}");
        assert!(!result.message.is_empty(), "says why: {result:?}");
    }
    let windows = windows_of(&outcomes, key);
    assert_matches_toolkit(&windows, &first_windows(&recording, count), "stream with bad frames");

    let snapshot = status(&client, &prefix).await;
    let stats = &snapshot.pipelines[0];
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for reason in bad_sent.values() {
        *by_reason.entry((*reason).to_owned()).or_default() += 1;
    }
    assert_eq!(stats.failed_by_reason, by_reason, "telemetry counts every class");
    assert_eq!(stats.stage_counters.get("windows"), Some(&(windows.len() as u64)), "{stats:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversampled_stream_under_latest_wins_stays_bounded() {
    let recording = recording("test_recording.json");
    let pipeline = sensor_pipeline(
        "flood",
        "sensor/flood/**",
        "queue_capacity = 32\noverload = \"latest\"\nlatest_per_key = 32",
        "",
    );
    let (daemon, client, prefix) = start("flood", &pipeline).await;
    let results = client.session().declare_subscriber("out/sensor/flood/**").await.expect("subscribe");
    let before = status(&client, &prefix).await.process.expect("process").rss_bytes;
    let frames = 10_000;
    // Results are consumed while the flood goes on: a full subscriber channel would stall the client's session.
    let collecting = collect_outcomes(&results, frames, &daemon);
    // 10 000 frames of 8 samples as fast as zenoh takes them: far above the rate the stream is meant to run at.
    let flooding = async {
        let period = 1.0 / recording.sample_rate_hz;
        let mut deepest = 0;
        for frame in 0..frames {
            let batch: Vec<_> = (0..8)
                .map(|step| {
                    let index = frame * 8 + step;
                    serde_json::json!({ "t": index as f64 * period, "values": recording.samples[index % recording.samples.len()] })
                })
                .collect();
            let payload = serde_json::to_vec(&batch).expect("json");
            put(&client, "sensor/flood/watch", payload, Encoding::APPLICATION_JSON, format!("f-{frame}")).await;
            if frame % 2_000 == 0 {
                deepest = deepest.max(status(&client, &prefix).await.pipelines[0].queue_depth);
            }
        }
        deepest
    };
    let (outcomes, deepest) = tokio::join!(collecting, flooding);
    let superseded = outcomes.values().filter(|result| result.reason == "superseded").count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for result in outcomes.values() {
        *kinds.entry(format!("{}/{}", result.outcome, result.reason)).or_default() += 1;
    }
    assert!(kinds.keys().all(|kind| kind == "ok/" || kind == "dropped/superseded"), "{kinds:?}");
    let after = status(&client, &prefix).await.process.expect("process").rss_bytes;
    let growth_mib = after.saturating_sub(before) as f64 / (1024.0 * 1024.0);
    // Two queues of 32 each (the admission queue and the worker's earliest-deadline-first queue), plus at most one
    // message in each hand-over: the ingress counts a message before queueing it, the worker before filing it.
    assert!(deepest <= 2 * 32 + 2, "the queues never exceed their capacity: {deepest}");
    assert!(growth_mib < 24.0, "RSS grew {growth_mib:.1} MiB over {frames} frames");
    eprintln!("{frames} frames: {superseded} superseded, deepest queue {deepest}, RSS growth {growth_mib:.1} MiB");
    client.close().await;
}
