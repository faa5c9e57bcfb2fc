//! From a validated `[[pipeline]]` to a runnable [`Pipeline`]: stages through the registry, the model through
//! ONNX Runtime, and the start-up check that the two fit together.

use std::io::Read;
use std::sync::Arc;

use zinfer_ort::{Model, OrtEnvironment};
use zinfer_stage_api::{BuildContext, BuildError, ModelManifest, Registry, Stage};

use super::golden::{self, DriftGuard, GoldenRun};
use super::{ModelIdentity, Pipeline, Rung};
use crate::config::{Config, ConfigError, DriftGuardMode, PipelineConfig, StageSpec};

/// The input length warm-ups assume when a text model's manifest gives no `max_length`.
const DEFAULT_LONGEST_INPUT: usize = 512;

/// The length a warm-up gives each dimension that neither the model nor a stage fixes ([`Stage::produces`]; a sensor
/// window is fixed, a text's tokens are not): the manifest's `max_length`, the longest input the pipeline runs.
pub fn open_length(manifest: &ModelManifest) -> usize {
    manifest.max_length.unwrap_or(DEFAULT_LONGEST_INPUT)
}

/// The rows of the largest run the pipeline makes of `model`, which its warm-up runs: `max_batch`, or fewer where
/// the input's length varies per message and `max_batch_tokens` caps a run of the longest inputs.
pub fn warm_up_rows(pipeline: &PipelineConfig, model: &Model, manifest: &ModelManifest) -> usize {
    if model.varies_in_length() {
        (pipeline.max_batch_tokens / open_length(manifest)).clamp(1, pipeline.max_batch)
    } else {
        pipeline.max_batch
    }
}

/// The per-item shape of each input of `model` at its warm-up, e.g. `input_ids [128], attention_mask [128]` or
/// `frames [100, 6]`.
pub fn warm_up_shape(model: &Model, manifest: &ModelManifest) -> String {
    let shapes = model.warm_up_shapes(open_length(manifest));
    let shown: Vec<String> = shapes.iter().map(|(name, shape)| format!("{name} {shape:?}")).collect();
    shown.join(", ")
}

/// The longest first axis among the inputs of `model` at its warm-up: tokens of a text, samples of a window.
pub fn warm_up_length(model: &Model, manifest: &ModelManifest) -> usize {
    let shapes = model.warm_up_shapes(open_length(manifest));
    shapes.iter().filter_map(|(_, shape)| shape.first().copied()).max().unwrap_or(0)
}

/// What applies where a pipeline's table leaves a setting out (see [`crate::DEFAULT_INSTANCES`] and
/// [`crate::default_intra_threads`]).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// ONNX Runtime threads per session.
    pub intra_threads: usize,
    /// Sessions per pipeline.
    pub instances: usize,
}

/// Builds pipeline `index` of `config`: its decoder, and for its `model` and each model of its ladder the stages and
/// the model. Errors name the file and key at fault.
pub fn build(
    config: &Config,
    index: usize,
    registry: &Arc<Registry>,
    ort: &OrtEnvironment,
    defaults: Defaults,
) -> Result<Pipeline, ConfigError> {
    let pipeline = &config.pipelines[index];
    let key = &pipeline.key;
    let context = BuildContext { manifest: &pipeline.manifest, base_dir: &pipeline.base_dir };
    let decoder = registry
        .build_decoder(&pipeline.decode.kind, &pipeline.decode.options, &context)
        .map_err(|error| config.error_at(&stage_key_of(&format!("{key}.decode"), &error), error_text(error)))?;

    let count = pipeline.instances.unwrap_or(defaults.instances).max(1);
    let (first, instances, drift) =
        build_rung(config, pipeline, &pipeline.manifest, &format!("{key}.model"), registry, ort, defaults, count)?;
    let mut rungs = vec![first];
    let ladder = match &pipeline.ladder {
        None => None,
        Some(ladder) => {
            // Further rungs run on the worker's own thread: instances serve the first rung only.
            for (rung, manifest) in ladder.rungs.iter().enumerate() {
                let model_key = format!("{key}.ladder.rungs[{rung}]");
                let (mut built, _, _) = build_rung(config, pipeline, manifest, &model_key, registry, ort, defaults, 1)?;
                if built.keeps_state() {
                    // The first rung's stages will feed this rung's model: check the model against them.
                    rungs[0].check_feeds(&built).map_err(|error| config.error_at(&model_key, error.to_string()))?;
                    built.share_preprocessing();
                }
                rungs.push(built);
            }
            Some(super::ladder::Ladder::new(rungs.len(), ladder.down_after, ladder.up_after))
        }
    };
    Ok(Pipeline {
        index,
        decoder: decoder.into(),
        rungs,
        ladder,
        instances,
        deadline_ms: pipeline.deadline_ms,
        max_rows: pipeline.max_batch,
        drift,
    })
}

/// What [`build_rung`] makes: the rung, its model's further instances, and its golden inputs' first run.
type BuiltRung = (Rung, Vec<Model>, Option<(DriftGuard, GoldenRun)>);

/// Builds the stages for `manifest`, loads `count` sessions of its model, warms them up and times them, and runs
/// its golden inputs. Errors about the model name `model_key`.
#[allow(clippy::too_many_arguments)]
fn build_rung(
    config: &Config,
    pipeline: &PipelineConfig,
    manifest: &ModelManifest,
    model_key: &str,
    registry: &Arc<Registry>,
    ort: &OrtEnvironment,
    defaults: Defaults,
    count: usize,
) -> Result<BuiltRung, ConfigError> {
    let key = &pipeline.key;
    let context = BuildContext { manifest, base_dir: &pipeline.base_dir };
    let at =
        |stage_key: String, error: BuildError| config.error_at(&stage_key_of(&stage_key, &error), error_text(error));
    let preprocess = build_stages(registry, &pipeline.preprocess, &context, &format!("{key}.preprocess"), &at)?;
    let postprocess = build_stages(registry, &pipeline.postprocess, &context, &format!("{key}.postprocess"), &at)?;

    // What the stages feed the model: checked against its signature below, and the shape warm-ups use where the
    // model leaves a dimension open.
    let produced: Vec<_> = preprocess.iter().flat_map(|stage| stage.produces()).collect();
    verify_checksum(manifest).map_err(|reason| config.error_at(model_key, reason))?;
    // Load and warm up at the largest shape this pipeline will run, measuring what each costs in RSS.
    // Every instance is measured. Each holds its own copy of the weights: ONNX Runtime's container of pre-packed
    // weights, which sessions can share, made no difference with the shipped int8 models (their MatMulInteger
    // kernels pack nothing; the second sentiment instance cost 8.6 MB to load either way).
    let longest = open_length(manifest);
    let mut models = Vec::with_capacity(count);
    let mut memory = crate::memory::ModelMemory::default();
    for instance in 1..=count {
        let mut warm_up_error = None;
        let load = || {
            let mut model = Model::load(ort, &manifest.model, &pipeline.session, defaults.intra_threads)?;
            model.declare_inputs(&produced);
            crate::memory::page_out_after_session(config.memory.page_out_after_load);
            Ok::<_, zinfer_ort::OrtError>(model)
        };
        let (model, cost) = crate::memory::probe(load, |model: &mut Model| {
            let rows = warm_up_rows(pipeline, model, manifest);
            let failed = model.warm_up(rows, longest).err();
            warm_up_error = failed.map(|error| (error, rows, warm_up_shape(model, manifest)));
        })
        .map_err(|error| config.error_at(model_key, error.to_string()))?;
        if let Some((error, rows, shape)) = warm_up_error {
            return Err(config.error_at(model_key, format!("the warm-up run at {rows} × ({shape}) failed: {error}")));
        }
        if count > 1 {
            tracing::info!(
                pipeline = %pipeline.name, instance, of = count, load_bytes = cost.load_bytes,
                working_bytes = cost.working_bytes, "model instance loaded and warmed up"
            );
        }
        memory.load_bytes += cost.load_bytes;
        memory.working_bytes += cost.working_bytes;
        models.push(model);
    }
    let instances = models.split_off(1);
    let Some(mut model) = models.pop() else { unreachable!("at least one instance is loaded") };
    // What a run costs here, alone and at the warm-up's rows, timed now so that deadlines and batching are judged
    // by measurements from the first message (the cost model's docs say why). A new shape allocates on its first
    // run: batch 1 runs once untimed; the warm-up's shape has just run.
    // Timed on the first instance only: the others are the same model on the same machine.
    let mut calibration = Vec::new();
    let timed = |model: &mut Model, batch: usize| {
        model.time_run(batch, longest).map_err(|error| {
            let shape = warm_up_shape(model, manifest);
            config.error_at(model_key, format!("the timing run at {batch} × ({shape}) failed: {error}"))
        })
    };
    let rows = warm_up_rows(pipeline, &model, manifest);
    let (elements, took) = timed(&mut model, rows)?;
    calibration.push((elements, rows, took));
    if rows > 1 {
        timed(&mut model, 1)?;
        let (elements, took) = timed(&mut model, 1)?;
        calibration.push((elements, 1, took));
    }
    let consumed: Vec<_> = postprocess.iter().flat_map(|stage| stage.consumes()).collect();
    model.check(&produced, &consumed).map_err(|error| config.error_at(key, error.to_string()))?;
    let drift = check_golden(config, pipeline, manifest, model_key, registry, &mut model)?;
    let identity = ModelIdentity { name: manifest.name.clone(), version: manifest.version.clone() };
    let rung = Rung { identity, preprocess, model, postprocess, memory, calibration, shares_preprocessing: false };
    Ok((rung, instances, drift))
}

/// Runs the model's golden inputs (see [`super::golden`]) on the first instance: the others are the same file in
/// the same ONNX Runtime. With `drift_guard = "refuse"` a model outside its tolerance, or whose inputs cannot run
/// through this pipeline's stages, is a start-up error, and at a reload an error that keeps the serving generation;
/// with `"warn"` it is logged and served.
fn check_golden(
    config: &Config,
    pipeline: &PipelineConfig,
    manifest: &ModelManifest,
    key: &str,
    registry: &Arc<Registry>,
    model: &mut Model,
) -> Result<Option<(DriftGuard, GoldenRun)>, ConfigError> {
    let guard =
        DriftGuard::for_pipeline(pipeline, manifest, registry).map_err(|reason| config.error_at(key, reason))?;
    let Some(mut guard) = guard else { return Ok(None) };
    let run = guard.check(model);
    let failures = golden::failures(&run, guard.spec());
    let shown = golden::summary(&run);
    if failures.is_empty() {
        tracing::info!(pipeline = %pipeline.name, model = %manifest.name, report = %shown, "golden inputs reproduced");
    } else if pipeline.drift_guard == DriftGuardMode::Refuse {
        return Err(config.error_at(
            key,
            format!(
                "model {} {} ({}) does not reproduce its golden inputs ({shown}): {}. The file, the ONNX Runtime \
                 build or this CPU changes its answers (or this pipeline's stages cannot feed them): reinstall the \
                 model package, or use the ONNX Runtime it was made with; `drift_guard = \"warn\"` serves it anyway",
                manifest.name,
                manifest.version,
                manifest.model.display(),
                failures.join("; ")
            ),
        ));
    } else {
        tracing::warn!(
            pipeline = %pipeline.name, model = %manifest.name, report = %shown, failures = ?failures,
            "the model does not reproduce its golden inputs; serving it anyway (drift_guard = \"warn\")"
        );
    }
    Ok(Some((guard, run)))
}

fn build_stages(
    registry: &Registry,
    specs: &[StageSpec],
    context: &BuildContext<'_>,
    key: &str,
    at: &dyn Fn(String, BuildError) -> ConfigError,
) -> Result<Vec<Box<dyn Stage>>, ConfigError> {
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            registry
                .build_stage(&spec.kind, &spec.options, context)
                .map_err(|error| at(format!("{key}[{index}]"), error))
        })
        .collect()
}

/// The full key a build error points at, below the stage's table key.
fn stage_key_of(table: &str, error: &BuildError) -> String {
    match error {
        BuildError::Option { key, .. } | BuildError::File { key, .. } if !key.is_empty() => {
            format!("{table}.{key}")
        }
        BuildError::UnknownType { .. } => format!("{table}.type"),
        _ => table.to_owned(),
    }
}

fn error_text(error: BuildError) -> String {
    match error {
        BuildError::Option { reason, .. } => reason,
        BuildError::File { path, reason, .. } => format!("cannot use {path}: {reason}"),
        other => other.to_string(),
    }
}

/// Checks the model file against the manifest's `sha256`, so a truncated or swapped file fails loudly at start-up.
fn verify_checksum(manifest: &ModelManifest) -> Result<(), String> {
    use sha2::Digest;
    let Some(expected) = &manifest.sha256 else {
        return Ok(());
    };
    let path = &manifest.model;
    let mut file = std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let actual: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    if &actual != expected {
        return Err(format!(
            "{} has sha256 {actual}, but its manifest expects {expected}; the file is corrupt or not the manifest's model",
            path.display()
        ));
    }
    Ok(())
}
