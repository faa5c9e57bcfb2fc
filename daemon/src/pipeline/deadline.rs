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
/// An unmeasured batch size is extrapolated linearly from the same bucket's single-message cost (pessimistic:
/// batching is cheaper per message than that).
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
        match self.batched.get(&(Self::bucket(length), batch)) {
            Some(&micros) if batch > 1 => Duration::from_secs_f64(micros / 1e6),
            _ => self.estimate(length) * batch.max(1) as u32,
        }
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
}
