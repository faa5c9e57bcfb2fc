//! The model ladder: when a pipeline with smaller models for the same task (`[pipeline.ladder]`) steps between them.
//!
//! Pressure is memory above the budget's soft threshold, or a deadline missed (a message expired, or answered
//! late) within the last [`MISS_MEMORY`]. Pressure held for `down_after` steps one rung down (a smaller, faster model
//! with smaller activations); no pressure for the wait before a step up (`up_after`) steps one rung up. The two
//! waits are the hysteresis: a rung is left only after its state has held for a while, never on one sample.
//!
//! A step up can bring the pressure back (the larger model is what could not keep up). When a step down follows a
//! step up within `up_after`, the wait before the next step up doubles (at most [`MAX_UP_WAIT_FACTOR`] ×
//! `up_after`), so a load that the larger model cannot carry does not make the pipeline flap between rungs; a calm
//! `up_after` on the top rung resets it.
//!
//! Every rung stays loaded: a switch is immediate, needs no allocation at the moment memory is short, and a message
//! prepared for one rung (its tokens) still runs on that rung after a switch. So the ladder saves time and
//! activations, not the weights of the rungs it leaves.

use std::time::{Duration, Instant};

/// How long one missed deadline counts as pressure.
pub const MISS_MEMORY: Duration = Duration::from_secs(1);

/// The wait before a step up grows to at most this many times `up_after`.
pub const MAX_UP_WAIT_FACTOR: u32 = 16;

/// A step between rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The rung left.
    pub from: usize,
    /// The rung taken (0 is the largest model).
    pub to: usize,
}

/// Where a pipeline stands on its ladder, and the clocks that decide the next step.
#[derive(Debug)]
pub struct Ladder {
    rungs: usize,
    active: usize,
    down_after: Duration,
    up_after: Duration,
    up_wait: Duration,
    /// Since when the pressure has held, or the calm (one of the two is set once `tick` ran).
    pressed_since: Option<Instant>,
    calm_since: Option<Instant>,
    last_miss: Option<Instant>,
    last_up: Option<Instant>,
}

impl Ladder {
    /// A ladder of `rungs` models (at least 1), starting on the largest.
    pub fn new(rungs: usize, down_after: Duration, up_after: Duration) -> Self {
        Self {
            rungs: rungs.max(1),
            active: 0,
            down_after,
            up_after,
            up_wait: up_after,
            pressed_since: None,
            calm_since: None,
            last_miss: None,
            last_up: None,
        }
    }

    /// The rung that prepares new messages now (0 is the largest model).
    pub fn active(&self) -> usize {
        self.active
    }

    /// The wait before the next step up, as lengthened by undone step ups.
    pub fn up_wait(&self) -> Duration {
        self.up_wait
    }

    /// A message missed its deadline at `now`.
    pub fn record_miss(&mut self, now: Instant) {
        self.last_miss = Some(now);
    }

    /// Takes the state at `now` into account (`memory_pressed`: memory above the soft threshold) and returns the
    /// step to take, if one is due; the ladder is then on the new rung.
    pub fn tick(&mut self, memory_pressed: bool, now: Instant) -> Option<Step> {
        let missed = self.last_miss.is_some_and(|at| now.saturating_duration_since(at) < MISS_MEMORY);
        if memory_pressed || missed {
            self.calm_since = None;
            let since = *self.pressed_since.get_or_insert(now);
            if self.active + 1 >= self.rungs || now.saturating_duration_since(since) < self.down_after {
                return None;
            }
            // Down soon after a step up: that step up was premature, so wait longer before the next one.
            if self.last_up.is_some_and(|at| now.saturating_duration_since(at) < self.up_after) {
                self.up_wait = (self.up_wait * 2).min(self.up_after * MAX_UP_WAIT_FACTOR);
            }
            self.pressed_since = Some(now);
            Some(self.step_to(self.active + 1))
        } else {
            self.pressed_since = None;
            let since = *self.calm_since.get_or_insert(now);
            let calm = now.saturating_duration_since(since);
            if self.active == 0 {
                if calm >= self.up_after {
                    self.up_wait = self.up_after;
                }
                return None;
            }
            if calm < self.up_wait {
                return None;
            }
            self.calm_since = Some(now);
            self.last_up = Some(now);
            Some(self.step_to(self.active - 1))
        }
    }

    fn step_to(&mut self, to: usize) -> Step {
        let step = Step { from: self.active, to };
        self.active = to;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Duration = Duration::from_millis(500);
    const UP: Duration = Duration::from_secs(5);

    /// Ticks every 100 ms from `start` for `for_ms`, with the given pressure; returns the steps taken and when.
    fn run(ladder: &mut Ladder, start: Instant, for_ms: u64, pressed: bool) -> Vec<(u64, Step)> {
        (0..=for_ms / 100)
            .filter_map(|tick| {
                let at = tick * 100;
                ladder.tick(pressed, start + Duration::from_millis(at)).map(|step| (at, step))
            })
            .collect()
    }

    #[test]
    fn sustained_pressure_steps_down_one_rung_per_down_after_and_no_further_than_the_bottom() {
        let start = Instant::now();
        let mut ladder = Ladder::new(3, DOWN, UP);
        let steps = run(&mut ladder, start, 3_000, true);
        assert_eq!(steps, [(500, Step { from: 0, to: 1 }), (1_000, Step { from: 1, to: 2 })]);
        assert_eq!(ladder.active(), 2);
    }

    #[test]
    fn pressure_shorter_than_down_after_does_not_step() {
        let start = Instant::now();
        let mut ladder = Ladder::new(2, DOWN, UP);
        for cycle in 0..10u64 {
            let at = start + Duration::from_millis(cycle * 1_000);
            assert_eq!(ladder.tick(true, at), None);
            assert_eq!(ladder.tick(true, at + Duration::from_millis(400)), None);
            assert_eq!(ladder.tick(false, at + Duration::from_millis(450)), None);
        }
        assert_eq!(ladder.active(), 0);
    }

    #[test]
    fn calm_for_up_after_steps_back_up_and_a_miss_counts_as_pressure_for_a_second() {
        let start = Instant::now();
        let mut ladder = Ladder::new(2, DOWN, UP);
        ladder.record_miss(start);
        assert_eq!(ladder.tick(false, start), None);
        assert_eq!(ladder.tick(false, start + DOWN), Some(Step { from: 0, to: 1 }));
        // The miss is forgotten after MISS_MEMORY; calm is counted from there.
        let calm_from = start + MISS_MEMORY;
        assert_eq!(ladder.tick(false, calm_from), None);
        assert_eq!(ladder.tick(false, calm_from + UP - Duration::from_millis(1)), None);
        assert_eq!(ladder.tick(false, calm_from + UP), Some(Step { from: 1, to: 0 }));
    }

    #[test]
    fn a_step_up_that_brings_the_pressure_back_doubles_the_next_wait() {
        let start = Instant::now();
        let mut ladder = Ladder::new(2, DOWN, UP);
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..6 {
            // Pressure until the ladder steps down, then calm until it steps up, then pressure again at once.
            while ladder.tick(true, now).is_none() {
                now += Duration::from_millis(100);
            }
            let down_at = now;
            while ladder.tick(false, now).is_none() {
                now += Duration::from_millis(100);
            }
            waits.push((now - down_at).as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 80], "doubling, capped at MAX_UP_WAIT_FACTOR × up_after");
        // A calm up_after on the top rung forgets it.
        assert_eq!(ladder.tick(false, now + UP), None);
        assert_eq!(ladder.up_wait(), UP);
    }

    #[test]
    fn a_ladder_of_one_never_steps() {
        let start = Instant::now();
        let mut ladder = Ladder::new(1, DOWN, UP);
        assert!(run(&mut ladder, start, 5_000, true).is_empty());
    }
}
