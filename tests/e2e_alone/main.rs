//! Attacks that load the whole machine, or measure the daemon's RSS across many reloads: a test binary of their
//! own, because Cargo runs test binaries one after another, and inside it they take turns ([`ALONE`]), so nothing
//! runs beside them (beside the e2e suite, the 30-second stall starved a parallel test's status queries). The real
//! `zinferd` binary, real zenoh on loopback, real models.

// The shared helpers of the e2e suite; this binary uses a few of them.
#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

mod share;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zenoh::bytes::Encoding;

use crate::support::{
    Daemon, TextDaemon, WAIT, base_config, fixture_manifest, free_port, proc_status_bytes, put, repo_root, rss_bytes,
    start_text, status, text_pipeline, wait_for_stats,
};

/// Held by each test for its whole run: the tests of this binary run one at a time, not beside each other either.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes one request with id `id` and blocking congestion control.
async fn request(client: &zinferd::client::Client, key: &str, id: &str) {
    let body = serde_json::json!({ "id": id, "text": "patient readers are rewarded" });
    put(client, key, body.to_string().into_bytes(), Encoding::APPLICATION_JSON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_subscriber_stalled_for_30_s_is_cut_off_by_zenoh_and_the_daemon_serves_on() {
    let _alone = ALONE.lock().await;
    const STALL: Duration = Duration::from_secs(30);
    let TextDaemon { daemon, client, prefix } =
        start_text("stall30", "result_congestion_control = \"block\"", "", "").await;
    let key = "in/stall30/x";

    // A client whose result callback holds its session's receiving thread for 30 s on the first result it sees.
    let stalled = daemon.client().await;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stall_over = Arc::new(AtomicBool::new(false));
    let _stalled_subscriber = stalled
        .session()
        .declare_subscriber("out/in/stall30/**")
        .callback({
            let (seen, stall_over) = (Arc::clone(&seen), Arc::clone(&stall_over));
            move |_| {
                if seen.fetch_add(1, Ordering::Relaxed) == 0 {
                    std::thread::sleep(STALL);
                    stall_over.store(true, Ordering::Relaxed);
                }
            }
        })
        .await
        .expect("stalled subscriber");
    // A well-behaved client: one request every 100 ms, results read at once, latency per id.
    let results = client.session().declare_subscriber("out/in/stall30/**").await.expect("subscribe");
    let healthy = daemon.client().await;
    healthy.wait_for_subscriber(key, WAIT).await.expect("the daemon subscribes");
    let flood = daemon.client().await;
    let rss_before = rss_bytes(daemon.pid());

    // Junk, answered `error` without a model run, fast enough that the stalled client's TCP buffers fill and the
    // daemon's blocking puts to it wait: what makes zenoh close that transport.
    let flooding = tokio::spawn(async move {
        let mut sent = 0u64;
        let started = Instant::now();
        while started.elapsed() < STALL {
            for _ in 0..100 {
                put(&flood, "in/stall30/x", b"\xff\xfe junk".to_vec(), Encoding::TEXT_PLAIN).await;
            }
            sent += 100;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flood.close().await;
        sent
    });
    let collected = Arc::new(AtomicBool::new(false));
    let collecting = tokio::spawn({
        let collected = Arc::clone(&collected);
        async move {
            let mut answered = BTreeMap::<String, (usize, Instant)>::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(1), results.recv_async()).await {
                    Ok(Ok(sample)) => {
                        let result = zinferd::client::decode_result(&sample).expect("decode");
                        if result.id.starts_with("h-") {
                            answered.entry(result.id).or_insert((0, Instant::now())).0 += 1;
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) if collected.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            answered
        }
    });
    let mut sent_at = BTreeMap::new();
    let started = Instant::now();
    let mut index = 0;
    while !stall_over.load(Ordering::Relaxed) && started.elapsed() < STALL + WAIT {
        let id = format!("h-{index}");
        sent_at.insert(id.clone(), Instant::now());
        request(&healthy, key, &id).await;
        index += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let junk = flooding.await.expect("flood");
    let rss_during = rss_bytes(daemon.pid());
    let seen_during = seen.load(Ordering::Relaxed);

    // After the stall: zenoh reconnects the cut-off client, which receives results again.
    let deadline = Instant::now() + WAIT;
    let mut after = 0;
    while seen.load(Ordering::Relaxed) == seen_during {
        assert!(Instant::now() < deadline, "the stalled client never received a result again:\n{}", daemon.log());
        request(&healthy, key, &format!("after-{after}")).await;
        after += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = junk + index as u64 + after;
    let everything =
        |stats: &zinfer_proto::PipelineStats| stats.received + stats.refused == total && stats.in_flight == 0;
    let snapshot = wait_for_stats(&client, &prefix, "every message accounted for", everything).await;
    let stats = &snapshot.pipelines[0];
    collected.store(true, Ordering::Relaxed);
    let answered = collecting.await.expect("collector");
    let latencies: Vec<Duration> = answered
        .iter()
        .filter_map(|(id, (_, at))| sent_at.get(id).map(|sent| at.saturating_duration_since(*sent)))
        .collect();
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "stall 30 s: {junk} junk + {index} requests; received {}, refused {}; the stalled client saw {seen_during} results \
         during the stall, of {} published; healthy requests answered {} of {index}, slowest {slowest:?}; RSS {:.1} -> \
         {:.1} MiB",
        stats.received,
        stats.refused,
        stats.received,
        answered.len(),
        rss_before as f64 / 1048576.0,
        rss_during as f64 / 1048576.0,
    );
    // zenoh cut the stalled client off (what it had queued for it is lost: see README, Guarantees) ...
    assert!((seen_during as u64) < stats.received, "the stall was not long enough to fill the connection");
    // ... and the daemon served on: memory bounded, the books exact, no answer twice, every request it accepted
    // answered to the healthy client (those refused at the door while the egress waited are counted, not answered).
    assert!(rss_during.saturating_sub(rss_before) < 32 * 1024 * 1024, "RSS {rss_before} -> {rss_during}");
    assert_eq!(stats.received, stats.completed + stats.failed + stats.expired + stats.dropped);
    assert!(answered.values().all(|&(count, _)| count == 1), "a request answered twice");
    let unanswered = index - answered.len();
    assert!(unanswered as u64 <= stats.refused, "{unanswered} requests unanswered, {} refused", stats.refused);
    stalled.close().await;
    healthy.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_of_the_shipped_model_do_not_ratchet_rss_up() {
    let _alone = ALONE.lock().await;
    // Each reload loads the model beside the running one and drops the old one when it has finished. With glibc's
    // defaults the freed weights and arenas stayed in the heap: 76 -> 185 MiB over 30 reloads in `bench soak`'s
    // reload loop. zinferd's allocator tuning (memory::allocator) gives them back.
    const RELOADS: u64 = 20;
    let port = free_port();
    let prefix = format!("zt/reloads/{port}");
    let shipped = repo_root().join("models/zinfer-sentiment-small/manifest.toml");
    let pipeline = text_pipeline("reloads", "in/reloads/**", "", "buckets = [16, 32, 64, 128]", "");
    let config = base_config(port, &prefix)
        + &pipeline.replace(&fixture_manifest().display().to_string(), &shipped.display().to_string());
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/reloads/x", WAIT).await.expect("zinferd subscribes");
    let rss_before = rss_bytes(daemon.pid());
    for reload in 1..=RELOADS {
        daemon.signal("HUP");
        let deadline = Instant::now() + WAIT;
        // Reloaded, and the previous generation finished and dropped (telemetry lists retiring generations).
        loop {
            let snapshot = status(&client, &prefix).await;
            let generation = snapshot.service.as_ref().map_or(0, |service| service.generation);
            if generation == reload + 1 && snapshot.pipelines.len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "reload {reload} did not finish:\n{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The last retired generation's workers exit, and the trim runs, at the next health check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(daemon.pid());
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{RELOADS} reloads of the shipped model: RSS {:.1} -> {:.1} MiB",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert!(growth < 16 * 1024 * 1024, "RSS grew {growth} bytes over {RELOADS} reloads");
    client.close().await;
}

/// `zinferd bench fleet` runs end to end on the fixture model: a router, one then two daemons sharing the input,
/// and lone messages direct and routed. A smoke test of its plumbing (here, because it loads the machine); it asserts
/// nothing about speed.
#[test]
fn bench_fleet_measures_one_and_two_daemons_and_the_router() {
    let _alone = ALONE.blocking_lock();
    let config = base_config(free_port(), "zt/benchfleet") + &text_pipeline("bench", "in/bench/**", "", "", "");
    let (stdout, report) = support::run_bench(Some(&config), &["fleet", "--iterations", "20"]);
    assert!(stdout.starts_with("CPU: ") && stdout.contains("scaling 2 over 1"), "{stdout}");
    assert!(report["capacity_one_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{report}");
    assert!(report["capacity_two_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{report}");
    let split: Vec<u64> = serde_json::from_value(report["split"].clone()).expect("split");
    assert!(split.len() == 2 && split.iter().all(|count| *count > 0), "both daemons took a share: {report}");
    assert_eq!((report["direct"]["count"].as_u64(), report["routed"]["count"].as_u64()), (Some(20), Some(20)));
}

/// `zinferd bench router` runs end to end: a router, publishing sessions and a subscriber, level by level. A smoke
/// test of its plumbing (here, because it loads the machine); it asserts nothing about speed.
#[test]
fn bench_router_reports_its_levels() {
    let _alone = ALONE.blocking_lock();
    let (_, report) = support::run_bench(None, &["router", "--sessions", "2", "--seconds", "0.5"]);
    let levels = report["levels"].as_array().expect("levels");
    assert!(!levels.is_empty() && levels[0]["offered_per_s"] == 10_000.0, "{report}");
    assert!(levels[0]["delivered_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_only_loading_touched_goes_back_to_the_kernel() {
    let _alone = ALONE.lock().await;
    // Loading a model walks most of ONNX Runtime's library; serving uses little of it. With page_out_after_load the
    // daemon hands those pages back once loaded, and serving 50 messages faults back only what it uses. The two
    // daemons run one after the other: the kernel keeps pages that another process maps.
    let shipped = repo_root().join("models/zinfer-sentiment-small/manifest.toml");
    let mut file_rss = Vec::new();
    for page_out in [false, true] {
        let port = free_port();
        let prefix = format!("zt/pageout/{port}");
        let pipeline = text_pipeline("pageout", "in/pageout/**", "", "buckets = [16, 32, 64, 128]", "");
        let config = base_config(port, &prefix)
            .replace("[daemon]\n", &format!("[daemon]\npage_out_after_load = {page_out}\n"))
            + &pipeline.replace(&fixture_manifest().display().to_string(), &shipped.display().to_string());
        let daemon = Daemon::start(&config, port);
        let client = daemon.client().await;
        client.wait_for_subscriber("in/pageout/x", WAIT).await.expect("zinferd subscribes");
        let results = client.session().declare_subscriber("out/in/pageout/**").await.expect("subscribe");
        for index in 0..50 {
            request(&client, "in/pageout/x", &format!("m-{index}")).await;
            let sample = tokio::time::timeout(WAIT, results.recv_async()).await.expect("a result").expect("results");
            assert!(!sample.payload().is_empty());
        }
        file_rss.push(proc_status_bytes(daemon.pid(), "RssFile"));
        client.close().await;
        drop(daemon);
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "file-backed RSS after 50 messages: {:.1} MiB kept, {:.1} MiB paged out",
        mib(file_rss[0]),
        mib(file_rss[1])
    );
    assert!(
        file_rss[1] + 4 * 1024 * 1024 < file_rss[0],
        "paging out after load must leave at least 4 MiB less code resident: {:.1} vs {:.1} MiB",
        mib(file_rss[1]),
        mib(file_rss[0])
    );
}
