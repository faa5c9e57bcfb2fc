#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this), on a fresh machine or a warm checkout:
# installs ONNX Runtime into .ort/ (idempotent), then format check, clippy with warnings as errors, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

lib="$(scripts/install-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH="$lib"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
