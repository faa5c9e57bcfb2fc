//! The model ladder, attacked from outside: requests that can only miss their deadlines make the pipeline step
//! down to its smaller model, and it steps back up once they stop; memory above the soft threshold makes it step
//! down too. Every request sent across the switches gets exactly one outcome under its own id, and each result
//! names the model that produced it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zenoh::bytes::Encoding;
use zinfer_proto as proto;
use zinfer_proto::outcome;

use crate::support::{
    Daemon, Results, WAIT, base_config, free_port, next_result, repo_root, shipped_pipeline, status,
    subscribe_buffered, wait_for_stats,
};
use zinferd::client::Client;

const TOP: &str = "zinfer-sentiment-small";

/// The smaller rung the tests step down to (the shipped one), and its model name.
fn small_rung() -> (std::path::PathBuf, &'static str) {
    (repo_root().join("models/zinfer-sentiment-tiny/manifest.toml"), "zinfer-sentiment-tiny")
}

/// The shipped sentiment pipeline `name` with a two-rung ladder stepping down after `down_ms` of pressure and up
/// after `up_ms` without.
fn ladder_config(port: u16, prefix: &str, name: &str, down_ms: u64, up_ms: u64) -> String {
    let top = repo_root().join("models").join(TOP).join("manifest.toml");
    base_config(port, prefix)
        + &shipped_pipeline("default.toml", &top, name, "")
        + &format!(
            "\n[pipeline.ladder]\nrungs = [\"{}\"]\ndown_after_ms = {down_ms}\nup_after_ms = {up_ms}\n",
            small_rung().0.display()
        )
}

/// A daemon serving [`ladder_config`]'s pipeline `name` (with `daemon_keys` in `[daemon]`), a client that has seen
/// its subscriber, and its telemetry prefix.
async fn start(name: &str, down_ms: u64, up_ms: u64, daemon_keys: &str) -> (Daemon, Client, String) {
    let port = free_port();
    let prefix = format!("zt/ladder-{name}/{port}");
    let config =
        ladder_config(port, &prefix, name, down_ms, up_ms).replace("[daemon]\n", &format!("[daemon]\n{daemon_keys}\n"));
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber(&format!("in/{name}/x"), WAIT).await.expect("zinferd subscribes");
    (daemon, client, prefix)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64)
}

/// Publishes a JSON request; a `hopeless` one was sent a second ago with a 50 ms budget, so it misses its deadline.
async fn send(client: &zinferd::client::Client, key: &str, id: &str, hopeless: bool) {
    let mut body = serde_json::json!({"id": id, "text": "a fine, moving film"});
    if hopeless {
        body["deadline_ms"] = 50.into();
        body["sent_at_ms"] = (now_ms() - 1000).into();
    }
    client.session().put(key, body.to_string()).encoding(Encoding::APPLICATION_JSON).await.expect("publish");
}

/// Reads results until every id in `sent` has one, failing on a duplicate or an unknown id.
async fn outcomes_for(results: &Results, sent: &[String], seen: &mut BTreeMap<String, proto::Result>) {
    while sent.iter().any(|id| !seen.contains_key(id)) {
        let result = next_result(results).await;
        assert!(sent.contains(&result.id), "an outcome for an id never sent: {result:?}");
        let id = result.id.clone();
        assert!(seen.insert(id.clone(), result).is_none(), "two outcomes for {id}");
    }
}

fn ladder_of(stats: &proto::PipelineStats) -> &proto::Ladder {
    stats.ladder.as_ref().expect("a pipeline with a ladder reports it")
}

fn model_of(result: &proto::Result) -> &str {
    result.model.as_ref().map_or("", |model| model.name.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_deadlines_step_down_to_the_small_model_and_calm_steps_back_up() {
    let (daemon, client, prefix) = start("lad", 300, 1500, "").await;
    let results = client.session().declare_subscriber("out/in/lad/**").await.expect("subscribe");
    let mut seen = BTreeMap::new();
    let mut sent = Vec::new();

    // Calm: the large model answers.
    for index in 0..5 {
        sent.push(format!("calm-{index}"));
        send(&client, "in/lad/x", &sent[sent.len() - 1], false).await;
    }
    outcomes_for(&results, &sent, &mut seen).await;
    assert!(sent.iter().all(|id| seen[id].outcome == outcome::OK && model_of(&seen[id]) == TOP), "{seen:?}");
    let stats = status(&client, &prefix).await;
    let ladder = ladder_of(&stats.pipelines[0]);
    let names: Vec<_> = ladder.rungs.iter().map(|rung| rung.model.as_ref().map_or("", |m| m.name.as_str())).collect();
    assert_eq!(names, [TOP, small_rung().1]);
    assert_eq!((ladder.active, ladder.steps_down, ladder.steps_up), (0, 0, 0));

    // Pressure: hopeless requests every 20 ms, with ordinary ones among them, until the pipeline steps down; then
    // more ordinary ones while the pressure lasts, which the small model must answer.
    let started = Instant::now();
    let mut stepped_down = None;
    let mut after_switch = Vec::new();
    let mut last_hopeless = started;
    for index in 0.. {
        assert!(started.elapsed() < WAIT, "no step down after {:?}:\n{}", started.elapsed(), daemon.log());
        let hopeless = format!("hopeless-{index}");
        send(&client, "in/lad/x", &hopeless, true).await;
        last_hopeless = Instant::now();
        sent.push(hopeless);
        let ordinary = format!("busy-{index}");
        send(&client, "in/lad/x", &ordinary, false).await;
        sent.push(ordinary.clone());
        if stepped_down.is_some() {
            after_switch.push(ordinary);
            if after_switch.len() == 10 {
                break;
            }
        } else if index % 5 == 4 {
            let stats = status(&client, &prefix).await;
            if ladder_of(&stats.pipelines[0]).active == 1 {
                stepped_down = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stepped_down = stepped_down.expect("stepped down");
    assert!(stepped_down >= Duration::from_millis(300), "stepped down before down_after_ms: {stepped_down:?}");
    outcomes_for(&results, &sent, &mut seen).await;
    for id in &after_switch {
        let result = &seen[id];
        assert_eq!((result.outcome.as_str(), model_of(result)), (outcome::OK, small_rung().1), "{result:?}");
    }
    assert!(
        sent.iter().filter(|id| id.starts_with("hopeless")).all(|id| seen[id].outcome == outcome::EXPIRED),
        "every hopeless request expired"
    );

    // Calm again: a miss counts for a second (MISS_MEMORY), then after up_after_ms it steps back up, and the large
    // model answers. The daemon's last miss came after the last hopeless request was sent.
    let stats = wait_for_stats(&client, &prefix, "the step back up", |stats| ladder_of(stats).active == 0).await;
    let back_up = last_hopeless.elapsed();
    assert!(back_up >= Duration::from_millis(1000 + 1500), "stepped up too soon after the pressure: {back_up:?}");
    let ladder = ladder_of(&stats.pipelines[0]);
    assert_eq!((ladder.steps_down, ladder.steps_up), (1, 1), "{ladder:?}");
    let last: Vec<String> = (0..5).map(|index| format!("after-{index}")).collect();
    for id in &last {
        send(&client, "in/lad/x", id, false).await;
    }
    sent.extend(last.iter().cloned());
    outcomes_for(&results, &sent, &mut seen).await;
    assert!(last.iter().all(|id| seen[id].outcome == outcome::OK && model_of(&seen[id]) == TOP), "{seen:?}");

    // The books: one outcome per request, and the results counted on the rung that produced them.
    assert_eq!(seen.len(), sent.len());
    let ok_by_model = |name: &str| seen.values().filter(|r| r.outcome == outcome::OK && model_of(r) == name).count();
    let stats = wait_for_stats(&client, &prefix, "every outcome counted", |stats| {
        stats.completed + stats.expired == sent.len() as u64
    })
    .await;
    let ladder = ladder_of(&stats.pipelines[0]);
    assert_eq!(ladder.rungs[0].completed as usize, ok_by_model(TOP), "{ladder:?}");
    assert_eq!(ladder.rungs[1].completed as usize, ok_by_model(small_rung().1), "{ladder:?}");
    assert!(ok_by_model(small_rung().1) >= 10);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_above_the_soft_threshold_steps_down() {
    // A soft threshold of 1% of a generous budget, 10 MiB: pressure from the first sample on, never shedding. (20
    // MiB was too close once the daemon handed back the code that loading touched: its RSS fell under it.)
    let pressure = "memory_mb = 1000\nmemory_soft_percent = 1\nmemory_sample_ms = 10";
    let (daemon, client, prefix) = start("lm", 200, 60_000, pressure).await;
    let stats = wait_for_stats(&client, &prefix, "the step down", |stats| ladder_of(stats).active == 1).await;
    assert_eq!(stats.memory.expect("memory stats").pressure, "soft");
    let pending = client
        .request("in/lm/x", "out", "m1", "a fine, moving film", zinferd::client::RequestFormat::Json)
        .await
        .expect("send");
    let result = pending.result(WAIT).await.expect("result");
    assert_eq!((result.outcome.as_str(), model_of(&result)), (outcome::OK, small_rung().1), "{result:?}");
    assert!(daemon.log().contains("stepping down the model ladder"), "{}", daemon.log());
    client.close().await;
}

/// A reload at the worst moment: while the pipeline is stepped down and messages keep coming, SIGHUP swaps in a new
/// generation (which starts on the top rung). Every request sent across it gets exactly one outcome, and the new
/// generation steps down too while the pressure lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_stepped_down_answers_every_request_once() {
    let (daemon, client, prefix) = start("lr", 200, 60_000, "").await;
    let results = subscribe_buffered(&client, "out/in/lr/**").await;
    let mut sent = Vec::new();
    let pressure = async |sent: &mut Vec<String>, tag: &str, index: usize| {
        for (id, hopeless) in [(format!("{tag}-hopeless-{index}"), true), (format!("{tag}-busy-{index}"), false)] {
            send(&client, "in/lr/x", &id, hopeless).await;
            sent.push(id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = Instant::now();
    for index in 0.. {
        assert!(started.elapsed() < WAIT, "no step down:\n{}", daemon.log());
        pressure(&mut sent, "before", index).await;
        if index % 5 == 4 && ladder_of(&status(&client, &prefix).await.pipelines[0]).active == 1 {
            break;
        }
    }
    daemon.signal("HUP");
    for index in 0..75 {
        pressure(&mut sent, "across", index).await;
    }
    let stats = wait_for_stats(&client, &prefix, "the new generation stepped down", |stats| {
        stats.generation == 2 && ladder_of(stats).steps_down >= 1
    })
    .await;
    assert_eq!(ladder_of(&stats.pipelines[0]).active, 1, "{stats:?}");
    let mut seen = BTreeMap::new();
    outcomes_for(&results, &sent, &mut seen).await;
    assert_eq!(seen.len(), sent.len(), "one outcome per request");
    let busy_ok = sent.iter().filter(|id| id.contains("-busy-")).all(|id| seen[id].outcome == outcome::OK);
    assert!(busy_ok, "every ordinary request answered ok across the reload: {seen:?}");
    client.close().await;
}
