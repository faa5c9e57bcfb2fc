#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this), on a fresh machine or a warm checkout:
# installs ONNX Runtime into .ort/ (idempotent), then format check, clippy with warnings as errors, and every test.
# Ends with one line totalling the tests that ran ("total: N passed, M failed").
set -euo pipefail
cd "$(dirname "$0")/.."

lib="$(scripts/install-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH="$lib"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-systemd-unit.sh --self-test

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

# cargo prints one "test result:" line per test binary (doc tests last, often with 0 tests): sum them.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "total: %d passed, %d failed\n", passed, failed }' "$log"
