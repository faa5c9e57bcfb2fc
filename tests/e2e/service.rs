//! zinferd as a systemd service: the notify protocol (readiness, watchdog, status, stopping) against a socket the
//! test owns, exactly as systemd would provide it (`NOTIFY_SOCKET`, `WATCHDOG_USEC`); a wedged worker stopping the
//! pings; SIGHUP reloads that swap without loss or keep the old pipeline on failure, and that keep the watchdog fed
//! while a slow model loads; the drain timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zinfer_proto::{self as proto, outcome};
use zinferd::client::{Client, RequestFormat, decode_result};

use crate::support::{
    Daemon, NotifySocket, WAIT, base_config, collect_outcomes, fixture_manifest, free_port, spin_pipeline,
    stall_pipeline, status, text_pipeline,
};

fn is_ping(message: &str) -> bool {
    message.lines().any(|line| line == "WATCHDOG=1")
}

async fn classify(client: &Client, key: &str, id: &str) -> proto::Result {
    let pending = client.request(key, "out", id, "a gripping, beautifully acted film", RequestFormat::Json).await;
    pending.expect("publish").result(WAIT).await.expect("a result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_watchdog_pings_status_and_stopping_reach_the_notify_socket() {
    let notify = NotifySocket::bind();
    let port = free_port();
    let prefix = format!("zt/notify/{port}");
    let config = base_config(port, &prefix) + &text_pipeline("notify", "in/notify/**", "", "", "");
    let mut daemon = Daemon::start_with_env(&config, port, &notify.env(Duration::from_secs(3)));

    let ready = notify.wait_for("READY=1", WAIT, |message| message.contains("READY=1"));
    assert!(ready.contains("STATUS=generation 1: 1 pipeline(s)"), "{ready}");
    let client = daemon.client().await;
    client.wait_for_subscriber("in/notify/x", WAIT).await.expect("subscribed once ready");
    assert_eq!(classify(&client, "in/notify/x", "n1").await.outcome, outcome::OK);

    // A healthy daemon pings at a third of the period (1 s here): over 4 s, never more than the period apart.
    let started = Instant::now();
    let window = notify.collect_stamped(Duration::from_secs(4));
    let pings: Vec<Instant> =
        window.iter().filter(|(at, message)| *at >= started && is_ping(message)).map(|(at, _)| *at).collect();
    let mut beats = vec![started];
    beats.extend(&pings);
    beats.push(Instant::now());
    let longest = beats.windows(2).map(|pair| pair[1] - pair[0]).max().expect("two beats");
    assert!(
        pings.len() >= 2 && longest < Duration::from_secs(3),
        "{} pings in 4 s, {longest:?} apart at most: {window:?}\n{}",
        pings.len(),
        daemon.log()
    );
    let last = window.iter().rev().map(|(_, message)| message).find(|message| is_ping(message)).expect("a ping");
    assert!(last.contains("1 answered") && last.contains("msg/s") && last.contains("RSS"), "status line: {last}");

    daemon.terminate();
    let stopping = notify.wait_for("STOPPING=1", WAIT, |message| message.contains("STOPPING=1"));
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    let exit = daemon.wait_exit();
    assert!(exit.success(), "exit {exit}:\n{}", daemon.log());
    client.close().await;
}

/// A daemon under a 3 s watchdog with a pipeline `tag` on the stall fixture (`run_timeout_ms`) and `more` pipelines,
/// ready and subscribed: its notify socket, the daemon, a client, its port and its telemetry prefix.
async fn start_stalling(tag: &str, run_timeout_ms: u64, more: &str) -> (NotifySocket, Daemon, Client, u16, String) {
    let notify = NotifySocket::bind();
    let port = free_port();
    let prefix = format!("zt/{tag}/{port}");
    let config = base_config(port, &prefix) + &stall_pipeline(tag, run_timeout_ms) + more;
    let daemon = Daemon::start_with_env(&config, port, &notify.env(Duration::from_secs(3)));
    notify.wait_for("READY=1", WAIT, |message| message.contains("READY=1"));
    let client = daemon.client().await;
    client.wait_for_subscriber(&format!("in/{tag}/x"), WAIT).await.expect("subscribed");
    (notify, daemon, client, port, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_worker_stops_the_watchdog_pings() {
    // run_timeout_ms = 0: nothing cancels the run, as with a driver call that ignores ONNX Runtime's terminate flag.
    let healthy = text_pipeline("healthy", "in/healthy/**", "", "", "");
    let (notify, daemon, client, _, prefix) = start_stalling("wedge", 0, &healthy).await;
    notify.wait_for("a first ping", WAIT, is_ping);
    client.session().put("in/wedge/x", "this message never comes back").await.expect("publish");

    // Stalled after half the period (1.5 s) without a beat; the status says so and the pings stop for good.
    let stalled = notify.wait_for("a STALLED status", WAIT, |message| message.contains("STALLED"));
    assert!(stalled.contains("pipeline `wedge` no progress"), "{stalled}");
    assert!(!is_ping(&stalled), "a stalled status line must not ping: {stalled}");
    let after = notify.collect(Duration::from_secs(4));
    assert!(after.iter().all(|message| !is_ping(message)), "pinged while wedged: {after:?}");
    assert!(after.iter().any(|message| message.contains("STALLED")), "status keeps saying why: {after:?}");

    // The other pipeline still answers, and telemetry names the stuck one.
    assert_eq!(classify(&client, "in/healthy/x", "h1").await.outcome, outcome::OK);
    let snapshot = status(&client, &prefix).await;
    let service = snapshot.service.expect("service state");
    assert_eq!(service.stalled_pipelines, vec!["wedge".to_owned()]);
    let wedge = snapshot.pipelines.iter().find(|pipeline| pipeline.name == "wedge").expect("wedge stats");
    assert!(wedge.worker_idle_ms > 1500, "{wedge:?}");
    assert!(daemon.log().contains("stalled"), "{}", daemon.log());
    client.close().await;
    // The daemon is killed on drop: a wedged worker cannot drain, which is what the watchdog is for.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_still_wedged_after_a_reload_replaced_it_stops_the_watchdog_pings() {
    // run_timeout_ms = 0: nothing ever cancels the run, so generation 1's worker stays stuck after the reload.
    let (notify, daemon, client, port, prefix) = start_stalling("oldwedge", 0, "").await;
    client.session().put("in/oldwedge/x", "this message never comes back").await.expect("publish");

    // The same pipeline on the fixture model: the subscription switches to it, the wedged worker retires.
    let replaced = base_config(port, &prefix) + &text_pipeline("oldwedge", "in/oldwedge/**", "", "", "");
    std::fs::write(daemon.config_path(), replaced).expect("rewrite the config");
    daemon.signal("HUP");
    notify.wait_for("READY=1 after the reload", WAIT, |message| {
        message.contains("READY=1") && message.contains("generation 2")
    });
    assert_eq!(classify(&client, "in/oldwedge/x", "new").await.outcome, outcome::OK, "generation 2 serves");
    let stalled = notify.wait_for("a STALLED status", WAIT, |message| message.contains("STALLED"));
    assert!(stalled.contains("oldwedge (generation 1, retiring)"), "{stalled}");
    // Telemetry still shows the retiring generation, which owes the wedged message: every generation's books balance.
    let snapshot = status(&client, &prefix).await;
    let generations: Vec<(u64, u64, u64)> =
        snapshot.pipelines.iter().map(|stats| (stats.generation, stats.received, stats.in_flight)).collect();
    assert_eq!(generations, [(2, 1, 0), (1, 1, 1)], "(generation, received, in_flight) per entry: {snapshot:?}");
    let after = notify.collect(Duration::from_secs(4));
    assert!(after.iter().all(|message| !is_ping(message)), "pinged while a retiring worker is wedged: {after:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_timeout_unwedges_the_worker_and_the_pings_resume() {
    // The run timeout (4 s) outlasts the stall threshold (1.5 s): the worker is reported stalled, then recovers.
    let (notify, _daemon, client, _, _) = start_stalling("unwedge", 4000, "").await;

    let pending = client.request("in/unwedge/x", "out", "u1", "stuck for a while", RequestFormat::Text).await;
    notify.wait_for("a STALLED status", WAIT, |message| message.contains("STALLED"));
    let result = pending.expect("publish").result(WAIT).await.expect("a result after the run timeout");
    assert_eq!((result.outcome.as_str(), result.reason.as_str()), (outcome::ERROR, "inference_timeout"));
    let ping = notify.wait_for("a ping after recovery", WAIT, is_ping);
    assert!(!ping.contains("STALLED"), "{ping}");
    client.close().await;
}

/// A daemon serving the fixture model under a watchdog of `period`, reloaded (SIGHUP) into a configuration that adds
/// a pipeline on the slow fixture: its warm-up at 40 x 128 spins the fixture's loop 5.1 million times, seconds of
/// CPU. `daemon_keys` go into `[daemon]`. Returns the daemon, its notify socket and client, and when RELOADING=1 came.
async fn reload_into_a_slow_model(
    name: &str,
    period: Duration,
    daemon_keys: &str,
) -> (Daemon, NotifySocket, Client, String, Instant) {
    let notify = NotifySocket::bind();
    let port = free_port();
    let prefix = format!("zt/{name}/{port}");
    let good = base_config(port, &prefix).replace("[daemon]\n", &format!("[daemon]\n{daemon_keys}\n"))
        + &text_pipeline("serving", "in/serving/**", "", "", "");
    let daemon = Daemon::start_with_env(&good, port, &notify.env(period));
    notify.wait_for("READY=1", WAIT, |message| message.contains("READY=1"));
    let client = daemon.client().await;
    client.wait_for_subscriber("in/serving/x", WAIT).await.expect("subscribed");

    // A 1 s run timeout, which the warm-up is exempt from (a TensorRT engine build happens there).
    // Its warm-up is slow in proportion to its rows: 40 of them, so no token cap.
    let slower = good + &spin_pipeline("slow", "loaded", "max_batch = 40\nmax_batch_tokens = 1048576", 1000);
    std::fs::write(daemon.config_path(), slower).expect("write");
    daemon.signal("HUP");
    let (reloading, _) = notify.wait_for_stamped("RELOADING=1", WAIT, |_, message| message.contains("RELOADING=1"));
    (daemon, notify, client, prefix, reloading)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_reload_loads_its_models_is_acted_on_at_once() {
    // The slow fixture's warm-up takes seconds (10 s and more on this machine): the stop must not wait for it, or
    // the unit's TimeoutStopSec would SIGKILL a daemon with messages in flight.
    let (mut daemon, notify, client, _, _) = reload_into_a_slow_model("stopreload", Duration::from_secs(3), "").await;
    let served = classify(&client, "in/serving/x", "before-the-stop").await;
    assert_eq!(served.outcome, outcome::OK, "{served:?}");
    let signalled = Instant::now();
    daemon.terminate();
    let (stopping, _) = notify.wait_for_stamped("STOPPING=1", WAIT, |_, message| message.contains("STOPPING=1"));
    assert!(stopping - signalled < Duration::from_secs(2), "STOPPING=1 came {:?} after SIGTERM", stopping - signalled);
    // The drain ends at once; the process then waits for the abandoned load (ONNX Runtime must not be torn down
    // under it), which the stop timeout covers: no message is in flight any more.
    let drained = Instant::now() + WAIT;
    while !daemon.log().contains("drained; waiting for the abandoned reload") {
        assert!(Instant::now() < drained, "no drain line:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_took = signalled.elapsed();
    assert!(drain_took < Duration::from_secs(4), "drained {drain_took:?} after SIGTERM:\n{}", daemon.log());
    let exit = daemon.wait_exit();
    assert!(exit.success(), "exit {exit}:\n{}", daemon.log());
    assert!(daemon.log().contains("the reload is abandoned"), "{}", daemon.log());
    eprintln!(
        "SIGTERM during a reload: STOPPING=1 after {:?}, drained after {drain_took:?}, exit after {:?}",
        stopping - signalled,
        signalled.elapsed()
    );
    client.close().await;
}

/// How long a slow reload may take on a loaded machine.
const SLOW_RELOAD: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_loads_slower_than_the_watchdog_period_keeps_the_pings_coming() {
    const PERIOD: Duration = Duration::from_secs(3);
    let (daemon, notify, client, prefix, reloading) = reload_into_a_slow_model("slowload", PERIOD, "").await;
    // The old generation serves while the new one loads.
    let served = classify(&client, "in/serving/x", "during-the-reload").await;
    let answered = Instant::now();
    assert_eq!(served.outcome, outcome::OK, "{served:?}");

    let mut pings = Vec::new();
    let (ready, ready_message) = notify.wait_for_stamped("READY=1 after the reload", SLOW_RELOAD, |at, message| {
        if is_ping(message) {
            pings.push((at, message.to_owned()));
        }
        message.contains("READY=1")
    });
    let took = ready - reloading;
    assert!(
        ready_message.contains("generation 2") && !ready_message.contains("FAILED"),
        "{ready_message}\n{}",
        daemon.log()
    );
    assert!(
        took > PERIOD,
        "the reload took {took:?}: too fast to test anything; raise max_batch (and max_batch_tokens)"
    );
    assert!(answered < ready, "answered {:?} after the reload ended", answered - ready);
    let mut beats: Vec<Instant> = vec![reloading];
    beats.extend(pings.iter().map(|(at, _)| *at));
    beats.push(ready);
    let longest = beats.windows(2).map(|pair| pair[1] - pair[0]).max().expect("two beats");
    assert!(longest < PERIOD, "{longest:?} without a ping during a {took:?} reload: {pings:?}");
    assert!(pings.iter().all(|(_, message)| message.contains("reloading: loading models")), "{pings:?}");
    eprintln!("reload took {took:?}: {} pings, longest gap {longest:?}", pings.len());

    let service = status(&client, &prefix).await.service.expect("service state");
    assert_eq!((service.generation, service.reloads_ok, service.reloads_failed), (2, 1, 0), "{service:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_still_loading_after_its_timeout_stops_the_pings() {
    const PERIOD: Duration = Duration::from_secs(3);
    let (daemon, notify, client, _, _) = reload_into_a_slow_model("hungload", PERIOD, "reload_timeout_ms = 1000").await;
    let hung = notify.wait_for("a HUNG status", SLOW_RELOAD, |message| message.contains("reload HUNG"));
    assert!(!is_ping(&hung), "{hung}");
    // From then on, no ping until the load returns (here it does; a hung one would get the service restarted).
    let mut pinged = Vec::new();
    notify.wait_for_stamped("READY=1 after the reload", SLOW_RELOAD, |_, message| {
        if is_ping(message) {
            pinged.push(message.to_owned());
        }
        message.contains("READY=1")
    });
    assert!(pinged.is_empty(), "pinged while the reload was over its timeout: {pinged:?}");
    assert!(daemon.log().contains("after daemon.reload_timeout_ms"), "{}", daemon.log());
    let ping = notify.wait_for("a ping once the reload is done", WAIT, is_ping);
    assert!(ping.contains("generation 2"), "{ping}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_daemon_withdraws_its_liveliness_token_but_still_answers_status() {
    let port = free_port();
    let prefix = format!("zt/withdraw/{port}");
    // The stall model holds its one message for the whole run timeout (10 s): the drain lasts that long.
    let config = base_config(port, &prefix) + &stall_pipeline("withdraw", 10_000);
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/withdraw/x", WAIT).await.expect("subscribed");
    let alive = async |client: &Client| {
        let replies = client.session().liveliness().get(proto::keys::alive(&prefix)).await.expect("liveliness query");
        let mut tokens = 0;
        while let Ok(Ok(reply)) = tokio::time::timeout(WAIT, replies.recv_async()).await {
            tokens += usize::from(reply.result().is_ok());
        }
        tokens
    };
    assert_eq!(alive(&client).await, 1, "the token is declared while serving");
    let pending = client.request("in/withdraw/x", "out", "w1", "held for the run timeout", RequestFormat::Text).await;
    crate::support::wait_for_stats(&client, &prefix, "the message in flight", |stats| stats.in_flight == 1).await;

    daemon.terminate();
    let deadline = Instant::now() + WAIT;
    while alive(&client).await > 0 {
        assert!(Instant::now() < deadline, "the token is still declared {WAIT:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let draining = status(&client, &prefix).await;
    assert_eq!(draining.pipelines[0].in_flight, 1, "withdrawn while the message is still in flight: {draining:?}");
    let result = pending.expect("publish").result(WAIT).await.expect("the drained message's result");
    assert_eq!((result.outcome.as_str(), result.reason.as_str()), (outcome::ERROR, "inference_timeout"));
    let exit = daemon.wait_exit();
    assert!(exit.success(), "exit {exit}:\n{}", daemon.log());
    client.close().await;
}

/// Publishes `count` messages on `key` (ids `<tag>-0`..), `spacing` apart, blocking rather than dropping.
async fn stream(client: &Client, key: &str, tag: &str, count: usize, spacing: Duration) {
    for index in 0..count {
        client
            .session()
            .put(key, format!("message {index}: a thoughtful, well acted drama"))
            .attachment(format!("{tag}-{index}"))
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
        tokio::time::sleep(spacing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_good_config_swaps_pipelines_without_losing_or_duplicating_a_message() {
    reload_mid_stream("swap", Duration::from_millis(5), |config| config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_a_pipeline_neither_loses_nor_duplicates_a_message() {
    let renamed = |config: String| config.replace("name = \"rename\"", "name = \"renamed\"");
    reload_mid_stream("rename", Duration::ZERO, renamed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_pipelines_input_neither_loses_nor_duplicates_a_message() {
    // The new input overlaps the old one on every key the stream uses, and a new input needs a new subscription,
    // opened before the old one closes: for a moment both receive every message of the stream. Without the
    // overlap's deduplication (by the sample's timestamp), a message in that moment was answered by both
    // generations (seen in one of two runs of a stream without pauses).
    let rekeyed = |config: String| config.replace("input = \"in/rekey/**\"", "input = \"in/rekey/x\"");
    reload_mid_stream("rekey", Duration::ZERO, rekeyed).await;
}

/// Reloads that change the input back and forth under a stream without pauses: every switch has the moment in
/// which both subscriptions receive the stream, so six of them make a duplicate all but certain without the
/// overlap's deduplication (one switch showed it in one run of six).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_changes_back_and_forth_under_a_dense_stream_answer_each_message_once() {
    const SWITCHES: u64 = 6;
    let port = free_port();
    let prefix = format!("zt/toggle/{port}");
    let (wide, narrow, key) = ("in/toggle/**", "in/toggle/x", "in/toggle/x");
    let config =
        |input: &str| base_config(port, &prefix) + &text_pipeline("toggle", input, "queue_capacity = 50000", "", "");
    let daemon = Daemon::start(&config(wide), port);
    let client = daemon.client().await;
    client.wait_for_subscriber(key, WAIT).await.expect("subscribed");
    // Results are read all along: a subscriber left unread would stall this client's session, status queries too.
    let results = client.session().declare_subscriber("out/in/toggle/**").await.expect("subscribe");
    let (sent_tx, mut sent_rx) = tokio::sync::oneshot::channel::<usize>();
    let collector = tokio::spawn(async move {
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        let mut total = None;
        while total.is_none_or(|total| outcomes.len() < total) {
            tokio::select! {
                sent = &mut sent_rx, if total.is_none() => total = Some(sent.expect("the count of messages sent")),
                sample = tokio::time::timeout(WAIT, results.recv_async()) => {
                    // Nothing more within WAIT: the test below names what is missing.
                    let Ok(sample) = sample else { break };
                    *outcomes.entry(decode_result(&sample.expect("sample")).expect("decode").id).or_default() += 1;
                }
            }
        }
        while let Ok(Ok(sample)) = tokio::time::timeout(Duration::from_millis(500), results.recv_async()).await {
            *outcomes.entry(decode_result(&sample).expect("decode").id).or_default() += 1;
        }
        outcomes
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (client, stop) = (daemon.client().await, Arc::clone(&stop));
        client.wait_for_subscriber(key, WAIT).await.expect("the publisher's session sees zinferd");
        async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                stream(&client, key, &format!("t{sent}"), 10, Duration::ZERO).await;
                sent += 10;
            }
            client.close().await;
            sent
        }
    });
    for switch in 1..=SWITCHES {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let input = if switch % 2 == 1 { narrow } else { wide };
        std::fs::write(daemon.config_path(), config(input)).expect("rewrite the config");
        daemon.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while status(&client, &prefix).await.service.is_none_or(|service| service.generation <= switch) {
            assert!(Instant::now() < deadline, "reload {switch} did not complete:\n{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = publisher.await.expect("publisher");
    sent_tx.send(total).expect("the collector waits");
    let outcomes = collector.await.unwrap_or_else(|panic| panic!("{panic:?}:\n{}", daemon.log()));
    // Whether a missing message reached the daemon (counted received, by whichever generation) or not.
    let missing: Vec<String> = (0..total)
        .map(|index| format!("t{}-{}", index / 10 * 10, index % 10))
        .filter(|id| !outcomes.contains_key(id))
        .collect();
    if !missing.is_empty() {
        let snapshot = status(&client, &prefix).await;
        let books: Vec<(u64, u64, u64)> =
            snapshot.pipelines.iter().map(|stats| (stats.generation, stats.received, stats.in_flight)).collect();
        panic!(
            "{} of {total} messages unanswered: {missing:?}; (generation, received, in_flight) still published: \
             {books:?}\n{}",
            missing.len(),
            daemon.log()
        );
    }
    assert_eq!(outcomes.len(), total, "an outcome for an id nobody sent");
    let duplicated: Vec<_> = outcomes.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicated.is_empty(), "{} of {total} messages answered twice: {duplicated:?}", duplicated.len());
    // zenoh logs each sample it drops because the wire id it was routed with was undeclared meanwhile (the loss
    // this test found); the stream may not have hit that window this time, but no sample may be dropped so.
    let log = daemon.log();
    assert!(!log.contains("Received Data for unknown"), "zenoh dropped a sample on an undeclared key id:\n{log}");
    eprintln!("{SWITCHES} input changes under {total} messages: each answered once");
    client.close().await;
}

/// A daemon serving `in/<tag>/**` under a steady stream (`spacing` between messages) is reloaded (SIGHUP) into its
/// configuration with the classify head reporting one label instead of two and whatever `change` does; every message
/// gets exactly one outcome, ok (the queue holds a stream without pauses).
async fn reload_mid_stream(tag: &str, spacing: Duration, change: impl Fn(String) -> String) {
    const AFTER: usize = 50;
    let port = free_port();
    let prefix = format!("zt/{tag}/{port}");
    let (input, key) = (format!("in/{tag}/**"), format!("in/{tag}/x"));
    let old = base_config(port, &prefix) + &text_pipeline(tag, &input, "queue_capacity = 50000", "", "");
    let daemon = Daemon::start(&old, port);
    let client = daemon.client().await;
    client.wait_for_subscriber(&key, WAIT).await.expect("subscribed");
    let results = client.session().declare_subscriber(format!("out/in/{tag}/**")).await.expect("subscribe");

    // The new configuration is visible in results: the classify head reports one label instead of two.
    let new = change(old.replace("top_k = 2", "top_k = 1"));
    assert_ne!(new, old);
    // A steady stream, 5 ms apart, from before the reload until status shows it complete (however long that takes
    // here), so messages are in flight while the subscription switches; then AFTER more. Returns how many it sent.
    let mut publisher = tokio::spawn({
        let client = daemon.client().await;
        client.wait_for_subscriber(&key, WAIT).await.expect("the publisher's session sees zinferd");
        let (prefix, key) = (prefix.clone(), key.clone());
        async move {
            let deadline = Instant::now() + WAIT;
            let mut sent = 0;
            loop {
                stream(&client, &key, &format!("s{sent}"), 10, spacing).await;
                sent += 10;
                if status(&client, &prefix).await.service.is_some_and(|service| service.generation == 2) {
                    break;
                }
                assert!(Instant::now() < deadline, "the reload did not complete within {WAIT:?}");
            }
            stream(&client, &key, "after", AFTER, Duration::from_millis(5)).await;
            client.close().await;
            sent + AFTER
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(daemon.config_path(), &new).expect("rewrite the config");
    daemon.signal("HUP");

    // Every outcome, by id: the first ones until each message has one, then whatever comes late (a duplicate).
    let mut outcomes: BTreeMap<String, Vec<proto::Result>> = BTreeMap::new();
    let mut total = None;
    while total.is_none_or(|total| outcomes.len() < total) {
        tokio::select! {
            sent = &mut publisher, if total.is_none() => total = Some(sent.expect("publisher")),
            sample = tokio::time::timeout(WAIT, results.recv_async()) => {
                let sample = sample.unwrap_or_else(|_| panic!("only {} outcomes:\n{}", outcomes.len(), daemon.log()));
                let result = decode_result(&sample.expect("sample")).expect("decode");
                outcomes.entry(result.id.clone()).or_default().push(result);
            }
        }
    }
    while let Ok(Ok(sample)) = tokio::time::timeout(Duration::from_millis(500), results.recv_async()).await {
        let result = decode_result(&sample).expect("decode");
        outcomes.entry(result.id.clone()).or_default().push(result);
    }
    assert_eq!(Some(outcomes.len()), total, "an outcome for an id nobody sent");
    let (mut old_results, mut new_results) = (0, 0);
    for result in outcomes.values().flatten() {
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        match result.top_k.len() {
            2 => old_results += 1,
            1 => new_results += 1,
            other => panic!("unexpected top_k length {other}: {result:?}"),
        }
    }
    let duplicated: Vec<_> = outcomes.iter().filter(|(_, results)| results.len() > 1).collect();
    assert!(duplicated.is_empty(), "duplicated outcomes: {duplicated:?}");
    assert!(old_results > 0 && new_results >= AFTER, "{old_results} old results, {new_results} new");

    let service = status(&client, &prefix).await.service.expect("service state");
    assert_eq!((service.generation, service.reloads_ok, service.reloads_failed), (2, 1, 0), "{service:?}");
    assert_eq!(service.last_reload, "ok");
    eprintln!("reload mid-stream ({tag}): {old_results} results from generation 1, {new_results} from generation 2");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_or_a_corrupt_model_keeps_the_old_pipeline_serving() {
    let notify = NotifySocket::bind();
    let port = free_port();
    let prefix = format!("zt/keep/{port}");
    let good = base_config(port, &prefix) + &text_pipeline("keep", "in/keep/**", "", "", "");
    let daemon = Daemon::start_with_env(&good, port, &notify.env(Duration::from_secs(30)));
    notify.wait_for("READY=1", WAIT, |message| message.contains("READY=1"));
    let client = daemon.client().await;
    client.wait_for_subscriber("in/keep/x", WAIT).await.expect("subscribed");

    // 1. A key that does not exist.
    std::fs::write(daemon.config_path(), good.replace("top_k = 2", "top_k = 2\nbogus_key = 1")).expect("write");
    daemon.signal("HUP");
    notify.wait_for("RELOADING=1", WAIT, |message| message.contains("RELOADING=1"));
    let ready = notify.wait_for("READY=1 after the reload", WAIT, |message| message.contains("READY=1"));
    assert!(ready.contains("last reload FAILED") && ready.contains("bogus_key"), "{ready}");
    let service = status(&client, &prefix).await.service.expect("service state");
    assert_eq!((service.generation, service.reloads_ok, service.reloads_failed), (1, 0, 1), "{service:?}");
    assert!(service.last_reload_error.contains("zinferd.toml"), "names the file: {service:?}");
    assert!(service.last_reload_error.contains("bogus_key"), "names the key: {service:?}");
    assert_eq!(classify(&client, "in/keep/x", "k1").await.outcome, outcome::OK, "the old pipeline still serves");

    // 2. A model file that does not match its manifest's sha256.
    let corrupt = daemon.dir().join("corrupt");
    std::fs::create_dir(&corrupt).expect("mkdir");
    let fixture = fixture_manifest().parent().expect("fixture dir").to_owned();
    for file in ["manifest.toml", "tokenizer.json"] {
        std::fs::copy(fixture.join(file), corrupt.join(file)).expect("copy");
    }
    let mut model = std::fs::read(fixture.join("model.onnx")).expect("read model");
    let middle = model.len() / 2;
    model[middle] ^= 0xff;
    std::fs::write(corrupt.join("model.onnx"), model).expect("write corrupt model");
    let manifest = fixture_manifest().display().to_string();
    let broken = good.replace(&manifest, &corrupt.join("manifest.toml").display().to_string());
    assert_ne!(broken, good);
    std::fs::write(daemon.config_path(), broken).expect("write");
    daemon.signal("HUP");
    notify.wait_for("RELOADING=1", WAIT, |message| message.contains("RELOADING=1"));
    notify.wait_for("READY=1 after the reload", WAIT, |message| message.contains("READY=1"));
    let service = status(&client, &prefix).await.service.expect("service state");
    assert_eq!((service.generation, service.reloads_failed), (1, 2), "{service:?}");
    assert!(service.last_reload_error.contains("sha256"), "says why: {service:?}");
    let result = classify(&client, "in/keep/x", "k2").await;
    assert_eq!(result.outcome, outcome::OK, "the old pipeline still serves: {result:?}");
    assert_eq!(result.top_k.len(), 2, "{result:?}");

    // 3. Fixed again: the reload succeeds.
    std::fs::write(daemon.config_path(), good.replace("top_k = 2", "top_k = 1")).expect("write");
    daemon.signal("HUP");
    notify.wait_for("RELOADING=1", WAIT, |message| message.contains("RELOADING=1"));
    let ready = notify.wait_for("READY=1 after the reload", WAIT, |message| message.contains("READY=1"));
    assert!(ready.contains("generation 2") && !ready.contains("FAILED"), "{ready}");
    assert_eq!(classify(&client, "in/keep/x", "k3").await.top_k.len(), 1);
    assert!(daemon.log().contains("reload failed"), "{}", daemon.log());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_timeout_answers_the_rest_dropped_shutdown() {
    const MESSAGES: usize = 150;
    let port = free_port();
    let prefix = format!("zt/drain/{port}");
    let config = (base_config(port, &prefix) + &text_pipeline("drain", "in/drain/**", "queue_capacity = 1000", "", ""))
        .replace("drain_timeout_ms = 20000", "drain_timeout_ms = 1");
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/drain/x", WAIT).await.expect("subscribed");
    let results = client.session().declare_subscriber("out/in/drain/**").await.expect("subscribe");
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..MESSAGES {
        client
            .session()
            .put("in/drain/x", text.clone())
            .attachment(index.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
    }
    crate::support::wait_for_stats(&client, &prefix, "all accepted", |stats| stats.received == MESSAGES as u64).await;
    daemon.terminate();

    let seen: BTreeMap<String, String> = collect_outcomes(&results, MESSAGES, &daemon)
        .await
        .into_iter()
        .map(|(id, result)| (id, format!("{}/{}", result.outcome, result.reason)))
        .collect();
    let dropped = seen.values().filter(|kind| *kind == "dropped/shutdown").count();
    assert!(dropped > 0, "a 1 ms drain timeout must leave messages to drop: {seen:?}");
    assert!(seen.values().all(|kind| kind == "ok/" || kind == "dropped/shutdown"), "{seen:?}");
    let exit = daemon.wait_exit();
    assert!(exit.success(), "every message was answered, so the exit is clean: {exit}\n{}", daemon.log());
    eprintln!("drain timeout: {dropped} of {MESSAGES} answered dropped/shutdown");
    client.close().await;
}
