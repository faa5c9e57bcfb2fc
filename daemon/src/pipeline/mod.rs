//! A pipeline: the runtime object built from one `[[pipeline]]` table, and the thread that owns it.
//!
//! ```text
//! Envelope ─▶ decode ─▶ preprocess stages ─▶ model (ONNX Runtime) ─▶ postprocess stages ─▶ Outcome
//! ```
//!
//! [`build`] turns the validated config into a [`Pipeline`] through the stage registry (the daemon knows no stage
//! by name). [`worker`] runs one pipeline on a dedicated OS thread that owns the stages and a model session. Its one
//! bounded [`queue`] holds arrivals and, ordered earliest-deadline-first, the messages the worker prepared, under
//! one policy and one bound; with `instances` > 1, [`runner`] threads own the further
//! sessions and run the batches the worker hands them ([`Job`]). [`deadline`] decides when a message can no longer make it.
//! [`outcome`] is what every accepted message becomes: a result, an error, an expiry, or a drop notice.
//! [`golden`] runs the model's golden inputs where it serves: at build time (start-up, reload) and, if asked,
//! from the worker between messages. A pipeline may hold several models for its task, a [`ladder`] of [`Rung`]s
//! that the worker steps between under pressure; each rung has its own stages (its tokenizer), and a message runs
//! on the rung that prepared it.

pub mod build;
pub mod deadline;
pub mod golden;
pub mod ladder;
pub mod outcome;
pub mod queue;
pub mod runner;
pub mod worker;

#[cfg(test)]
mod accounting_tests;
#[cfg(test)]
mod batching_tests;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use zinfer_ort::Model;

use crate::io::egress::Reply;
use zinfer_stage_api::{Decoder, Item, NamedTensor, RawMessage, Reason, Stage, StageError};

use deadline::Deadline;
use outcome::{Outcome, Timings, Verdict};

/// A message waiting for its pipeline.
#[derive(Debug)]
pub struct Envelope {
    /// The sample as the decoder sees it.
    pub message: RawMessage,
    /// When the sample reached the daemon; deadlines and queue time run from here.
    pub arrived: Instant,
    /// The same moment on the wall clock, to compare with a publisher's timestamp.
    pub arrived_wall: SystemTime,
    /// The id to use if the payload carries none: the attachment's, else a generated one.
    pub fallback_id: String,
    /// The query the message came as, which its outcome answers; `None` for a published sample.
    pub reply: Option<Reply>,
    /// A deadline the transport states rather than the payload (a query's): it counts like the request's own.
    pub deadline_ms: Option<u64>,
}

impl Envelope {
    /// A published message arriving now.
    pub fn new(message: RawMessage, fallback_id: String) -> Self {
        let (arrived, arrived_wall) = (Instant::now(), SystemTime::now());
        Self { message, arrived, arrived_wall, fallback_id, reply: None, deadline_ms: None }
    }

    /// The id an outcome for this message carries when it was not decoded (shed, or undecodable): the payload's own
    /// id if `decoder` can peek at it, else the attachment's or the generated one. The sender can always match it.
    pub fn sender_id(&self, decoder: &dyn Decoder) -> String {
        decoder.peek_id(&self.message).unwrap_or_else(|| self.fallback_id.clone())
    }
}

/// The name and version of a pipeline's model, as published in results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Model name from the manifest.
    pub name: String,
    /// Model version from the manifest.
    pub version: String,
}

/// A built pipeline: decoder, stages and the model (or the models of its ladder), ready to process envelopes on one
/// thread.
pub struct Pipeline {
    /// Its position in the config, which its outcomes carry.
    index: usize,
    decoder: Arc<dyn Decoder>,
    /// The pipeline's `model` first, then its ladder's smaller models: never empty.
    rungs: Vec<Rung>,
    /// When to step between the rungs; `None` without a ladder.
    ladder: Option<ladder::Ladder>,
    /// Further sessions of the first rung's model (`instances` − 1), run on threads of their own by the worker.
    instances: Vec<Model>,
    deadline_ms: Option<u64>,
    /// The most rows one model run takes by default: `max_batch`, the shape the warm-up ran and the memory probe
    /// measured.
    max_rows: usize,
    /// The first rung's golden inputs, and what they measured at start-up.
    drift: Option<(golden::DriftGuard, golden::GoldenRun)>,
}

/// One model of a pipeline with the stages built for it (its manifest's tokenizer, labels…).
pub struct Rung {
    /// The model's name and version, as results name it.
    pub identity: ModelIdentity,
    preprocess: Vec<Box<dyn Stage>>,
    model: Model,
    postprocess: Vec<Box<dyn Stage>>,
    memory: crate::memory::ModelMemory,
    /// Runs timed at start-up: (elements of an item's largest input, batch size, duration).
    calibration: Vec<(usize, usize, std::time::Duration)>,
    /// Whether the first rung's preprocessing stages prepare this rung's messages.
    shares_preprocessing: bool,
}

impl Rung {
    /// Checks that this rung's preprocessing stages produce what `other`'s model takes, and that its model has the
    /// outputs `other`'s postprocessing reads: for a rung that will share this one's stages.
    pub fn check_feeds(&self, other: &Rung) -> Result<(), zinfer_ort::OrtError> {
        let produced: Vec<_> = self.preprocess.iter().flat_map(|stage| stage.produces()).collect();
        let consumed: Vec<_> = other.postprocess.iter().flat_map(|stage| stage.consumes()).collect();
        other.model.check(&produced, &consumed)
    }

    /// Whether a preprocessing stage carries state from message to message ([`Stage::keeps_state`]).
    pub fn keeps_state(&self) -> bool {
        self.preprocess.iter().any(|stage| stage.keeps_state())
    }

    /// Lets the first rung's preprocessing stages prepare this rung's messages, dropping its own: for stages that
    /// keep state (a sensor stream's window in progress), which must go on across a step between rungs (the
    /// manifests' sensor layouts are equal, so the windows fit every rung's model).
    pub fn share_preprocessing(&mut self) {
        self.preprocess.clear();
        self.shares_preprocessing = true;
    }
}

/// A decoded, preprocessed message waiting for the model.
#[derive(Debug)]
pub struct Prepared {
    /// The item, features filled in.
    pub item: Item,
    /// Timings so far (decode, preprocess).
    pub timings: Timings,
    /// Arrival time.
    pub arrived: Instant,
    /// The deadline, if any.
    pub deadline: Option<Deadline>,
    /// The query its outcome answers, carried by the worker (see [`Envelope::reply`]).
    pub reply: Option<Reply>,
    /// The rung whose stages prepared it, and whose model runs it.
    pub rung: usize,
}

impl Prepared {
    /// What the model's cost grows with: the largest input's element count (tokens, for text), times the number of
    /// model inputs the message brings (its windows, for a sensor stream).
    pub fn length(&self) -> usize {
        let largest = |features: &[NamedTensor]| {
            features.iter().map(|feature| feature.tensor.shape.iter().product::<usize>()).max().unwrap_or(0)
        };
        model_inputs(&self.item).map(largest).sum()
    }
}

/// A batch on its way through a model instance: the messages, padded to one shape, and after [`Job::run`] one
/// result per model input. It moves to another thread and back whole, so that every message in it is answered
/// whatever happens to the run.
#[derive(Debug)]
pub struct Job {
    batch: Vec<Prepared>,
    /// The rung every message of the batch was prepared by.
    rung: usize,
    /// The most model inputs per run (`max_batch`, the shape the warm-up ran).
    rows: usize,
    outputs: Vec<Result<Vec<NamedTensor>, StageError>>,
    started: Instant,
    inferred: Instant,
}

impl Job {
    /// A batch of messages whose model inputs have equal shapes (once padded, which this does); a message split
    /// into parts contributes one model input per part, and runs take at most `rows` inputs each.
    pub fn new(mut batch: Vec<Prepared>, rows: usize) -> Self {
        pad_to_common_length(&mut batch);
        let now = Instant::now();
        let rung = batch.first().map_or(0, |prepared| prepared.rung);
        Self { batch, rung, rows: rows.max(1), outputs: Vec::new(), started: now, inferred: now }
    }

    /// The rung whose model must run it.
    pub fn rung(&self) -> usize {
        self.rung
    }

    /// Runs `model` on every model input, `rows` at a time, calling `between_runs` after each run (the pipeline's
    /// heartbeat: each run is progress). A run that fails is run again one input at a time, so that one bad input
    /// (a token id the model cannot embed, say) costs its own message only, not its batch; a run that timed out is
    /// not, since each retry could take as long again.
    pub fn run(&mut self, model: &mut Model, between_runs: &mut dyn FnMut()) {
        self.started = Instant::now();
        let inputs: Vec<&[NamedTensor]> = self.batch.iter().flat_map(|prepared| model_inputs(&prepared.item)).collect();
        let mut outputs = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.rows) {
            let run = run_rows(model, chunk);
            between_runs();
            match run {
                Ok(run) => outputs.extend(run.into_iter().map(Ok)),
                Err(error) if chunk.len() > 1 && error.reason == Reason::InferenceFailed => {
                    for row in chunk {
                        let alone = run_rows(model, std::slice::from_ref(row));
                        between_runs();
                        outputs.push(alone.and_then(|outputs| {
                            outputs.into_iter().next().ok_or_else(|| {
                                StageError::new(Reason::BadModelOutput, "the model returned no output for the input")
                            })
                        }));
                    }
                }
                Err(error) => outputs.extend(chunk.iter().map(|_| Err(error.clone()))),
            }
        }
        self.outputs = outputs;
        self.inferred = Instant::now();
    }

    /// The messages, whatever became of the run (a panicking run's messages are answered without it).
    pub fn into_batch(self) -> Vec<Prepared> {
        self.batch
    }

    /// The messages.
    pub fn batch(&self) -> &[Prepared] {
        &self.batch
    }

    /// The messages, to take what postprocessing does not need.
    pub fn batch_mut(&mut self) -> &mut [Prepared] {
        &mut self.batch
    }

    /// What the model's cost grew with in this run: the longest member's length, and the number of messages.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch.iter().map(Prepared::length).max().unwrap_or(0), self.batch.len())
    }
}

/// What the model runs on for an item: its features once, or each of its parts.
fn model_inputs(item: &Item) -> impl Iterator<Item = &[NamedTensor]> {
    let parts = item.parts.iter().flatten().map(|part| part.features.as_slice());
    parts.chain(item.parts.is_none().then_some(item.features.as_slice()))
}

impl Pipeline {
    /// Its position among the config's pipelines, which its outcomes carry.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The execution providers and thread count in force for the (first rung's) model.
    pub fn model(&self) -> &Model {
        &self.rungs[0].model
    }

    /// What the models cost in RSS at start-up (load, and warm-up at the largest shape), every rung together.
    pub fn memory(&self) -> crate::memory::ModelMemory {
        self.rungs.iter().fold(crate::memory::ModelMemory::default(), |mut sum, rung| {
            sum.load_bytes += rung.memory.load_bytes;
            sum.working_bytes += rung.memory.working_bytes;
            sum
        })
    }

    /// The models, largest first: the pipeline's `model`, then its ladder's rungs.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// The rung that prepares new messages now.
    pub fn active_rung(&self) -> usize {
        self.ladder.as_ref().map_or(0, ladder::Ladder::active)
    }

    /// The rung whose preprocessing stages prepare messages for `rung`: its own, or the first rung's when it shares
    /// them (see [`Rung::share_preprocessing`]).
    fn preprocessing_rung(&self, rung: usize) -> usize {
        if self.rungs[rung].shares_preprocessing { 0 } else { rung }
    }

    /// The ladder's policy, if the pipeline has one: the worker feeds it pressure and misses.
    pub fn ladder_mut(&mut self) -> Option<&mut ladder::Ladder> {
        self.ladder.as_mut()
    }

    /// Runs timed at start-up on `rung`, to seed the worker's cost model: (elements of an item's largest input,
    /// batch size, duration).
    pub fn calibration(&self, rung: usize) -> &[(usize, usize, std::time::Duration)] {
        self.rungs.get(rung).map_or(&[], |rung| rung.calibration.as_slice())
    }

    /// The decoder, shared with the ingress, which peeks at the ids of messages it sheds.
    pub fn decoder(&self) -> Arc<dyn Decoder> {
        Arc::clone(&self.decoder)
    }

    /// The (first rung's) model, for direct measurements.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.rungs[0].model
    }

    /// The model of `rung` (the first if there is no such rung).
    pub fn rung_model_mut(&mut self, rung: usize) -> &mut Model {
        let index = if rung < self.rungs.len() { rung } else { 0 };
        &mut self.rungs[index].model
    }

    /// What the golden inputs measured at start-up, with the manifest's tolerance; `None` if the model has none
    /// (or `drift_guard` is off).
    pub fn golden(&self) -> Option<(&golden::GoldenRun, &zinfer_stage_api::GoldenSpec)> {
        self.drift.as_ref().map(|(guard, run)| (run, guard.spec()))
    }

    /// Runs the golden inputs again if a periodic check is due (see [`golden::DriftGuard::due`]), on the worker's
    /// own model: the report, or why the inputs could not run.
    pub fn drift_check_if_due(&mut self, idle: bool) -> Option<golden::GoldenRun> {
        let (guard, _) = self.drift.as_mut().filter(|(guard, _)| guard.due(idle))?;
        Some(guard.check(&mut self.rungs[0].model))
    }

    /// Runs only the preprocessing stages on an item (benchmarks measure the model on their output).
    pub fn preprocess_only(&mut self, item: &mut Item) -> Result<(), StageError> {
        run_stages(&mut self.rungs[0].preprocess, item)
    }

    /// Runs one envelope through every phase. Never panics on bad input: failures become [`Verdict::Failed`].
    pub fn process(&mut self, envelope: Envelope) -> Outcome {
        match self.prepare(envelope) {
            Ok(prepared) => self.run(prepared),
            Err(outcome) => *outcome,
        }
    }

    /// Decodes and preprocesses; a failure (a panic of a stage or the decoder included) is already the message's
    /// final outcome.
    pub fn prepare(&mut self, envelope: Envelope) -> Result<Prepared, Box<Outcome>> {
        let rung = self.active_rung();
        let mut timings = Timings::default();
        let started = Instant::now();
        let request = catch_unwind(AssertUnwindSafe(|| self.decoder.decode(&envelope.message)));
        let decoded = Instant::now();
        timings.decode = decoded - started;
        let request = match request {
            Ok(Ok(request)) => request,
            failed => {
                let verdict = match failed {
                    Ok(Err(error)) => Verdict::Failed(error),
                    _ => panicked(),
                };
                let id = self.sender_id(&envelope);
                let mut outcome = Outcome::undecoded(self.index, envelope, id, verdict, rung);
                outcome.timings = timings;
                return Err(Box::new(outcome));
            }
        };
        let requested = match (request.deadline_ms, envelope.deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = deadline::deadline_for(
            envelope.arrived,
            envelope.arrived_wall,
            self.deadline_ms,
            requested,
            request.sent_at_ms,
        );
        let id = request.id.unwrap_or(envelope.fallback_id);
        let mut item = Item::new(id, envelope.message.key, request.input);
        let postprocessing = self.rungs[rung].postprocess.len();
        let source = self.preprocessing_rung(rung);
        let preprocess = &mut self.rungs[source].preprocess;
        let first = preprocess.len();
        let mut stages = vec![std::time::Duration::ZERO; first + postprocessing];
        let result = catch_unwind(AssertUnwindSafe(|| run_stages_timed(preprocess, &mut item, &mut stages[..first])));
        timings.preprocess = decoded.elapsed();
        timings.stages = stages;
        let verdict = match result {
            Ok(Ok(())) => {
                return Ok(Prepared {
                    item,
                    timings,
                    arrived: envelope.arrived,
                    deadline,
                    reply: envelope.reply,
                    rung,
                });
            }
            Ok(Err(error)) => Verdict::Failed(error),
            Err(_) => panicked(),
        };
        let (pipeline, arrived, reply) = (self.index, envelope.arrived, envelope.reply);
        let Item { id, key, .. } = item;
        Err(Box::new(Outcome { pipeline, id, key, verdict, timings, arrived, deadline, reply, rung }))
    }

    /// The id an outcome carries for `envelope` when it is not decoded: see [`Envelope::sender_id`].
    pub fn sender_id(&self, envelope: &Envelope) -> String {
        envelope.sender_id(self.decoder.as_ref())
    }

    /// Runs the model and the postprocessing stages on a prepared message.
    pub fn run(&mut self, prepared: Prepared) -> Outcome {
        let rows = self.max_rows;
        let mut processed = self.run_batch(vec![prepared], rows, &mut || {});
        processed.pop().expect("run_batch answers every item: this is a bug")
    }

    /// Runs the model on a batch of prepared messages whose model inputs have equal shapes, then postprocesses
    /// each: [`Job::run`] on this pipeline's own model, then [`Pipeline::conclude`]. Every message gets its own
    /// [`Outcome`], in order.
    pub fn run_batch(&mut self, batch: Vec<Prepared>, max_rows: usize, between_runs: &mut dyn FnMut()) -> Vec<Outcome> {
        let mut job = Job::new(batch, max_rows);
        job.run(self.rung_model_mut(job.rung()), between_runs);
        self.conclude(job)
    }

    /// Postprocesses a batch whose model run ([`Job::run`]) is done, here or on another instance.
    pub fn conclude(&mut self, job: Job) -> Vec<Outcome> {
        let Job { batch, rung, rows, outputs, started, inferred } = job;
        let size: usize = batch.iter().map(|prepared| model_inputs(&prepared.item).count()).sum();
        let mut outputs = outputs.into_iter();
        batch
            .into_iter()
            .map(|prepared| {
                let Prepared { mut item, mut timings, arrived, deadline, reply, .. } = prepared;
                timings.queue =
                    started.saturating_duration_since(arrived).saturating_sub(timings.decode + timings.preprocess);
                timings.inference =
                    if size == 0 { Default::default() } else { inferred.saturating_duration_since(started) };
                timings.batch_size = size.min(rows) as u32;
                let wanted = item.parts.as_ref().map_or(1, Vec::len);
                // Taken whole before looking for an error, so the next item starts at its own outputs.
                let mine: Vec<_> = outputs.by_ref().take(wanted).collect();
                let verdict = match mine.into_iter().collect::<Result<Vec<_>, _>>() {
                    Ok(mine) => {
                        let postprocessing = Instant::now();
                        // Postprocessing stages' slots follow the preprocessing stages'.
                        let rung = rung.min(self.rungs.len() - 1);
                        let first = self.rungs[self.preprocessing_rung(rung)].preprocess.len();
                        let stages = &mut self.rungs[rung];
                        timings.stages.resize(first + stages.postprocess.len(), std::time::Duration::ZERO);
                        let times = &mut timings.stages[first..];
                        let verdict = if mine.len() != wanted {
                            Verdict::Failed(StageError::new(Reason::BadModelOutput, "no output for the item"))
                        } else if item.parts.is_some() {
                            postprocess_parts(&mut stages.postprocess, &mut item, mine, times)
                        } else {
                            item.outputs = mine.into_iter().next().unwrap_or_default();
                            postprocess(&mut stages.postprocess, &mut item, times)
                        };
                        timings.postprocess = postprocessing.elapsed();
                        verdict
                    }
                    Err(error) => Verdict::Failed(error),
                };
                let Item { id, key, .. } = item;
                Outcome { pipeline: self.index, id, key, verdict, timings, arrived, deadline, reply, rung }
            })
            .collect()
    }

    /// The types of the preprocessing then postprocessing stages, in order: the names of [`Timings::stages`] (every
    /// rung is built from the same stage tables).
    pub fn stage_names(&self) -> Vec<String> {
        let rung = &self.rungs[0];
        rung.preprocess.iter().chain(&rung.postprocess).map(|stage| stage.name().to_owned()).collect()
    }

    /// Sessions of the model: the worker's own and the further instances (until the worker takes those).
    pub fn instances(&self) -> usize {
        1 + self.instances.len()
    }

    /// The model instances beyond the first, for [`worker`] to run on their own threads.
    pub fn take_instances(&mut self) -> Vec<Model> {
        std::mem::take(&mut self.instances)
    }

    /// The rung that prepared a message, then the shape of each model input: messages with equal signatures can
    /// share a model run (a split message's parts all have one shape; one split into none matches only others
    /// without). A message that may be padded counts with its padding group as its first dimension, so
    /// that messages of one group match.
    pub fn signature(prepared: &Prepared) -> Vec<Vec<usize>> {
        let item = &prepared.item;
        let padding = item.padding.as_ref().filter(|_| item.parts.is_none());
        let features = model_inputs(item).next().unwrap_or_default();
        let shapes = features.iter().map(|feature| {
            let mut shape = feature.tensor.shape.clone();
            if let (Some(padding), Some(first)) = (padding, shape.first_mut()) {
                *first = padding.group;
            }
            shape
        });
        std::iter::once(vec![prepared.rung]).chain(shapes).collect()
    }
}

/// Runs the postprocessing stages on an item whose outputs are in place, adding their times to `times`.
fn postprocess(stages: &mut [Box<dyn Stage>], item: &mut Item, times: &mut [std::time::Duration]) -> Verdict {
    let result = run_stages_timed(stages, item, times);
    match (result, item.prediction.take()) {
        (Err(error), _) => Verdict::Failed(error),
        (Ok(()), Some(prediction)) => Verdict::Predicted(prediction),
        (Ok(()), None) => Verdict::Failed(StageError::new(
            Reason::MissingInput,
            "no postprocessing stage produced a prediction; end the pipeline with a head (`classify`, or one of your own)",
        )),
    }
}

/// Postprocesses each part of a split item as if it were an item of its own.
fn postprocess_parts(
    stages: &mut [Box<dyn Stage>],
    item: &mut Item,
    outputs: Vec<Vec<NamedTensor>>,
    times: &mut [std::time::Duration],
) -> Verdict {
    let mut parts = item.parts.take().unwrap_or_default();
    for (part, part_outputs) in parts.iter_mut().zip(outputs) {
        item.outputs = part_outputs;
        match postprocess(stages, item, times) {
            Verdict::Predicted(prediction) => part.prediction = Some(prediction),
            failed => return failed,
        }
    }
    Verdict::Parts(parts)
}

/// Pads the features of a batch's paddable messages to the longest of them, so that they stack into one run. A
/// message alone is left at its own length.
fn pad_to_common_length(batch: &mut [Prepared]) {
    if batch.len() < 2 {
        return;
    }
    let paddable = |prepared: &&mut Prepared| prepared.item.padding.is_some() && prepared.item.parts.is_none();
    let mut longest = std::collections::HashMap::<String, usize>::new();
    for prepared in batch.iter_mut().filter(paddable) {
        for feature in &prepared.item.features {
            let rows = feature.tensor.shape.first().copied().unwrap_or(0);
            let entry = longest.entry(feature.name.clone()).or_default();
            *entry = (*entry).max(rows);
        }
    }
    for prepared in batch.iter_mut().filter(paddable) {
        let Item { features, padding: Some(padding), .. } = &mut prepared.item else { continue };
        for feature in features {
            if let Some(&length) = longest.get(&feature.name) {
                feature.tensor.pad_first_axis(length, padding.value(&feature.name));
            }
        }
    }
}

/// A panicking stage or decoder (a user's plugin, say) costs one message, not the whole pipeline.
fn panicked() -> Verdict {
    Verdict::Failed(StageError::new(Reason::StagePanicked, "a stage panicked"))
}

fn run_stages(stages: &mut [Box<dyn Stage>], item: &mut Item) -> Result<(), StageError> {
    stages.iter_mut().try_for_each(|stage| stage.process(item))
}

/// [`run_stages`], adding each stage's time to its slot of `times`.
fn run_stages_timed(
    stages: &mut [Box<dyn Stage>],
    item: &mut Item,
    times: &mut [std::time::Duration],
) -> Result<(), StageError> {
    for (stage, time) in stages.iter_mut().zip(times.iter_mut()) {
        let started = Instant::now();
        let result = stage.process(item);
        *time += started.elapsed();
        result?;
    }
    Ok(())
}

/// One model run on `rows`, its errors as the outcome reasons they become.
fn run_rows(model: &mut Model, rows: &[&[NamedTensor]]) -> Result<Vec<Vec<NamedTensor>>, StageError> {
    match model.run(rows) {
        Ok(outputs) if outputs.len() == rows.len() => Ok(outputs),
        Ok(_) => Err(StageError::new(Reason::BadModelOutput, "the model returned outputs for another batch size")),
        Err(error @ zinfer_ort::OrtError::Timeout(_)) => {
            Err(StageError::new(Reason::InferenceTimeout, error.to_string()))
        }
        Err(error) => Err(StageError::new(Reason::InferenceFailed, error.to_string())),
    }
}
