//! End-to-end tests: the real `zinferd` binary, real zenoh on loopback, the real fixture model through a real
//! ONNX Runtime (the library `scripts/install-onnxruntime.sh` installs, or ORT_DYLIB_PATH).
//!
//! One test binary with a module per concern; each test gets its own port, telemetry prefix and temp dir, so they
//! run in parallel.

mod attacks;
mod bad_input;
mod batching;
mod bench;
mod check;
mod classify;
mod custom_stage;
mod deadlines;
mod drift;
mod faults;
mod fleet;
mod instances;
mod ladder;
mod memory;
mod overload;
mod providers;
mod queries;
mod security;
mod sensor;
mod service;
mod shipped_model;
mod shutdown;
mod support;
mod telemetry;
