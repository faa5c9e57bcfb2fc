//! A pipeline: the runtime object built from one `[[pipeline]]` table, and the thread that owns it.
//!
//! ```text
//! Envelope ─▶ decode ─▶ preprocess stages ─▶ model (ONNX Runtime) ─▶ postprocess stages ─▶ Outcome
//! ```
//!
//! [`build`] turns the validated config into a [`Pipeline`] through the stage registry (the daemon knows no stage
//! by name). [`worker`] runs one pipeline on a dedicated OS thread that owns the model session, fed by a bounded
//! queue. [`outcome`] is what every accepted message becomes: a result, an error, or a drop notice.

pub mod build;
pub mod outcome;
pub mod worker;

use std::time::Instant;

use zinfer_ort::Model;
use zinfer_stage_api::{Decoder, Item, RawMessage, Reason, Stage, StageError};

use outcome::{Timings, Verdict};

/// A message waiting for its pipeline.
#[derive(Debug)]
pub struct Envelope {
    /// The sample as the decoder sees it.
    pub message: RawMessage,
    /// When the sample reached the daemon; deadlines and queue time run from here.
    pub arrived: Instant,
    /// The id to use if the payload carries none: the attachment's, else a generated one.
    pub fallback_id: String,
}

/// The name and version of a pipeline's model, as published in results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Model name from the manifest.
    pub name: String,
    /// Model version from the manifest.
    pub version: String,
}

/// A built pipeline: decoder, stages and the model, ready to process envelopes on one thread.
pub struct Pipeline {
    decoder: Box<dyn Decoder>,
    preprocess: Vec<Box<dyn Stage>>,
    model: Model,
    postprocess: Vec<Box<dyn Stage>>,
}

/// What processing one envelope yields.
#[derive(Debug)]
pub struct Processed {
    /// The request id finally used.
    pub id: String,
    /// The prediction or the failure.
    pub verdict: Verdict,
    /// Time per stage.
    pub timings: Timings,
}

impl Pipeline {
    /// The execution providers and thread count in force for the model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, for direct measurements.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// Runs only the preprocessing stages on an item (benchmarks measure the model on their output).
    pub fn preprocess_only(&mut self, item: &mut Item) -> Result<(), StageError> {
        run_stages(&mut self.preprocess, item)
    }

    /// Runs one envelope through every phase. Never panics on bad input: failures become [`Verdict::Failed`].
    pub fn process(&mut self, envelope: Envelope) -> Processed {
        let mut timings = Timings::default();
        let started = Instant::now();
        timings.queue = started.saturating_duration_since(envelope.arrived);
        let mut id = envelope.fallback_id;

        let request = self.decoder.decode(&envelope.message);
        let decoded = Instant::now();
        timings.decode = decoded - started;
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                return Processed { id, verdict: Verdict::Failed(error), timings };
            }
        };
        if let Some(request_id) = request.id {
            id = request_id;
        }
        let mut item = Item::new(id.clone(), envelope.message.key, request.input);

        let result = run_stages(&mut self.preprocess, &mut item);
        let preprocessed = Instant::now();
        timings.preprocess = preprocessed - decoded;
        if let Err(error) = result {
            return Processed { id, verdict: Verdict::Failed(error), timings };
        }

        let result = self.model.run(&[item.features.as_slice()]);
        let inferred = Instant::now();
        timings.inference = inferred - preprocessed;
        match result.map(|mut outputs| outputs.pop()) {
            Ok(Some(outputs)) => item.outputs = outputs,
            Ok(None) => {
                let error = StageError::new(Reason::BadModelOutput, "the model returned no outputs for the item");
                return Processed { id, verdict: Verdict::Failed(error), timings };
            }
            Err(error) => {
                let error = StageError::new(Reason::InferenceFailed, error.to_string());
                return Processed { id, verdict: Verdict::Failed(error), timings };
            }
        }

        let result = run_stages(&mut self.postprocess, &mut item);
        timings.postprocess = inferred.elapsed();
        let verdict = match (result, item.prediction) {
            (Err(error), _) => Verdict::Failed(error),
            (Ok(()), Some(prediction)) => Verdict::Classified(prediction),
            (Ok(()), None) => Verdict::Failed(StageError::new(
                Reason::MissingInput,
                "no postprocessing stage produced a prediction; add a `classify` stage",
            )),
        };
        Processed { id, verdict, timings }
    }
}

fn run_stages(stages: &mut [Box<dyn Stage>], item: &mut Item) -> Result<(), StageError> {
    stages.iter_mut().try_for_each(|stage| stage.process(item))
}
