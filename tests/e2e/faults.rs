//! Faults injected from outside into a real `zinferd` on real zenoh: its router stopped and restarted mid-stream,
//! SIGKILL followed by a restart, a model file that disappears between `zinferd check` and a reload, and an ONNX
//! Runtime run that fails. Each test states what the daemon promises through the fault, measures what it can
//! (outage, reconnection, messages lost and where) and prints the figures, so a change in behaviour shows in the
//! test log as well as in a failure.
//!
//! Streams run from a task of their own and outcomes are collected by another, so that the test can stop a router or
//! kill the daemon while traffic flows; every wait polls a condition with a deadline ([`WAIT`]) and checks that the
//! daemon is still running.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zinfer_proto::{self as proto, keys, outcome};
use zinferd::client::{RequestFormat, decode_result};

use crate::support::{
    Daemon, WAIT, base_config, base_config_behind, fixture_manifest, free_port, open_client, open_router, ort_library,
    repo_root, stall_pipeline, status, text_pipeline, try_status, wait_for_service, wait_for_stats,
};

/// Time between two messages of a [`Stream`]: ~100 msg/s, well inside what the fixture model serves on 2 cores.
const SPACING: Duration = Duration::from_millis(10);

/// A steady stream of text requests on one key, one every [`SPACING`], with the id `<tag>-<n>` in the attachment,
/// published with blocking congestion control (so the client itself never drops one), until stopped. It remembers
/// when each message left.
struct Stream {
    sent: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(session: &zenoh::Session, key: &str, tag: &str) -> Self {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (session, key, tag) = (session.clone(), key.to_owned(), tag.to_owned());
            let (sent, stop) = (sent.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let index = sent.lock().expect("sent lock").len();
                    let at = Instant::now();
                    // zenoh accepts a put even when nothing is reachable (it has nowhere to route it): during an
                    // outage the message is simply gone, which is what the tests count.
                    session
                        .put(&key, format!("message {index}: a thoughtful, well acted drama"))
                        .attachment(format!("{tag}-{index}"))
                        .congestion_control(CongestionControl::Block)
                        .await
                        .expect("put");
                    sent.lock().expect("sent lock").push(at);
                    tokio::time::sleep(SPACING).await;
                }
            }
        });
        Self { sent, stop, task }
    }

    /// How many messages have left so far.
    fn published(&self) -> usize {
        self.sent.lock().expect("sent lock").len()
    }

    /// Stops the stream; returns when each message left, by index.
    async fn stop(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(WAIT, self.task).await.expect("the stream stops in time").expect("the stream task");
        Arc::try_unwrap(self.sent).expect("the stream task ended").into_inner().expect("sent lock")
    }
}

/// One outcome as the client saw it.
#[derive(Clone, Debug)]
struct Arrival {
    id: String,
    /// `<outcome>/<reason>`, e.g. `ok/` or `error/inference_failed`.
    kind: String,
    at: Instant,
}

/// Every outcome a result subscriber receives, with when it came, collected by a task of its own so that nothing
/// backs up into zenoh while the test is busy injecting a fault.
struct Outcomes {
    seen: Arc<Mutex<Vec<Arrival>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Outcomes {
    async fn subscribe(session: &zenoh::Session, key: &str) -> Self {
        let subscriber = session.declare_subscriber(key.to_owned()).await.expect("declare the result subscriber");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok(sample) = subscriber.recv_async().await {
                    let result = decode_result(&sample).expect("decode a result");
                    let kind = format!("{}/{}", result.outcome, result.reason);
                    seen.lock().expect("seen lock").push(Arrival { id: result.id, kind, at: Instant::now() });
                }
            }
        });
        Self { seen, task }
    }

    fn all(&self) -> Vec<Arrival> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The first outcome for each id of the stream `tag`, by index; panics on a second outcome for any id.
    fn of_stream(&self, tag: &str) -> BTreeMap<usize, Arrival> {
        let mut first = BTreeMap::new();
        for arrival in self.all() {
            if let Some(index) = stream_index(&arrival.id, tag) {
                let id = arrival.id.clone();
                assert!(first.insert(index, arrival).is_none(), "a second outcome for {id}");
            }
        }
        first
    }

    fn answered(&self, tag: &str) -> usize {
        self.of_stream(tag).len()
    }

    fn has(&self, id: &str) -> bool {
        self.all().iter().any(|arrival| arrival.id == id)
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` for the id `<tag>-<n>`.
fn stream_index(id: &str, tag: &str) -> Option<usize> {
    id.strip_prefix(tag)?.strip_prefix('-')?.parse().ok()
}

/// Polls `done` every 10 ms until it holds, within [`WAIT`], checking all along that the daemon is still running.
async fn wait_until(daemon: &mut Daemon, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        daemon.assert_running();
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The named pipeline's counters in `snapshot`.
fn pipeline<'a>(snapshot: &'a proto::Telemetry, name: &str) -> &'a proto::PipelineStats {
    snapshot.pipelines.iter().find(|stats| stats.name == name).unwrap_or_else(|| panic!("no `{name}` in {snapshot:?}"))
}

/// The accounting invariant: every message received has exactly one outcome or is still in flight.
fn assert_balanced(stats: &proto::PipelineStats) {
    let outcomes = stats.completed + stats.failed + stats.expired + stats.dropped + stats.in_flight;
    assert_eq!(stats.received, outcomes, "received != completed + failed + expired + dropped + in_flight: {stats:?}");
}

/// Polls status through `session` until the pipeline `name` has nothing in flight; returns that snapshot.
async fn quiet(daemon: &mut Daemon, session: &zenoh::Session, prefix: &str, name: &str) -> proto::Telemetry {
    let deadline = Instant::now() + WAIT;
    loop {
        daemon.assert_running();
        if let Some(snapshot) = try_status(session, prefix).await
            && pipeline(&snapshot, name).in_flight == 0
        {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "`{name}` still has messages in flight after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

/// The router the daemon (in client mode), the publisher and the result subscriber all go through is closed
/// mid-stream, and a new one is started on the same port once 100 messages (~1 s) have been published into the
/// outage.
///
/// What happens, and what this test asserts:
/// - zinferd reconnects by itself, with its default zenoh settings: a zenoh client whose router goes away retries
///   its `connect` endpoints for good, every `connect/retry/period_init_ms` (1 s) growing by
///   `period_increase_factor` (2) up to `period_max_ms` (4 s) (zenoh 1.10: `closed_session` →
///   `peers_connector_retry`; `connect/timeout_ms` and `exit_on_failure` only govern the first connection), and on
///   reconnecting it declares its subscriber, status queryable and liveliness token to the new router. So the gap
///   after a restart is up to one retry period; the test prints when the daemon's token reached the new router and
///   when the first result for a message published after the restart came back.
/// - It never exits, and its counters balance (received = completed + failed + expired + dropped + in flight, with
///   nothing left in flight); its zid stays the same (same process).
/// - Messages published while no router runs are lost before the daemon: zenoh has no route for them and keeps
///   nothing, so they reach no daemon, get no outcome and are in no daemon counter (asserted: none is answered).
///   Messages the daemon had received but not yet answered when the router went away are answered into the void
///   (counted `completed`, never delivered): the test prints published − received (lost on the way in) and
///   received − answered (lost on the way out).
/// - Every message published after the first one answered after the restart gets exactly one `ok` outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_mid_stream_is_reconnected_by_itself_and_the_outage_is_counted() {
    const OUTAGE_MESSAGES: usize = 100;
    const BEFORE_MESSAGES: usize = 30;
    const AFTER_MESSAGES: usize = 50;
    let port = free_port();
    let router_endpoint = format!("tcp/127.0.0.1:{port}");
    let prefix = format!("zt/router/{port}");
    let router = open_router(port).await;
    let config = base_config_behind(&router_endpoint, &prefix) + &text_pipeline("hop", "in/hop/**", "", "", "");
    let mut daemon = Daemon::start_behind(&config, &router_endpoint);
    let publisher = open_client(&router_endpoint).await;
    let observer = open_client(&router_endpoint).await;
    let outcomes = Outcomes::subscribe(&observer, "out/in/hop/**").await;
    daemon.wait_subscribed(&publisher, "in/hop/x").await;

    // Probe until one result comes back, so that the result subscriber is known to the daemon before the stream
    // (a result published before its subscription propagated reaches nobody); a probe gets 200 ms to come back.
    let deadline = Instant::now() + WAIT;
    let mut probes = 0;
    while outcomes.all().is_empty() {
        assert!(Instant::now() < deadline, "no probe answered within {WAIT:?}:\n{}", daemon.log());
        publisher.put("in/hop/x", "a probe").attachment(format!("probe-{probes}")).await.expect("put a probe");
        probes += 1;
        let answered = Instant::now() + Duration::from_millis(200);
        while Instant::now() < answered && outcomes.all().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let start = quiet(&mut daemon, &observer, &prefix, "hop").await;
    let (received_before, completed_before) = (pipeline(&start, "hop").received, pipeline(&start, "hop").completed);

    let stream = Stream::start(&publisher, "in/hop/x", "m");
    wait_until(&mut daemon, "results before the outage", || outcomes.answered("m") >= BEFORE_MESSAGES).await;
    let closing = stream.published();
    let stopped_at = Instant::now();
    router.close().await.expect("close the router");
    let closed_at = Instant::now();
    let closed = stream.published();
    wait_until(&mut daemon, "messages published into the outage", || stream.published() >= closed + OUTAGE_MESSAGES)
        .await;
    let restarting = stream.published();
    let restarted_at = Instant::now();
    let outage = restarted_at - stopped_at;
    let router = open_router(port).await;
    let tokens = router.liveliness().declare_subscriber(keys::alive(&prefix)).history(true).await.expect("tokens");
    let token = tokio::time::timeout(WAIT, tokens.recv_async())
        .await
        .unwrap_or_else(|_| panic!("the daemon's token did not reach the new router:\n{}", daemon.log()))
        .expect("a token");
    assert_eq!(token.kind(), SampleKind::Put);
    let token_at = Instant::now();

    let first_after = |outcomes: &Outcomes| outcomes.of_stream("m").into_iter().find(|(index, _)| *index >= restarting);
    wait_until(&mut daemon, "a result for a message published after the restart", || first_after(&outcomes).is_some())
        .await;
    let (first_index, first) = first_after(&outcomes).expect("found above");
    let results_after = first.at - restarted_at;
    wait_until(&mut daemon, "results after the restart", || stream.published() >= first_index + AFTER_MESSAGES).await;
    let sent = stream.stop().await;
    wait_until(&mut daemon, "every message after the first answered one answered", || {
        let answered = outcomes.of_stream("m");
        (first_index..sent.len()).all(|index| answered.contains_key(&index))
    })
    .await;

    let end = quiet(&mut daemon, &observer, &prefix, "hop").await;
    let stats = pipeline(&end, "hop");
    assert_balanced(stats);
    assert_eq!(end.zid, start.zid, "the same process serves before and after");
    let answered = outcomes.of_stream("m");
    for arrival in answered.values() {
        assert_eq!(arrival.kind, "ok/", "{arrival:?}");
    }
    let count = |range: std::ops::Range<usize>| (range.len(), answered.range(range).count());
    let (before, before_answered) = count(0..closing);
    let (while_closing, while_closing_answered) = count(closing..closed);
    let (during, during_answered) = count(closed..restarting);
    let (after, after_answered) = count(restarting..sent.len());
    assert_eq!(during_answered, 0, "zenoh keeps nothing for a missing router, so nothing published then is answered");
    let received = stats.received - received_before;
    let completed = stats.completed - completed_before;
    let published = sent.len() as u64;
    let delivered = answered.len() as u64;
    assert!(received <= published && delivered <= received, "{published} published, {received} received");
    eprintln!(
        "router restart: outage {} ms (close took {} ms); the daemon's token at the new router {} ms after the \
         restart ({} ms after the router went away), the first result for a message published after the restart \
         {} ms after it",
        ms(outage),
        ms(closed_at - stopped_at),
        ms(token_at - restarted_at),
        ms(token_at - stopped_at),
        ms(results_after),
    );
    eprintln!(
        "router restart: published/answered before {before}/{before_answered}, while closing \
         {while_closing}/{while_closing_answered}, during the outage {during}/{during_answered}, after the restart \
         {after}/{after_answered} (first answered: #{first_index}, {} published after the restart before it)",
        first_index - restarting
    );
    eprintln!(
        "router restart: {published} published, {received} received by the daemon ({} lost on the way in), {} \
         completed, {delivered} answered to the client ({} lost on the way out); publish_failures {}",
        published - received,
        completed,
        received - delivered,
        stats.publish_failures,
    );

    daemon.terminate();
    let exit = daemon.wait_exit();
    assert!(exit.success(), "exit {exit}:\n{}", daemon.log());
    for session in [publisher, observer, router] {
        session.close().await.expect("close");
    }
}

/// zinferd is killed with SIGKILL mid-stream, while one message is held inside ONNX Runtime (the stall model) and a
/// steady stream is being answered, then started again on the same configuration and port; the stream goes on.
///
/// What the client sees, as asserted here: the held message, and the stream's messages that were received but not
/// answered before the kill, get no outcome, ever (a SIGKILL leaves no chance to answer, and nothing keeps a message
/// across processes); messages published while no daemon runs reach nobody. The restart is visible: the liveliness
/// token is withdrawn (as soon as the TCP link drops) and declared again, status shows a new zid, and counters start
/// again from zero. The restarted daemon serves again (the client's peer session reconnects by itself, on zenoh's
/// retry period) and receives only messages published after it came back: nothing from before the kill is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_a_restart_serves_again_and_what_was_in_flight_gets_no_outcome() {
    const BEFORE: usize = 30;
    const AFTER: usize = 30;
    let port = free_port();
    let prefix = format!("zt/kill/{port}");
    // The stall pipeline first, so that wait_for_stats (first pipeline) sees it; its run timeout outlasts the test.
    let config = base_config(port, &prefix)
        + &stall_pipeline("held", 600_000)
        + &text_pipeline("kill", "in/kill/**", "", "", "");
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/kill/x", WAIT).await.expect("zinferd subscribes");
    client.wait_for_subscriber("in/held/x", WAIT).await.expect("zinferd subscribes");
    let session = client.session();
    let outcomes = Outcomes::subscribe(session, "out/**").await;
    let tokens = session.liveliness().declare_subscriber(keys::alive(&prefix)).history(true).await.expect("tokens");
    let next_token = async || {
        let sample = tokio::time::timeout(WAIT, tokens.recv_async()).await.expect("a token change in time");
        (sample.expect("a token sample").kind(), Instant::now())
    };
    assert_eq!(next_token().await.0, SampleKind::Put, "the first daemon's token");
    let first = status(&client, &prefix).await;

    session.put("in/held/x", "held inside ONNX Runtime").attachment("held").await.expect("put");
    wait_for_stats(&client, &prefix, "the held message in flight", |stats| stats.in_flight == 1).await;
    let stream = Stream::start(session, "in/kill/x", "k");
    wait_until(&mut daemon, "the stream served", || outcomes.answered("k") >= BEFORE).await;
    // Messages published between these two counts race the signal: the dying daemon may or may not answer them.
    let killing = stream.published();
    let killed_at = Instant::now();
    let exit = daemon.kill();
    let killed = stream.published();
    assert_eq!(exit.signal(), Some(9), "killed by SIGKILL: {exit}");
    let (kind, gone_at) = next_token().await;
    assert_eq!(kind, SampleKind::Delete, "the token goes with the process");

    let restarting = stream.published();
    let restarted_at = Instant::now();
    daemon.restart(port);
    let (kind, back_at) = next_token().await;
    assert_eq!(kind, SampleKind::Put, "the restarted daemon declares its token again");
    let second = status(&client, &prefix).await;
    assert_ne!(second.zid, first.zid, "a new process, a new zenoh id");
    assert_eq!(second.service.as_ref().map(|service| service.generation), Some(1), "{second:?}");
    assert_eq!(pipeline(&second, "held").received, 0, "counters start again: {second:?}");
    let reconnected = stream.published();

    let first_after = |outcomes: &Outcomes| outcomes.of_stream("k").into_iter().find(|(index, _)| *index >= killed);
    wait_until(&mut daemon, "a result after the restart", || first_after(&outcomes).is_some()).await;
    let (first_index, first_result) = first_after(&outcomes).expect("found above");
    wait_until(&mut daemon, "the stream served again", || stream.published() >= first_index + AFTER).await;
    let sent = stream.stop().await;
    wait_until(&mut daemon, "every message after the first answered one answered", || {
        let answered = outcomes.of_stream("k");
        (first_index..sent.len()).all(|index| answered.contains_key(&index))
    })
    .await;

    let end = quiet(&mut daemon, session, &prefix, "kill").await;
    let stats = pipeline(&end, "kill");
    assert_balanced(stats);
    assert_eq!(end.zid, second.zid);
    assert_eq!(pipeline(&end, "held").received, 0, "the held message is not replayed: {end:?}");
    assert!(!outcomes.has("held"), "the held message has no outcome");
    let answered = outcomes.of_stream("k");
    assert!(answered.values().all(|arrival| arrival.kind == "ok/"), "{:?}", outcomes.all());
    let answered_by_the_first = answered.range(..killing).count();
    let answered_after = answered.range(killed..).count() as u64;
    assert!(answered.range(..killed).all(|(_, arrival)| arrival.at < restarted_at), "answered by the killed daemon");
    assert_eq!(answered.range(killed..restarting).count(), 0, "published while no daemon ran: reached nobody");
    assert_eq!(
        (stats.received, stats.completed),
        (answered_after, answered_after),
        "the restarted daemon received exactly what it answered, nothing from before the kill: {stats:?}"
    );
    eprintln!(
        "sigkill: before the kill {killing} published, {answered_by_the_first} answered, {} (and the held message) \
         never answered; {} published during the kill, {} answered; from then until the client saw the new token \
         {} published, {} answered (from #{first_index} on); after that {} published, {} answered; the restarted \
         daemon received {}",
        killing - answered_by_the_first,
        killed - killing,
        answered.range(killing..killed).count(),
        reconnected - killed,
        answered.range(killed..reconnected).count(),
        sent.len() - reconnected,
        answered.range(reconnected..).count(),
        stats.received,
    );
    eprintln!(
        "sigkill: token withdrawn {} ms after the kill; the restarted daemon's token {} ms, the first new result {} ms \
         after the restart began; zid {} -> {}",
        ms(gone_at - killed_at),
        ms(back_at - restarted_at),
        ms(first_result.at - restarted_at),
        first.zid,
        second.zid,
    );
    client.close().await;
}

/// The model file of a running pipeline is deleted after `zinferd check` passed, and SIGHUP asks for a reload; then
/// it is replaced by an empty file, and SIGHUP again; then restored, and SIGHUP a third time. A steady stream runs
/// through all of it.
///
/// Asserted: each failed reload leaves generation 1 serving (its model is already in memory) and is reported in status
/// (`reloads_failed`, and `last_reload_error` naming the model file); the restored file reloads into generation 2;
/// every message of the stream gets exactly one `ok` outcome across the three reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_gone_between_check_and_reload_keeps_the_old_generation_serving_without_loss() {
    const BETWEEN: usize = 20;
    let models = tempfile::tempdir().expect("temp dir");
    let fixture = fixture_manifest().parent().expect("fixture dir").to_owned();
    for file in ["manifest.toml", "tokenizer.json", "model.onnx"] {
        std::fs::copy(fixture.join(file), models.path().join(file)).expect("copy the fixture model");
    }
    let model = models.path().join("model.onnx");
    let port = free_port();
    let prefix = format!("zt/gone/{port}");
    let config = (base_config(port, &prefix) + &text_pipeline("gone", "in/gone/**", "", "", ""))
        .replace(&fixture_manifest().display().to_string(), &models.path().join("manifest.toml").display().to_string());
    assert!(config.contains(&models.path().display().to_string()));
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/gone/x", WAIT).await.expect("zinferd subscribes");
    let outcomes = Outcomes::subscribe(client.session(), "out/in/gone/**").await;

    let check = Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .arg("check")
        .arg("--config")
        .arg(daemon.config_path())
        .env("ORT_DYLIB_PATH", ort_library())
        .output()
        .expect("run zinferd check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let stream = Stream::start(client.session(), "in/gone/x", "g");
    let mut progress = BETWEEN;
    let mut reloads = Vec::new();
    for (step, fault) in ["deleted", "emptied", "restored"].into_iter().enumerate() {
        wait_until(&mut daemon, "the stream served", || outcomes.answered("g") >= progress).await;
        match fault {
            "deleted" => std::fs::remove_file(&model).expect("delete the model"),
            "emptied" => std::fs::write(&model, b"").expect("empty the model"),
            _ => std::fs::copy(fixture.join("model.onnx"), &model).map(drop).expect("restore the model"),
        }
        let signalled = Instant::now();
        daemon.signal("HUP");
        let service = wait_for_service(&mut daemon, client.session(), &prefix, |service| {
            service.reloads_ok + service.reloads_failed > step as u64
        })
        .await;
        reloads.push(format!("{fault}: {} ms", ms(signalled.elapsed())));
        if fault == "restored" {
            assert_eq!((service.generation, service.reloads_ok, service.last_reload.as_str()), (2, 1, "ok"));
        } else {
            let failed = (service.generation, service.reloads_failed, service.last_reload.as_str());
            assert_eq!(failed, (1, step as u64 + 1, "failed"), "{service:?}");
            assert!(
                service.last_reload_error.contains(&model.display().to_string()),
                "the error names the model file: {service:?}"
            );
            eprintln!("model {fault}: reload failed with: {}", service.last_reload_error);
        }
        progress = outcomes.answered("g") + BETWEEN;
    }
    wait_until(&mut daemon, "the new generation served", || outcomes.answered("g") >= progress).await;
    let sent = stream.stop().await;
    wait_until(&mut daemon, "every message answered", || outcomes.answered("g") == sent.len()).await;
    let answered = outcomes.of_stream("g");
    assert!(answered.values().all(|arrival| arrival.kind == "ok/"), "{answered:?}");
    assert!(daemon.log().contains("reload failed"), "{}", daemon.log());
    eprintln!("model file gone: {} messages, each answered once, across reloads ({})", sent.len(), reloads.join(", "));
    client.close().await;
}

/// A model whose embedding table is narrower than its tokenizer's vocabulary (tests/fixtures/narrow_vocab): ONNX
/// Runtime's Gather fails the run of any text holding a letter and runs texts of single digits and punctuation.
///
/// Asserted: the failing message gets `error/inference_failed` with its own id and ONNX Runtime's reason, the next
/// message is served `ok`, twice over, and the counters say so (failed_by_reason, balanced, nothing in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_runtime_run_error_answers_inference_failed_with_the_id_and_the_next_message_is_served() {
    let narrow = repo_root().join("tests/fixtures/narrow_vocab/manifest.toml");
    let port = free_port();
    let prefix = format!("zt/narrow/{port}");
    let config = (base_config(port, &prefix) + &text_pipeline("narrow", "in/narrow/**", "", "", ""))
        .replace(&fixture_manifest().display().to_string(), &narrow.display().to_string());
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/narrow/x", WAIT).await.expect("zinferd subscribes");

    let classify = async |id: &str, text: &str| {
        let pending = client.request("in/narrow/x", "out", id, text, RequestFormat::Json).await.expect("publish");
        pending.result(WAIT).await.unwrap_or_else(|error| panic!("no result for {id}: {error}"))
    };
    for round in 0..2 {
        let id = format!("letters-{round}");
        let failed = classify(&id, "a gripping film").await;
        assert_eq!(failed.id, id);
        assert_eq!(
            (failed.outcome.as_str(), failed.reason.as_str()),
            (outcome::ERROR, "inference_failed"),
            "{failed:?}"
        );
        assert!(failed.message.contains("out of data bounds"), "ONNX Runtime's reason: {failed:?}");
        let id = format!("digits-{round}");
        let served = classify(&id, "4 2, 7!").await;
        assert_eq!((served.id.as_str(), served.outcome.as_str()), (id.as_str(), outcome::OK), "{served:?}");
        if round == 0 {
            eprintln!("run error: {}", failed.message);
        }
    }
    let end = quiet(&mut daemon, client.session(), &prefix, "narrow").await;
    let stats = pipeline(&end, "narrow");
    assert_balanced(stats);
    assert_eq!((stats.received, stats.completed, stats.failed), (4, 2, 2), "{stats:?}");
    assert_eq!(stats.failed_by_reason.get("inference_failed"), Some(&2), "{stats:?}");
    client.close().await;
}

/// The same model under a backlog that batches (`max_batch = 8`): one text in ten holds letters, so most batches mix
/// one failing message with seven good ones.
///
/// Asserted: each failing message gets `error/inference_failed` and every other message `ok`, batched or not: a run
/// error costs only the message that caused it. Before `Pipeline::run_batch` retried a failed run one input at a
/// time, the whole batch failed: 140 of 180 good messages were answered `inference_failed` with another message's
/// error in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_error_inside_a_batch_costs_only_the_message_that_caused_it() {
    const MESSAGES: usize = 200;
    let narrow = repo_root().join("tests/fixtures/narrow_vocab/manifest.toml");
    let port = free_port();
    let prefix = format!("zt/poison/{port}");
    let pipeline_keys = "max_batch = 8\nqueue_capacity = 1000";
    let config = (base_config(port, &prefix) + &text_pipeline("poison", "in/poison/**", pipeline_keys, "", ""))
        .replace(&fixture_manifest().display().to_string(), &narrow.display().to_string());
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/poison/x", WAIT).await.expect("zinferd subscribes");
    let outcomes = Outcomes::subscribe(client.session(), "out/in/poison/**").await;
    // Equal token counts, so that both kinds share a shape and batch together.
    let poisoned = |index: usize| index.is_multiple_of(10);
    for index in 0..MESSAGES {
        let text = if poisoned(index) { "a b c d" } else { "1 2 3 4" };
        client
            .session()
            .put("in/poison/x", text)
            .attachment(format!("p-{index}"))
            .congestion_control(CongestionControl::Block)
            .await
            .expect("put");
    }
    wait_until(&mut daemon, "every message answered", || outcomes.answered("p") == MESSAGES).await;
    let end = quiet(&mut daemon, client.session(), &prefix, "poison").await;
    let stats = pipeline(&end, "poison");
    assert_balanced(stats);
    assert!(stats.messages_by_batch_size.keys().any(|&size| size > 1), "a backlog must batch: {stats:?}");
    let mut kinds: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for (index, arrival) in outcomes.of_stream("p") {
        *kinds.entry((poisoned(index), arrival.kind)).or_default() += 1;
    }
    let expected = BTreeMap::from([
        ((false, "ok/".to_owned()), MESSAGES - MESSAGES / 10),
        ((true, "error/inference_failed".to_owned()), MESSAGES / 10),
    ]);
    assert_eq!(kinds, expected, "(poisoned, outcome) counts; batches {:?}", stats.messages_by_batch_size);
    client.close().await;
}
