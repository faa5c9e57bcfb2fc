//! The plugin API from a user's side: a stage of their own, registered next to the built-ins, running inside an
//! in-process daemon started with `zinferd::run(config, Arc::new(registry), shutdown)`.

use std::time::Duration;

use zinfer_proto::outcome;
use zinfer_stage_api::{BuildContext, BuildError, Input, Item, Part, Prediction, Stage, StageError, parse_options};
use zinferd::client::{Client, RequestFormat};

use crate::support::{WAIT, base_config, free_port, ort_library, text_pipeline};

/// A postprocessing stage a user might write: renames labels, e.g. for a downstream system's vocabulary.
struct RenameLabels {
    renames: toml::Table,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameOptions {
    renames: toml::Table,
}

impl Stage for RenameLabels {
    fn name(&self) -> &str {
        "rename_labels"
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        if let Some(Prediction::Classification(prediction)) = item.prediction.as_mut() {
            let rename = |label: &mut String| {
                if let Some(new) = self.renames.get(label.as_str()).and_then(toml::Value::as_str) {
                    *label = new.to_owned();
                }
            };
            prediction.label.iter_mut().for_each(rename);
            prediction.scores.iter_mut().for_each(|score| rename(&mut score.label));
            prediction.top_k.iter_mut().for_each(|score| rename(&mut score.label));
        }
        Ok(())
    }
}

/// A buggy preprocessing stage: it panics on any text that mentions "boom".
struct Explode;

impl Stage for Explode {
    fn name(&self) -> &str {
        "explode"
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        if matches!(&item.input, Input::Text(text) if text.contains("boom")) {
            panic!("a bug in a user's stage");
        }
        Ok(())
    }
}

/// A stage that splits a message into parts, as the sensor `window` stage does but for no stream: one part per
/// `|`-separated clause of the text (none for an empty one), each the model input the tokenizer made of the whole
/// text. Not a useful stage: a plain proof that any stage can make 0..N model inputs of a message.
struct Clauses;

impl Stage for Clauses {
    fn name(&self) -> &str {
        "clauses"
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let Input::Text(text) = &item.input else { return Ok(()) };
        let count = text.split('|').filter(|clause| !clause.trim().is_empty()).count();
        let features = std::mem::take(&mut item.features);
        let parts = (0..count as u64).map(|index| Part::new(index, features.clone()));
        item.split().extend(parts);
        Ok(())
    }
}

fn build(options: &toml::Table, _context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let options: RenameOptions = parse_options(options)?;
    Ok(Box::new(RenameLabels { renames: options.renames }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stage_runs_in_an_in_process_daemon() {
    let port = free_port();
    let prefix = format!("zt/custom/{port}");
    let pipeline = text_pipeline("custom", "in/custom/**", "", "", "")
        + "[[pipeline.postprocess]]\ntype = \"rename_labels\"\nrenames = { positive = \"thumbs_up\", negative = \"thumbs_down\" }\n"
        + "[[pipeline.preprocess]]\ntype = \"explode\"\n"
        + &text_pipeline("parts", "in/parts/**", "", "", "")
        + "[[pipeline.preprocess]]\ntype = \"clauses\"\n";
    let mut config = base_config(port, &prefix) + &pipeline;
    config += &format!("[onnxruntime]\nlibrary = \"{}\"\n", ort_library().display());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("custom.toml");
    std::fs::write(&path, config).expect("write config");
    let config = zinferd::config::load(&[path]).expect("valid config");

    let mut registry = zinferd::default_registry();
    registry.register_stage("rename_labels", Box::new(build));
    registry.register_stage("explode", Box::new(|_: &toml::Table, _: &BuildContext<'_>| Ok(Box::new(Explode) as _)));
    registry.register_stage("clauses", Box::new(|_: &toml::Table, _: &BuildContext<'_>| Ok(Box::new(Clauses) as _)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(async move {
        zinferd::run(config, std::sync::Arc::new(registry), async {
            let _ = stopped.await;
        })
        .await
    });

    let client = Client::connect(&format!("tcp/127.0.0.1:{port}")).await.expect("client");
    client.wait_for_subscriber("in/custom/x", WAIT).await.expect("the in-process daemon subscribes");
    let pending =
        client.request("in/custom/x", "out", "c1", "a warm and funny film", RequestFormat::Text).await.expect("send");
    let result = pending.result(WAIT).await.expect("result");
    assert_eq!(result.outcome, outcome::OK, "{result:?}");
    let labels: Vec<&str> = result.scores.iter().map(|score| score.label.as_str()).collect();
    assert_eq!(labels, ["thumbs_down", "thumbs_up"]);
    assert!(result.label.as_deref().is_some_and(|label| label.starts_with("thumbs_")), "{result:?}");
    let names: Vec<&str> = result.stages.iter().map(|stage| stage.name.as_str()).collect();
    assert_eq!(names, ["tokenize", "explode", "classify", "rename_labels"], "every stage timed, by its type");

    // A stage that panics costs its message (an error outcome with the sender's id), not the pipeline.
    let pending = client.request("in/custom/x", "out", "c2", "boom", RequestFormat::Text).await.expect("send");
    let result = pending.result(WAIT).await.expect("an outcome for the message the stage panicked on");
    assert_eq!(
        (result.outcome.as_str(), result.reason.as_str(), result.id.as_str()),
        (outcome::ERROR, "stage_panicked", "c2")
    );
    let pending = client.request("in/custom/x", "out", "c3", "a dull film", RequestFormat::Text).await.expect("send");
    assert_eq!(pending.result(WAIT).await.expect("result").outcome, outcome::OK, "the pipeline carries on");

    // A message split into parts: the model and the head run once per part, and the result has one prediction per
    // part, in order, without the stream fields a sensor window has.
    client.wait_for_subscriber("in/parts/x", WAIT).await.expect("the parts pipeline subscribes");
    let text = "a warm | and funny | film";
    let whole = client.request("in/custom/x", "out", "w", text, RequestFormat::Text).await.expect("send");
    let whole = whole.result(WAIT).await.expect("result");
    let split = client.request("in/parts/x", "out", "p", text, RequestFormat::Text).await.expect("send");
    let split = split.result(WAIT).await.expect("result");
    assert_eq!(split.outcome, outcome::OK, "{split:?}");
    assert_eq!(split.windows.iter().map(|part| part.index).collect::<Vec<_>>(), [0, 1, 2]);
    for part in &split.windows {
        assert_eq!((part.source.as_str(), part.start_sample, part.start_us, part.end_us), ("", 0, 0, 0));
        // Each part holds the whole text's model input: each prediction is the whole text's.
        let (scores, reference) = (part.scores.iter().map(|s| s.score), whole.scores.iter().map(|s| s.score));
        assert!(scores.zip(reference).all(|(a, b)| (a - b).abs() < 1e-6), "{part:?} vs {whole:?}");
    }
    assert_eq!(split.timings.as_ref().map(|timings| timings.batch_size), Some(3), "three model inputs");
    let none = client.request("in/parts/x", "out", "n", " | ", RequestFormat::Text).await.expect("send");
    let none = none.result(WAIT).await.expect("result");
    assert_eq!((none.outcome.as_str(), none.windows.len()), (outcome::OK, 0), "split into none: {none:?}");
    client.close().await;

    stop.send(()).expect("daemon still running");
    let finished = tokio::time::timeout(Duration::from_secs(30), daemon).await.expect("daemon stops in time");
    finished.expect("daemon task").expect("daemon exits cleanly");
}
