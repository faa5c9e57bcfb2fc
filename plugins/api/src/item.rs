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

/// The content of a request, as far as the stages are concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A text to classify.
    Text(String),
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

/// The result of a classification head.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The winning label; `None` when its score is below the head's threshold.
    pub label: Option<String>,
    /// The winning class's score.
    pub score: f32,
    /// All classes in label order.
    pub scores: Vec<ClassScore>,
    /// The best `top_k` classes, best first.
    pub top_k: Vec<ClassScore>,
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
}

impl Item {
    /// A fresh item for a decoded input.
    pub fn new(id: String, key: String, input: Input) -> Self {
        Self { id, key, input, features: Vec::new(), outputs: Vec::new(), prediction: None }
    }

    /// The model output with this name, if the engine produced one.
    pub fn output(&self, name: &str) -> Option<&NamedTensor> {
        self.outputs.iter().find(|tensor| tensor.name == name)
    }

    /// The feature with this name, if a stage produced one.
    pub fn feature(&self, name: &str) -> Option<&NamedTensor> {
        self.features.iter().find(|tensor| tensor.name == name)
    }
}
