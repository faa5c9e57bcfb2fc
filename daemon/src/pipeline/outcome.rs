//! Outcomes: for every message the daemon accepted, exactly one of these is published.

use std::time::{Duration, Instant};

use zinfer_proto as proto;
use zinfer_stage_api::{Prediction, StageError, Window};

use super::ModelIdentity;
use super::deadline::Deadline;

/// Time spent per phase, and per stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting: from arrival to the model run, less decoding and preprocessing.
    pub queue: Duration,
    /// Decoding.
    pub decode: Duration,
    /// Preprocessing stages.
    pub preprocess: Duration,
    /// The model run.
    pub inference: Duration,
    /// Postprocessing stages.
    pub postprocess: Duration,
    /// How many model inputs the run held (messages, or a sensor pipeline's windows; the largest run when windows
    /// beyond `max_batch` needed more); 0: it did not run.
    pub batch_size: u32,
    /// Per stage, in the pipeline's order (preprocessing, then postprocessing): see [`super::Pipeline::stage_names`].
    /// Empty for a message never decoded; a stage that did not run (after one that failed, or a sensor
    /// frame's postprocessing when it completed no window) counts zero.
    pub stages: Vec<Duration>,
}

/// How a message ended.
#[derive(Debug)]
pub enum Verdict {
    /// Classified.
    Classified(Prediction),
    /// A sensor frame taken into its stream; the windows it completed (possibly none), each classified.
    Windowed(Vec<Window>),
    /// Bad input or a failed stage.
    Failed(StageError),
    /// Accepted but not processed; the reason is one of [`proto::drop_reason`].
    Dropped(&'static str),
    /// Not run because its deadline could no longer be met; the reason is one of [`proto::expire_reason`].
    Expired(&'static str),
}

impl Verdict {
    /// The outcome string published for this verdict.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Classified(_) | Self::Windowed(_) => proto::outcome::OK,
            Self::Failed(_) => proto::outcome::ERROR,
            Self::Dropped(_) => proto::outcome::DROPPED,
            Self::Expired(_) => proto::outcome::EXPIRED,
        }
    }

    /// The reason label (empty for success).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Classified(_) | Self::Windowed(_) => "",
            Self::Failed(error) => error.reason.as_str(),
            Self::Dropped(reason) | Self::Expired(reason) => reason,
        }
    }
}

/// One message's outcome, on its way to the egress.
#[derive(Debug)]
pub struct Outcome {
    /// Index of the pipeline in the config.
    pub pipeline: usize,
    /// The request id.
    pub id: String,
    /// The key the message arrived on.
    pub key: String,
    /// How it ended.
    pub verdict: Verdict,
    /// Time per stage.
    pub timings: Timings,
    /// When it arrived.
    pub arrived: Instant,
    /// Its deadline, if it had one.
    pub deadline: Option<Deadline>,
    /// The query it answers, when the message came as one: the egress replies instead of publishing.
    pub reply: Option<crate::io::egress::Reply>,
    /// The rung of the pipeline's model ladder that produced it, or was serving when it was shed (0: the pipeline's
    /// `model`; also for a message the ingress answered before the worker saw it).
    pub rung: usize,
}

impl Outcome {
    /// The wire form, with the total time and the deadline slack measured up to now.
    pub fn to_result(&self, pipeline: &str, model: Option<&ModelIdentity>, stage_names: &[String]) -> proto::Result {
        let now = Instant::now();
        let scores = |list: &[zinfer_stage_api::ClassScore]| {
            list.iter().map(|class| proto::ClassScore { label: class.label.clone(), score: class.score }).collect()
        };
        let mut result = proto::Result {
            id: self.id.clone(),
            key: self.key.clone(),
            pipeline: pipeline.to_owned(),
            outcome: self.verdict.outcome().to_owned(),
            reason: self.verdict.reason().to_owned(),
            model: model.map(|model| proto::ModelRef { name: model.name.clone(), version: model.version.clone() }),
            timings: Some(proto::StageTimings {
                queue_us: micros(self.timings.queue),
                decode_us: micros(self.timings.decode),
                preprocess_us: micros(self.timings.preprocess),
                inference_us: micros(self.timings.inference),
                postprocess_us: micros(self.timings.postprocess),
                total_us: micros(now.saturating_duration_since(self.arrived)),
                batch_size: self.timings.batch_size,
            }),
            stages: stage_names
                .iter()
                .zip(&self.timings.stages)
                .map(|(name, took)| proto::StageTime { name: name.clone(), us: micros(*took) })
                .collect(),
            ..Default::default()
        };
        if let Some(deadline) = self.deadline {
            let early = micros(deadline.at.saturating_duration_since(now)) as i64;
            let late = micros(now.saturating_duration_since(deadline.at)) as i64;
            result.deadline_met = Some(late == 0);
            result.deadline_slack_us = early - late;
        }
        match &self.verdict {
            Verdict::Classified(prediction) => {
                result.label = prediction.label.clone();
                result.score = prediction.score;
                result.scores = scores(&prediction.scores);
                result.top_k = scores(&prediction.top_k);
            }
            Verdict::Windowed(windows) => {
                for window in windows {
                    let Some(prediction) = &window.prediction else { continue };
                    let (start_us, end_us) = window.span_us.unwrap_or_default();
                    result.windows.push(proto::WindowResult {
                        source: window.source.clone(),
                        index: window.index,
                        start_sample: window.start_sample,
                        start_us,
                        end_us,
                        label: prediction.label.clone(),
                        score: prediction.score,
                        scores: scores(&prediction.scores),
                    });
                    result.label = prediction.label.clone();
                    result.score = prediction.score;
                    result.scores = scores(&prediction.scores);
                    result.top_k = scores(&prediction.top_k);
                }
            }
            Verdict::Failed(error) => result.message = error.detail.clone(),
            Verdict::Dropped(reason) | Verdict::Expired(reason) => result.message = reason_message(reason).to_owned(),
        }
        result
    }
}

fn reason_message(reason: &str) -> &'static str {
    match reason {
        proto::drop_reason::QUEUE_FULL => "the pipeline's queue was full; slow down or raise queue_capacity",
        proto::drop_reason::SHUTDOWN => "zinferd shut down before processing the message",
        proto::drop_reason::MEMORY => {
            "zinferd was above its memory budget; it sheds new messages until it is back under"
        }
        proto::drop_reason::SUPERSEDED => "a newer message replaced it before it ran (overload policy latest)",
        proto::expire_reason::PASSED => "the deadline passed while the message waited; it was not run",
        proto::expire_reason::UNREACHABLE => {
            "the model's measured cost would overrun the deadline; the message was not run"
        }
        _ => "not processed",
    }
}

/// Microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
