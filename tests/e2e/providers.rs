//! Execution providers the loaded ONNX Runtime lacks are skipped with a warning, and the CPU takes over.
//!
//! The PyPI `onnxruntime` wheel used here is a CPU build, so asking for CUDA and TensorRT exercises exactly the
//! fallback a Jetson sees with a CPU-only library. (The GPU path itself needs a GPU build and a GPU.)

use zinfer_proto::outcome;
use zinferd::client::RequestFormat;

use crate::support::{TextDaemon, WAIT, start_text, status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_gpu_providers_fall_back_to_cpu_with_a_warning() {
    let session = "[pipeline.session]\nexecution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\nintra_threads = 1";
    let TextDaemon { daemon, client, prefix } = start_text("ep", session, "", "").await;
    let pending = client.request("in/ep/x", "out", "ep", "a fine film", RequestFormat::Text).await.expect("publish");
    assert_eq!(pending.result(WAIT).await.expect("result").outcome, outcome::OK);

    let log = daemon.log();
    for provider in ["provider=\"tensorrt\"", "provider=\"cuda\""] {
        assert!(
            log.lines().any(|line| line.contains("WARN") && line.contains(provider)),
            "expected a warning for {provider}:\n{log}"
        );
    }
    let snapshot = status(&client, &prefix).await;
    assert_eq!(snapshot.pipelines[0].execution_providers, ["cpu"]);
    client.close().await;
}
