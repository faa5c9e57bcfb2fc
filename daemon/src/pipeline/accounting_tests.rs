//! The accounting invariant under random interleavings: every message admitted gets exactly one outcome, under its
//! own id, and `in_flight` always equals the messages admitted and not yet answered.
//!
//! A seeded random driver plays the ingress (admission through `try_receive` and the bounded queue, answering what
//! the queue refuses or evicts, as `io::ingress` does) and the egress (counting each outcome the worker sends), around
//! a real worker thread running the fixture model through a real ONNX Runtime. Its moves: valid requests with and
//! without deadlines (some already hopeless), invalid and oversized ones, memory pressure going up and down, pauses,
//! and a shutdown whose drain timeout has passed. After every move it checks the books against its own ledger, and
//! that what waits stays within the queue's bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use zinfer_stage_api::RawMessage;

use super::outcome::{DropReason, Outcome, Verdict};
use super::queue::{self, Overload, Refused, Waiter};
use super::worker::{self, WorkerContext};
use super::{Envelope, ModelIdentity};
use crate::memory::{Budget, Governor, Usage};
use crate::telemetry::metrics::{PipelineDescription, PipelineMetrics};

/// xorshift64*: reproducible moves without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

#[derive(Default)]
struct Ledger {
    /// Outcomes per admitted id.
    outcomes: HashMap<String, usize>,
    /// Ids that got an outcome without being admitted (must stay empty).
    strangers: Vec<String>,
}

impl Ledger {
    fn answer(&mut self, metrics: &PipelineMetrics, identity: &ModelIdentity, outcome: Outcome) {
        metrics.record_outcome(&outcome, &outcome.to_result("p", Some(identity), &[]));
        match self.outcomes.get_mut(&outcome.id) {
            Some(count) => *count += 1,
            None => self.strangers.push(outcome.id),
        }
    }

    fn unanswered(&self) -> u64 {
        self.outcomes.values().filter(|&&count| count == 0).count() as u64
    }
}

pub(super) fn pipeline(max_batch: usize) -> super::Pipeline {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixture/manifest.toml");
    let path = dir.path().join("p.toml");
    // ONNX Runtime as scripts/test.sh installs it, unless ORT_DYLIB_PATH names another.
    let library = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../.ort/{}/lib/libonnxruntime.so", std::env::consts::ARCH));
    let onnxruntime = if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        String::new()
    } else {
        assert!(library.is_file(), "{} is missing: run scripts/install-onnxruntime.sh first", library.display());
        format!("[onnxruntime]\nlibrary = \"{}\"\n", library.display())
    };
    let text = onnxruntime
        + &format!(
            "[[pipeline]]\nname = \"p\"\ninput = \"in/**\"\noutput_prefix = \"out\"\nmodel = \"{}\"\nmax_batch = {max_batch}\n\
         [pipeline.decode]\ntype = \"text\"\ndefault_format = \"json\"\n\
         [[pipeline.preprocess]]\ntype = \"tokenize\"\nbuckets = [16, 32, 64, 128]\n\
         [[pipeline.postprocess]]\ntype = \"classify\"\n",
            manifest.display()
        );
    std::fs::write(&path, text).expect("write config");
    let config = crate::config::load(&[path]).expect("valid config");
    crate::build_pipelines(&config, &std::sync::Arc::new(crate::default_registry()))
        .expect("the fixture pipeline builds")
        .remove(0)
}

fn payload(rng: &mut Rng, id: &str) -> Vec<u8> {
    let text = ["great fun", "a dull, lifeless mess that wastes its cast", "an ambitious, sprawling epic"];
    match rng.below(10) {
        // Not JSON: an error outcome, under the generated id (the payload has none to find).
        0 => b"\xff\xfe not json".to_vec(),
        // Larger than the decoder's 64 KiB: payload_too_large, under the payload's id.
        1 => format!(r#"{{"id": "{id}", "text": "{}"}}"#, "x".repeat(70_000)).into_bytes(),
        // A deadline of 0-4 ms: often hopeless by the time the worker looks.
        2 | 3 => {
            format!(r#"{{"id": "{id}", "text": "{}", "deadline_ms": {}}}"#, text[rng.below(3) as usize], rng.below(5))
                .into_bytes()
        }
        _ => format!(r#"{{"id": "{id}", "text": "{}"}}"#, text[rng.below(3) as usize]).into_bytes(),
    }
}

fn run_scenario(seed: u64, moves: usize, overload: Overload) {
    let mut rng = Rng(seed.max(1));
    let pipeline = pipeline(1 + rng.below(8) as usize);
    let identity = ModelIdentity { name: "fixture".into(), version: "1".into() };
    let capacity = 1 + rng.below(16) as usize;
    let metrics = Arc::new(PipelineMetrics::new(
        PipelineDescription {
            name: "p".into(),
            input: "in/**".into(),
            model: identity.clone(),
            ladder: Vec::new(),
            providers: Vec::new(),
            memory: Default::default(),
            session: Default::default(),
            generation: 1,
            stages: pipeline.stage_names(),
        },
        2 * capacity + 8 + rng.below(64) as usize,
    ));
    let governor = Arc::new(Governor::new(Some(Budget { bytes: 1_000_000, usage: Usage::ProcessRss }), 80));
    governor.observe(0);
    let abandon = Arc::new(AtomicBool::new(false));
    let (outcomes, mut worker_outcomes) = mpsc::unbounded_channel();
    let (sender, receiver) = queue::bounded(capacity, 200_000, overload);
    let context = WorkerContext {
        max_batch: 8,
        max_batch_tokens: crate::config::DEFAULT_MAX_BATCH_TOKENS,
        outcomes,
        abandon: Arc::clone(&abandon),
        metrics: Arc::clone(&metrics),
        memory: Arc::clone(&governor),
    };
    let worker = worker::spawn("accounting", pipeline, receiver, context).expect("worker thread");
    let mut ledger = Ledger::default();
    let mut sender = Some(sender);
    for step in 0..moves {
        match rng.below(100) {
            0..=79 => {
                let id = format!("s{seed}-{step}");
                if !metrics.try_receive() {
                    continue;
                }
                ledger.outcomes.insert(id.clone(), 0);
                let message = RawMessage {
                    key: format!("in/{}", rng.below(3)),
                    payload: payload(&mut rng, &id),
                    encoding: "application/json".into(),
                    attachment_id: None,
                };
                let envelope = Envelope::new(message, id);
                metrics.record_enqueued();
                let queue = sender.as_ref().expect("the queue closes only after the last move");
                let (answered, reason) = match queue.push(envelope) {
                    Ok(evicted) => {
                        for waiter in evicted {
                            metrics.record_dequeued();
                            let superseded = Verdict::Dropped(DropReason::Superseded);
                            let outcome = match waiter {
                                Waiter::Arrived(envelope) => {
                                    let id = envelope.fallback_id.clone();
                                    Outcome::undecoded(0, *envelope, id, superseded, 0)
                                }
                                Waiter::Ready(prepared) => Outcome::prepared(0, *prepared, superseded),
                            };
                            ledger.answer(&metrics, &identity, outcome);
                        }
                        continue;
                    }
                    Err(Refused::Full(refused)) => (*refused, DropReason::QueueFull),
                    Err(Refused::Closed(refused)) => (*refused, DropReason::Shutdown),
                    Err(Refused::Failed(_)) => panic!("seed {seed}, move {step}: the worker failed"),
                };
                metrics.record_dequeued();
                let id = answered.fallback_id.clone();
                ledger.answer(&metrics, &identity, Outcome::undecoded(0, answered, id, Verdict::Dropped(reason), 0));
            }
            80..=87 => {
                governor.observe([0, 850_000, 1_100_000][rng.below(3) as usize]);
            }
            88..=97 => std::thread::sleep(Duration::from_micros(rng.below(3000))),
            _ => {
                if moves - step < moves / 10 {
                    abandon.store(true, Ordering::Relaxed);
                }
            }
        }
        while let Ok(outcome) = worker_outcomes.try_recv() {
            ledger.answer(&metrics, &identity, outcome);
        }
        let stats = metrics.snapshot();
        assert_eq!(stats.in_flight, ledger.unanswered(), "seed {seed}, move {step}: in_flight vs the ledger");
        assert!(stats.in_flight <= stats.max_in_flight, "seed {seed}, move {step}: {stats:?}");
        // What waits, wherever it waits, stays within queue_capacity and queue_bytes; under `latest`, by at most the
        // newest message while the worker prepares (see `queue`).
        let (waiting, bytes) = sender.as_ref().map_or((0, 0), queue::Sender::load);
        let (slack, slack_bytes) = if overload == Overload::Fifo { (0, 0) } else { (1, 70_100) };
        assert!(
            waiting <= capacity + slack && bytes <= 200_000 + slack_bytes,
            "seed {seed}, move {step}: {waiting} waiting, {bytes} bytes"
        );
    }
    // Shutdown: the ingress lets go of the queue, the worker answers what it holds and ends.
    drop(sender.take());
    worker.join().expect("the worker ends without panicking");
    while let Ok(outcome) = worker_outcomes.try_recv() {
        ledger.answer(&metrics, &identity, outcome);
    }
    assert!(ledger.strangers.is_empty(), "seed {seed}: outcomes for ids never admitted: {:?}", ledger.strangers);
    let wrong: Vec<_> = ledger.outcomes.iter().filter(|(_, count)| **count != 1).take(5).collect();
    assert!(wrong.is_empty(), "seed {seed}: ids without exactly one outcome: {wrong:?}");
    let stats = metrics.snapshot();
    assert_eq!(stats.in_flight, 0, "seed {seed}: {stats:?}");
    assert_eq!(stats.received, stats.completed + stats.failed + stats.expired + stats.dropped, "seed {seed}");
    assert_eq!(stats.received, ledger.outcomes.len() as u64, "seed {seed}");
}

#[test]
fn every_admitted_message_gets_exactly_one_outcome_under_random_interleavings() {
    for seed in 1..=24 {
        let overload = if seed % 2 == 0 { Overload::Latest { per_key: 1 + seed as usize % 3 } } else { Overload::Fifo };
        run_scenario(seed, 400, overload);
    }
}
