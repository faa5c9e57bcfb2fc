//! Telemetry, the status queryable and the liveliness token carry real, changing numbers.

use zinfer_proto::{self as proto, keys, outcome};
use zinferd::client::RequestFormat;

use crate::support::{TextDaemon, WAIT, start_text, status, wait_for_stats};

async fn next_snapshot(
    subscriber: &zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
) -> proto::Telemetry {
    let sample = tokio::time::timeout(WAIT, subscriber.recv_async()).await.expect("telemetry in time").expect("sample");
    serde_json::from_slice(&sample.payload().to_bytes()).expect("telemetry is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_status_report_changing_counters() {
    let TextDaemon { daemon: _daemon, client, prefix } = start_text("tele", "", "", "").await;

    let alive = client.session().liveliness().get(keys::alive(&prefix)).await.expect("liveliness query");
    let token = tokio::time::timeout(WAIT, alive.recv_async()).await.expect("in time").expect("a reply");
    assert_eq!(token.result().expect("alive").key_expr().as_str(), keys::alive(&prefix));

    let telemetry = client.session().declare_subscriber(keys::telemetry(&prefix)).await.expect("subscribe");
    let first = next_snapshot(&telemetry).await;
    assert_eq!(first.pipelines.len(), 1);
    assert_eq!(first.pipelines[0].name, "tele");
    assert_eq!(first.pipelines[0].input, "in/tele/**");
    assert!(first.process.as_ref().is_some_and(|process| process.rss_bytes > 10 << 20), "{first:?}");
    assert!(first.system.as_ref().is_some_and(|system| system.available_memory_bytes > 0), "{first:?}");
    assert_eq!(first.pipelines[0].execution_providers, ["cpu"]);

    for index in 0..3 {
        let id = format!("t{index}");
        let pending = client.request("in/tele/x", "out", &id, "a fine film", RequestFormat::Text).await.expect("send");
        assert_eq!(pending.result(WAIT).await.expect("result").outcome, outcome::OK);
    }
    let pending = client.request("in/tele/x", "out", "t-bad", "", RequestFormat::Text).await.expect("send");
    assert_eq!(pending.result(WAIT).await.expect("result").reason, "empty_payload");

    let after = wait_for_stats(&client, &prefix, "4 outcomes", |stats| stats.completed + stats.failed == 4).await;
    let stats = &after.pipelines[0];
    assert_eq!((stats.received, stats.completed, stats.failed, stats.dropped, stats.in_flight), (4, 3, 1, 0, 0));
    assert_eq!(stats.failed_by_reason.get("empty_payload"), Some(&1));
    let stages: Vec<&str> = stats.latency.iter().map(|latency| latency.stage.as_str()).collect();
    assert_eq!(stages, ["queue", "decode", "preprocess", "inference", "postprocess", "total"]);
    for latency in &stats.latency {
        assert_eq!(latency.count, 3, "latency covers completed messages: {latency:?}");
        assert!(latency.p50_us >= 1 && latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    }
    let inference = &stats.latency[3];
    let total = &stats.latency[5];
    assert!(total.p50_us >= inference.p50_us, "total {total:?} < inference {inference:?}");
    // The pipeline's own stages, by name: the text pipeline's tokenize, then classify.
    let own: Vec<(&str, u64)> =
        stats.stage_latency.iter().map(|latency| (latency.stage.as_str(), latency.count)).collect();
    assert_eq!(own, [("tokenize", 3), ("classify", 3)], "{:?}", stats.stage_latency);
    let preprocess = &stats.latency[2];
    assert!(stats.stage_latency[0].max_us <= preprocess.max_us + 1, "tokenize is inside preprocess: {stats:?}");

    // The periodic publication moves on too.
    let mut later = next_snapshot(&telemetry).await;
    while later.pipelines[0].received < 4 {
        later = next_snapshot(&telemetry).await;
    }
    assert!(later.uptime_ms > first.uptime_ms && later.timestamp_ms > first.timestamp_ms);
    assert_eq!(later.zid, first.zid);
    let again = status(&client, &prefix).await;
    assert!(again.uptime_ms >= after.uptime_ms);
    client.close().await;
}
