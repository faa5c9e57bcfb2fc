//! Decoders: the first phase of a pipeline, from zenoh sample bytes to a request.

pub mod sensor;
pub mod text;
