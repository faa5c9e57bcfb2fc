#!/usr/bin/env bash
# A long, coverage-guided fuzzing session for one bolero target (README, "Fuzzing"), with libFuzzer on stable Rust:
#
#   scripts/fuzz.sh TARGET [SECONDS]    # SECONDS defaults to 300; 0 runs until interrupted
#   scripts/fuzz.sh --list              # the targets
#
# `cargo bolero test --sanitizer NONE` cannot build these packages: it instruments every test binary of the package,
# and without a sanitizer runtime only a binary that uses bolero links libFuzzer's coverage hooks, so the others
# (and zinferd's own binary) fail to link. This script does for one target what cargo-bolero does: cargo-bolero's
# rustc flags for its libfuzzer engine and its `fuzz` profile, but only the target's test binary, which it then runs
# under bolero's libFuzzer engine. zinferd's binary, which cargo builds for every integration test of its package
# and which is never run here, links with those hooks left unresolved.
#
# The committed corpus (tests/__fuzz__/TARGET/corpus) seeds the run and is not written to; new inputs go to
# $CARGO_TARGET_DIR/fuzz/corpus/TARGET, crashes to $CARGO_TARGET_DIR/fuzz/crashes/TARGET (target/ by default). Once a
# crash is fixed, copy its input into the committed corpus as crash-<what>, so that `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

plugin_targets="text_plain text_json text_protobuf sensor_f32le sensor_json sensor_protobuf tokenize_text window_frames"
target="${1:-}"
seconds="${2:-300}"
case "$target" in
    --list)
        echo "$plugin_targets config_loader"
        exit 0
        ;;
    config_loader) package=zinferd test=fuzz_config tests=daemon/tests ;;
    *)
        if [[ " $plugin_targets " != *" $target "* || -z "$target" ]]; then
            echo "usage: scripts/fuzz.sh TARGET [SECONDS]; targets: $plugin_targets config_loader" >&2
            exit 2
        fi
        package=zinfer-plugins test=fuzz tests=plugins/builtin/tests
        ;;
esac

target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
work="$target_dir/fuzz"
corpus="$work/corpus/$target"
crashes="$work/crashes/$target"
seeds="$PWD/$tests/__fuzz__/$target/corpus"
# bolero hands libFuzzer its arguments split at spaces.
if [[ "$work$seeds" == *" "* ]]; then
    echo "fuzz.sh: paths with spaces are not supported ($work, $seeds)" >&2
    exit 2
fi
mkdir -p "$corpus" "$crashes"

# cargo-bolero's flags for libfuzzer (coverage instrumentation, `cfg(fuzzing_libfuzzer)` selects bolero's engine),
# plus the link argument explained above. `--target` keeps them off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module --cfg fuzzing_libfuzzer \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth -Clink-arg=-Wl,--unresolved-symbols=ignore-in-object-files"
export BOLERO_FUZZER=libfuzzer
host="$(rustc -vV | sed -n 's/^host: //p')"
exe="$(cargo test --locked --profile fuzz --target "$host" --target-dir "$work/build" -p "$package" --test "$test" \
    --no-run --message-format=json | grep -o "\"executable\":\"[^\"]*/$test-[0-9a-f]*\"" | cut -d'"' -f4 | tail -n 1)"
if [[ -z "$exe" ]]; then
    echo "fuzz.sh: no test binary for $package --test $test" >&2
    exit 1
fi

args="$corpus $crashes $seeds -artifact_prefix=$crashes/ -timeout=10 -print_final_stats=1"
if [[ "$seconds" != 0 ]]; then
    args+=" -max_total_time=$seconds"
fi
echo "fuzz.sh: $target for ${seconds}s (0: until interrupted): $exe" >&2
BOLERO_LIBFUZZER_ARGS="$args" BOLERO_TEST_NAME="$target" BOLERO_LIBTEST_HARNESS=1 \
    "$exe" "$target" --exact --nocapture --quiet --test-threads 1
