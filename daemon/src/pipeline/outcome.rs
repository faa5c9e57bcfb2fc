//! Outcomes: for every message the daemon accepted, exactly one of these is published.

use std::time::{Duration, Instant};

use zinfer_proto as proto;
use zinfer_stage_api::{Part, Prediction, StageError};

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
    /// What the head made of the model's outputs.
    Predicted(Prediction),
    /// A message a stage split into parts (a sensor frame: the windows it completed, possibly none), each with its
    /// prediction.
    Parts(Vec<Part>),
    /// Bad input or a failed stage.
    Failed(StageError),
    /// Accepted but not processed.
    Dropped(DropReason),
    /// Not run because its deadline could no longer be met.
    Expired(ExpireReason),
}

/// Why a message was answered `dropped` without being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The pipeline's queue was full when it arrived.
    QueueFull,
    /// zinferd shut down (or the pipeline closed) before processing it.
    Shutdown,
    /// A newer message of its key replaced it (overload policy `latest`).
    Superseded,
    /// The process was above its memory budget when it arrived.
    Memory,
    /// A query that the pipeline refused at the door: it already owed `max_in_flight` outcomes (a published
    /// message refused there gets no outcome at all; a querier is told).
    InFlightLimit,
    /// Another daemon sharing the pipeline took it and ended (died, hung, or lost its network) before answering;
    /// a survivor answers for it (see `io::share::watch`).
    MemberLost,
}

impl DropReason {
    /// The stable wire name ([`proto::drop_reason`], [`proto::refuse_reason`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => proto::drop_reason::QUEUE_FULL,
            Self::Shutdown => proto::drop_reason::SHUTDOWN,
            Self::Superseded => proto::drop_reason::SUPERSEDED,
            Self::Memory => proto::drop_reason::MEMORY,
            Self::InFlightLimit => proto::refuse_reason::IN_FLIGHT_LIMIT,
            Self::MemberLost => proto::drop_reason::MEMBER_LOST,
        }
    }

    /// What the sender reads in the result's `message`: what happened and what to do.
    pub fn message(self) -> &'static str {
        match self {
            Self::QueueFull => "the pipeline's queue was full; slow down or raise queue_capacity",
            Self::Shutdown => {
                "zinferd shut down before processing the message; ask another daemon or retry after it restarts"
            }
            Self::Superseded => "a newer message replaced it before it ran (overload policy latest)",
            Self::Memory => "zinferd was above its memory budget; it sheds new messages until it is back under",
            Self::InFlightLimit => {
                "the pipeline already owes max_in_flight outcomes (its results leave slower than messages arrive); \
                 retry later"
            }
            Self::MemberLost => {
                "the daemon sharing the pipeline that took the message ended before answering it; send it again \
                 (the daemons left take it now)"
            }
        }
    }
}

/// Why a message was answered `expired` without being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireReason {
    /// Its deadline had already passed when it reached the model.
    Passed,
    /// Its deadline was still ahead, but the model's measured cost would overrun it.
    Unreachable,
}

impl ExpireReason {
    /// The stable wire name ([`proto::expire_reason`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => proto::expire_reason::PASSED,
            Self::Unreachable => proto::expire_reason::UNREACHABLE,
        }
    }

    /// What the sender reads in the result's `message`.
    pub fn message(self) -> &'static str {
        match self {
            Self::Passed => "the deadline passed while the message waited; it was not run",
            Self::Unreachable => "the model's measured cost would overrun the deadline; the message was not run",
        }
    }
}

impl Verdict {
    /// The outcome string published for this verdict.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Predicted(_) | Self::Parts(_) => proto::outcome::OK,
            Self::Failed(_) => proto::outcome::ERROR,
            Self::Dropped(_) => proto::outcome::DROPPED,
            Self::Expired(_) => proto::outcome::EXPIRED,
        }
    }

    /// The reason label (empty for success).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Predicted(_) | Self::Parts(_) => "",
            Self::Failed(error) => error.reason.as_str(),
            Self::Dropped(reason) => reason.as_str(),
            Self::Expired(reason) => reason.as_str(),
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
    /// The outcome of a message answered before it was decoded (shed, undecodable, or its worker failed): it carries
    /// `id`, the sender's id as far as it can be found (see [`super::Envelope::sender_id`]).
    pub fn undecoded(pipeline: usize, envelope: super::Envelope, id: String, verdict: Verdict, rung: usize) -> Self {
        Self {
            pipeline,
            id,
            key: envelope.message.key,
            verdict,
            timings: Timings::default(),
            arrived: envelope.arrived,
            deadline: None,
            reply: envelope.reply,
            rung,
        }
    }

    /// The outcome of a message this daemon never held: another member sharing the pipeline took it (it arrived
    /// here at `arrived`) and ended before answering it.
    pub fn member_lost(pipeline: usize, id: String, key: String, arrived: Instant) -> Self {
        Self {
            pipeline,
            id,
            key,
            verdict: Verdict::Dropped(DropReason::MemberLost),
            timings: Timings::default(),
            arrived,
            deadline: None,
            reply: None,
            rung: 0,
        }
    }

    /// The outcome of a prepared message that did not reach the model, or whose run was lost.
    pub fn prepared(pipeline: usize, prepared: super::Prepared, verdict: Verdict) -> Self {
        let super::Prepared { item, timings, arrived, deadline, reply, rung } = prepared;
        Self { pipeline, id: item.id, key: item.key, verdict, timings, arrived, deadline, reply, rung }
    }

    /// The wire form, with the total time and the deadline slack measured up to now.
    pub fn to_result(&self, pipeline: &str, model: Option<&ModelIdentity>, stage_names: &[String]) -> proto::Result {
        let now = Instant::now();
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
            Verdict::Predicted(prediction) => WireFields::of(prediction).fill(&mut result),
            Verdict::Parts(parts) => {
                for part in parts {
                    let Some(prediction) = &part.prediction else { continue };
                    let fields = WireFields::of(prediction);
                    let stream = part.stream.as_ref();
                    let (start_us, end_us) = stream.and_then(|stream| stream.span_us).unwrap_or_default();
                    result.windows.push(proto::WindowResult {
                        source: stream.map(|stream| stream.source.clone()).unwrap_or_default(),
                        index: part.index,
                        start_sample: stream.map_or(0, |stream| stream.start_sample),
                        start_us,
                        end_us,
                        label: fields.label.clone(),
                        score: fields.score,
                        scores: fields.scores.clone(),
                        values: fields.values.clone(),
                        embedding: fields.embedding.clone(),
                        anomaly: fields.anomaly,
                    });
                    fields.fill(&mut result);
                }
            }
            Verdict::Failed(error) => result.message = error.detail.clone(),
            Verdict::Dropped(reason) => result.message = reason.message().to_owned(),
            Verdict::Expired(reason) => result.message = reason.message().to_owned(),
        }
        result
    }
}

/// A prediction as the wire carries it, in a result and in each of its windows: a classification in the v1
/// fields (label, score, scores, top_k), any other kind in a field of its own.
#[derive(Default)]
struct WireFields {
    label: Option<String>,
    score: f32,
    scores: Vec<proto::ClassScore>,
    top_k: Vec<proto::ClassScore>,
    values: Option<proto::Values>,
    embedding: Option<proto::Embedding>,
    anomaly: Option<proto::Anomaly>,
}

impl WireFields {
    fn of(prediction: &Prediction) -> Self {
        let classes = |list: &[zinfer_stage_api::ClassScore]| {
            list.iter().map(|class| proto::ClassScore { label: class.label.clone(), score: class.score }).collect()
        };
        match prediction {
            Prediction::Classification(class) => Self {
                label: class.label.clone(),
                score: class.score,
                scores: classes(&class.scores),
                top_k: classes(&class.top_k),
                ..Self::default()
            },
            Prediction::Scores(scores) => Self {
                values: Some(proto::Values { names: scores.names.clone(), values: scores.values.clone() }),
                ..Self::default()
            },
            Prediction::Embedding(values) => {
                Self { embedding: Some(proto::Embedding { values: values.clone() }), ..Self::default() }
            }
            Prediction::Anomaly(anomaly) => Self {
                anomaly: Some(proto::Anomaly {
                    score: anomaly.score,
                    threshold: anomaly.threshold,
                    anomalous: anomaly.anomalous,
                }),
                ..Self::default()
            },
            // A kind newer than this daemon's wire schema: the outcome stays "ok", with no fields to carry it.
            _ => Self::default(),
        }
    }

    fn fill(self, result: &mut proto::Result) {
        result.label = self.label;
        result.score = self.score;
        result.scores = self.scores;
        result.top_k = self.top_k;
        result.values = self.values;
        result.embedding = self.embedding;
        result.anomaly = self.anomaly;
    }
}

/// Microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire names are the protocol's (clients match on them): a renamed variant must not rename its outcome.
    #[test]
    fn shed_reasons_keep_their_wire_names() {
        let dropped = [
            (DropReason::QueueFull, "queue_full"),
            (DropReason::Shutdown, "shutdown"),
            (DropReason::Superseded, "superseded"),
            (DropReason::Memory, "memory"),
            (DropReason::InFlightLimit, "in_flight_limit"),
            (DropReason::MemberLost, "member_lost"),
        ];
        for (reason, wire) in dropped {
            assert_eq!(Verdict::Dropped(reason).reason(), wire);
            assert_eq!(Verdict::Dropped(reason).outcome(), proto::outcome::DROPPED);
            assert!(!reason.message().is_empty());
        }
        for (reason, wire) in
            [(ExpireReason::Passed, "deadline_passed"), (ExpireReason::Unreachable, "deadline_unreachable")]
        {
            assert_eq!(Verdict::Expired(reason).reason(), wire);
            assert_eq!(Verdict::Expired(reason).outcome(), proto::outcome::EXPIRED);
            assert!(!reason.message().is_empty());
        }
    }
}
