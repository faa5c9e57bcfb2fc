//! The drift guard: a model's golden inputs, run where it serves, before it serves.
//!
//! An int8 model can go wrong without failing: another ONNX Runtime build, a CPU whose int8 kernels round
//! differently (VNNI or not), a wrong file pushed by an update that came with a matching checksum. Each still loads
//! and answers, only not what its maker measured. So the model toolkit ships, beside the model, a few inputs from the
//! validation split with the outputs of the fp32 model the int8 file was made from, and the tolerance the int8 file
//! met when it was made (the manifest's `[golden]`). zinferd runs them through the pipeline's own preprocessing
//! and model at start-up and before a reload swaps generations, and refuses a model outside that tolerance
//! (`drift_guard`); with `drift_check_every_s` the worker runs them again between messages, and telemetry shows the
//! result.
//!
//! Every check builds the preprocessing stages afresh: a stage with per-stream state (the sensor `window` stage)
//! must see each golden input as a stream of its own, and the serving stages must not see them at all.
//!
//! What is compared, whatever the model's task: each score's difference from the reference, where the score is the
//! softmax of the model's output (a model that outputs logits, the manifest's default when it has labels) or the
//! output itself (`compare = "raw"` in `[golden]`: probabilities, an anomaly score, an embedding); and whether the
//! largest score is the reference's (top-1 agreement), which `min_agreement` enforces when the manifest sets it (a
//! classifier's toolkit does).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use zinfer_ort::Model;
use zinfer_stage_api::{BuildContext, GoldenSpec, Input, Item, ModelManifest, Registry, Samples, Stage};

use crate::config::{PipelineConfig, StageSpec};

/// One golden input and the output its model must reproduce.
#[derive(Debug, Clone)]
struct GoldenCase {
    input: Input,
    scores: Vec<f64>,
}

#[derive(Deserialize)]
struct GoldenFile {
    cases: Vec<RawCase>,
}

#[derive(Deserialize)]
struct RawCase {
    text: Option<String>,
    /// A sensor window of raw readings: one row of channel values per sample.
    samples: Option<Vec<Vec<f32>>>,
    scores: Vec<f32>,
}

/// Builds a fresh set of the pipeline's preprocessing stages.
type StageMaker = Box<dyn Fn() -> Result<Vec<Box<dyn Stage>>, String> + Send>;

/// A pipeline's golden inputs, its tolerance, and how to run them.
pub struct DriftGuard {
    cases: Vec<GoldenCase>,
    spec: GoldenSpec,
    output: Option<String>,
    stages: StageMaker,
    every: Option<Duration>,
    last: Instant,
}

/// One run of the golden inputs: what it measured, or why a case could not run.
pub type GoldenRun = Result<GoldenReport, String>;

/// What one run of the golden inputs measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenReport {
    /// Cases run.
    pub cases: usize,
    /// Cases whose largest score is the reference's (a classifier's top-1 class; trivially every case of a model
    /// with one output value).
    pub agreeing: usize,
    /// The largest difference of any score from its reference.
    pub max_deviation: f64,
    /// The mean, over the cases, of each case's largest difference.
    pub mean_deviation: f64,
    /// The case with the largest difference (0-based, in the golden file's order).
    pub worst_case: usize,
    /// What the run took, building the stages included.
    pub took: Duration,
    /// Of that, building the stages (a tokenizer loads its vocabulary).
    pub building: Duration,
}

impl GoldenReport {
    /// The fraction of cases whose top-1 class matched.
    pub fn agreement(&self) -> f64 {
        if self.cases == 0 { 1.0 } else { self.agreeing as f64 / self.cases as f64 }
    }

    /// Which tolerances of `spec` the run broke, in words; empty if it met them all.
    pub fn failures(&self, spec: &GoldenSpec) -> Vec<String> {
        let mut failures = Vec::new();
        if self.agreement() < spec.min_agreement {
            failures.push(format!(
                "the top-1 class matched on {}/{} cases ({:.3}), below min_agreement {}",
                self.agreeing,
                self.cases,
                self.agreement(),
                spec.min_agreement
            ));
        }
        if self.max_deviation > spec.max_deviation {
            failures.push(format!(
                "a score differs from its reference by {:.4} (case {}), above max_deviation {}",
                self.max_deviation, self.worst_case, spec.max_deviation
            ));
        }
        if self.mean_deviation > spec.max_mean_deviation {
            failures.push(format!(
                "the scores differ by {:.4} on average, above max_mean_deviation {}",
                self.mean_deviation, spec.max_mean_deviation
            ));
        }
        failures
    }
}

/// Why `run` fails `spec`, in words: each broken tolerance, or why it could not run at all; empty if it passed.
/// Start-up, the worker's periodic runs, telemetry and `zinferd check` all judge a run by this.
pub fn failures(run: &GoldenRun, spec: &GoldenSpec) -> Vec<String> {
    match run {
        Ok(report) => report.failures(spec),
        Err(reason) => vec![format!("could not run: {reason}")],
    }
}

/// A run in a few words for logs: its report, or "not run".
pub fn summary(run: &GoldenRun) -> String {
    run.as_ref().map_or_else(|_| "not run".to_owned(), ToString::to_string)
}

impl std::fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "top-1 {}/{}, largest deviation {:.4} (case {}), mean {:.4}, in {:.1} ms ({:.1} ms building the stages)",
            self.agreeing,
            self.cases,
            self.max_deviation,
            self.worst_case,
            self.mean_deviation,
            self.took.as_secs_f64() * 1e3,
            self.building.as_secs_f64() * 1e3
        )
    }
}

impl DriftGuard {
    /// The guard of `pipeline`, if its manifest has golden inputs and its `drift_guard` is not off. Errors say
    /// what is wrong with the golden file.
    pub fn for_pipeline(
        pipeline: &PipelineConfig,
        manifest: &ModelManifest,
        registry: &Arc<Registry>,
    ) -> Result<Option<Self>, String> {
        use crate::config::DriftGuardMode;
        let Some(spec) = manifest.golden.clone().filter(|_| pipeline.drift_guard != DriftGuardMode::Off) else {
            return Ok(None);
        };
        let cases = load_cases(&spec.file, manifest)?;
        let stages = stage_maker(Arc::clone(registry), manifest.clone(), pipeline);
        Ok(Some(Self {
            cases,
            spec,
            output: manifest.output.clone(),
            stages,
            every: pipeline.drift_check_every,
            last: Instant::now(),
        }))
    }

    /// The tolerance from the manifest.
    pub fn spec(&self) -> &GoldenSpec {
        &self.spec
    }

    /// Whether a periodic check is due: its interval has passed and the worker is idle, or it has passed twice over
    /// (a pipeline that is never idle is still checked, between two batches).
    pub fn due(&self, idle: bool) -> bool {
        self.every.is_some_and(|every| {
            let since = self.last.elapsed();
            since >= every && (idle || since >= 2 * every)
        })
    }

    /// Runs every golden input through fresh preprocessing stages and `model`, one at a time (the references were
    /// made at batch 1: dynamic int8 quantization scales activations by each run's range). An error means a case
    /// could not run at all (a stage refused it, the model failed).
    pub fn check(&mut self, model: &mut Model) -> GoldenRun {
        self.last = Instant::now();
        // Stages may be a user's plugins: one that panics on a golden input fails the run, not the worker.
        catch_unwind(AssertUnwindSafe(|| self.run_all(model)))
            .unwrap_or_else(|_| Err("a stage or the model panicked on a golden input".to_owned()))
    }

    fn run_all(&self, model: &mut Model) -> GoldenRun {
        let started = Instant::now();
        let mut stages = (self.stages)()?;
        let building = started.elapsed();
        let mut report = GoldenReport {
            cases: self.cases.len(),
            agreeing: 0,
            max_deviation: 0.0,
            mean_deviation: 0.0,
            worst_case: 0,
            took: Duration::ZERO,
            building,
        };
        for (index, case) in self.cases.iter().enumerate() {
            let scores = self.run_case(index, case, &mut stages, model)?;
            if scores.len() != case.scores.len() {
                return Err(format!(
                    "golden case {index}: the model gave {} scores where the reference has {}",
                    scores.len(),
                    case.scores.len()
                ));
            }
            let deviation = scores
                .iter()
                .zip(&case.scores)
                .map(|(&score, &reference)| (score - reference).abs())
                .fold(0.0, f64::max);
            // A NaN score is as far from its reference as a score can be.
            let deviation =
                if deviation.is_nan() || scores.iter().any(|score| score.is_nan()) { f64::INFINITY } else { deviation };
            if top1(&scores) == top1(&case.scores) {
                report.agreeing += 1;
            }
            if deviation > report.max_deviation {
                (report.max_deviation, report.worst_case) = (deviation, index);
            }
            report.mean_deviation += deviation / self.cases.len() as f64;
        }
        report.took = started.elapsed();
        Ok(report)
    }

    fn run_case(
        &self,
        index: usize,
        case: &GoldenCase,
        stages: &mut [Box<dyn Stage>],
        model: &mut Model,
    ) -> Result<Vec<f64>, String> {
        let key = format!("zinfer/golden/{index}");
        let mut inputs = Vec::new();
        for input in frames(&case.input) {
            let mut item = Item::new(format!("golden-{index}"), key.clone(), input);
            for stage in stages.iter_mut() {
                stage.process(&mut item).map_err(|error| {
                    format!("golden case {index}: the `{}` stage refused it: {error}", stage.name())
                })?;
            }
            inputs.extend(super::model_inputs(&item).map(<[_]>::to_vec));
        }
        let [features] = inputs.as_slice() else {
            return Err(format!(
                "golden case {index}: preprocessing made {} model inputs of it, not one (a sensor case must be one \
                 whole window)",
                inputs.len()
            ));
        };
        let outputs = model.run(&[features]).map_err(|error| format!("golden case {index}: {error}"))?;
        let outputs = outputs.into_iter().next().unwrap_or_default();
        let output = match &self.output {
            Some(name) => outputs.iter().find(|tensor| &tensor.name == name),
            None => outputs.first(),
        };
        let values = output.and_then(|output| output.tensor.as_f32()).ok_or_else(|| {
            format!("golden case {index}: the model has no float32 output {}", self.output.as_deref().unwrap_or(""))
        })?;
        let values: Vec<f64> = values.iter().map(|&value| f64::from(value)).collect();
        Ok(if self.spec.softmax { softmax(&values) } else { values })
    }
}

/// How a golden input reaches the stages: a text whole; a sensor window one sample per frame, as the sparsest
/// stream would send it, so that no frame-size limit of the pipeline (`validate`'s `max_samples`) refuses it. The
/// frames share the case's key: a windowing stage cuts the window from them.
fn frames(input: &Input) -> Vec<Input> {
    match input {
        Input::Samples(samples) if samples.width > 0 => samples
            .values
            .chunks(samples.width)
            .map(|sample| {
                Input::Samples(Samples { width: samples.width, values: sample.to_vec(), ..Samples::default() })
            })
            .collect(),
        other => vec![other.clone()],
    }
}

fn top1(scores: &[f64]) -> Option<usize> {
    scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(index, _)| index)
}

fn softmax(values: &[f64]) -> Vec<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = values.iter().map(|value| (value - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|value| value / sum).collect()
}

/// Reads and checks the golden file.
fn load_cases(path: &Path, manifest: &ModelManifest) -> Result<Vec<GoldenCase>, String> {
    let at = |reason: String| format!("golden file {}: {reason}", path.display());
    let text = std::fs::read_to_string(path).map_err(|error| at(error.to_string()))?;
    let file: GoldenFile = serde_json::from_str(&text).map_err(|error| at(error.to_string()))?;
    if file.cases.is_empty() {
        return Err(at("it has no cases".into()));
    }
    file.cases
        .into_iter()
        .enumerate()
        .map(|(index, case)| {
            if !manifest.labels.is_empty() && case.scores.len() != manifest.labels.len() {
                return Err(at(format!(
                    "case {index} has {} scores; the manifest has {} labels",
                    case.scores.len(),
                    manifest.labels.len()
                )));
            }
            let input = match (case.text, case.samples) {
                (Some(text), None) => Input::Text(text),
                (None, Some(rows)) => {
                    Input::Samples(samples(rows).map_err(|reason| at(format!("case {index}: {reason}")))?)
                }
                _ => return Err(at(format!("case {index} needs exactly one of `text` and `samples`"))),
            };
            Ok(GoldenCase { input, scores: case.scores.into_iter().map(f64::from).collect() })
        })
        .collect()
}

fn samples(rows: Vec<Vec<f32>>) -> Result<Samples, String> {
    let width = rows.first().map_or(0, Vec::len);
    if width == 0 || rows.iter().any(|row| row.len() != width) {
        return Err("`samples` needs rows of one non-zero width".into());
    }
    Ok(Samples { width, values: rows.into_iter().flatten().collect(), ..Samples::default() })
}

fn stage_maker(registry: Arc<Registry>, manifest: ModelManifest, pipeline: &PipelineConfig) -> StageMaker {
    let specs: Vec<StageSpec> = pipeline.preprocess.clone();
    let base_dir = pipeline.base_dir.clone();
    Box::new(move || {
        let context = BuildContext { manifest: &manifest, base_dir: &base_dir };
        specs
            .iter()
            .map(|spec| {
                registry
                    .build_stage(&spec.kind, &spec.options, &context)
                    .map_err(|error| format!("cannot build the `{}` stage for the golden inputs: {error}", spec.kind))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GoldenSpec {
        let file = "g.json".into();
        GoldenSpec { file, min_agreement: 0.9, max_deviation: 0.2, max_mean_deviation: 0.05, softmax: true }
    }

    fn report(agreeing: usize, max_deviation: f64, mean_deviation: f64) -> GoldenReport {
        let took = Duration::ZERO;
        GoldenReport { cases: 10, agreeing, max_deviation, mean_deviation, worst_case: 3, took, building: took }
    }

    #[test]
    fn each_tolerance_is_judged_on_its_own() {
        assert!(report(9, 0.2, 0.05).failures(&spec()).is_empty(), "the limits themselves pass");
        let failures = report(8, 0.2, 0.05).failures(&spec());
        assert!(failures.len() == 1 && failures[0].contains("8/10"), "{failures:?}");
        let failures = report(10, 0.21, 0.01).failures(&spec());
        assert!(failures.len() == 1 && failures[0].contains("case 3"), "{failures:?}");
        let failures = report(10, 0.1, 0.06).failures(&spec());
        assert!(failures.len() == 1 && failures[0].contains("on average"), "{failures:?}");
        assert_eq!(report(0, f64::INFINITY, f64::INFINITY).failures(&spec()).len(), 3);
    }

    #[test]
    fn softmax_and_top1_are_those_of_the_logits() {
        let probabilities = softmax(&[2.0, 0.0, -1.0]);
        assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((probabilities[0] - 0.843_794_7).abs() < 1e-6, "{probabilities:?}");
        assert_eq!(top1(&probabilities), Some(0));
        assert_eq!(top1(&softmax(&[1000.0, 1001.0])), Some(1), "no overflow");
    }

    /// A user's stage that panics on a golden input fails the run with a reason; the caller (the worker) goes on.
    #[test]
    fn a_stage_that_panics_fails_the_run_not_the_caller() {
        struct Panics;
        impl Stage for Panics {
            fn name(&self) -> &str {
                "panics"
            }
            fn process(&mut self, _: &mut Item) -> Result<(), zinfer_stage_api::StageError> {
                panic!("a user's stage panicked on purpose")
            }
        }
        let mut pipeline = super::super::accounting_tests::pipeline(1);
        let mut guard = DriftGuard {
            cases: vec![GoldenCase { input: Input::Text("fine".into()), scores: vec![0.5, 0.5] }],
            spec: spec(),
            output: None,
            stages: Box::new(|| Ok(vec![Box::new(Panics) as Box<dyn Stage>])),
            every: None,
            last: Instant::now(),
        };
        let error = guard.check(pipeline.model_mut()).expect_err("the run fails");
        assert!(error.contains("panicked"), "{error}");
    }

    #[test]
    fn golden_files_are_checked_case_by_case() {
        let dir = std::env::temp_dir().join(format!("zinfer-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let manifest = |labels: &[&str]| ModelManifest {
            path: dir.join("manifest.toml"),
            name: "m".into(),
            version: "1".into(),
            task: "t".into(),
            model: dir.join("m.onnx"),
            tokenizer: None,
            max_length: None,
            labels: labels.iter().map(|label| label.to_string()).collect(),
            output: None,
            sha256: None,
            sensor: None,
            golden: None,
            head: Default::default(),
        };
        let load = |text: &str, labels: &[&str]| {
            let path = dir.join("golden.json");
            std::fs::write(&path, text).expect("write");
            load_cases(&path, &manifest(labels))
        };
        let cases = load(r#"{"cases": [{"text": "fine", "scores": [0.1, 0.9]}], "made": {}}"#, &["a", "b"])
            .expect("a text case; keys the daemon does not read are allowed");
        assert_eq!(cases[0].input, Input::Text("fine".into()));
        let cases = load(r#"{"cases": [{"samples": [[1, 2], [3, 4]], "scores": [0.5]}]}"#, &[]).expect("a window");
        let Input::Samples(samples) = &cases[0].input else { panic!("samples") };
        assert_eq!((samples.width, samples.values.as_slice()), (2, &[1.0, 2.0, 3.0, 4.0][..]));
        for (text, why) in [
            (r#"{"cases": []}"#, "no cases"),
            (r#"{"cases": [{"text": "x", "scores": [1.0]}]}"#, "1 scores; the manifest has 2 labels"),
            (r#"{"cases": [{"scores": [0.5, 0.5]}]}"#, "exactly one of `text` and `samples`"),
            (r#"{"cases": [{"samples": [[1], [2, 3]], "scores": [0.5, 0.5]}]}"#, "rows of one non-zero width"),
            ("not json", "expected"),
        ] {
            let error = load(text, &["a", "b"]).expect_err(why);
            assert!(error.contains(why) && error.contains("golden.json"), "{why}: {error}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
