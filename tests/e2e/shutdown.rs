//! SIGTERM drains: nothing accepted is lost, and the exit is clean.

use zinfer_proto::outcome;

use crate::support::{TextDaemon, collect_outcomes, start_text, wait_for_stats};

const MESSAGES: usize = 200;

/// Publishes MESSAGES long texts (ids `0`..), blocking rather than letting zenoh drop any.
async fn burst(client: &zinferd::client::Client, key: &str) {
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..MESSAGES {
        client
            .session()
            .put(key, text.clone())
            .attachment(index.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_messages_and_exits_zero() {
    sigterm_drains("term", "").await;
}

/// The worker waits for the batches its other instance is running before it ends: none is left unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_two_instances_run_answers_every_message() {
    sigterm_drains("instterm", "instances = 2").await;
}

/// A daemon (pipeline `name`, with `extra` keys) gets SIGTERM while most of a burst of long texts is still queued
/// or running: every message gets its ok result, and the exit is clean.
async fn sigterm_drains(name: &str, extra: &str) {
    let TextDaemon { mut daemon, client, prefix } =
        start_text(name, &format!("queue_capacity = 1000\n{extra}"), "", "").await;
    let results = client.session().declare_subscriber(format!("out/in/{name}/**")).await.expect("subscribe");

    // Long texts keep the worker busy, so most messages are still queued when SIGTERM arrives.
    burst(&client, &format!("in/{name}/x")).await;
    let accepted = wait_for_stats(&client, &prefix, "all accepted", |stats| stats.received == MESSAGES as u64).await;
    let in_flight = accepted.pipelines[0].in_flight;
    assert!(in_flight > 0, "the test needs messages in flight at SIGTERM: {accepted:?}");
    daemon.terminate();

    for result in collect_outcomes(&results, MESSAGES, &daemon).await.values() {
        assert_eq!(result.outcome, outcome::OK, "in-flight messages finish normally: {result:?}");
    }
    let status = daemon.wait_exit();
    assert!(status.success(), "exit status {status}:\n{}", daemon.log());
    assert!(daemon.log().contains("stopped cleanly"), "{}", daemon.log());
    eprintln!("{name} ({extra}): {in_flight} of {MESSAGES} messages in flight at SIGTERM; all got their result");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_with_an_outcome_and_the_books_balance() {
    let TextDaemon { daemon, client, prefix } = start_text("full", "queue_capacity = 2", "", "").await;
    let results = client.session().declare_subscriber("out/in/full/**").await.expect("subscribe");

    burst(&client, "in/full/x").await;
    let mut dropped = 0;
    for result in collect_outcomes(&results, MESSAGES, &daemon).await.values() {
        if result.outcome == outcome::DROPPED {
            assert_eq!(result.reason, "queue_full", "{result:?}");
            dropped += 1;
        } else {
            assert_eq!(result.outcome, outcome::OK, "{result:?}");
        }
    }
    assert!(dropped > 0, "a 2-deep queue under a burst of {MESSAGES} must drop some");
    let snapshot = wait_for_stats(&client, &prefix, "books balance", |stats| stats.in_flight == 0).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.received, MESSAGES as u64);
    assert_eq!(stats.received, stats.completed + stats.failed + stats.dropped + stats.in_flight, "{stats:?}");
    assert_eq!(stats.dropped, dropped);
    assert_eq!(stats.dropped_by_reason.get("queue_full"), Some(&dropped));
    client.close().await;
}
