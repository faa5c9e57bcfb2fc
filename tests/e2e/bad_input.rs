//! Bad input never crashes the daemon and is never silent: each class gets an error outcome with the request id
//! and a machine-readable reason, is counted in telemetry, and the daemon keeps serving.

use zenoh::bytes::Encoding;
use zinfer_proto::outcome;
use zinferd::client::RequestFormat;

use crate::support::{TextDaemon, WAIT, start_text, wait_for_stats};

/// Starts a daemon whose pipeline has the given tokenize/decode options, sends `payload`, and checks that the
/// outcome is an error with `reason`, that telemetry counted it, and that a good message still works afterwards.
async fn expect_error(tokenize: &str, decode: &str, payload: Vec<u8>, encoding: Encoding, reason: &str) {
    let TextDaemon { daemon, client, prefix } = start_text("bad", "", tokenize, decode).await;

    let id = format!("bad-{reason}");
    let pending = client.request_raw("in/bad/x", "out", &id, payload, encoding).await.expect("publish");
    let result = pending.result(WAIT).await.unwrap_or_else(|error| panic!("{reason}: {error}\n{}", daemon.log()));
    assert_eq!(result.outcome, outcome::ERROR, "{result:?}");
    assert_eq!(result.reason, reason, "{result:?}");
    assert_eq!(result.id, id);
    assert!(!result.message.is_empty(), "an error explains itself: {result:?}");
    assert_eq!(result.label, None);

    let pending = client.request("in/bad/x", "out", "good", "a fine film", RequestFormat::Text).await.expect("publish");
    assert_eq!(pending.result(WAIT).await.expect("still serving").outcome, outcome::OK);

    let snapshot =
        wait_for_stats(&client, &prefix, "both outcomes counted", |stats| stats.completed == 1 && stats.failed == 1)
            .await;
    let stats = &snapshot.pipelines[0];
    assert_eq!(stats.failed_by_reason.get(reason), Some(&1), "{stats:?}");
    assert_eq!((stats.received, stats.in_flight), (2, 0), "{stats:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8() {
    expect_error("", "", vec![b'o', b'k', 0xff, 0xfe], Encoding::TEXT_PLAIN, "invalid_utf8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json() {
    // The payload's own id comes back although the JSON is cut short after it (it matches the attachment here, which
    // the client waits for; attacks.rs checks payload ids without attachments).
    let payload = br#"{"id": "bad-malformed_json", "text": "unterminated"#.to_vec();
    expect_error("", "", payload, Encoding::APPLICATION_JSON, "malformed_json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_without_text() {
    expect_error("", "", br#"{"id": "bad-malformed_json"}"#.to_vec(), Encoding::APPLICATION_JSON, "malformed_json")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf() {
    expect_error("", "", vec![0x0a, 0xff, 0x01], Encoding::APPLICATION_PROTOBUF, "malformed_protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_payload() {
    expect_error("", "", Vec::new(), Encoding::TEXT_PLAIN, "empty_payload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload() {
    let payload = "great film ".repeat(40).into_bytes();
    expect_error("", "max_bytes = 256", payload, Encoding::TEXT_PLAIN, "payload_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_tokens_when_rejecting() {
    let payload = "great film ".repeat(20).into_bytes();
    let tokenize = "max_length = 16\noverflow = \"reject\"";
    expect_error(tokenize, "", payload, Encoding::TEXT_PLAIN, "too_many_tokens").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_encoding() {
    expect_error("", "", b"fine".to_vec(), Encoding::IMAGE_PNG, "unsupported_encoding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_text_is_truncated_when_truncating() {
    let tokenize = "max_length = 16\noverflow = \"truncate\"";
    let TextDaemon { daemon: _daemon, client, .. } = start_text("trunc", "", tokenize, "").await;
    let text = "a wonderful film ".repeat(50);
    let pending = client.request("in/trunc/x", "out", "long", &text, RequestFormat::Text).await.expect("publish");
    let result = pending.result(WAIT).await.expect("result");
    assert_eq!(result.outcome, outcome::OK, "{result:?}");
    client.close().await;
}
