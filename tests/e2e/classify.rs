//! Results over zenoh match what Python's tokenizers + onnxruntime computed on the same model and tokenizer.

use zinfer_proto::outcome;
use zinferd::client::RequestFormat;

use crate::support::{TextDaemon, WAIT, golden, int8_tolerance, next_result, next_sample, start_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_match_the_golden_onnxruntime_outputs_in_every_request_format() {
    let TextDaemon { daemon, client, .. } = start_text("sentiment", "", "", "").await;

    let golden = golden();
    let formats = [RequestFormat::Json, RequestFormat::Protobuf, RequestFormat::Text];
    for (index, case) in golden.cases.iter().enumerate() {
        let format = formats[index % formats.len()];
        let id = format!("golden-{index}");
        let key = format!("in/sentiment/golden/{index}");
        let pending = client.request(&key, "out", &id, &case.text, format).await.expect("publish");
        let result = pending.result(WAIT).await.unwrap_or_else(|error| panic!("{id}: {error}\n{}", daemon.log()));

        assert_eq!(result.outcome, outcome::OK, "{id} ({format:?}): {result:?}");
        assert_eq!(result.id, id);
        assert_eq!(result.key, key);
        assert_eq!(result.pipeline, "sentiment");
        assert_eq!(result.label.as_deref(), Some(case.label.as_str()), "{id} {:?}", case.text);
        let labels: Vec<&str> = result.scores.iter().map(|score| score.label.as_str()).collect();
        assert_eq!(labels, golden.labels, "scores are in label order");
        for (score, expected) in result.scores.iter().zip(&case.probs) {
            let diff = (f64::from(score.score) - expected).abs();
            let tolerance = int8_tolerance();
            assert!(diff < tolerance, "{id}: {} = {} but golden {expected} (diff {diff})", score.label, score.score);
        }
        assert_eq!(result.top_k.len(), 2);
        assert_eq!(result.top_k[0].label, case.label);
        let model = result.model.expect("model ref");
        assert_eq!((model.name.as_str(), model.version.as_str()), ("zinfer-fixture-tiny-bert", "0.1.0"));
        let timings = result.timings.expect("timings");
        assert!(timings.inference_us > 0 && timings.total_us >= timings.inference_us, "{timings:?}");
        assert_eq!(timings.batch_size, 1, "an isolated message runs alone, at once");
        // Each stage's own time, named by its type, within its phase.
        let names: Vec<&str> = result.stages.iter().map(|stage| stage.name.as_str()).collect();
        assert_eq!(names, ["tokenize", "classify"], "{:?}", result.stages);
        assert!(result.stages[0].us > 0, "tokenizing takes time: {:?}", result.stages);
        assert!(result.stages[0].us <= timings.preprocess_us, "{:?} within {timings:?}", result.stages);
        assert!(result.stages[1].us <= timings.postprocess_us, "{:?} within {timings:?}", result.stages);
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_come_from_the_payload_then_the_attachment_then_are_generated() {
    let TextDaemon { daemon: _daemon, client, .. } = start_text("ids", "", "", "").await;

    // The JSON id wins over the attachment.
    let results = client.session().declare_subscriber("out/in/ids/**").await.expect("subscribe");
    let body = serde_json::json!({"id": 42, "text": "great fun"}).to_string();
    client
        .session()
        .put("in/ids/a", body)
        .encoding(zenoh::bytes::Encoding::APPLICATION_JSON)
        .attachment("from-attachment")
        .await
        .expect("put");
    let sample = next_sample(&results).await;
    let result = zinferd::client::decode_result(&sample).expect("decode");
    assert_eq!(result.id, "42");
    assert_eq!(sample.attachment().map(|a| a.to_bytes().into_owned()), Some(b"42".to_vec()));

    // Plain text: the attachment is the id.
    client.session().put("in/ids/b", "great fun").attachment("from-attachment").await.expect("put");
    assert_eq!(next_result(&results).await.id, "from-attachment");

    // Neither: a generated, non-empty id, different each time.
    client.session().put("in/ids/c", "great fun").await.expect("put");
    client.session().put("in/ids/c", "great fun").await.expect("put");
    let mut generated = Vec::new();
    for _ in 0..2 {
        generated.push(next_result(&results).await.id);
    }
    assert!(generated.iter().all(|id| !id.is_empty()) && generated[0] != generated[1], "{generated:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_results_when_configured() {
    let TextDaemon { daemon: _daemon, client, .. } = start_text("pb", "result_encoding = \"protobuf\"", "", "").await;
    let results = client.session().declare_subscriber("out/in/pb/x").await.expect("subscribe");
    client.session().put("in/pb/x", "a fine film").attachment("pb-1").await.expect("put");
    let sample = next_sample(&results).await;
    assert_eq!(*sample.encoding(), zenoh::bytes::Encoding::APPLICATION_PROTOBUF);
    let result = <zinfer_proto::Result as prost::Message>::decode(sample.payload().to_bytes().as_ref())
        .expect("a protobuf zinfer.v1.Result");
    assert_eq!((result.id.as_str(), result.outcome.as_str()), ("pb-1", outcome::OK));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_serve_their_own_keys_independently() {
    use crate::support::{Daemon, base_config, free_port, text_pipeline};
    let port = free_port();
    let prefix = format!("zt/two/{port}");
    let config = base_config(port, &prefix)
        + &text_pipeline("first", "in/first/**", "", "", "")
        + &text_pipeline("second", "in/second/**", "result_encoding = \"protobuf\"", "", "");
    let daemon = Daemon::start(&config, port);
    let client = daemon.client().await;
    for key in ["in/first/x", "in/second/x"] {
        client.wait_for_subscriber(key, WAIT).await.expect("zinferd subscribes");
    }
    let first = client.request("in/first/x", "out", "one", "fine", RequestFormat::Text).await.expect("send");
    let second = client.request("in/second/x", "out", "two", "fine", RequestFormat::Text).await.expect("send");
    let (first, second) = (first.result(WAIT).await.expect("first"), second.result(WAIT).await.expect("second"));
    assert_eq!((first.pipeline.as_str(), first.outcome.as_str()), ("first", outcome::OK));
    assert_eq!((second.pipeline.as_str(), second.outcome.as_str()), ("second", outcome::OK));
    let snapshot = crate::support::status(&client, &prefix).await;
    let names: Vec<&str> = snapshot.pipelines.iter().map(|stats| stats.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert!(snapshot.pipelines.iter().all(|stats| stats.received == 1), "{snapshot:?}");
    client.close().await;
}
