//! Stages for sensor streams: `validate` checks each frame against the model's `[sensor]` table, `window` cuts
//! each source's stream into the windows the model takes. The `classify` head is the text pipeline's.

pub mod validate;
pub mod window;

use zinfer_stage_api::{BuildContext, BuildError, SensorSpec};

/// The manifest's `[sensor]` table, which both stages need.
fn spec<'a>(context: &BuildContext<'a>, stage: &str) -> Result<&'a SensorSpec, BuildError> {
    context.manifest.sensor.as_ref().ok_or_else(|| BuildError::Option {
        key: String::new(),
        reason: format!(
            "the `{stage}` stage needs a sensor model: the model manifest {} has no [sensor] table",
            context.manifest.path.display()
        ),
    })
}
