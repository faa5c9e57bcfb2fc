//! The memory budget: refused at start-up when it cannot hold the model, enforced by shedding (`dropped: memory`)
//! when the process is over it, and respected with the books balanced under a burst.

use std::process::Command;

use zinfer_proto::outcome;
use zinferd::client::RequestFormat;

use crate::support::{Daemon, WAIT, base_config, free_port, next_result, ort_library, status, text_pipeline};

/// Runs `zinferd check` on `config` and returns (success, stderr).
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zinferd.toml");
    std::fs::write(&path, config).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .args(["check", "--config"])
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_library())
        .env("RUST_LOG", "info")
        .output()
        .expect("run zinferd check");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn config_with_daemon_keys(port: u16, prefix: &str, daemon_keys: &str) -> String {
    base_config(port, prefix).replace("[daemon]\n", &format!("[daemon]\n{daemon_keys}\n"))
        + &text_pipeline("mem", "in/mem/**", "", "", "")
}

#[test]
fn a_budget_too_small_for_the_model_refuses_to_start() {
    let config = config_with_daemon_keys(free_port(), "zt/mem-small", "memory_mb = 16");
    let (ok, stderr) = check(&config);
    assert!(!ok, "a 16 MiB budget cannot hold ONNX Runtime and a model:\n{stderr}");
    for needle in
        ["memory budget of 16.0 MiB (daemon.memory_mb) cannot hold zinferd", "pipeline `mem`: model", "working memory"]
    {
        assert!(stderr.contains(needle), "expected `{needle}` in:\n{stderr}");
    }

    // The daemon itself refuses too, with an error exit and before joining the network.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zinferd.toml");
    std::fs::write(&path, &config).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .arg("--config")
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_library())
        .output()
        .expect("run zinferd");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot hold zinferd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_budget_new_messages_are_shed_with_an_outcome() {
    // Measure what start-up needs here, then give exactly that plus 2 MiB and no runtime reserve: start-up passes,
    // but the running daemon (zenoh session, runtime threads) is over the budget and must shed, not crash. The code
    // that loading touched stays resident (page_out_after_load would hand back more than the zenoh session costs).
    let port = free_port();
    let prefix = format!("zt/mem-hard/{port}");
    let (ok, stderr) = check(&config_with_daemon_keys(port, &prefix, "memory_mb = 4000\npage_out_after_load = false"));
    assert!(ok, "{stderr}");
    let measured: f64 = stderr
        .split("usage_mib=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no `memory probed` line:\n{stderr}"));
    let budget = measured.ceil() as u64 + 2;
    let keys =
        format!("memory_mb = {budget}\nmemory_reserve_mb = 0\nmemory_sample_ms = 10\npage_out_after_load = false");
    let daemon = Daemon::start(&config_with_daemon_keys(port, &prefix, &keys), port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/mem/x", WAIT).await.expect("zinferd subscribes");
    let pending = client.request("in/mem/x", "out", "m1", "a fine film", RequestFormat::Text).await.expect("send");
    let result = pending.result(WAIT).await.expect("an outcome, not silence");
    assert_eq!((result.outcome.as_str(), result.reason.as_str()), (outcome::DROPPED, "memory"), "{result:?}");
    let snapshot = status(&client, &prefix).await;
    let memory = snapshot.memory.expect("memory stats");
    assert_eq!(memory.budget_bytes, budget * 1024 * 1024);
    assert_eq!(memory.pressure, "hard", "{memory:?}");
    assert_eq!(snapshot.pipelines[0].dropped_by_reason.get("memory"), Some(&1));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_above_capacity_stays_under_the_budget_and_balances() {
    const BURST: usize = 600;
    let port = free_port();
    let prefix = format!("zt/mem-burst/{port}");
    let config = base_config(port, &prefix).replace("[daemon]\n", "[daemon]\nmemory_mb = 512\n")
        + &text_pipeline(
            "burst",
            "in/burst/**",
            "queue_capacity = 32\nmax_batch = 8",
            "buckets = [16, 32, 64, 128]",
            "",
        );
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/burst/x", WAIT).await.expect("zinferd subscribes");
    // Drain results while publishing: an undrained subscriber would push back through zenoh onto the daemon.
    let results = client.session().declare_subscriber("out/in/burst/**").await.expect("subscribe");
    let collector = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < BURST {
            let result = next_result(&results).await;
            assert!(seen.insert(result.id.clone()), "two outcomes for {}", result.id);
        }
        seen.len()
    });
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    let mut peak_rss = 0;
    for index in 0..BURST {
        client
            .session()
            .put("in/burst/x", text.clone())
            .attachment(index.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
        if index % 100 == 0 {
            let snapshot = status(&client, &prefix).await;
            peak_rss = peak_rss.max(snapshot.memory.expect("memory").rss_bytes);
        }
    }
    assert_eq!(collector.await.expect("collector"), BURST, "one outcome per message");
    let snapshot = crate::support::wait_for_stats(&client, &prefix, "all answered", |s| s.in_flight == 0).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.received, BURST as u64);
    assert_eq!(stats.received, stats.completed + stats.failed + stats.expired + stats.dropped);
    assert!(stats.dropped > 0, "a 32-deep queue under a burst of {BURST} must shed: {stats:?}");
    let memory = snapshot.memory.expect("memory");
    assert!(memory.budget_bytes > 0 && peak_rss <= memory.budget_bytes, "peak {peak_rss} over {memory:?}");
    client.close().await;
}
