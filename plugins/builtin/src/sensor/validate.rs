//! The `validate` stage: a sensor frame either fits the model or gets an error outcome with a reason.
//!
//! It runs before `window`, so a bad frame never touches any stream's state: the other sources, and the good
//! frames of the same source, carry on as if it had not arrived.
//!
//! | problem                                               | reason                     |
//! |-------------------------------------------------------|----------------------------|
//! | channel count or names differ from the manifest's     | `wrong_channel_count`      |
//! | a NaN or ±inf reading, or one that normalisation      | `non_finite_value`         |
//! | (`(x - mean) / std`, as `window` feeds the model)     |                            |
//! | takes beyond the range of f32                         |                            |
//! | timestamps not strictly increasing, or not one each   | `non_monotonic_timestamps` |
//! | more samples than `max_samples`                       | `frame_too_large`          |
//! | no sample at all                                      | `empty_payload`            |
//!
//! Options: `max_samples` (default 1024).

use serde::Deserialize;
use zinfer_stage_api::{BuildContext, BuildError, Input, Item, Reason, SensorSpec, Stage, StageError, parse_options};

/// The registry name.
pub const TYPE: &str = "validate";

/// Options of the `validate` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Most samples in one frame.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
}

fn default_max_samples() -> usize {
    1024
}

/// Builds the stage from its options and the manifest's channels.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let config: ValidateConfig = parse_options(options)?;
    if config.max_samples == 0 {
        return Err(BuildError::option("max_samples", "must be at least 1"));
    }
    Ok(Box::new(Validate::new(super::spec(context, TYPE)?, config.max_samples)))
}

/// The stage itself.
#[derive(Debug)]
pub struct Validate {
    channels: Vec<String>,
    /// The manifest's per-channel normalisation, to refuse readings the window stage could not normalise.
    mean: Vec<f32>,
    std: Vec<f32>,
    max_samples: usize,
}

impl Validate {
    /// A validator for frames of the model described by `spec`.
    pub fn new(spec: &SensorSpec, max_samples: usize) -> Self {
        Self { channels: spec.channels.clone(), mean: spec.mean.clone(), std: spec.std.clone(), max_samples }
    }
}

impl Stage for Validate {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let Input::Samples(samples) = &item.input else {
            return Err(StageError::new(
                Reason::MissingInput,
                "validate needs sensor samples; use the `sensor` decoder",
            ));
        };
        let expected = self.channels.len();
        if samples.width != expected {
            return Err(StageError::new(
                Reason::WrongChannelCount,
                format!(
                    "the frame has {} values per sample; the model takes {expected} ({})",
                    samples.width,
                    self.channels.join(", ")
                ),
            ));
        }
        if let Some(names) = samples.channels.as_ref().filter(|names| **names != self.channels) {
            return Err(StageError::new(
                Reason::WrongChannelCount,
                format!(
                    "the frame's channels are [{}]; the model takes [{}]",
                    names.join(", "),
                    self.channels.join(", ")
                ),
            ));
        }
        if !samples.values.len().is_multiple_of(expected) {
            return Err(StageError::new(
                Reason::WrongChannelCount,
                format!("{} values is not a whole number of {expected}-channel samples", samples.values.len()),
            ));
        }
        let count = samples.len();
        if count == 0 {
            return Err(StageError::new(Reason::EmptyPayload, "the frame holds no sample"));
        }
        if count > self.max_samples {
            return Err(StageError::new(
                Reason::FrameTooLarge,
                format!(
                    "{count} samples in one frame; the pipeline accepts at most {} (max_samples)",
                    self.max_samples
                ),
            ));
        }
        // A finite reading can still overflow `(x - mean) / std` (f32::MAX with a std below 1): the window stage
        // would then feed the model ±inf, so such a reading is refused here, before it reaches any stream.
        let normalised = |index: usize, value: f32| {
            let channel = index % expected;
            (value - self.mean[channel]) / self.std[channel]
        };
        let bad = samples.values.iter().enumerate().find(|&(index, &value)| !normalised(index, value).is_finite());
        if let Some((position, &value)) = bad {
            let (sample, channel) = (position / expected, &self.channels[position % expected]);
            let detail = if value.is_finite() {
                format!("sample {sample}, channel `{channel}` is {value}, beyond what the model's normalisation takes")
            } else {
                format!("sample {sample}, channel `{channel}` is {value}")
            };
            return Err(StageError::new(Reason::NonFiniteValue, detail));
        }
        if let Some(times) = &samples.timestamps_us {
            if times.len() != count {
                return Err(StageError::new(
                    Reason::NonMonotonicTimestamps,
                    format!("{} timestamps for {count} samples; give one per sample or none", times.len()),
                ));
            }
            if let Some(index) = times.windows(2).position(|pair| pair[1] <= pair[0]) {
                return Err(StageError::new(
                    Reason::NonMonotonicTimestamps,
                    format!(
                        "timestamp {} µs follows {} µs: timestamps must increase strictly",
                        times[index + 1],
                        times[index]
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use zinfer_stage_api::Samples;

    use super::*;

    fn item(samples: Samples) -> Item {
        Item::new("id".into(), "imu/a".into(), Input::Samples(samples))
    }

    fn frame(width: usize, values: Vec<f32>, times: Option<Vec<i64>>) -> Samples {
        Samples { width, values, timestamps_us: times, ..Samples::default() }
    }

    #[test]
    fn every_bad_frame_class_gets_its_reason_and_good_frames_pass() {
        let spec = SensorSpec {
            input: "frames".into(),
            channels: vec!["x".into(), "y".into()],
            sample_rate_hz: 100.0,
            window: 4,
            hop: 2,
            mean: vec![0.0, 1.0],
            std: vec![1.0, 0.5],
        };
        let mut stage = Validate::new(&spec, 3);
        let mut named = frame(2, vec![1.0, 2.0], None);
        named.channels = Some(vec!["y".into(), "x".into()]);
        let cases = [
            (frame(3, vec![1.0, 2.0, 3.0], None), Some(Reason::WrongChannelCount)),
            (named, Some(Reason::WrongChannelCount)),
            (frame(2, vec![1.0, 2.0, 3.0], None), Some(Reason::WrongChannelCount)),
            (frame(2, vec![], None), Some(Reason::EmptyPayload)),
            (frame(2, vec![0.0; 8], None), Some(Reason::FrameTooLarge)),
            (frame(2, vec![1.0, f32::NAN], None), Some(Reason::NonFiniteValue)),
            (frame(2, vec![1.0, f32::INFINITY], None), Some(Reason::NonFiniteValue)),
            // Finite, but (f32::MAX - 1) / 0.5 is not: found by the window fuzz target.
            (frame(2, vec![1.0, f32::MAX], None), Some(Reason::NonFiniteValue)),
            (frame(2, vec![f32::MAX, 2.0], None), None),
            (frame(2, vec![1.0, 2.0, 3.0, 4.0], Some(vec![10, 10])), Some(Reason::NonMonotonicTimestamps)),
            (frame(2, vec![1.0, 2.0, 3.0, 4.0], Some(vec![10])), Some(Reason::NonMonotonicTimestamps)),
            (frame(2, vec![1.0, 2.0, 3.0, 4.0], Some(vec![10, 20])), None),
            (frame(2, vec![1.0, 2.0], None), None),
        ];
        for (samples, expected) in cases {
            let result = stage.process(&mut item(samples.clone()));
            assert_eq!(result.err().map(|error| error.reason), expected, "{samples:?}");
        }
    }
}
