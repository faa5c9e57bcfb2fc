//! Model instances beyond the worker's own: threads that each own one more session of the pipeline's model and run
//! the batches the worker hands them (a pipeline's `instances`).
//!
//! One session with several intra-op threads scales poorly on a small model: a run of a millisecond cannot be split
//! across cores without the split costing as much as it saves. Independent runs, one thread each, scale with the
//! cores instead (Triton's instance groups). Measured on 2 cores with the shipped sentiment model: two intra-op
//! threads gave no more throughput under overload than one, two instances 1.2-1.3x (see
//! [`crate::DEFAULT_INSTANCES`]). Only the model run moves: the worker keeps decoding, the stages (a
//! sensor source's windows stay in one thread, in order, and stages need not be thread-safe), the EDF queue,
//! batching and postprocessing, so every policy stays in one place. Each session holds its own weights and
//! working memory: `zinferd check` logs what each instance cost to load and warm up.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use zinfer_ort::Model;

use super::Job;
use super::queue::Waker;
use crate::telemetry::metrics::PipelineMetrics;

/// A batch back from an instance.
pub struct Done {
    runner: usize,
    /// The batch, its outputs filled in by [`Job::run`] unless the run panicked.
    pub job: Job,
    /// False if the model run panicked (its messages are answered as such).
    pub completed: bool,
}

/// The extra instances of one pipeline's model, each on its own thread.
pub struct Runners {
    jobs: Vec<mpsc::Sender<Job>>,
    /// When each instance's current batch started; `None` while it is idle.
    busy: Vec<Option<Instant>>,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Runners {
    /// Starts one thread per model in `models`; each finished batch is sent back and `waker` woken, so that a worker
    /// waiting for messages notices it.
    pub fn start(
        name: &str,
        models: Vec<Model>,
        waker: Waker,
        metrics: &Arc<PipelineMetrics>,
    ) -> std::io::Result<Self> {
        let waker = Arc::new(waker);
        let (done_tx, done) = mpsc::channel();
        let mut runners = Self { jobs: Vec::new(), busy: Vec::new(), done, threads: Vec::new() };
        for (runner, mut model) in models.into_iter().enumerate() {
            let (job_tx, jobs) = mpsc::channel::<Job>();
            let (done_tx, waker, metrics) = (done_tx.clone(), Arc::clone(&waker), Arc::clone(metrics));
            let thread =
                std::thread::Builder::new().name(format!("zinfer-{name}-{}", runner + 1)).spawn(move || {
                    for mut job in jobs {
                        let ran = catch_unwind(AssertUnwindSafe(|| job.run(&mut model, &mut || metrics.beat())));
                        if done_tx.send(Done { runner, job, completed: ran.is_ok() }).is_err() {
                            return;
                        }
                        waker.wake();
                    }
                })?;
            runners.jobs.push(job_tx);
            runners.busy.push(None);
            runners.threads.push(thread);
        }
        Ok(runners)
    }

    /// No extra instance: the worker runs every batch itself.
    pub fn none() -> Self {
        let (_, done) = mpsc::channel();
        Self { jobs: Vec::new(), busy: Vec::new(), done, threads: Vec::new() }
    }

    /// Hands `job` to an idle instance, or gives it back if all are busy.
    pub fn dispatch(&mut self, job: Job) -> Result<(), Job> {
        let Some(runner) = self.busy.iter().position(Option::is_none) else { return Err(job) };
        match self.jobs[runner].send(job) {
            Ok(()) => {
                self.busy[runner] = Some(Instant::now());
                Ok(())
            }
            // The instance's thread is gone (it cannot panic outside the guarded run): run it elsewhere.
            Err(mpsc::SendError(job)) => {
                self.busy[runner] = Some(Instant::now());
                Err(job)
            }
        }
    }

    /// A finished batch, if one is back.
    pub fn try_finished(&mut self) -> Option<Done> {
        let done = self.done.try_recv().ok()?;
        self.busy[done.runner] = None;
        Some(done)
    }

    /// Waits for the next finished batch; `None` if no instance is running one.
    pub fn wait_finished(&mut self) -> Option<Done> {
        if !self.is_busy() {
            return None;
        }
        let done = self.done.recv().ok()?;
        self.busy[done.runner] = None;
        Some(done)
    }

    /// Whether some instance is running a batch.
    pub fn is_busy(&self) -> bool {
        self.threads.iter().zip(&self.busy).any(|(thread, busy)| busy.is_some() && !thread.is_finished())
    }

    /// Since when the longest-running batch now running started, if any: the worker's heartbeat must not hide an
    /// instance wedged in a run.
    pub fn oldest_run(&self) -> Option<Instant> {
        self.busy.iter().flatten().min().copied()
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        // Closing their job channels ends the idle threads; each drops its session as it ends. One wedged in a run
        // cannot be joined: the process exit ends it.
        self.jobs.clear();
        for (thread, busy) in self.threads.drain(..).zip(&self.busy) {
            if busy.is_none() || thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
