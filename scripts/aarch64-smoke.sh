#!/usr/bin/env bash
# aarch64 smoke test: cross-compiles zinferd for aarch64-unknown-linux-gnu, runs it under qemu-aarch64 (user-mode
# emulation) with the aarch64 libonnxruntime.so from PyPI's onnxruntime==1.31.1 wheel, classifies texts over zenoh
# on loopback, and checks every result against an x86_64 zinferd running the same config: same label, and every
# class score within TOLERANCE. It also checks the system calls and socket families the aarch64 daemon used (qemu's
# strace) against systemd/zinferd.service's SystemCallFilter= and RestrictAddressFamilies=. Exits non-zero on any
# mismatch, missing result or timeout; kills its daemons on exit.
#
# NOT PART OF scripts/test.sh: too slow for every CI run. Measured on the 2-core build machine (busy with other
# builds at the time): the aarch64 release build takes ~9.5 min from clean (scripts/build-deb.sh --arch arm64 shares
# target/pkg, so after it the build is a no-op); the rest takes ~15 s: the emulated daemon starts and warms up in
# ~9 s and answers in ~70-100 ms per short text (~0.8 s for 128 tokens), the x86_64 one in 1-6 ms. Run it on demand
# and before every release (CI: `.ci/aarch64`, nightly or on changes to daemon/, plugins/, Cargo.lock or the ONNX
# Runtime pin), next to `scripts/build-deb.sh --arch arm64`.
#
# Usage: scripts/aarch64-smoke.sh [--aarch64-bin PATH] [--x86-bin PATH]
#   --aarch64-bin  use this aarch64 zinferd instead of building one
#                  (default: scripts/zigbuild.sh --arch arm64, the packaged build: release, against glibc 2.28, into
#                  $CARGO_TARGET_DIR, default target/pkg, with nice -n 10)
#   --x86-bin      the x86_64 zinferd to compare with (default: the newest of target/release, target/debug and
#                  $CARGO_TARGET_DIR/release, else a release build into $CARGO_TARGET_DIR)
# Installs what is missing: qemu-user, the arm64 C/C++ runtime (libc6-arm64-cross, libstdc++6-arm64-cross) and
# kernel headers (linux-libc-dev-arm64-cross) with apt-get; cargo-zigbuild, zig and the Rust target through scripts/zigbuild.sh.
#
# TOLERANCE (absolute, on softmax probabilities): 0.005. Measured: at most 7e-9 (texts below, neoverse-n1 model).
# The int8 matrix products accumulate exactly in int32 on both architectures, so differences come from the float
# parts (dynamic quantization scales, LayerNorm, GELU, softmax: vectorization and summation order), ~1e-7, and, on
# x86_64 CPUs without VNNI, from MLAS's AVX2 u8 x s8 kernel, whose 16-bit pair sums can saturate on unlucky inputs
# (none of these texts triggered it). 0.005 leaves room for that on other CI machines and is still ~80 times below
# the 0.4 error of a broken kernel (see QEMU_CPU below) and far below any change to a prediction; labels must match.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TOLERANCE="0.005"
# The emulated CPU (qemu reads QEMU_CPU). neoverse-n1: ARMv8.2 with dot product and no SVE, like the Cortex-A78AE
# of a Jetson Orin. NOT qemu 7.2's default "max": it enables SVE/SVE2, and ONNX Runtime 1.31.1 then returns wrong
# scores (every text ~0.55-0.58 "positive", measured), while "max,sve=off", cortex-a76 and neoverse-n1 match
# x86_64 to 1e-8. Whether qemu's SVE emulation or ONNX Runtime's SVE kernels are at fault needs real SVE hardware
# (Graviton3, Grace) to tell; no Jetson has SVE. cortex-a57 (ARMv8.0) dies with SIGILL after loading the library.
QEMU_CPU="${QEMU_CPU:-neoverse-n1}"
TRIPLE=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/pkg}"
AARCH64_BIN=""
X86_BIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --aarch64-bin) AARCH64_BIN="${2:?}"; shift 2 ;;
        --x86-bin) X86_BIN="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "aarch64-smoke: unknown argument: $1" >&2; exit 2 ;;
    esac
done

TEXTS=(
    "a gripping, beautifully acted film"
    "dull, lifeless and far too long"
    "one of the best movies I have seen this year, funny and warm"
    "the plot makes no sense and the jokes fall flat"
    "an unforgettable performance that stays with you long after the credits"
    "a tedious, overlong mess with nothing to say"
    "$(printf 'the cast is superb and the story moves at a brisk pace. %.0s' 1 2 3 4 5 6 7 8 9 10)"
)

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "aarch64-smoke: $*" >&2; }
fail() {
    echo "aarch64-smoke: FAIL: $*" >&2
    local f
    for f in "$WORK"/*.log; do [[ -f "$f" ]] && { echo "--- $(basename "$f") (last lines)" >&2; tail -n 15 "$f" >&2; }; done
    exit 1
}
declare -A TIMINGS
PHASES=()
phase_start() { PHASE="$1"; PHASE_T0=$SECONDS; log "== $1"; }
phase_end() { TIMINGS[$PHASE]=$(( SECONDS - PHASE_T0 )); PHASES+=("$PHASE"); }

# --- 1. Tools -------------------------------------------------------------------------------------------------------
phase_start "tools"
missing=()
# The emulated process's loader and C/C++ runtime (qemu's -L sysroot below): Debian's arm64 cross runtime packages.
[[ -f /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]] || missing+=(libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross)
# The aarch64 system call numbers, to name those qemu's strace does not (step 7).
[[ -f /usr/aarch64-linux-gnu/include/asm-generic/unistd.h ]] || missing+=(linux-libc-dev-arm64-cross)
QEMU="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
[[ -n "$QEMU" ]] || missing+=(qemu-user)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    QEMU="$(command -v qemu-aarch64 || command -v qemu-aarch64-static)"
fi
phase_end

# --- 2. Builds -----------------------------------------------------------------------------------------------------
phase_start "aarch64 build"
if [[ -z "$AARCH64_BIN" ]]; then
    # The packaged build: against the glibc baseline, with cargo-zigbuild (the Rust target and tools on first use).
    AARCH64_BIN="$(scripts/zigbuild.sh --arch arm64 | tail -n 1)"
fi
[[ -x "$AARCH64_BIN" ]] || fail "no aarch64 binary at $AARCH64_BIN"
readelf -h "$AARCH64_BIN" | grep -q 'Machine: *AArch64' || fail "$AARCH64_BIN is not an aarch64 binary"
phase_end

phase_start "x86_64 build"
if [[ -z "$X86_BIN" ]]; then
    # The most recently built of the usual places (fixed names: ls -t is fine).
    # shellcheck disable=SC2012
    X86_BIN="$(ls -t target/release/zinferd target/debug/zinferd "$CARGO_TARGET_DIR/release/zinferd" 2>/dev/null | head -n 1 || true)"
fi
if [[ -z "$X86_BIN" ]]; then
    nice -n 10 cargo build --release --locked -p zinferd >&2
    X86_BIN="$CARGO_TARGET_DIR/release/zinferd"
fi
[[ -x "$X86_BIN" ]] || fail "no x86_64 binary at $X86_BIN"
log "x86_64: $X86_BIN; aarch64: $AARCH64_BIN"
phase_end

# --- 3. ONNX Runtime for both architectures ---------------------------------------------------------------------------
phase_start "onnxruntime"
ORT_X86="$(scripts/install-onnxruntime.sh --arch x86_64 | tail -n 1)"
ORT_ARM="$(scripts/install-onnxruntime.sh --arch aarch64 | tail -n 1)"
readelf -h "$(readlink -f "$ORT_ARM")" | grep -q 'Machine: *AArch64' || fail "$ORT_ARM is not an aarch64 library"
phase_end

# --- 4. Both daemons on the same config, each on a free loopback port ------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT_X86="$(free_port)"
PORT_ARM="$(free_port)"
[[ "$PORT_X86" != "$PORT_ARM" ]] || PORT_ARM=$(( PORT_X86 + 1 ))

# Both daemons run configs/default.toml with two changes: the model path made absolute (the copy lives in $WORK),
# and a run timeout of 120 s instead of 10 s, since the emulated warm-up at 8 x 128 tokens can take longer than 10 s
# on a busy 2-core machine. The port comes from the environment (ZINFER_ZENOH__LISTEN).
grep -q '^\[pipeline.session\]' configs/default.toml && fail "configs/default.toml has [pipeline.session]: adapt this script"
sed "s|^model = \"../models/|model = \"$ROOT/models/|" configs/default.toml > "$WORK/smoke.toml"
printf '\n[pipeline.session]\nrun_timeout_ms = 120000\n' >> "$WORK/smoke.toml"
grep -q "^model = \"$ROOT/models/" "$WORK/smoke.toml" || fail "could not make the model path of configs/default.toml absolute"
chmod 644 "$WORK/smoke.toml"

start_daemon() {   # NAME PORT ORT_LIB COMMAND... (sets DAEMON_PID; runs in this shell so that `wait` works)
    local name="$1" port="$2" lib="$3"; shift 3
    ORT_DYLIB_PATH="$lib" ZINFER_ZENOH__LISTEN="tcp/127.0.0.1:$port" RUST_LOG=info \
        "$@" --config "$WORK/smoke.toml" > "$WORK/$name.log" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
}
wait_ready() {     # NAME PID SECONDS
    local name="$1" pid="$2" deadline=$(( SECONDS + $3 ))
    until grep -q "pipeline ready" "$WORK/$name.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || fail "$name daemon exited during start-up"
        (( SECONDS < deadline )) || fail "$name daemon not ready after $3 s"
        sleep 0.2
    done
}

phase_start "x86_64 daemon start"
start_daemon x86_64 "$PORT_X86" "$ORT_X86" "$X86_BIN"
PID_X86="$DAEMON_PID"
wait_ready x86_64 "$PID_X86" 60
phase_end

phase_start "aarch64 daemon start (qemu)"
# qemu's -L prefix: every absolute path the emulated process opens is looked up under it first, then on the host.
# It holds the aarch64 loader and libc/libstdc++ (Debian's cross packages, as lib/) and an aarch64 /proc/cpuinfo:
# qemu 7.2 passes the host's x86 /proc/cpuinfo through, and ONNX Runtime's static initializer (pytorch/cpuinfo)
# finds no ARM processor in it and dereferences NULL at dlopen (SIGSEGV; seen with 1.31.1). The synthetic file
# describes one Arm Neoverse-N1 per host CPU, the CPU model qemu emulates (QEMU_CPU above), whose instruction set
# extensions qemu reports in AT_HWCAP. This is emulation: it proves that the aarch64 build and library load and
# compute the same results, not their speed or the behaviour of a given board.
SYSROOT="$WORK/sysroot"
mkdir -p "$SYSROOT/proc"
ln -s /usr/aarch64-linux-gnu/lib "$SYSROOT/lib"
python3 - "$SYSROOT/proc/cpuinfo" <<'EOF'
import sys
cpus = []
for part in open("/sys/devices/system/cpu/possible").read().strip().split(","):
    lo, _, hi = part.partition("-")
    cpus += range(int(lo), int(hi or lo) + 1)
features = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
with open(sys.argv[1], "w") as out:
    for cpu in cpus:
        out.write(f"processor\t: {cpu}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                  "CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n")
EOF
# -d strace: qemu logs every system call of the emulated process, checked against the unit's filter below. The
# daemon runs as user nobody with HOME=/, as under the unit's DynamicUser= (as root, ONNX Runtime's SQLite store in
# ~/.cache would succeed and call fchown(), which the unit's filter refuses harmlessly with EPERM).
chmod 755 "$WORK"
install -m 600 -o nobody /dev/null "$WORK/aarch64.strace"
export QEMU_CPU
log "qemu CPU model: $QEMU_CPU"
start_daemon aarch64 "$PORT_ARM" "$ORT_ARM" \
    setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups env HOME=/ \
    "$QEMU" -L "$SYSROOT" -d strace -D "$WORK/aarch64.strace" "$AARCH64_BIN"
PID_ARM="$DAEMON_PID"
wait_ready aarch64 "$PID_ARM" 300
grep -q "ONNX Runtime loaded" "$WORK/aarch64.log" || fail "the aarch64 daemon did not log loading ONNX Runtime"
phase_end

# --- 5. Classify on both and compare ---------------------------------------------------------------------------------
phase_start "classify and compare"
send() {           # NAME PORT TEXT
    timeout 120 "$X86_BIN" send --connect "tcp/127.0.0.1:$2" --key zinfer/in/text/aarch64-smoke --timeout-ms 90000 "$3" \
        > "$WORK/result-$1.json" 2>> "$WORK/send.log" || fail "no result from the $1 daemon for '$3'"
}
: > "$WORK/pairs.jsonl"
for text in "${TEXTS[@]}"; do
    send x86_64 "$PORT_X86" "$text"
    send aarch64 "$PORT_ARM" "$text"
    python3 - "$WORK/result-x86_64.json" "$WORK/result-aarch64.json" >> "$WORK/pairs.jsonl" <<'EOF'
import json, sys
a, b = (json.load(open(path)) for path in sys.argv[1:3])
print(json.dumps({"x86_64": a, "aarch64": b}))
EOF
done
python3 - "$WORK/pairs.jsonl" "$TOLERANCE" <<'EOF'
import json, sys
tolerance = float(sys.argv[2])
worst, failures = 0.0, []
for n, line in enumerate(open(sys.argv[1]), 1):
    pair = json.loads(line)
    x, a = pair["x86_64"], pair["aarch64"]
    for name, r in (("x86_64", x), ("aarch64", a)):
        if r.get("outcome") != "ok":
            failures.append(f"text {n}: {name} outcome {r.get('outcome')} {r.get('reason')} {r.get('message')}")
    sx = {s["label"]: s["score"] for s in x.get("scores", [])}
    sa = {s["label"]: s["score"] for s in a.get("scores", [])}
    if sx.keys() != sa.keys() or not sx:
        failures.append(f"text {n}: classes differ: {sorted(sx)} vs {sorted(sa)}")
        continue
    diff = max(abs(sx[k] - sa[k]) for k in sx)
    worst = max(worst, diff)
    ok = x.get("label") == a.get("label") and diff <= tolerance
    print(f"  text {n}: x86_64 {x.get('label')} {x.get('score'):.6f} | aarch64 {a.get('label')} {a.get('score'):.6f}"
          f" | max |diff| {diff:.2e} | aarch64 inference {a['timings']['inference_us'] / 1000:.1f} ms"
          f" (x86_64 {x['timings']['inference_us'] / 1000:.1f} ms) {'OK' if ok else 'MISMATCH'}", file=sys.stderr)
    if x.get("label") != a.get("label"):
        failures.append(f"text {n}: label {x.get('label')} (x86_64) != {a.get('label')} (aarch64)")
    elif diff > tolerance:
        failures.append(f"text {n}: scores differ by {diff:.3g} > {tolerance}")
print(f"aarch64-smoke: max score difference aarch64 (qemu) vs x86_64: {worst:.3e} (tolerance {tolerance})", file=sys.stderr)
for f in failures:
    print(f"aarch64-smoke: MISMATCH: {f}", file=sys.stderr)
sys.exit(1 if failures else 0)
EOF
phase_end

# --- 6. Clean shutdown of the emulated daemon -------------------------------------------------------------------------
phase_start "aarch64 daemon stop"
kill -TERM "$PID_ARM" "$PID_X86"
for pid in "$PID_ARM" "$PID_X86"; do
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "daemon $pid did not stop within 30 s of SIGTERM"
    wait "$pid" || fail "daemon $pid exited non-zero after SIGTERM"
done
PIDS=()
grep -q "stopped cleanly" "$WORK/aarch64.log" || fail "the aarch64 daemon did not stop cleanly"
phase_end

# --- 7. The aarch64 system calls and socket families against systemd/zinferd.service -----------------------------------
phase_start "aarch64 syscall filter"
sed -nE 's/^[0-9]+ ([a-z_0-9]+)\(.*/\1/p' "$WORK/aarch64.strace" | sort -u > "$WORK/aarch64.syscalls"
# qemu 7.2 prints "Unknown syscall N" for calls its strace table lacks (rseq, 293): name them from the aarch64
# kernel headers (asm-generic numbering, from Debian's linux-libc-dev-arm64-cross).
unistd=/usr/aarch64-linux-gnu/include/asm-generic/unistd.h
while read -r number; do
    name="$(sed -nE "s/^#define __NR_([a-z0-9_]+) $number\$/\1/p" "$unistd" | head -n 1)"
    [[ -n "$name" ]] || fail "qemu logged system call $number, which $unistd does not name"
    echo "$name" >> "$WORK/aarch64.syscalls"
done < <(sed -nE 's/^[0-9]+ Unknown syscall ([0-9]+)$/\1/p' "$WORK/aarch64.strace" | sort -u)
[[ -s "$WORK/aarch64.syscalls" ]] || fail "qemu recorded no system calls"
scripts/check-syscalls.sh systemd/zinferd.service "$WORK/aarch64.syscalls" \
    || fail "the aarch64 daemon made system calls that systemd/zinferd.service's filter refuses"
allowed_families=" $(sed -n 's/^RestrictAddressFamilies=//p' systemd/zinferd.service) "
while read -r family; do
    [[ "$allowed_families" == *" $family "* ]] || fail "the aarch64 daemon opened a $family socket, not in RestrictAddressFamilies="
done < <(sed -nE 's/.* socket\(PF_([A-Z0-9]+),.*/AF_\1/p' "$WORK/aarch64.strace" | sort -u)
phase_end

# --- 8. The drift guard on a CPU model whose int8 results are wrong -----------------------------------------------------
# With qemu's "max" CPU model (SVE) ONNX Runtime returns wrong scores (see QEMU_CPU above). The daemon started above
# ran the golden inputs at start-up and passed (it would not be serving otherwise); on "max" the same check must
# refuse the model. Measured with ONNX Runtime 1.31.1 and qemu 7.2: the sentiment model matched 23/32 top-1 classes,
# largest probability difference 0.548 (tolerance 0.180). If this passes one day, qemu or ONNX Runtime changed.
phase_start "drift guard under QEMU_CPU=max"
QEMU_CPU=max ORT_DYLIB_PATH="$ORT_ARM" timeout 600 "$QEMU" -L "$SYSROOT" "$AARCH64_BIN" --config "$WORK/smoke.toml" check \
    > "$WORK/max-check.log" 2>&1 && fail "zinferd check passed under QEMU_CPU=max: the drift guard did not see the wrong scores"
grep -q "does not reproduce its golden inputs" "$WORK/max-check.log" || fail "zinferd check failed under QEMU_CPU=max, not by the drift guard"
log "QEMU_CPU=max: refused: $(grep -o 'top-1 [0-9]*/[0-9]*, largest deviation [0-9.]*' "$WORK/max-check.log" | head -n 1)"
phase_end

log "timings (s): $(for p in "${PHASES[@]}"; do printf '%s %s; ' "$p" "${TIMINGS[$p]}"; done)"
log "OK: ${#TEXTS[@]} texts, same labels, scores within $TOLERANCE"
