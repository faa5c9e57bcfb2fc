//! `instances`: a pipeline's model in several sessions that run batches side by side. Attacked from outside: a
//! backlog must be shared (the second instance's thread does work), every message answered once with the labels
//! one instance gives, and a SIGTERM while instances are busy must still answer everything.

use std::collections::BTreeMap;

use zinfer_proto::outcome;

use crate::support::{TextDaemon, collect_outcomes, golden, start_text, wait_for_stats};

/// Batching and padding change the int8 model's dynamic activation scales a little; labels must not change.
const TOLERANCE: f64 = 0.05;

/// CPU time (user + system, in clock ticks) of the threads of process `pid` whose name is `name`.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    let mut found = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the `(comm)`: state is the 3rd field, utime and stime the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        found = Some(found.unwrap_or(0) + ticks);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_backlog_and_keep_every_label() {
    let TextDaemon { daemon, client, prefix } =
        start_text("inst", "instances = 2\nmax_batch = 4\nqueue_capacity = 2000", "", "").await;
    let results = client.session().declare_subscriber("out/in/inst/**").await.expect("subscribe");
    let status = wait_for_stats(&client, &prefix, "the pipeline's settings", |_| true).await;
    let session = status.pipelines[0].session.clone().expect("session settings");
    assert_eq!(session.instances, 2, "{session:?}");
    let before = thread_ticks(daemon.pid(), "zinfer-inst-1").expect("the second instance has its own thread");

    let golden = golden();
    let rounds = 10;
    for round in 0..rounds {
        for (index, case) in golden.cases.iter().enumerate() {
            client
                .session()
                .put("in/inst/x", case.text.clone())
                .attachment(format!("{round}-{index}"))
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .expect("put");
        }
    }
    let total = rounds * golden.cases.len();
    let outcomes = collect_outcomes(&results, total, &daemon).await;
    let mut sizes = BTreeMap::new();
    for (id, result) in &outcomes {
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        let index: usize = id.split('-').nth(1).and_then(|index| index.parse().ok()).expect("id round-index");
        let case = &golden.cases[index];
        assert_eq!(result.label.as_deref(), Some(case.label.as_str()), "{:?} on two instances", case.text);
        for (score, expected) in result.scores.iter().zip(&case.probs) {
            assert!((f64::from(score.score) - expected).abs() < TOLERANCE, "{:?}: {result:?}", case.text);
        }
        *sizes.entry(result.timings.expect("timings").batch_size).or_insert(0) += 1;
    }
    let snapshot = wait_for_stats(&client, &prefix, "all completed", |stats| stats.completed == total as u64).await;
    assert_eq!(snapshot.pipelines[0].in_flight, 0, "{snapshot:?}");
    let after = thread_ticks(daemon.pid(), "zinfer-inst-1").expect("the second instance's thread");
    assert!(after > before, "the second instance ran no batch of a backlog of {total} ({before} → {after} ticks)");
    eprintln!("{total} messages on two instances, by batch size {sizes:?}; second instance: {} ticks", after - before);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_both_instances_run_answers_every_message() {
    const MESSAGES: usize = 200;
    let TextDaemon { mut daemon, client, prefix } =
        start_text("instterm", "instances = 2\nqueue_capacity = 1000", "", "").await;
    let results = client.session().declare_subscriber("out/in/instterm/**").await.expect("subscribe");
    // Long texts keep both instances busy, so most messages are still queued or running at SIGTERM.
    let text = "an ambitious, sprawling and occasionally brilliant film ".repeat(12);
    for index in 0..MESSAGES {
        client
            .session()
            .put("in/instterm/x", text.clone())
            .attachment(index.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .expect("put");
    }
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
    eprintln!("{in_flight} of {MESSAGES} in flight at SIGTERM on two instances; all answered, exit 0");
    client.close().await;
}
