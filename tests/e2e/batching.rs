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

/// The tokens the fixture model's tokenizer makes of `text`, [CLS] and [SEP] included.
fn tokens(text: &str) -> usize {
    let path = crate::support::repo_root().join("models/fixture/tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path).expect("the fixture's tokenizer");
    tokenizer.encode(text, true).expect("encode").len()
}

/// `max_batch_tokens` caps rows × padded length per run: long texts run two at a time, short ones still batch past
/// that, and the warm-up (the memory the daemon keeps for a run) is of the largest run the cap allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_tokens_caps_a_run_by_tokens_not_by_messages() {
    let long = "a gripping, beautifully acted and thoroughly enjoyable film ".repeat(4);
    let short = "a dull film";
    let (long_tokens, short_tokens) = (tokens(&long), tokens(short));
    let cap = 2 * long_tokens + 1;
    assert!(long_tokens > 32 && long_tokens <= 64 && 3 * short_tokens <= cap, "{long_tokens} / {short_tokens}");
    let pipeline = format!("max_batch = 8\nmax_batch_tokens = {cap}\nqueue_capacity = 500");
    let TextDaemon { daemon: _daemon, client, prefix } =
        start_text("cap", &pipeline, "buckets = [16, 32, 64, 128]", "").await;
    let results = client.session().declare_subscriber("out/in/cap/**").await.expect("subscribe");
    let count = 24;
    for index in 0..count {
        for (id, text) in [(format!("long-{index}"), long.as_str()), (format!("short-{index}"), short)] {
            let put = client.session().put("in/cap/x", text).attachment(id);
            put.congestion_control(zenoh::qos::CongestionControl::Block).await.expect("put");
        }
    }
    let (mut long_sizes, mut short_sizes) = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..2 * count {
        let result = next_result(&results).await;
        assert_eq!(result.outcome, outcome::OK, "{result:?}");
        let size = result.timings.expect("timings").batch_size;
        let sizes = if result.id.starts_with("long-") { &mut long_sizes } else { &mut short_sizes };
        *sizes.entry(size).or_insert(0) += 1;
    }
    eprintln!("{long_tokens}-token texts by batch size: {long_sizes:?}; {short_tokens}-token texts: {short_sizes:?}");
    assert!(long_sizes.keys().all(|&size| size <= 2), "a cap of {cap} tokens: {long_sizes:?}");
    assert!(long_sizes.contains_key(&2), "a backlog of long texts runs two at a time: {long_sizes:?}");
    assert!(short_sizes.keys().any(|&size| size > 2), "short texts batch past two: {short_sizes:?}");
    let snapshot = wait_for_stats(&client, &prefix, "all completed", |stats| stats.completed == 2 * count as u64).await;
    let memory = snapshot.pipelines[0].model_memory.as_ref().expect("model memory");
    assert_eq!((memory.warm_up_batch, memory.warm_up_length), (1, 128), "{cap} tokens hold one row of 128");
    client.close().await;
}
