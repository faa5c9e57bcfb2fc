//! Cancelling runs that overrun a hard timeout.
//!
//! ONNX Runtime cancels a run when its `RunOptions` is told to terminate from another thread (measured here:
//! within 1–4 ms). A watchdog thread per model sleeps until the armed deadline and pulls that trigger if the run
//! is still going; the model resets the flag before its next run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::session::RunOptions;

struct State {
    deadline: Mutex<Option<Instant>>,
    changed: Condvar,
    stop: AtomicBool,
    fired: AtomicBool,
    options: Arc<RunOptions>,
}

/// A thread that terminates the current run of `options` once its armed deadline passes.
pub(crate) struct Watchdog {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

impl Watchdog {
    pub(crate) fn start(options: Arc<RunOptions>) -> std::io::Result<Self> {
        let state = Arc::new(State {
            deadline: Mutex::new(None),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            options,
        });
        let watched = Arc::clone(&state);
        let thread = std::thread::Builder::new().name("zinfer-watchdog".into()).spawn(move || watch(&watched))?;
        Ok(Self { state, thread: Some(thread) })
    }

    /// Arms the watchdog for a run that must end within `timeout`.
    pub(crate) fn arm(&self, timeout: Duration) {
        self.state.fired.store(false, Ordering::SeqCst);
        *self.state.deadline.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now() + timeout);
        self.state.changed.notify_one();
    }

    /// Disarms it after the run; returns whether it terminated the run (and clears the termination flag if so).
    pub(crate) fn disarm(&self) -> bool {
        *self.state.deadline.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        let fired = self.state.fired.swap(false, Ordering::SeqCst);
        if fired && let Err(error) = self.state.options.unterminate() {
            tracing::error!(%error, "cannot reset the run options after a cancelled run");
        }
        fired
    }
}

fn watch(state: &State) {
    let mut deadline = state.deadline.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    while !state.stop.load(Ordering::SeqCst) {
        deadline = match *deadline {
            None => state.changed.wait(deadline).unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(at) if Instant::now() >= at => {
                *deadline = None;
                state.fired.store(true, Ordering::SeqCst);
                if let Err(error) = state.options.terminate() {
                    tracing::error!(%error, "cannot cancel an overrunning run");
                }
                deadline
            }
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                state.changed.wait_timeout(deadline, wait).unwrap_or_else(|poisoned| poisoned.into_inner()).0
            }
        };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
