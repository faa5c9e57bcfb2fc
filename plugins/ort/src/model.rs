//! One model: a committed ONNX Runtime session, its signature, and batched runs over per-item tensors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ort::ep::{self, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use zinfer_stage_api::{ElementType, NamedTensor, Tensor, TensorData, TensorSpec};

use crate::options::{ExecutionProviderKind, OptimizationLevel, SessionConfig};
use crate::watchdog::Watchdog;
use crate::{OrtEnvironment, OrtError};

/// A model's inputs and outputs as per-item specs: the leading (batch) axis removed, dynamic axes as `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSignature {
    /// Inputs, in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
}

/// A loaded model, owned by one thread.
pub struct Model {
    session: Session,
    path: PathBuf,
    signature: ModelSignature,
    providers: Vec<String>,
    intra_threads: usize,
    run_options: Arc<RunOptions>,
    timeout: Option<(Duration, Watchdog)>,
    /// Per model input, the dimensions the stages declare they produce ([`Model::declare_inputs`]).
    declared: Vec<TensorSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("signature", &self.signature).finish_non_exhaustive()
    }
}

impl Model {
    /// Commits a session for `path` with `config`; `default_threads` applies when the config leaves threads unset.
    pub fn load(
        environment: &OrtEnvironment,
        path: &Path,
        config: &SessionConfig,
        default_threads: usize,
    ) -> Result<Self, OrtError> {
        let session_error = |reason: String| OrtError::Session { path: path.display().to_string(), reason };
        let intra_threads = config.intra_threads.unwrap_or(default_threads).max(1);
        let builder = Session::builder(environment.environment())
            .and_then(|builder| builder.with_intra_threads(intra_threads).map_err(Into::into))
            .and_then(|builder| builder.with_intra_op_spinning(config.spinning).map_err(Into::into))
            .and_then(|builder| builder.with_optimization_level(optimization(config.optimization)).map_err(Into::into))
            .and_then(|builder| builder.with_memory_pattern(config.memory_pattern).map_err(Into::into))
            .map_err(|error: ort::Error| session_error(error.to_string()))?;
        let builder = config.config_entries.iter().try_fold(builder, |builder, (key, value)| {
            builder.with_config_entry(key, value).map_err(|error| {
                session_error(format!("session config entry `{key}` = \"{value}\": {}", ort::Error::<()>::from(error)))
            })
        })?;
        let (mut builder, providers) = register_providers(builder, config);
        let session = builder.commit_from_file(path).map_err(|error| session_error(error.to_string()))?;
        let signature_error = |reason: String| OrtError::Signature { path: path.display().to_string(), reason };
        let inputs = session.inputs().iter().map(|input| spec(input.name(), input.dtype()));
        let outputs = session.outputs().iter().map(|output| spec(output.name(), output.dtype()));
        let signature = ModelSignature {
            inputs: inputs.collect::<Result<_, _>>().map_err(signature_error)?,
            outputs: outputs.collect::<Result<_, _>>().map_err(signature_error)?,
        };
        let run_options = Arc::new(RunOptions::new().map_err(|error| session_error(error.to_string()))?);
        let timeout = match config.run_timeout_ms {
            0 => None,
            ms => {
                let watchdog = Watchdog::start(Arc::clone(&run_options))
                    .map_err(|error| session_error(format!("cannot start the run watchdog: {error}")))?;
                Some((Duration::from_millis(ms), watchdog))
            }
        };
        Ok(Self {
            session,
            path: path.to_owned(),
            signature,
            providers,
            intra_threads,
            run_options,
            timeout,
            declared: Vec::new(),
        })
    }

    /// The model's per-item signature.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The execution providers registered for this session, in order of preference (`cpu` last).
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    /// The intra-op thread count in force.
    pub fn intra_threads(&self) -> usize {
        self.intra_threads
    }

    /// Checks that the stages produce every model input and that what they consume exists among the outputs,
    /// with matching element types and fixed dimensions.
    pub fn check(&self, produced: &[TensorSpec], consumed: &[TensorSpec]) -> Result<(), OrtError> {
        let fail = |reason: String| OrtError::Signature { path: self.path.display().to_string(), reason };
        for input in &self.signature.inputs {
            let Some(offer) = produced.iter().find(|offer| offer.name == input.name) else {
                let names: Vec<&str> = produced.iter().map(|offer| offer.name.as_str()).collect();
                return Err(fail(format!(
                    "model input `{}` ({}) is produced by no preprocessing stage (they produce: {})",
                    input.name,
                    describe(input),
                    if names.is_empty() { "nothing".to_owned() } else { names.join(", ") }
                )));
            };
            compatible(offer, input).map_err(|why| fail(format!("model input `{}`: {why}", input.name)))?;
        }
        for need in consumed {
            let Some(output) = self.signature.outputs.iter().find(|output| output.name == need.name) else {
                let names: Vec<&str> = self.signature.outputs.iter().map(|output| output.name.as_str()).collect();
                return Err(fail(format!(
                    "a postprocessing stage reads output `{}`, but the model's outputs are: {}",
                    need.name,
                    names.join(", ")
                )));
            };
            compatible(need, output).map_err(|why| fail(format!("model output `{}`: {why}", need.name)))?;
        }
        Ok(())
    }

    /// What the stages produce for the model's inputs (their [`TensorSpec`]s): a dimension the model leaves dynamic
    /// but a stage fixes (an image decoder's 3 × 224 × 224, a sensor window's 100 × 6) is what warm-ups use for it,
    /// instead of `length`.
    pub fn declare_inputs(&mut self, produced: &[TensorSpec]) {
        self.declared = produced.to_vec();
    }

    /// Runs the model once on placeholder inputs of `batch` items whose variable dimensions are all `length`, or
    /// what the stages declared ([`Model::declare_inputs`]) (integers 1, floats 0): the largest shape a pipeline
    /// will use, so that ONNX Runtime allocates its working memory now, where it can be measured, rather than under
    /// load.
    ///
    /// The run timeout does not apply: a first run is where an execution provider may compile (TensorRT builds its
    /// engines for dynamic shapes then, for minutes). The caller bounds it: systemd's start timeout at start-up,
    /// `daemon.reload_timeout_ms` during a reload.
    pub fn warm_up(&mut self, batch: usize, length: usize) -> Result<(), OrtError> {
        let items = self.dummy_items(batch, length);
        let views: Vec<&[NamedTensor]> = items.iter().map(Vec::as_slice).collect();
        self.run_batch(&views, false).map(drop)
    }

    /// Times one run like [`Model::warm_up`]'s (run it after the warm-up, so that allocation is not timed). Returns
    /// the elements of an item's largest input and the run's duration: what the daemon's cost model starts from.
    pub fn time_run(&mut self, batch: usize, length: usize) -> Result<(usize, std::time::Duration), OrtError> {
        let items = self.dummy_items(batch, length);
        let elements = items
            .first()
            .map_or(0, |item| item.iter().map(|input| input.tensor.shape.iter().product()).max().unwrap_or(0));
        let views: Vec<&[NamedTensor]> = items.iter().map(Vec::as_slice).collect();
        let started = std::time::Instant::now();
        self.run_batch(&views, false)?;
        Ok((elements, started.elapsed()))
    }

    /// Each input's per-item shape in a warm-up at `length` ([`Model::warm_up`]), by name.
    pub fn warm_up_shapes(&self, length: usize) -> Vec<(String, Vec<usize>)> {
        self.signature.inputs.iter().map(|spec| (spec.name.clone(), self.warm_up_shape(spec, length))).collect()
    }

    /// Whether some input has an axis that neither the model nor a stage fixes: its length varies per message (the
    /// tokens of a text), and a warm-up at `length` is the longest it gets.
    pub fn varies_in_length(&self) -> bool {
        self.warm_up_shapes(0).iter().any(|(_, shape)| shape.contains(&0))
    }

    /// The per-item shape of input `spec` in a warm-up: every dynamic dimension as declared by a stage, else
    /// `length`.
    fn warm_up_shape(&self, spec: &TensorSpec, length: usize) -> Vec<usize> {
        let declared = self.declared.iter().find(|declared| declared.name == spec.name);
        spec.dims
            .iter()
            .enumerate()
            .map(|(axis, dim)| {
                dim.or_else(|| declared.and_then(|declared| declared.dims.get(axis).copied().flatten()))
                    .unwrap_or(length)
            })
            .collect()
    }

    /// `batch` items of neutral inputs of the warm-up shapes ([`Model::warm_up_shapes`]).
    fn dummy_items(&self, batch: usize, length: usize) -> Vec<Vec<NamedTensor>> {
        (0..batch.max(1))
            .map(|_| {
                self.signature
                    .inputs
                    .iter()
                    .map(|spec| {
                        let shape = self.warm_up_shape(spec, length);
                        let count = shape.iter().product();
                        let floating = matches!(spec.element_type, ElementType::F16 | ElementType::F32);
                        let data = TensorData::filled(spec.element_type, count, if floating { 0 } else { 1 });
                        NamedTensor { name: spec.name.clone(), tensor: Tensor { shape, data } }
                    })
                    .collect()
            })
            .collect()
    }

    /// Runs one batch. Every item must carry each model input with the same shape; the result holds, per item,
    /// every model output without the batch axis.
    pub fn run(&mut self, batch: &[&[NamedTensor]]) -> Result<Vec<Vec<NamedTensor>>, OrtError> {
        self.run_batch(batch, true)
    }

    /// [`Model::run`], under the run timeout if `guarded`.
    fn run_batch(&mut self, batch: &[&[NamedTensor]], guarded: bool) -> Result<Vec<Vec<NamedTensor>>, OrtError> {
        let timeout = self.timeout.as_ref().filter(|_| guarded);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut inputs: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(self.signature.inputs.len());
        for spec in &self.signature.inputs {
            inputs.push((spec.name.clone(), stack(spec, batch)?.into()));
        }
        if let Some((timeout, watchdog)) = timeout {
            watchdog.arm(*timeout);
        }
        let outputs = self.session.run_with_options(inputs, &self.run_options);
        if let Some((timeout, watchdog)) = timeout
            && watchdog.disarm()
        {
            return Err(OrtError::Timeout(*timeout));
        }
        let outputs = outputs.map_err(|error| OrtError::Run(error.to_string()))?;
        let mut per_item: Vec<Vec<NamedTensor>> = (0..batch.len()).map(|_| Vec::new()).collect();
        for spec in &self.signature.outputs {
            let value = outputs
                .get(spec.name.as_str())
                .ok_or_else(|| OrtError::Run(format!("the model returned no output `{}`", spec.name)))?;
            let tensors = unstack(&spec.name, value, batch.len())?;
            for (item, tensor) in per_item.iter_mut().zip(tensors) {
                item.push(NamedTensor { name: spec.name.clone(), tensor });
            }
        }
        Ok(per_item)
    }
}

fn optimization(level: OptimizationLevel) -> GraphOptimizationLevel {
    match level {
        OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
        OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
        OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
        OptimizationLevel::All => GraphOptimizationLevel::All,
    }
}

/// Registers the configured providers one by one so that a provider this ONNX Runtime build lacks, or one that
/// fails to initialise (no GPU, missing CUDA libraries), is skipped with a warning instead of failing start-up.
fn register_providers(mut builder: SessionBuilder, config: &SessionConfig) -> (SessionBuilder, Vec<String>) {
    let mut in_force = Vec::new();
    for kind in config.execution_providers.iter().copied().filter(|kind| *kind != ExecutionProviderKind::Cpu) {
        let (available, dispatch) = match kind {
            ExecutionProviderKind::Cuda => (ep::CUDA::is_available(), ep::CUDA::default().build()),
            ExecutionProviderKind::Tensorrt => (ep::TensorRT::is_available(), ep::TensorRT::default().build()),
            ExecutionProviderKind::Cpu => continue,
        };
        if !matches!(available, Ok(true)) {
            tracing::warn!(provider = kind.as_str(), "execution provider not in this ONNX Runtime build; skipping it");
            continue;
        }
        match builder.with_execution_providers([dispatch.error_on_failure()]) {
            Ok(next) => {
                builder = next;
                in_force.push(kind.as_str().to_owned());
            }
            Err(error) => {
                tracing::warn!(provider = kind.as_str(), %error, "execution provider failed to initialise; skipping it");
                builder = error.recover();
            }
        }
    }
    let cpu = ep::CPU::default().with_arena_allocator(config.memory_arena).build();
    match builder.with_execution_providers([cpu.error_on_failure()]) {
        Ok(next) => builder = next,
        Err(error) => {
            tracing::warn!(%error, "configuring the CPU provider failed; using ONNX Runtime's defaults");
            builder = error.recover();
        }
    }
    in_force.push(ExecutionProviderKind::Cpu.as_str().to_owned());
    (builder, in_force)
}

fn spec(name: &str, value_type: &ValueType) -> Result<TensorSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = value_type else {
        return Err(format!("`{name}` is not a tensor; zinfer handles tensor inputs and outputs only"));
    };
    let element_type = match ty {
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int8 => ElementType::I8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Bool => ElementType::Bool,
        other => {
            return Err(format!(
                "`{name}` has element type {other:?}; zinfer handles uint8, int8, int32, int64, float16, float32 \
                 and bool"
            ));
        }
    };
    if shape.is_empty() {
        return Err(format!("`{name}` is a scalar; zinfer expects a leading batch axis"));
    }
    let dims = shape[1..].iter().map(|&dim| usize::try_from(dim).ok()).collect();
    Ok(TensorSpec::new(name, element_type, dims))
}

fn describe(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec.dims.iter().map(|dim| dim.map_or("?".to_owned(), |dim| dim.to_string())).collect();
    format!("{} [batch, {}]", spec.element_type, dims.join(", "))
}

fn compatible(stage: &TensorSpec, model: &TensorSpec) -> Result<(), String> {
    if stage.element_type != model.element_type {
        return Err(format!("the model has {}, the stage uses {}", describe(model), describe(stage)));
    }
    let fixed_mismatch =
        stage.dims.iter().zip(&model.dims).any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if a != b));
    if stage.dims.len() != model.dims.len() || fixed_mismatch {
        return Err(format!("the model has {}, the stage uses {}", describe(model), describe(stage)));
    }
    Ok(())
}

fn stack(spec: &TensorSpec, batch: &[&[NamedTensor]]) -> Result<DynValue, OrtError> {
    let mut shape: Option<&[usize]> = None;
    let mut data = TensorData::empty(spec.element_type);
    for (index, features) in batch.iter().enumerate() {
        let tensor = &features
            .iter()
            .find(|feature| feature.name == spec.name)
            .ok_or_else(|| OrtError::Run(format!("item {index} of the batch lacks input `{}`", spec.name)))?
            .tensor;
        match shape {
            None => shape = Some(&tensor.shape),
            Some(first) if first != tensor.shape.as_slice() => {
                return Err(OrtError::Run(format!(
                    "input `{}` has shape {:?} in item {index} but {first:?} in item 0; a batch needs equal shapes",
                    spec.name, tensor.shape
                )));
            }
            Some(_) => {}
        }
        if !data.extend_from(&tensor.data) {
            return Err(OrtError::Run(format!(
                "input `{}` must be {}, a stage produced {}",
                spec.name,
                spec.element_type,
                tensor.element_type()
            )));
        }
    }
    let mut dims: Vec<i64> = vec![batch.len() as i64];
    dims.extend(shape.unwrap_or_default().iter().map(|&dim| dim as i64));
    let value = match data {
        TensorData::U8(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::I8(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::I32(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::I64(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::F16(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::F32(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        TensorData::Bool(values) => ort::value::Tensor::from_array((dims, values)).map(|tensor| tensor.into_dyn()),
        other => {
            return Err(OrtError::Run(format!("input `{}`: {} is not supported", spec.name, other.element_type())));
        }
    };
    value.map_err(|error| OrtError::Run(format!("input `{}`: {error}", spec.name)))
}

fn unstack(name: &str, value: &DynValue, items: usize) -> Result<Vec<Tensor>, OrtError> {
    let bad = |why: String| OrtError::Run(format!("output `{name}`: {why}"));
    let split = |shape: &[i64]| -> Result<(Vec<usize>, usize), OrtError> {
        let dims: Vec<usize> = shape.iter().map(|&dim| usize::try_from(dim).unwrap_or(0)).collect();
        if dims.first() != Some(&items) {
            return Err(bad(format!("shape {dims:?} does not start with the batch size {items}")));
        }
        let per_item: Vec<usize> = dims[1..].to_vec();
        let size = per_item.iter().product();
        Ok((per_item, size))
    };
    // One item's slice of the batch per tensor, whatever the element type.
    fn per_item<T: Clone>(
        data: &[T],
        per_item: &[usize],
        size: usize,
        items: usize,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Vec<Tensor> {
        data.chunks(size.max(1))
            .take(items)
            .map(|chunk| Tensor { shape: per_item.to_vec(), data: wrap(chunk.to_vec()) })
            .collect()
    }
    macro_rules! extract {
        ($($element:ty => $variant:ident),*) => {
            $(if let Ok((shape, data)) = value.try_extract_tensor::<$element>() {
                let (shape, size) = split(shape)?;
                return Ok(per_item(data, &shape, size, items, TensorData::$variant));
            })*
        };
    }
    extract!(f32 => F32, i64 => I64, i32 => I32, u8 => U8, i8 => I8, zinfer_stage_api::f16 => F16, bool => Bool);
    Err(bad("not a tensor of a supported element type (uint8, int8, int32, int64, float16, float32, bool)".into()))
}
