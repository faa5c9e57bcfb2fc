//! The `window` stage: per-source ring buffers that cut each sensor stream into the windows its model takes.
//!
//! Each source (the frame's `source`, else the message's key) has its own state, so `imu/left/**` and
//! `imu/right/**` never mix. A stream's windows start at its samples 0, `hop`, 2·`hop`… (counted from the stream's
//! first sample, or from its last reset), exactly as the model toolkit cut its evaluation windows, so a recording
//! replayed through zinferd gives the toolkit's predictions. A message completes zero windows or more; each window
//! is one model input, normalised with the manifest's per-channel mean and standard deviation.
//!
//! When samples carry timestamps:
//! - a sample not later than the previous one of its stream is dropped and counted (`samples_out_of_order`);
//! - a jump longer than `gap_tolerance_ms` either resets the stream (`on_gap = "reset"`: the buffer empties and
//!   windows start again from the next sample; `gaps_reset`) or fills the missing samples by holding the last
//!   reading (`on_gap = "pad"`; `samples_padded`), unless the gap is a whole window or longer, which resets.
//!
//! Options:
//! - `hop`: samples between window starts (default: the manifest's `hop`).
//! - `hop_ms`: instead of `hop`, a time between window ends: a window is cut when a sample's timestamp is at least
//!   this much later than the previous window's last sample (streams without timestamps keep the sample hop).
//!   For a stream whose rate drifts or that a publisher decimates; the toolkit evaluated sample hops.
//! - `gap_tolerance_ms`: largest step between consecutive samples that is not a gap (default: 5 sample periods).
//! - `on_gap` = `"reset"` (default) | `"pad"`.
//! - `max_sources`: streams kept at once (default 1024); a new source beyond it evicts the least recently seen
//!   one (`sources_evicted`), which bounds memory at `max_sources × window × channels` readings.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, ElementType, Input, Item, NamedTensor, Part, Reason, SensorSpec, Stage, StageError,
    StreamPosition, Tensor, TensorData, TensorSpec, parse_options,
};

/// The registry name.
pub const TYPE: &str = "window";

/// What a gap in the timestamps does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GapPolicy {
    /// Empty the buffer: windows start again after the gap.
    #[default]
    Reset,
    /// Fill the missing samples with the last reading.
    Pad,
}

/// Options of the `window` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Samples between window starts.
    pub hop: Option<usize>,
    /// Milliseconds between window ends, for timestamped streams (instead of `hop`).
    pub hop_ms: Option<f64>,
    /// Largest step between samples that is not a gap, in milliseconds.
    pub gap_tolerance_ms: Option<f64>,
    /// What a gap does.
    #[serde(default)]
    pub on_gap: GapPolicy,
    /// Streams kept at once.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
}

fn default_max_sources() -> usize {
    1024
}

/// Builds the stage from its options and the manifest's `[sensor]` table.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let config: WindowConfig = parse_options(options)?;
    let spec = super::spec(context, TYPE)?.clone();
    WindowStage::new(spec, &config).map(|stage| Box::new(stage) as Box<dyn Stage>)
}

/// The stage itself.
#[derive(Debug)]
pub struct WindowStage {
    spec: SensorSpec,
    hop: Hop,
    tolerance_us: i64,
    period_us: f64,
    on_gap: GapPolicy,
    streams: Streams,
}

/// Every source's stream, at most `max` of them.
#[derive(Debug)]
struct Streams {
    by_source: HashMap<String, Stream>,
    max: usize,
    /// Counts lookups, to find the least recently used stream.
    clock: u64,
}

#[derive(Debug, Default)]
struct Stream {
    /// The last `window` samples (raw readings), sample-major.
    recent: VecDeque<f32>,
    /// Their timestamps, one per sample (`None` for a sample that came without one), so that a window's span
    /// is the span of its own samples even when timed and untimed frames mix.
    recent_times: VecDeque<Option<i64>>,
    /// Samples since the stream started or was last reset.
    in_segment: u64,
    /// Samples accepted since the stream started.
    position: u64,
    /// Windows cut so far.
    windows: u64,
    last_time: Option<i64>,
    /// With `hop_ms`: the time from which the next window may end.
    next_due_us: Option<i64>,
    /// When the stream was last used (for eviction).
    used: u64,
}

/// What one message did to its stream.
#[derive(Default)]
struct Events {
    out_of_order: u64,
    gaps_reset: u64,
    padded: u64,
}

impl WindowStage {
    /// A stage cutting windows as `spec` says, with `config`'s options.
    pub fn new(spec: SensorSpec, config: &WindowConfig) -> Result<Self, BuildError> {
        let samples = config.hop.unwrap_or(spec.hop);
        if samples == 0 {
            return Err(BuildError::option("hop", "must be at least 1"));
        }
        let hop = match config.hop_ms {
            None => Hop::Samples(samples),
            Some(_) if config.hop.is_some() => {
                return Err(BuildError::option("hop_ms", "give `hop` or `hop_ms`, not both"));
            }
            Some(ms) if ms.is_finite() && ms > 0.0 => Hop::Time { us: (ms * 1e3).round() as i64, samples },
            Some(_) => return Err(BuildError::option("hop_ms", "must be a positive number of milliseconds")),
        };
        if config.max_sources == 0 {
            return Err(BuildError::option("max_sources", "must be at least 1"));
        }
        let period_us = 1e6 / spec.sample_rate_hz;
        let tolerance_ms = config.gap_tolerance_ms.unwrap_or(5.0 * period_us / 1e3);
        if !(tolerance_ms.is_finite() && tolerance_ms > 0.0) {
            return Err(BuildError::option("gap_tolerance_ms", "must be a positive number of milliseconds"));
        }
        Ok(Self {
            spec,
            hop,
            tolerance_us: (tolerance_ms * 1e3).round() as i64,
            period_us,
            on_gap: config.on_gap,
            streams: Streams { by_source: HashMap::new(), max: config.max_sources, clock: 0 },
        })
    }

    /// Streams held now; never more than `max_sources`.
    pub fn stream_count(&self) -> usize {
        self.streams.by_source.len()
    }

    /// Raw readings buffered across all streams; never more than `max_sources × window × channels`, the memory
    /// bound the module docs promise (the fuzz targets check it after every frame).
    pub fn buffered_readings(&self) -> usize {
        self.streams.by_source.values().map(|stream| stream.recent.len()).sum()
    }
}

impl Streams {
    /// The stream of `source`, created (and the least recently used one evicted) as needed; whether one was evicted.
    fn get(&mut self, source: &str) -> (&mut Stream, bool) {
        self.clock += 1;
        let mut evicted = false;
        if !self.by_source.contains_key(source) && self.by_source.len() >= self.max {
            let oldest = self.by_source.iter().min_by_key(|(_, stream)| stream.used).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.by_source.remove(&oldest);
                evicted = true;
            }
        }
        let stream = self.by_source.entry(source.to_owned()).or_default();
        stream.used = self.clock;
        (stream, evicted)
    }
}

/// When windows are cut.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Every so many samples.
    Samples(usize),
    /// When a timestamp reaches the previous window's end plus `us`; `samples` for streams without timestamps.
    Time { us: i64, samples: usize },
}

/// Appends one sample; returns a window if it completes one.
fn push(
    stream: &mut Stream,
    spec: &SensorSpec,
    hop: Hop,
    source: &str,
    sample: &[f32],
    time: Option<i64>,
) -> Option<Part> {
    let (window, channels) = (spec.window, spec.channels.len());
    stream.recent.extend(sample);
    stream.recent_times.push_back(time);
    if time.is_some() {
        stream.last_time = time;
    }
    while stream.recent.len() > window * channels {
        stream.recent.drain(..channels);
    }
    while stream.recent_times.len() > window {
        stream.recent_times.pop_front();
    }
    stream.in_segment += 1;
    stream.position += 1;
    if stream.in_segment < window as u64 {
        return None;
    }
    let by_samples = |samples: usize| (stream.in_segment - window as u64).is_multiple_of(samples as u64);
    let due = match (hop, time) {
        (Hop::Time { us, .. }, Some(time)) => {
            let due = stream.next_due_us.is_none_or(|next| time >= next);
            if due {
                // Saturating, as the gap check: a publisher's timestamp may sit at the very end of i64.
                stream.next_due_us = Some(time.saturating_add(us));
            }
            due
        }
        (Hop::Time { samples, .. }, None) | (Hop::Samples(samples), _) => by_samples(samples),
    };
    if !due {
        return None;
    }
    let values: Vec<f32> = stream
        .recent
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let channel = index % channels;
            (value - spec.mean[channel]) / spec.std[channel]
        })
        .collect();
    let index = stream.windows;
    stream.windows += 1;
    // Only a window whose samples all carry a timestamp has a span.
    let span_us = match (stream.recent_times.front(), stream.recent_times.back()) {
        (Some(Some(first)), Some(Some(last))) if stream.recent_times.iter().all(Option::is_some) => {
            Some((*first, *last))
        }
        _ => None,
    };
    Some(Part {
        index,
        stream: Some(StreamPosition {
            source: source.to_owned(),
            start_sample: stream.position - window as u64,
            span_us,
        }),
        features: vec![NamedTensor {
            name: spec.input.clone(),
            tensor: Tensor { shape: vec![window, channels], data: TensorData::F32(values) },
        }],
        outputs: Vec::new(),
        prediction: None,
    })
}

fn reset(stream: &mut Stream) {
    stream.recent.clear();
    stream.recent_times.clear();
    stream.in_segment = 0;
    stream.next_due_us = None;
}

impl Stage for WindowStage {
    fn name(&self) -> &str {
        TYPE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let Input::Samples(samples) = &item.input else {
            return Err(StageError::new(Reason::MissingInput, "window needs sensor samples; use the `sensor` decoder"));
        };
        let channels = self.spec.channels.len();
        if samples.width != channels {
            // `validate` catches this with a better message; never cut a window of the wrong shape.
            return Err(StageError::new(Reason::WrongChannelCount, "frame width differs from the model's channels"));
        }
        let source = samples.source.clone().unwrap_or_else(|| item.key.clone());
        let (spec, hop, tolerance, period, on_gap) =
            (&self.spec, self.hop, self.tolerance_us, self.period_us, self.on_gap);
        let (stream, evicted) = self.streams.get(&source);
        let mut events = Events::default();
        let mut windows = Vec::new();
        for (index, sample) in samples.values.chunks_exact(channels).enumerate() {
            let time = samples.timestamps_us.as_ref().and_then(|times| times.get(index).copied());
            if let (Some(time), Some(last)) = (time, stream.last_time) {
                if time <= last {
                    events.out_of_order += 1;
                    continue;
                }
                // Saturating: the timestamps are the publisher's (any i64), and a jump from near i64::MIN to near
                // i64::MAX overflows; saturated, it is simply a gap longer than any window.
                let step = time.saturating_sub(last);
                if step > tolerance {
                    let missing = ((step as f64 / period).round() as u64).saturating_sub(1);
                    let held: Vec<f32> = stream.recent.iter().rev().take(channels).rev().copied().collect();
                    if on_gap == GapPolicy::Pad && missing < spec.window as u64 && held.len() == channels {
                        for step in 1..=missing {
                            let filled = last + (step as f64 * period).round() as i64;
                            windows.extend(push(stream, spec, hop, &source, &held, Some(filled)));
                        }
                        events.padded += missing;
                    } else {
                        reset(stream);
                        events.gaps_reset += 1;
                    }
                }
            }
            windows.extend(push(stream, spec, hop, &source, sample, time));
        }
        item.count("windows", windows.len() as u64);
        item.count("samples_out_of_order", events.out_of_order);
        item.count("gaps_reset", events.gaps_reset);
        item.count("samples_padded", events.padded);
        item.count("sources_evicted", u64::from(evicted));
        item.split().extend(windows);
        Ok(())
    }

    fn produces(&self) -> Vec<TensorSpec> {
        let dims = vec![Some(self.spec.window), Some(self.spec.channels.len())];
        vec![TensorSpec::new(self.spec.input.clone(), ElementType::F32, dims)]
    }

    fn keeps_state(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use zinfer_stage_api::Samples;

    use super::*;

    fn spec() -> SensorSpec {
        SensorSpec {
            input: "frames".into(),
            channels: vec!["a".into(), "b".into()],
            sample_rate_hz: 100.0,
            window: 4,
            hop: 2,
            mean: vec![1.0, 0.0],
            std: vec![2.0, 1.0],
        }
    }

    fn stage(on_gap: GapPolicy, max_sources: usize) -> WindowStage {
        let config = WindowConfig { hop: None, hop_ms: None, gap_tolerance_ms: None, on_gap, max_sources };
        WindowStage::new(spec(), &config).expect("valid")
    }

    /// Sample `n` of a stream is `[n, -n]`, at `n × 10 ms` when timed.
    fn frame(key: &str, source: Option<&str>, range: std::ops::Range<i64>, timed: bool) -> Item {
        let values = range.clone().flat_map(|n| [n as f32, -(n as f32)]).collect();
        let times = timed.then(|| range.map(|n| n * 10_000).collect());
        let samples =
            Samples { source: source.map(str::to_owned), width: 2, timestamps_us: times, values, ..Samples::default() };
        Item::new("id".into(), key.into(), Input::Samples(samples))
    }

    fn run(stage: &mut WindowStage, mut item: Item) -> Item {
        stage.process(&mut item).expect("process");
        item
    }

    /// The windows an item was split into.
    fn windows(item: &Item) -> &[Part] {
        item.parts.as_deref().expect("the window stage splits every item it takes")
    }

    /// Where a window lies in its stream.
    fn position(window: &Part) -> &StreamPosition {
        window.stream.as_ref().expect("a window has a stream position")
    }

    fn starts(item: &Item) -> Vec<u64> {
        windows(item).iter().map(|window| position(window).start_sample).collect()
    }

    #[test]
    fn windows_start_every_hop_and_are_normalised() {
        let mut stage = stage(GapPolicy::Reset, 8);
        let mut seen = Vec::new();
        for n in 0..10 {
            let item = run(&mut stage, frame("imu/a", None, n..n + 1, false));
            seen.extend(starts(&item));
        }
        assert_eq!(seen, [0, 2, 4, 6], "windows [0,4), [2,6), [4,8), [6,10)");
        // One message with many samples completes several windows at once, the same ones.
        let fresh = stage_with_one_message();
        assert_eq!(starts(&fresh), [0, 2, 4, 6]);
        let window = &windows(&fresh)[1];
        assert_eq!((window.index, position(window).source.as_str()), (1, "imu/a"));
        let TensorData::F32(values) = &window.features[0].tensor.data else { panic!("f32") };
        // samples 2..6: a → (n - 1) / 2, b → -n
        assert_eq!(values, &[0.5, -2.0, 1.0, -3.0, 1.5, -4.0, 2.0, -5.0]);
        assert_eq!(window.features[0].tensor.shape, [4, 2]);
        assert!(fresh.counters.contains(&("windows", 4)));
    }

    fn stage_with_one_message() -> Item {
        run(&mut stage(GapPolicy::Reset, 8), frame("imu/a", None, 0..10, false))
    }

    #[test]
    fn sources_never_mix() {
        let mut stage = stage(GapPolicy::Reset, 8);
        let mut left = Vec::new();
        for n in 0..6 {
            left.extend(starts(&run(&mut stage, frame("imu/left/x", None, n..n + 1, true))));
            let right = run(&mut stage, frame("imu/right/x", None, n..n + 1, true));
            assert!(windows(&right).iter().all(|w| position(w).source == "imu/right/x"));
        }
        assert_eq!(left, [0, 2]);
        // A source named in the payload wins over the key.
        let named = run(&mut stage, frame("imu/any", Some("wrist"), 0..4, true));
        assert_eq!(position(&windows(&named)[0]).source, "wrist");
        assert_eq!(position(&windows(&named)[0]).span_us, Some((0, 30_000)));
    }

    #[test]
    fn out_of_order_samples_are_dropped_and_counted() {
        let mut stage = stage(GapPolicy::Reset, 8);
        run(&mut stage, frame("k", None, 0..3, true));
        let late = run(&mut stage, frame("k", None, 1..3, true));
        assert!(windows(&late).is_empty(), "split into no window, not unsplit");
        assert!(late.counters.contains(&("samples_out_of_order", 2)), "{:?}", late.counters);
        let next = run(&mut stage, frame("k", None, 3..4, true));
        assert_eq!(starts(&next), [0], "the dropped samples did not count");
    }

    #[test]
    fn a_gap_resets_or_pads_per_config() {
        // Samples 0..3, then 20..23: a 170 ms jump, over the 50 ms tolerance.
        let mut resetting = stage(GapPolicy::Reset, 8);
        run(&mut resetting, frame("k", None, 0..3, true));
        let after = run(&mut resetting, frame("k", None, 20..24, true));
        assert!(after.counters.contains(&("gaps_reset", 1)), "{:?}", after.counters);
        assert_eq!(starts(&after), [3], "a fresh window of the 4 samples after the gap");

        // A shorter jump with a 15 ms tolerance (samples 0..3, then 4): one sample padded with the last reading.
        let config = WindowConfig {
            hop: None,
            hop_ms: None,
            gap_tolerance_ms: Some(15.0),
            on_gap: GapPolicy::Pad,
            max_sources: 8,
        };
        let mut padding = WindowStage::new(spec(), &config).expect("valid");
        run(&mut padding, frame("k", None, 0..3, true));
        let padded = run(&mut padding, frame("k", None, 4..5, true));
        assert!(padded.counters.contains(&("samples_padded", 1)), "{:?}", padded.counters);
        let window = &windows(&padded)[0];
        assert_eq!(position(window).span_us, Some((0, 30_000)), "the padded sample sits at 30 ms");
        let TensorData::F32(values) = &window.features[0].tensor.data else { panic!("f32") };
        // raw `a` of samples 0, 1, 2 and 2 again (held), normalised: (n - 1) / 2
        assert_eq!(values.iter().step_by(2).copied().collect::<Vec<_>>(), [-0.5, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn a_window_has_a_span_only_when_all_its_samples_are_timed() {
        // Found by the window fuzz target: an untimed frame after timed ones reported the earlier samples' span.
        let mut stage = stage(GapPolicy::Reset, 8);
        let timed = run(&mut stage, frame("k", None, 0..4, true));
        assert_eq!(position(&windows(&timed)[0]).span_us, Some((0, 30_000)));
        let mixed = run(&mut stage, frame("k", None, 4..6, false));
        assert_eq!(starts(&mixed), [2]);
        assert_eq!(position(&windows(&mixed)[0]).span_us, None, "samples 4 and 5 have no timestamp");
    }

    #[test]
    fn a_jump_across_the_whole_i64_range_is_a_gap() {
        // Found by the window fuzz target: `time - last` overflowed (a panic in debug builds).
        let mut stage = stage(GapPolicy::Pad, 8);
        let at = |time: i64| {
            let samples =
                Samples { width: 2, timestamps_us: Some(vec![time]), values: vec![1.0, 2.0], ..Samples::default() };
            Item::new("id".into(), "k".into(), Input::Samples(samples))
        };
        run(&mut stage, at(i64::MIN));
        let after = run(&mut stage, at(i64::MAX));
        assert!(after.counters.contains(&("gaps_reset", 1)), "{:?}", after.counters);
    }

    /// A window at most every 35 ms of the stream's timestamps.
    fn hop_ms_35() -> WindowConfig {
        WindowConfig { hop: None, hop_ms: Some(35.0), gap_tolerance_ms: None, on_gap: GapPolicy::Reset, max_sources: 8 }
    }

    #[test]
    fn hop_ms_near_the_end_of_i64_does_not_overflow() {
        let mut stage = WindowStage::new(spec(), &hop_ms_35()).expect("valid");
        let times: Vec<i64> = (0..4).map(|n| i64::MAX - 40_000 + n * 10_000).collect();
        let samples = Samples { width: 2, timestamps_us: Some(times), values: vec![0.0; 8], ..Samples::default() };
        let item = run(&mut stage, Item::new("id".into(), "k".into(), Input::Samples(samples)));
        assert_eq!(starts(&item), [0], "the first window is cut; the next is due at i64::MAX");
    }

    #[test]
    fn hop_ms_cuts_windows_by_time() {
        // 10 ms samples, windows of 4, a window at most every 35 ms: ends at samples 3, 7 (70 ms ≥ 30 + 35), 11…
        let mut stage = WindowStage::new(spec(), &hop_ms_35()).expect("valid");
        let item = run(&mut stage, frame("k", None, 0..12, true));
        assert_eq!(starts(&item), [0, 4, 8]);
        // Without timestamps the sample hop (the manifest's, 2) applies.
        assert_eq!(starts(&run(&mut stage, frame("untimed", None, 0..6, false))), [0, 2]);
        let both = WindowConfig { hop: Some(2), ..hop_ms_35() };
        assert!(WindowStage::new(spec(), &both).is_err(), "hop and hop_ms exclude each other");
    }

    #[test]
    fn max_sources_evicts_the_least_recently_seen_stream() {
        let mut stage = stage(GapPolicy::Reset, 2);
        run(&mut stage, frame("a", None, 0..3, false));
        run(&mut stage, frame("b", None, 0..3, false));
        run(&mut stage, frame("a", None, 3..4, false));
        let c = run(&mut stage, frame("c", None, 0..1, false));
        assert!(c.counters.contains(&("sources_evicted", 1)));
        assert!(stage.streams.by_source.contains_key("a") && !stage.streams.by_source.contains_key("b"));
    }
}
