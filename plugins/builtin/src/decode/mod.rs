//! Decoders: the first phase of a pipeline, from zenoh sample bytes to a request.

pub mod sensor;
pub mod text;

use zinfer_stage_api::{Reason, StageError};

/// The media type of a zenoh encoding, without its schema suffix (`text/plain;charset=utf-8` → `text/plain`).
fn media_type(encoding: &str) -> &str {
    encoding.split(';').next().unwrap_or_default().trim()
}

/// Refuses an empty payload or one larger than `max_bytes`, before any parsing.
fn check_size(payload: &[u8], max_bytes: usize) -> Result<(), StageError> {
    if payload.is_empty() {
        return Err(StageError::new(Reason::EmptyPayload, "the payload is empty"));
    }
    if payload.len() > max_bytes {
        return Err(StageError::new(
            Reason::PayloadTooLarge,
            format!("payload of {} bytes exceeds the limit of {max_bytes} bytes", payload.len()),
        ));
    }
    Ok(())
}
