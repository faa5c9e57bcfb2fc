//! `zinferd bench latency` runs end to end on the fixture model and reports what it promises: the floor, the model
//! four ways, the daemon's own timings by stage, and the CPU the figures come from; `bench sensor` reports the
//! daemon's ratio to the model run per window. Smoke tests of the benchmarks' plumbing; they assert nothing about
//! speed.

use crate::support::{base_config, free_port, repo_root, run_bench, text_pipeline};

#[test]
fn bench_latency_reports_the_floor_and_the_daemons_stages() {
    let config =
        base_config(free_port(), "zt/bench") + &text_pipeline("bench", "in/bench/**", "", "buckets = [16, 32]", "");
    let (stdout, report) = run_bench(Some(&config), &["latency", "--iterations", "20", "--warmup", "2"]);
    assert!(stdout.starts_with("CPU: "), "the CPU line first:\n{stdout}");
    assert!(stdout.contains("(the floor)") && stdout.contains("daemon's total / floor"), "{stdout}");

    assert_eq!(report["floor"]["count"], 20, "{report}");
    assert_eq!(report["round_trip"]["count"], 20, "{report}");
    assert_eq!(report["zenoh_echo"]["count"], 20, "zenoh's own round trip, beside the daemon's: {report}");
    assert!(stdout.contains("round trip − echo − floor"), "{stdout}");
    assert!(report["padded"]["count"] == 20, "the text has a bucket, so the padded runs are timed: {report}");
    let stages = report["daemon_stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|stage| stage[0].as_str()).collect();
    assert_eq!(names, ["queue", "decode", "preprocess", "inference", "postprocess", "other"]);
    let inference = stages[3][1]["p50_us"].as_f64().expect("inference p50");
    assert!(inference > 0.0, "the daemon timed its model runs: {report}");
    assert!(
        report["tokens"].as_u64().is_some_and(|tokens| tokens < 32),
        "a lone text is not padded to its bucket, 32: {report}"
    );
}

/// `--idle-ms`: every round waits before its first model run and before its round trip, and the report says so.
#[test]
fn bench_latency_with_an_idle_wait_times_the_lone_message_after_it() {
    let config = base_config(free_port(), "zt/benchidle") + &text_pipeline("idle", "in/idle/**", "", "", "");
    let started = std::time::Instant::now();
    let (stdout, report) =
        run_bench(Some(&config), &["latency", "--iterations", "5", "--warmup", "1", "--idle-ms", "100"]);
    assert_eq!(report["idle_ms"], 100, "{report}");
    assert_eq!(report["floor_after_idle"]["count"], 5, "{report}");
    assert!(stdout.contains("first run after 100 ms idle"), "{stdout}");
    assert!(stdout.contains("each round waited 100 ms"), "{stdout}");
    // Six rounds of two waits each: at least 1.2 s, whatever else the benchmark does.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1200), "{:?}", started.elapsed());
}

#[test]
fn bench_sensor_reports_the_daemons_ratio_to_the_model_run() {
    let manifest = repo_root().join("models/zinfer-watch-small/manifest.toml");
    let pipeline = format!(
        "[[pipeline]]\nname = \"watch\"\ninput = \"sensor/bench/**\"\noutput_prefix = \"out\"\nmodel = \"{}\"\n\
         [pipeline.decode]\ntype = \"sensor\"\ndefault_format = \"f32le\"\n[[pipeline.preprocess]]\ntype = \"validate\"\n\
         [[pipeline.preprocess]]\ntype = \"window\"\n[[pipeline.postprocess]]\ntype = \"classify\"\ntop_k = 3\n",
        manifest.display()
    );
    let config = base_config(free_port(), "zt/benchsensor") + &pipeline;
    let (stdout, _) = run_bench(Some(&config), &["sensor", "--iterations", "20", "--warmup", "2"]);
    assert!(stdout.starts_with("CPU: "), "the CPU line first:\n{stdout}");
    assert!(stdout.contains("daemon's total / model run (median)"), "{stdout}");
    assert!(stdout.contains("frames of that run not answered ok: none"), "{stdout}");
}

#[test]
fn bench_footprint_reports_ready_time_and_peaks_per_setting() {
    let config =
        base_config(free_port(), "zt/benchfoot") + &text_pipeline("foot", "in/foot/**", "", "buckets = [16, 32]", "");
    let (stdout, report) = run_bench(Some(&config), &["footprint", "--rounds", "1", "--burst", "40", "--lone", "5"]);
    assert!(stdout.starts_with("CPU: "), "the CPU line first:\n{stdout}");
    let variants = report["variants"].as_array().expect("variants");
    let names: Vec<&str> = variants.iter().filter_map(|variant| variant["name"].as_str()).collect();
    assert_eq!(names.first(), Some(&"as configured"), "{report}");
    assert_eq!(names.last(), Some(&"no pipeline"), "{report}");
    assert!(names.contains(&"arena off, pattern on") && names.contains(&"max_batch = 1"), "{report}");
    assert!(names.contains(&"code kept after load"), "{report}");
    for variant in variants {
        let sample = &variant["samples"][0];
        assert!(sample["ready_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{variant}");
        assert!(sample["startup_peak_bytes"].as_u64().is_some_and(|bytes| bytes > 1 << 20), "{variant}");
        if variant["name"] != "no pipeline" {
            assert_eq!(sample["answered"], 40, "every request of the burst answered: {variant}");
            assert!(sample["peak_bytes"].as_u64() >= sample["startup_peak_bytes"].as_u64(), "{variant}");
            assert!(sample["lone_total_p50_us"].as_f64().is_some_and(|us| us > 0.0), "{variant}");
            // After the lone requests, so it may exceed the peak read after the burst.
            assert!(sample["rss_after_bytes"].as_u64().is_some_and(|bytes| bytes > 1 << 20), "{variant}");
        }
    }
}
