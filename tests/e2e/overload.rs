//! Overload policies: `latest` keeps the newest message per key and answers the rest `superseded`; the queue's
//! byte bound refuses with `queue_full`. Either way every message gets exactly one outcome and the books balance.

use std::collections::BTreeMap;

use zinfer_proto::outcome;

use crate::support::{
    Daemon, TextDaemon, WAIT, base_config, collect_outcomes, free_port, next_result, spin_pipeline, start_text, status,
    wait_for_stats,
};

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

/// `queue_capacity` bounds every message that waits for the model, wherever it waits: zinferd's admission queue and
/// its worker's deadline-ordered queue together. (Each used to be bounded on its own, so twice as many could wait.)
/// The stall model holds each run until its 1 s timeout, so the test knows where every message is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_capacity_bounds_everything_that_waits() {
    const CAPACITY: usize = 4;
    const BURST: usize = 10;
    let port = free_port();
    let prefix = format!("zt/capacity/{port}");
    let keys = format!("queue_capacity = {CAPACITY}\nmax_batch = 1\n");
    let config = base_config(port, &prefix) + &spin_pipeline("stall", "capacity", &keys, 1000);
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/capacity/x", WAIT).await.expect("zinferd subscribes");
    let results = client.results("out", "in/capacity/**").await.expect("subscribe to results");
    let send = |id: String| {
        let client = &client;
        async move {
            let text = zenoh::bytes::Encoding::TEXT_PLAIN;
            client.publish("in/capacity/x", &id, b"a film".to_vec(), text).await.expect("publish");
        }
    };
    // One message runs (and stalls), CAPACITY wait, the rest of the burst is refused.
    for index in 0..BURST {
        send(format!("first-{index}")).await;
    }
    let mut outcomes = BTreeMap::new();
    collect_until(&results, &mut outcomes, |outcomes| outcomes.contains_key("first-0"), &daemon).await;
    assert_eq!(outcomes["first-0"].reason, "inference_timeout", "the first run times out");
    // The worker has now taken the waiting messages into its own queue and runs the next: CAPACITY - 1 wait, so
    // one more fits, whatever the admission queue alone would take.
    for index in 0..BURST {
        send(format!("second-{index}")).await;
    }
    collect_until(&results, &mut outcomes, |outcomes| outcomes.len() == 2 * BURST, &daemon).await;
    let accepted = |phase: &str| {
        outcomes.iter().filter(|(id, result)| id.starts_with(phase) && result.reason != "queue_full").count()
    };
    // The first burst: one running and CAPACITY waiting (CAPACITY - 1 if the burst came while the worker was
    // still preparing the first, which then also waited). The second: as many as the first left room for, the
    // one now running excepted (one fewer if it came just before that one started).
    let (first, second) = (accepted("first-"), accepted("second-"));
    assert!(first == CAPACITY + 1 || first == CAPACITY, "first burst: {first} accepted");
    assert!(
        first + second == CAPACITY + 2 || first + second == CAPACITY + 1,
        "{first} + {second} accepted: more than CAPACITY ({CAPACITY}) waited at once"
    );
    client.close().await;
}

/// Under `latest` too, `queue_capacity` bounds what waits, wherever it waits, at every moment: while the model runs,
/// a newcomer makes room by superseding the oldest waiting message, even one the worker already took and prepared.
/// (It used to be let in over the bound, and the worker evicted at its next turn: up to twice the capacity waited
/// during a run.) The newest message of a burst always gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_bounds_what_waits_during_a_run_and_keeps_the_newest() {
    const CAPACITY: usize = 4;
    const BURST: usize = 10;
    let port = free_port();
    let prefix = format!("zt/capacity-latest/{port}");
    let keys = format!(
        "queue_capacity = {CAPACITY}
max_batch = 1
overload = \"latest\"\nlatest_per_key = 1\n"
    );
    let config = base_config(port, &prefix) + &spin_pipeline("stall", "latestcap", &keys, 1000);
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    client.wait_for_subscriber("in/latestcap/x", WAIT).await.expect("zinferd subscribes");
    let results = client.results("out", "in/latestcap/**").await.expect("subscribe to results");
    // Every message on a key of its own: only the bound, not `latest_per_key`, supersedes them.
    let send = |phase: &'static str, index: usize| {
        let client = &client;
        async move {
            let (key, id) = (format!("in/latestcap/{phase}{index}"), format!("{phase}-{index}"));
            let text = zenoh::bytes::Encoding::TEXT_PLAIN;
            client.publish(&key, &id, b"a film".to_vec(), text).await.expect("publish");
        }
    };
    for index in 0..BURST {
        send("first", index).await;
    }
    let mut outcomes = BTreeMap::new();
    collect_until(&results, &mut outcomes, |outcomes| outcomes.contains_key("first-0"), &daemon).await;
    // The worker took what waited and runs the next (for a second): a burst now meets a worker that holds the rest.
    for index in 0..BURST {
        send("second", index).await;
    }
    // Looked at while the burst lands and the run goes on (the run takes a second).
    let mut deepest = 0;
    for _ in 0..5 {
        deepest = deepest.max(status(&client, &prefix).await.pipelines[0].queue_depth);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(deepest <= CAPACITY as u64, "{deepest} messages waited during a run, over queue_capacity {CAPACITY}");
    collect_until(&results, &mut outcomes, |outcomes| outcomes.len() == 2 * BURST, &daemon).await;
    let last = &outcomes[&format!("second-{}", BURST - 1)];
    assert_ne!(last.outcome, outcome::DROPPED, "the newest message gets in: {last:?}");
    let refused: Vec<_> = outcomes.values().filter(|result| result.reason == "queue_full").collect();
    assert!(refused.is_empty(), "latest supersedes, it does not refuse: {refused:?}");
    let ran = outcomes.values().filter(|result| result.reason != "superseded").count();
    // first-0 and the first burst's next run, then at most CAPACITY that waited through each of the two runs.
    assert!(ran <= 2 + 2 * CAPACITY, "{ran} ran or timed out: more than CAPACITY waited at once");
    client.close().await;
}

/// Adds results to `outcomes`, by id, until `until` holds; each message must get one.
async fn collect_until(
    results: &zinferd::client::Results,
    outcomes: &mut BTreeMap<String, zinfer_proto::Result>,
    until: impl Fn(&BTreeMap<String, zinfer_proto::Result>) -> bool,
    daemon: &Daemon,
) {
    while !until(outcomes) {
        let result = results
            .next(WAIT)
            .await
            .unwrap_or_else(|error| panic!("{} outcomes so far ({error}):\n{}", outcomes.len(), daemon.log()));
        assert!(outcomes.insert(result.id.clone(), result).is_none(), "one outcome per message");
    }
}
