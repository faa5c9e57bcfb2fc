//! Shape by situation, through the fixture model and a real ONNX Runtime: a message that runs alone runs at its own
//! length; messages of one length bucket share a run, padded to the longest of them, and keep their predictions.

use zinfer_stage_api::{Prediction, RawMessage};

use super::accounting_tests::pipeline;
use super::outcome::Verdict;
use super::{Envelope, Pipeline, Prepared};

fn prepare(pipeline: &mut Pipeline, text: &str) -> Prepared {
    let message = RawMessage {
        key: "in/x".into(),
        payload: format!(r#"{{"id": "{text}", "text": "{text}"}}"#).into_bytes(),
        encoding: "application/json".into(),
        attachment_id: None,
    };
    let envelope = Envelope::new(message, "-".into());
    pipeline.prepare(envelope).unwrap_or_else(|failed| panic!("{text:?} prepares: {failed:?}"))
}

fn tokens(prepared: &Prepared) -> usize {
    prepared.item.feature("input_ids").map_or(0, |ids| ids.tensor.shape[0])
}

fn scores(verdict: &Verdict) -> Vec<f32> {
    let Verdict::Predicted(Prediction::Classification(prediction)) = verdict else { panic!("classified: {verdict:?}") };
    prediction.scores.iter().map(|score| score.score).collect()
}

#[test]
fn a_lone_message_runs_at_its_own_length_and_a_batch_pads_to_its_longest() {
    let mut pipeline = pipeline(8);
    let (short, long, longer) = ("great fun", "an ambitious, sprawling epic", &*"a long and winding review ".repeat(5));
    let alone: Vec<_> = [short, long]
        .iter()
        .map(|text| {
            let prepared = prepare(&mut pipeline, text);
            assert!(tokens(&prepared) < 16, "{text:?} is not padded to its bucket: {} tokens", tokens(&prepared));
            let mut processed = pipeline.run_batch(vec![prepared], 8, &mut || {});
            (tokens(&prepare(&mut pipeline, text)), processed.remove(0))
        })
        .collect();
    assert_ne!(alone[0].0, alone[1].0, "two lengths, or the test shows nothing");

    let (a, b, c) = (prepare(&mut pipeline, short), prepare(&mut pipeline, long), prepare(&mut pipeline, longer));
    assert_eq!(Pipeline::signature(&a), Pipeline::signature(&b), "one bucket: they may share a run");
    assert_ne!(Pipeline::signature(&a), Pipeline::signature(&c), "{} tokens is another bucket", tokens(&c));

    let mut runs = 0;
    let batched = pipeline.run_batch(vec![a, b], 8, &mut || runs += 1);
    assert_eq!(runs, 1, "one model run for both (a failed run retried per message would be three)");
    for ((_, alone), batched) in alone.iter().zip(&batched) {
        assert_eq!(batched.timings.batch_size, 2);
        assert_eq!(alone.timings.batch_size, 1);
        let (alone, batched) = (scores(&alone.verdict), scores(&batched.verdict));
        // Padding changes the int8 model's dynamic activation scales a little (tests/e2e/batching.rs: 0.05).
        for (x, y) in alone.iter().zip(&batched) {
            assert!((x - y).abs() < 0.05, "alone {alone:?}, batched {batched:?}");
        }
    }
}
