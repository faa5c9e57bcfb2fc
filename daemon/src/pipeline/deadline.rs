//! Per-message deadlines: where they come from, and the running cost model that decides whether one can still be
//! met.
//!
//! A message's deadline is the tighter of the pipeline's `deadline_ms` and the request's own `deadline_ms`. It runs
//! from the publisher's `sent_at_ms` when that is sane (within a minute of our clock and not in the future, so a
//! skewed clock cannot expire everything), else from arrival.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far a publisher's clock may lag ours before its timestamp is ignored.
const MAX_PUBLISHER_LAG: Duration = Duration::from_secs(60);

/// A message's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// When the result must be out.
    pub at: Instant,
}

/// The deadline of a message that arrived at `arrived` (`arrived_wall` on the wall clock).
pub fn deadline_for(
    arrived: Instant,
    arrived_wall: SystemTime,
    pipeline_ms: Option<u64>,
    request_ms: Option<u64>,
    sent_at_ms: Option<u64>,
) -> Option<Deadline> {
    let budget = match (pipeline_ms, request_ms) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return None,
    };
    let lag = sent_at_ms
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .and_then(|sent| arrived_wall.duration_since(sent).ok())
        .filter(|lag| *lag <= MAX_PUBLISHER_LAG)
        .unwrap_or_default();
    let start = arrived.checked_sub(lag).unwrap_or(arrived);
    Some(Deadline { at: start + Duration::from_millis(budget) })
}

/// A running estimate of what one model run (plus postprocessing) costs, per input-length bucket and batch size.
///
/// Buckets are powers of two of the longest input dimension, so a 20-token and a 30-token text share one.
/// Estimates are exponentially weighted (new = 0.8·old + 0.2·sample), so they follow thermal throttling and load.
/// The worker seeds it with runs timed at start-up (batch 1 and `max_batch` at the longest input), so that batching
/// is judged by measurements from the first message: extrapolating a batch of k as k single runs overstates it
/// (a run has a fixed part that a batch shares), and under a tight deadline a batch judged that way would never be
/// tried, so never measured. An unmeasured batch size costs what the measured ones say: its cost relative to a
/// single run comes from the length bucket nearest to its own that measured batches, interpolated linearly in the
/// batch size between measured sizes (a run costs a fixed part plus a part per row); only with no batch measured
/// at all is it k single runs.
#[derive(Debug, Default)]
pub struct CostModel {
    micros: BTreeMap<usize, f64>,
    batched: BTreeMap<(usize, usize), f64>,
}

impl CostModel {
    /// The bucket of an input of `length` elements.
    pub fn bucket(length: usize) -> usize {
        length.max(1).next_power_of_two()
    }

    /// Records one measured run of `batch` messages of `length`.
    pub fn observe(&mut self, length: usize, batch: usize, cost: Duration) {
        let sample = cost.as_secs_f64() * 1e6;
        let update = |estimate: &mut f64| *estimate = 0.8 * *estimate + 0.2 * sample;
        if batch <= 1 {
            self.micros.entry(Self::bucket(length)).and_modify(update).or_insert(sample);
        } else {
            self.batched.entry((Self::bucket(length), batch)).and_modify(update).or_insert(sample);
        }
    }

    /// The expected cost of one run of `batch` messages of `length`.
    pub fn estimate_batch(&self, length: usize, batch: usize) -> Duration {
        let bucket = Self::bucket(length);
        if batch <= 1 {
            return self.estimate(length);
        }
        if let Some(&micros) = self.batched.get(&(bucket, batch)) {
            return Duration::from_secs_f64(micros / 1e6);
        }
        match self.batch_ratio(bucket, batch) {
            Some(ratio) => self.estimate(length).mul_f64(ratio),
            None => self.estimate(length) * batch as u32,
        }
    }

    /// A run of `batch` over a single run, from the bucket nearest `bucket` that measured both.
    fn batch_ratio(&self, bucket: usize, batch: usize) -> Option<f64> {
        let distance = |other: usize| other.max(bucket) / other.min(bucket);
        let nearest = self
            .micros
            .keys()
            .copied()
            .filter(|&known| self.batched.keys().any(|&(measured, _)| measured == known))
            .min_by_key(|&known| distance(known))?;
        let single = self.micros[&nearest];
        let sizes = self.batched.range((nearest, 2)..=(nearest, usize::MAX)).map(|(&(_, size), &cost)| (size, cost));
        let points: Vec<(usize, f64)> = std::iter::once((1, single)).chain(sizes).collect();
        // The two measured sizes around `batch` (the last two when it is beyond them all).
        let above = points.iter().position(|&(size, _)| size > batch).unwrap_or(points.len() - 1).max(1);
        let ((low, low_cost), (high, high_cost)) = (points[above - 1], points[above]);
        let per_row = (high_cost - low_cost) / (high - low) as f64;
        let cost = (low_cost + per_row * (batch as f64 - low as f64)).max(low_cost.min(high_cost));
        (single > 0.0).then(|| cost / single)
    }

    /// The expected cost for `length`: its bucket's estimate, else the nearest measured bucket's scaled linearly
    /// with length, else zero (optimistic: with no measurement yet, nothing is shed on a guess).
    pub fn estimate(&self, length: usize) -> Duration {
        let bucket = Self::bucket(length);
        let micros = self.micros.get(&bucket).copied().or_else(|| {
            let below = self.micros.range(..bucket).next_back();
            let above = self.micros.range(bucket..).next();
            below.or(above).map(|(&known, &micros)| micros * bucket as f64 / known as f64)
        });
        Duration::from_secs_f64(micros.unwrap_or(0.0) / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_deadline_wins_and_runs_from_a_sane_send_time() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_ms = wall.duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        assert_eq!(deadline_for(now, wall, None, None, None), None);
        let at = |deadline: Option<Deadline>| deadline.expect("a deadline").at;
        assert_eq!(at(deadline_for(now, wall, Some(100), Some(40), None)), now + Duration::from_millis(40));
        assert_eq!(at(deadline_for(now, wall, Some(100), None, None)), now + Duration::from_millis(100));
        // Sent 30 ms before it arrived: the deadline runs from the send time.
        let sent = deadline_for(now, wall, Some(100), None, Some(wall_ms - 30));
        let expected = now + Duration::from_millis(70);
        assert!(at(sent) <= expected + Duration::from_millis(1) && at(sent) + Duration::from_millis(1) >= expected);
        // A clock an hour behind, or ahead of ours, is ignored.
        assert_eq!(
            at(deadline_for(now, wall, Some(100), None, Some(wall_ms - 3_600_000))),
            now + Duration::from_millis(100)
        );
        assert_eq!(
            at(deadline_for(now, wall, Some(100), None, Some(wall_ms + 5_000))),
            now + Duration::from_millis(100)
        );
    }

    #[test]
    fn the_cost_model_learns_and_extrapolates() {
        let mut model = CostModel::default();
        assert_eq!(model.estimate(20), Duration::ZERO);
        model.observe(20, 1, Duration::from_micros(1000));
        assert_eq!(model.estimate(30), Duration::from_micros(1000));
        assert_eq!(model.estimate(64), Duration::from_micros(2000));
        model.observe(30, 1, Duration::from_micros(2000));
        assert_eq!(model.estimate(17), Duration::from_micros(1200));
        assert_eq!(model.estimate_batch(17, 4), Duration::from_micros(4800));
        model.observe(17, 4, Duration::from_micros(2000));
        assert_eq!(model.estimate_batch(17, 4), Duration::from_micros(2000));
    }

    #[test]
    fn unmeasured_batches_follow_the_measured_ones_not_k_single_runs() {
        let mut model = CostModel::default();
        // Only single runs measured: k single runs, the one pessimistic guess left.
        model.observe(20, 1, Duration::from_micros(300));
        assert_eq!(model.estimate_batch(20, 4), Duration::from_micros(1200));
        // Seeded at start-up at the longest input: one run 1000 µs, a run of 8 2400 µs (a fixed part shared).
        model.observe(128, 1, Duration::from_micros(1000));
        model.observe(128, 8, Duration::from_micros(2400));
        // A batch of 8 at 20 tokens costs what 8 cost relative to 1 at 128: 2.4 x 300 µs, not 8 x 300 µs.
        let near = |estimate: Duration, micros: f64| (estimate.as_secs_f64() * 1e6 - micros).abs() < 1.0;
        assert!(near(model.estimate_batch(20, 8), 720.0), "{:?}", model.estimate_batch(20, 8));
        // A batch of 4 lies on the line between 1 (1000) and 8 (2400): 1600, so 1.6 x 300 µs.
        assert!(near(model.estimate_batch(20, 4), 480.0), "{:?}", model.estimate_batch(20, 4));
        // Beyond the largest measured size, the same line goes on: 16 rows cost 1000 + 15 x 200 = 4000.
        assert!(near(model.estimate_batch(128, 16), 4000.0), "{:?}", model.estimate_batch(128, 16));
        assert!(model.estimate_batch(20, 8) < model.estimate(20) * 8);
    }
}
