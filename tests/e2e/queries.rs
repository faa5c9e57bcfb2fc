//! Request/reply: a pipeline answers a zenoh `get` on `<prefix>/infer/<pipeline>` with exactly one reply, through
//! the same admission, deadlines and accounting as a published message, and whatever becomes of the request.

use std::collections::BTreeMap;

use zenoh::bytes::Encoding;
use zenoh::query::Reply;
use zinfer_proto::{self as proto, Message, drop_reason, expire_reason, keys, outcome};
use zinferd::client::RequestFormat;

use crate::support::{
    Daemon, TextDaemon, WAIT, base_config, base_config_connected, free_port, golden, int8_tolerance, start_text,
    status, text_pipeline, wait_for_stats,
};

/// Every reply a `get` on `key` receives until zenoh ends it (the final reply, or the timeout).
async fn all_replies(
    session: &zenoh::Session,
    key: &str,
    parameters: &str,
    payload: Vec<u8>,
    encoding: Encoding,
    id: &str,
) -> Vec<Reply> {
    let replies = session
        .get(format!("{key}?{parameters}"))
        .payload(payload)
        .encoding(encoding)
        .attachment(id.as_bytes().to_vec())
        .timeout(WAIT)
        .await
        .expect("get");
    let mut all = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        all.push(reply);
    }
    all
}

/// The result a reply carries, and whether it came as a reply error.
fn result_of(reply: Reply) -> (proto::Result, bool) {
    let (bytes, encoding, error) = match reply.into_result() {
        Ok(sample) => (sample.payload().to_bytes().into_owned(), sample.encoding().clone(), false),
        Err(reply) => (reply.payload().to_bytes().into_owned(), reply.encoding().clone(), true),
    };
    let result = if encoding == Encoding::APPLICATION_PROTOBUF {
        proto::Result::decode(bytes.as_slice()).expect("a protobuf result")
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|error| panic!("a JSON result: {error}: {bytes:?}"))
    };
    (result, error)
}

/// Exactly one reply, as a result.
fn the_reply(mut replies: Vec<Reply>, what: &str, daemon: &Daemon) -> (proto::Result, bool) {
    assert_eq!(replies.len(), 1, "{what}: exactly one reply\n{}", daemon.log());
    result_of(replies.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_gets_one_reply_with_the_golden_result_and_nothing_is_published() {
    let TextDaemon { daemon, client, prefix } = start_text("asked", "", "", "").await;
    let session = client.session();
    let query_key = keys::infer(&prefix, "asked");
    let published = session.declare_subscriber("out/**").await.expect("subscribe to results");

    let golden = golden();
    let formats = [RequestFormat::Json, RequestFormat::Protobuf, RequestFormat::Text];
    for (index, case) in golden.cases.iter().enumerate() {
        let format = formats[index % formats.len()];
        let id = format!("q-{index}");
        let (payload, encoding) = format.encode(&id, &case.text);
        let replies = all_replies(session, &query_key, "deadline_ms=30000", payload, encoding, &id).await;
        let (result, error) = the_reply(replies, &id, &daemon);
        assert!(!error, "{id}: {result:?}");
        assert_eq!(result.outcome, outcome::OK, "{id} ({format:?}): {result:?}");
        assert_eq!(
            (result.id.as_str(), result.key.as_str(), result.pipeline.as_str()),
            (id.as_str(), &*query_key, "asked")
        );
        assert_eq!(result.label.as_deref(), Some(case.label.as_str()), "{id} {:?}", case.text);
        for (score, expected) in result.scores.iter().zip(&case.probs) {
            assert!((f64::from(score.score) - expected).abs() < int8_tolerance(), "{id}: {score:?} vs {expected}");
        }
        assert_eq!(result.deadline_met, Some(true), "the query's deadline_ms is its deadline: {result:?}");
    }

    // A key below the pipeline's names a source: the reply comes on that key.
    let below = format!("{query_key}/camera-7");
    let replies = all_replies(session, &below, "", b"great fun".to_vec(), Encoding::TEXT_PLAIN, "below").await;
    let (result, _) = the_reply(replies, "below", &daemon);
    assert_eq!((result.outcome.as_str(), result.key.as_str(), result.id.as_str()), (outcome::OK, &*below, "below"));
    assert!(result.deadline_met.is_some(), "a query without deadline_ms has zenoh's default timeout as its deadline");

    // The client's own call, as `zinferd send --query` makes it.
    let asked = client
        .query(&query_key, "by-client", RequestFormat::Json.encode("by-client", "what a bore"), WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", daemon.log()));
    assert_eq!((asked.outcome.as_str(), asked.id.as_str()), (outcome::OK, "by-client"));

    // And from the command line.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zinferd"))
        .args(["send", "--query", "--key", &query_key, "--connect", &daemon.endpoint, "--id", "from-cli"])
        .arg("a sharp, funny and moving film")
        .output()
        .expect("run zinferd send --query");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: proto::Result = serde_json::from_slice(&output.stdout).expect("send prints the result as JSON");
    assert_eq!((printed.outcome.as_str(), printed.id.as_str()), (outcome::OK, "from-cli"), "{printed:?}");

    let asked = golden.cases.len() as u64 + 3;
    let snapshot = wait_for_stats(&client, &prefix, "queries counted", |stats| stats.completed == asked).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!((stats.received, stats.queries, stats.queries_refused), (asked, asked, 0), "{stats:?}");
    assert!(published.try_recv().expect("subscriber open").is_none(), "a query's result is replied, not published");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_fails_or_expires_gets_one_reply_error_with_its_outcome_and_id() {
    let TextDaemon { daemon, client, prefix } = start_text("refusing", "queue_bytes = 4096", "", "").await;
    let session = client.session();
    let query_key = keys::infer(&prefix, "refusing");
    // id, selector parameters, payload, encoding, outcome, reason
    let cases = [
        ("bad-utf8", "", vec![0xff, 0xfe, 0xfd], Encoding::TEXT_PLAIN, outcome::ERROR, "invalid_utf8"),
        ("too-large", "", vec![b'a'; 8192], Encoding::TEXT_PLAIN, outcome::ERROR, "payload_too_large"),
        ("no-time", "deadline_ms=0", b"fine".to_vec(), Encoding::TEXT_PLAIN, outcome::EXPIRED, expire_reason::PASSED),
        ("no-payload", "", Vec::new(), Encoding::TEXT_PLAIN, outcome::ERROR, "empty_payload"),
    ];
    for (id, parameters, payload, encoding, expected, reason) in cases {
        let replies = all_replies(session, &query_key, parameters, payload, encoding, id).await;
        let (result, error) = the_reply(replies, id, &daemon);
        assert!(error, "{id}: a reply error, not a result: {result:?}");
        assert_eq!((result.id.as_str(), result.outcome.as_str()), (id, expected), "{result:?}");
        assert_eq!(result.reason, reason, "{id}: {result:?}");
    }
    let snapshot = wait_for_stats(&client, &prefix, "every query answered", |stats| stats.in_flight == 0).await;
    assert_eq!(snapshot.pipelines[0].queries, 4, "{:?}", snapshot.pipelines[0]);
    client.close().await;
}

/// A burst of queries far beyond what the pipeline holds: each is answered once, ok or `dropped` with its reason,
/// and a query refused at the door is told so at once rather than left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queries_beyond_the_queue_gets_exactly_one_reply_each() {
    let port = free_port();
    let prefix = format!("zt/burst/{port}");
    let keys_ = "queue_capacity = 2\nmax_batch = 1\nmax_in_flight = 6";
    let config = base_config(port, &prefix) + &text_pipeline("burst", "in/burst/**", keys_, "", "");
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/burst/x", WAIT).await.expect("zinferd subscribes");
    let query_key = keys::infer(&prefix, "burst");

    const BURST: usize = 120;
    let mut asking = tokio::task::JoinSet::new();
    for index in 0..BURST {
        let (session, key) = (client.session().clone(), query_key.clone());
        asking.spawn(async move {
            let id = format!("b-{index}");
            let (payload, encoding) = RequestFormat::Json.encode(&id, "a fine and moving film, truly");
            (id.clone(), all_replies(&session, &key, "", payload, encoding, &id).await)
        });
    }
    let mut by_outcome: BTreeMap<(String, String), usize> = BTreeMap::new();
    while let Some(joined) = asking.join_next().await {
        let (id, replies) = joined.expect("query task");
        let (result, error) = the_reply(replies, &id, &daemon);
        assert_eq!(result.id, id, "every reply carries the request's own id: {result:?}");
        assert_eq!(error, result.outcome != outcome::OK, "{result:?}");
        *by_outcome.entry((result.outcome, result.reason)).or_default() += 1;
    }
    let ok = by_outcome.get(&(outcome::OK.into(), String::new())).copied().unwrap_or(0);
    let full = by_outcome.get(&(outcome::DROPPED.into(), drop_reason::QUEUE_FULL.into())).copied().unwrap_or(0);
    let refused =
        by_outcome.get(&(outcome::DROPPED.into(), proto::refuse_reason::IN_FLIGHT_LIMIT.into())).copied().unwrap_or(0);
    assert_eq!(ok + full + refused, BURST, "only these outcomes: {by_outcome:?}");
    assert!(ok > 0 && full + refused > 0, "a burst both served and shed: {by_outcome:?}");
    eprintln!("{BURST} queries at once: {ok} ok, {full} dropped/queue_full, {refused} refused (in_flight_limit)");

    let snapshot = status(&client, &prefix).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.queries_refused as usize, refused, "{stats:?}");
    assert_eq!(stats.queries as usize, BURST - refused, "{stats:?}");
    assert_eq!(stats.received, stats.queries, "{stats:?}");
    client.close().await;
}

/// Queries still waiting when a SIGTERM's drain times out: each is answered, `ok` or `dropped: shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_still_waiting_past_the_drain_timeout_are_answered_dropped_shutdown() {
    const QUERIES: usize = 100;
    let port = free_port();
    let prefix = format!("zt/qstop/{port}");
    let config = (base_config(port, &prefix) + &text_pipeline("qstop", "in/qstop/**", "queue_capacity = 1000", "", ""))
        .replace("drain_timeout_ms = 20000", "drain_timeout_ms = 1");
    let mut daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/qstop/x", WAIT).await.expect("zinferd subscribes");
    let query_key = keys::infer(&prefix, "qstop");

    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    let mut asking = tokio::task::JoinSet::new();
    for index in 0..QUERIES {
        let (session, key, text) = (client.session().clone(), query_key.clone(), text.clone());
        asking.spawn(async move {
            let id = format!("s-{index}");
            (id.clone(), all_replies(&session, &key, "", text.into_bytes(), Encoding::TEXT_PLAIN, &id).await)
        });
    }
    wait_for_stats(&client, &prefix, "all admitted", |stats| stats.queries == QUERIES as u64).await;
    daemon.terminate();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(joined) = asking.join_next().await {
        let (id, replies) = joined.expect("query task");
        let (result, _) = the_reply(replies, &id, &daemon);
        assert_eq!(result.id, id);
        if result.reason == "shutdown" {
            assert!(result.message.contains("retry"), "a shutdown drop says what to do next: {result:?}");
        }
        *by_kind.entry(format!("{}/{}", result.outcome, result.reason)).or_default() += 1;
    }
    assert!(by_kind.keys().all(|kind| kind == "ok/" || kind == "dropped/shutdown"), "{by_kind:?}");
    assert!(by_kind.contains_key("dropped/shutdown"), "a 1 ms drain timeout must leave queries to drop: {by_kind:?}");
    eprintln!("drain timeout with {QUERIES} queries waiting: {by_kind:?}");
    let exit = daemon.wait_exit();
    assert!(exit.success(), "every query was answered, so the exit is clean: {exit}\n{}", daemon.log());
    client.close().await;
}

/// A reload that renames a pipeline moves its queryable to the new name; the old name no longer answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_pipeline_answers_queries_under_its_new_name() {
    let port = free_port();
    let prefix = format!("zt/qrename/{port}");
    let config = |name: &str| base_config(port, &prefix) + &text_pipeline(name, "in/qrename/**", "", "", "");
    let daemon = Daemon::start(&config("before"), port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/qrename/x", WAIT).await.expect("zinferd subscribes");
    let ask = |name: &str| {
        let (key, id) = (keys::infer(&prefix, name), format!("to-{name}"));
        let session = client.session().clone();
        async move { all_replies(&session, &key, "", b"great fun".to_vec(), Encoding::TEXT_PLAIN, &id).await }
    };
    let (before, _) = the_reply(ask("before").await, "before the reload", &daemon);
    assert_eq!((before.outcome.as_str(), before.pipeline.as_str()), (outcome::OK, "before"));

    std::fs::write(daemon.config_path(), config("after")).expect("rewrite the config");
    daemon.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    while status(&client, &prefix).await.service.is_none_or(|service| service.generation < 2) {
        assert!(std::time::Instant::now() < deadline, "the reload did not complete:\n{}", daemon.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (after, _) = the_reply(ask("after").await, "after the reload", &daemon);
    assert_eq!((after.outcome.as_str(), after.pipeline.as_str()), (outcome::OK, "after"));
    assert!(ask("before").await.is_empty(), "the old name's queryable is gone");
    client.close().await;
}

/// Two daemons serving the same pipeline under one prefix: a plain `get` is answered by one of them, and only that
/// one does the work (the queryables are declared complete, so zenoh routes a query to the nearest one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_daemons_on_one_prefix_a_query_runs_on_one_of_them() {
    const QUERIES: u64 = 20;
    let (first_port, second_port) = (free_port(), free_port());
    let prefix = format!("zt/qtwo/{first_port}");
    let pipeline = text_pipeline("two", "in/qtwo/**", "", "", "");
    let first = Daemon::start(&(base_config(first_port, &prefix) + &pipeline), first_port);
    let second_config = base_config_connected(second_port, first_port, &prefix);
    let second = Daemon::start(&(second_config + &pipeline), second_port);
    let client = first.client().await;
    let session = client.session();
    let queries_by_daemon = || async {
        let snapshots = zinfer_fleet::gather(session, &prefix, WAIT).await.expect("gather the daemons' status");
        snapshots.iter().map(|snapshot| snapshot.pipelines[0].queries).collect::<Vec<u64>>()
    };
    // Both daemons reachable: each answers status.
    let deadline = std::time::Instant::now() + WAIT;
    while queries_by_daemon().await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "both daemons answer status:\n{}\n{}", first.log(), second.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let key = keys::infer(&prefix, "two");
    for index in 0..QUERIES {
        let id = format!("t-{index}");
        let replies = all_replies(session, &key, "", b"great fun".to_vec(), Encoding::TEXT_PLAIN, &id).await;
        let (result, _) = the_reply(replies, &id, &first);
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
    }
    let counts = queries_by_daemon().await;
    assert_eq!(counts.iter().sum::<u64>(), QUERIES, "each query ran once, on one daemon: {counts:?}");
    client.close().await;
}
