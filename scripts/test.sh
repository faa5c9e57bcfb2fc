#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this), on a fresh machine or a warm checkout:
# installs ONNX Runtime into .ort/ (idempotent), then format check, clippy with warnings as errors, and every test:
# the Rust workspace's, then the model toolkit's (in the git-ignored .venv that model/setup-venv.sh keeps).
# Ends with one line totalling the tests that ran ("total: N passed, M failed").
set -euo pipefail
cd "$(dirname "$0")/.."

lib="$(scripts/install-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH="$lib"

# CI builds once from a clean clone: incremental state would only take disk (~0.9 GB) it has run short of.
if [[ "${CI:-}" == true || ! -d target ]]; then
    export CARGO_INCREMENTAL=0
fi

# The example crate (examples/watch-anomaly) is a workspace of its own, as a third party's crate would be; it builds
# in this target folder so that the dependencies it shares with the workspace compile once.
example=(--manifest-path examples/watch-anomaly/Cargo.toml)
cargo fmt --all -- --check
cargo fmt "${example[@]}" -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
CARGO_TARGET_DIR="$PWD/target" cargo clippy "${example[@]}" --all-targets --locked -- -D warnings
scripts/check-systemd-unit.sh --self-test

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
CARGO_TARGET_DIR="$PWD/target" cargo test "${example[@]}" --locked 2>&1 | tee -a "$log"

# The model toolkit's tests (Python, tiny configurations, CPU): its pinned virtualenv is created on first use
# (PyTorch's x86_64 wheel is ~3 GB, a few minutes) and reused afterwards.
python="$(model/setup-venv.sh | tail -n 1)"
(cd model && "$python" -m pytest -q) 2>&1 | tee -a "$log"

# cargo prints one "test result:" line per test binary (doc tests last, often with 0 tests); pytest ends with a
# line such as "33 passed in 17.2s" or "1 failed, 32 passed in 20.0s". Sum them all.
awk '
    /^test result:/ { passed += $4; failed += $6 }
    /^[0-9]+ (passed|failed)/ && / in [0-9.]+s/ {
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed/) passed += $(i - 1)
            if ($i ~ /^(failed|errors?)/) failed += $(i - 1)
        }
    }
    END { printf "total: %d passed, %d failed\n", passed, failed }' "$log"
