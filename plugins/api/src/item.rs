//! The data that flows through a pipeline: a raw message, the request decoded from it, and the item that stages
//! fill in on its way to a prediction.

use crate::tensor::NamedTensor;

/// One zenoh sample as the decoder sees it, detached from zenoh's own types.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The key expression the sample was published on.
    pub key: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The sample's zenoh encoding as a string, e.g. `text/plain` or `application/json`.
    pub encoding: String,
    /// A request id taken from the sample's attachment, if it carried one as UTF-8 text.
    pub attachment_id: Option<String>,
}

/// The content of a request, as far as the stages are concerned. A decoder of one's own may hand on bytes or tensors
/// for stages of one's own to read; more kinds may come, so match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// A text.
    Text(String),
    /// Readings of a sensor stream.
    Samples(Samples),
    /// Bytes whose format a stage knows: an image, an audio chunk, a format of one's own.
    Bytes(Vec<u8>),
    /// Tensors the decoder made itself (a client that sends model-ready features); a stage moves what the model
    /// takes into [`Item::features`].
    Tensors(Vec<NamedTensor>),
}

/// Readings of one sensor stream, as a decoder found them in one message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    /// The stream they belong to, when the payload names one; otherwise the message's key is the stream.
    pub source: Option<String>,
    /// Channel names, when the payload names them.
    pub channels: Option<Vec<String>>,
    /// Values per sample (the channel count the payload claims).
    pub width: usize,
    /// One timestamp per sample in microseconds, when the payload carries them.
    pub timestamps_us: Option<Vec<i64>>,
    /// The readings, sample-major: `values[sample * width + channel]`.
    pub values: Vec<f32>,
}

impl Samples {
    /// Whole samples held.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One of the model inputs a stage split a message into (see [`Item::parts`]): a sensor stream's window, an image's
/// tile, a long text's chunk. The model runs on each, postprocessing runs on each as if it were a message of its
/// own, and the result carries one prediction per part.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Its position: among the message's parts, or for a stream, among the stream's (the `window` stage numbers a
    /// stream's windows 0, 1, 2… across messages).
    pub index: u64,
    /// Where it lies in the stream it was cut from, for a part cut from a stream.
    pub stream: Option<StreamPosition>,
    /// Model inputs, without the batch axis.
    pub features: Vec<NamedTensor>,
    /// Model outputs, filled by the inference engine.
    pub outputs: Vec<NamedTensor>,
    /// The head's prediction, filled by postprocessing.
    pub prediction: Option<Prediction>,
}

impl Part {
    /// Part `index` with these model inputs.
    pub fn new(index: u64, features: Vec<NamedTensor>) -> Self {
        Self { index, stream: None, features, outputs: Vec::new(), prediction: None }
    }
}

/// Where a part cut from a stream lies in it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPosition {
    /// The stream's name.
    pub source: String,
    /// The position of the part's first sample in the stream.
    pub start_sample: u64,
    /// The timestamps of its first and last samples (microseconds), when the stream has them.
    pub span_us: Option<(i64, i64)>,
}

/// What a decoder extracted from a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id the publisher gave the request, if it gave one in the payload.
    pub id: Option<String>,
    /// The content.
    pub input: Input,
    /// The publisher's own deadline for this request, in milliseconds (the pipeline's may be tighter).
    pub deadline_ms: Option<u64>,
    /// When the publisher sent it, in milliseconds since the Unix epoch; deadlines run from here when it is sane.
    pub sent_at_ms: Option<u64>,
}

impl Request {
    /// A request with no id and no timing of its own.
    pub fn new(input: Input) -> Self {
        Self { id: None, input, deadline_ms: None, sent_at_ms: None }
    }
}

/// One class and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    /// The class label.
    pub label: String,
    /// Its probability (or the model's raw score, per the head's configuration).
    pub score: f32,
}

/// What a head made of the model's outputs: the result a sender reads. Each kind has its own fields on the wire
/// (`proto/`, `Result`); more kinds may come, so match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prediction {
    /// One class among labelled ones (the `classify` head).
    Classification(Classification),
    /// Real values: a regression's targets, or scores without labels.
    Scores(Scores),
    /// A vector that represents the input (an embedding head's, e.g. mean pooled and L2-normalised).
    Embedding(Vec<f32>),
    /// How unusual the input is, and whether that crosses the model's threshold.
    Anomaly(Anomaly),
}

/// The result of a classification head.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The winning label; `None` when its score is below the head's threshold.
    pub label: Option<String>,
    /// The winning class's score.
    pub score: f32,
    /// All classes in label order.
    pub scores: Vec<ClassScore>,
    /// The best `top_k` classes, best first.
    pub top_k: Vec<ClassScore>,
}

/// Real values, each optionally named (a regression's targets: `["temperature", "humidity"]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    /// One name per value, or none at all.
    pub names: Vec<String>,
    /// The values.
    pub values: Vec<f32>,
}

/// An anomaly score and the verdict of comparing it with the model's threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    /// How unusual the input is (e.g. an autoencoder's reconstruction error); higher is more unusual.
    pub score: f32,
    /// The score above which an input counts as anomalous (chosen with the model, on validation data).
    pub threshold: f32,
    /// `score > threshold`.
    pub anomalous: bool,
}

impl Anomaly {
    /// The verdict on `score` against `threshold`.
    pub fn new(score: f32, threshold: f32) -> Self {
        Self { score, threshold, anomalous: score > threshold }
    }
}

/// A message on its way through the stages.
#[derive(Debug, Clone)]
pub struct Item {
    /// The request id (from the payload, the attachment, or generated).
    pub id: String,
    /// The key the message arrived on.
    pub key: String,
    /// The decoded content.
    pub input: Input,
    /// Model inputs, per item without the batch axis, written by preprocessing stages.
    pub features: Vec<NamedTensor>,
    /// Model outputs, per item without the batch axis, written by the inference engine.
    pub outputs: Vec<NamedTensor>,
    /// The final prediction, written by a postprocessing stage.
    pub prediction: Option<Prediction>,
    /// Set by a stage that splits the message into several model inputs (see [`Item::split`]): the model then runs
    /// once per part (possibly none) instead of once on [`Item::features`], and postprocessing runs per part.
    pub parts: Option<Vec<Part>>,
    /// Events a stage counted while processing this item (e.g. `samples_out_of_order`), summed per pipeline in
    /// telemetry.
    pub counters: Vec<(&'static str, u64)>,
    /// Set by a stage whose features may be padded so that the item can share a model run with items of other
    /// lengths (see [`Padding`]); `None`: it batches only with items of exactly its shapes.
    pub padding: Option<Padding>,
}

/// How an item's features may be lengthened along their first axis to share a model run.
///
/// A stage leaves its features at their own length and says how to pad them; the pipeline pads only when the item
/// actually joins a batch, to the longest member of that batch. A message that runs alone costs what its own length
/// costs: padding spends FLOPs, and pays only when it lets a batch form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padding {
    /// Items may share a run only with items of the same group, e.g. the tokenizer's length bucket: it bounds how
    /// much padding a batch can add (a 5-token text is not padded to 120 tokens to join a long one).
    pub group: usize,
    /// The pad value of each feature that is not padded with zeros (e.g. `input_ids` with the pad token's id).
    pub values: Vec<(String, i64)>,
}

impl Padding {
    /// The value `feature` is padded with.
    pub fn value(&self, feature: &str) -> i64 {
        self.values.iter().find(|(name, _)| name == feature).map_or(0, |&(_, value)| value)
    }
}

impl Item {
    /// A fresh item for a decoded input.
    pub fn new(id: String, key: String, input: Input) -> Self {
        Self {
            id,
            key,
            input,
            features: Vec::new(),
            outputs: Vec::new(),
            prediction: None,
            parts: None,
            counters: Vec::new(),
            padding: None,
        }
    }

    /// The model output with this name, if the engine produced one.
    pub fn output(&self, name: &str) -> Option<&NamedTensor> {
        self.outputs.iter().find(|tensor| tensor.name == name)
    }

    /// The output named `name`, or without a name the model's first output: what a head configured with an
    /// optional `output` reads.
    pub fn output_or_first(&self, name: Option<&str>) -> Option<&NamedTensor> {
        match name {
            Some(name) => self.output(name),
            None => self.outputs.first(),
        }
    }

    /// Adds `count` to the per-pipeline counter `name`.
    pub fn count(&mut self, name: &'static str, count: u64) {
        if count > 0 {
            self.counters.push((name, count));
        }
    }

    /// Marks the item as split into parts (even if it yields none), and returns them to add to.
    pub fn split(&mut self) -> &mut Vec<Part> {
        self.parts.get_or_insert_with(Vec::new)
    }

    /// The feature with this name, if a stage produced one.
    pub fn feature(&self, name: &str) -> Option<&NamedTensor> {
        self.features.iter().find(|tensor| tensor.name == name)
    }
}
