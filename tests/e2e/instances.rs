//! `instances`: a pipeline's model in several sessions that run batches side by side. Attacked from outside: a
//! backlog must be shared (the second instance's thread does work), every message answered once with the labels
//! one instance gives. (A SIGTERM while both instances are busy: `shutdown::sigterm_while_two_instances_run…`; a
//! sensor stream on two instances: `sensor::a_recording_replayed_on_two_instances…`.)

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
    let total = golden.publish_rounds(&client, "in/inst/x", 10).await;
    let outcomes = collect_outcomes(&results, total, &daemon).await;
    let mut sizes = BTreeMap::new();
    for (id, result) in &outcomes {
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        let case = golden.case_of(id);
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
