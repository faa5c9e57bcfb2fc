//! Deadlines: impossible ones expire without running, generous ones are met, urgent messages jump the queue.

use std::time::{SystemTime, UNIX_EPOCH};

use zenoh::bytes::Encoding;
use zinfer_proto::outcome;
use zinferd::client::RequestFormat;

use crate::support::{TextDaemon, WAIT, next_result, start_text, wait_for_stats};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_passed_deadline_expires_without_running() {
    let TextDaemon { daemon: _daemon, client, prefix } = start_text("late", "", "", "").await;
    // Sent a second ago with a 50 ms budget: hopeless on arrival.
    let body =
        serde_json::json!({"id": "late", "text": "a fine film", "deadline_ms": 50, "sent_at_ms": now_ms() - 1000});
    let pending = client
        .request_raw("in/late/x", "out", "late", body.to_string().into_bytes(), Encoding::APPLICATION_JSON)
        .await
        .expect("publish");
    let result = pending.result(WAIT).await.expect("result");
    assert_eq!((result.outcome.as_str(), result.reason.as_str()), (outcome::EXPIRED, "deadline_passed"), "{result:?}");
    assert_eq!(result.deadline_met, Some(false));
    assert!(result.deadline_slack_us < -900_000, "{result:?}");
    assert_eq!(result.timings.expect("timings").inference_us, 0, "it must not have run");

    let snapshot = wait_for_stats(&client, &prefix, "the expiry counted", |stats| stats.expired == 1).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.expired_by_reason.get("deadline_passed"), Some(&1));
    assert_eq!(stats.latency[3].count, 0, "no inference ran: {stats:?}");
    assert_eq!(stats.received, stats.completed + stats.failed + stats.expired + stats.dropped + stats.in_flight);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spare_capacity_every_message_meets_a_generous_deadline() {
    let TextDaemon { daemon: _daemon, client, prefix } = start_text("spare", "deadline_ms = 5000", "", "").await;
    for index in 0..20 {
        let id = format!("s{index}");
        let pending = client.request("in/spare/x", "out", &id, "a fine film", RequestFormat::Text).await.expect("send");
        let result = pending.result(WAIT).await.expect("result");
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        assert_eq!(result.deadline_met, Some(true), "{result:?}");
        assert!(result.deadline_slack_us > 0 && result.deadline_slack_us <= 5_000_000, "{result:?}");
    }
    let snapshot = wait_for_stats(&client, &prefix, "20 completed", |stats| stats.completed == 20).await;
    assert_eq!(snapshot.pipelines[0].deadline_missed, 0);
    assert_eq!(snapshot.pipelines[0].expired, 0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_message_overtakes_a_backlog_without_deadlines() {
    const BACKLOG: usize = 150;
    let TextDaemon { daemon: _daemon, client, .. } = start_text("edf", "queue_capacity = 1000", "", "").await;
    let results = client.session().declare_subscriber("out/in/edf/**").await.expect("subscribe");
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..BACKLOG {
        client
            .session()
            .put("in/edf/x", text.clone())
            .attachment(format!("b{index}"))
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
    }
    // Messages without a deadline are ordered as if due a second after they arrived (so that deadline traffic
    // cannot starve them): to overtake the backlog, the urgent message's deadline must come before that.
    let urgent = serde_json::json!({"id": "urgent", "text": "a fine film", "deadline_ms": 800});
    client
        .session()
        .put("in/edf/x", urgent.to_string())
        .encoding(Encoding::APPLICATION_JSON)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .expect("put");
    let mut order = Vec::new();
    while order.len() < BACKLOG + 1 {
        order.push(next_result(&results).await.id);
    }
    let position = order.iter().position(|id| id == "urgent").expect("the urgent result");
    assert!(position < BACKLOG, "the urgent message ran last (position {position}): it should overtake the backlog");
    eprintln!("urgent message finished at position {position} of {}", BACKLOG + 1);
    client.close().await;
}
