//! Dynamic batching: a backlog runs in batches of equal-shape (bucketed) messages; an isolated message runs alone
//! at once; batched, padded results keep the labels Python computed for each text alone.

use std::collections::BTreeMap;

use zinfer_proto::outcome;

use crate::support::{TextDaemon, golden, next_result, start_text, wait_for_stats};

/// Batching and padding change the int8 model's dynamic activation scales a little; labels must not change.
const TOLERANCE: f64 = 0.05;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_runs_in_batches_with_unchanged_labels() {
    let TextDaemon { daemon: _daemon, client, prefix } =
        start_text("batch", "max_batch = 8\nqueue_capacity = 500", "buckets = [16, 32, 64, 128]", "").await;
    let results = client.session().declare_subscriber("out/in/batch/**").await.expect("subscribe");
    let golden = golden();
    let total = golden.publish_rounds(&client, "in/batch/x", 4).await;
    let mut sizes = BTreeMap::new();
    for _ in 0..total {
        let result = next_result(&results).await;
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        let case = golden.case_of(&result.id);
        assert_eq!(result.label.as_deref(), Some(case.label.as_str()), "{:?} in a batch", case.text);
        for (score, expected) in result.scores.iter().zip(&case.probs) {
            assert!((f64::from(score.score) - expected).abs() < TOLERANCE, "{:?}: {result:?}", case.text);
        }
        *sizes.entry(result.timings.expect("timings").batch_size).or_insert(0) += 1;
    }
    assert!(sizes.keys().any(|&size| size > 1), "a backlog of {total} must batch: {sizes:?}");
    assert!(sizes.keys().all(|&size| (1..=8).contains(&size)), "{sizes:?}");
    let snapshot = wait_for_stats(&client, &prefix, "all completed", |stats| stats.completed == total as u64).await;
    let by_size = &snapshot.pipelines[0].messages_by_batch_size;
    assert_eq!(by_size.values().sum::<u64>(), total as u64);
    eprintln!("messages by batch size: {by_size:?}");
    client.close().await;
}
