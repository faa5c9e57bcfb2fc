//! Overload policies: `latest` keeps the newest message per key and answers the rest `superseded`; the queue's
//! byte bound refuses with `queue_full`. Either way every message gets exactly one outcome and the books balance.

use std::collections::BTreeMap;

use zinfer_proto::outcome;

use crate::support::{TextDaemon, collect_outcomes, next_result, start_text, wait_for_stats};

const PER_KEY: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_keeps_the_newest_message_of_each_key() {
    let extra = "overload = \"latest\"\nlatest_per_key = 1\nqueue_capacity = 500\nmax_batch = 1";
    let TextDaemon { daemon, client, prefix } = start_text("latest", extra, "", "").await;
    let results = client.session().declare_subscriber("out/in/latest/**").await.expect("subscribe");
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..PER_KEY {
        for source in ["left", "right"] {
            client
                .session()
                .put(format!("in/latest/{source}"), text.clone())
                .attachment(format!("{source}-{index}"))
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .expect("put");
        }
    }
    let outcomes: BTreeMap<String, (String, String)> = collect_outcomes(&results, 2 * PER_KEY, &daemon)
        .await
        .into_iter()
        .map(|(id, result)| (id, (result.outcome, result.reason)))
        .collect();
    for source in ["left", "right"] {
        let last = &outcomes[&format!("{source}-{}", PER_KEY - 1)];
        assert_eq!(last.0, outcome::OK, "the newest {source} message always runs");
    }
    let superseded =
        outcomes.values().filter(|(outcome, reason)| outcome == "dropped" && reason == "superseded").count();
    assert!(superseded > 0, "a burst must supersede some: {outcomes:?}");
    assert!(outcomes.values().all(|(outcome, reason)| outcome == "ok" || reason == "superseded"), "{outcomes:?}");
    let snapshot = wait_for_stats(&client, &prefix, "books balance", |stats| stats.in_flight == 0).await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.received, 2 * PER_KEY as u64);
    assert_eq!(stats.dropped_by_reason.get("superseded"), Some(&(superseded as u64)));
    assert_eq!(stats.received, stats.completed + stats.failed + stats.expired + stats.dropped);
    assert_eq!(stats.queue_depth, 0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_refuses_with_queue_full() {
    // Each text is ~690 bytes: at most two fit in 1500 bytes of queue, whatever the count allows.
    let extra = "queue_bytes = 1500\nqueue_capacity = 500\nmax_batch = 1";
    let TextDaemon { daemon: _daemon, client, prefix } = start_text("bytes", extra, "", "").await;
    let results = client.session().declare_subscriber("out/in/bytes/**").await.expect("subscribe");
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..PER_KEY {
        client
            .session()
            .put("in/bytes/x", text.clone())
            .attachment(index.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
    }
    let mut full = 0;
    for _ in 0..PER_KEY {
        let result = next_result(&results).await;
        if result.outcome == outcome::DROPPED {
            assert_eq!(result.reason, "queue_full");
            full += 1;
        }
    }
    assert!(full > 0, "a 1500-byte queue must refuse some of {PER_KEY} 690-byte messages");
    let snapshot = wait_for_stats(&client, &prefix, "books balance", |stats| stats.in_flight == 0).await;
    assert_eq!(snapshot.pipelines[0].dropped, full);
    client.close().await;
}
