#!/usr/bin/env bash
# Builds the release zinferd for an architecture against an old glibc, and proves it: a symbol scan fails the build
# if the binary (or, with --with-library, a shared library shipped beside it) needs a GLIBC symbol version newer
# than the baseline.
#
# Usage: scripts/zigbuild.sh --arch amd64|arm64 [--with-library LIB]...      (prints the binary's path last)
#
# Why: a binary linked on the build machine asks for the newest symbol versions of that machine's glibc (2.36 here:
# GLIBC_2.34 for Rust's std), which rules out Ubuntu 20.04 (glibc 2.31), the base of JetPack 5 on Xavier and Orin.
# cargo-zigbuild links with zig against the glibc version named after the target triple instead, and zig's C
# compiler builds the C parts (ring) for it too. GLIBC_BASELINE is 2.28, the floor PyPI's ONNX Runtime wheels set
# themselves (manylinux_2_28), so the package needs no newer glibc than the library it bundles: Debian 10+, Ubuntu
# 20.04+ (JetPack 5), Ubuntu 22.04 (JetPack 6).
#
# Tools: cargo-zigbuild and zig from PyPI (`cargo-zigbuild`, which pulls `ziglang`), pinned, in a virtual
# environment under target/tools (git-ignored), made on first use (~100 MB, seconds); the Rust target via rustup.
# Builds in CARGO_TARGET_DIR (default target/pkg), with nice -n 10: ~10 min per architecture on 2 cores from clean.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC_BASELINE="2.28"
CARGO_ZIGBUILD_VERSION="0.24.1"
ARCH=""
LIBRARIES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
        --with-library) LIBRARIES+=("${2:?--with-library needs a path}"); shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "zigbuild: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ARCH" in
    amd64|x86_64) TRIPLE=x86_64-unknown-linux-gnu ;;
    arm64|aarch64) TRIPLE=aarch64-unknown-linux-gnu ;;
    *) echo "zigbuild: --arch amd64 or arm64" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/pkg}"
step() { echo "zigbuild: $*" >&2; }
fail() { echo "zigbuild: FAIL: $*" >&2; exit 1; }

TOOLS="$PWD/target/tools/zigbuild"
if [[ "$("$TOOLS/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]]; then
    step "installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION and zig (PyPI) into $TOOLS"
    "${PYTHON:-python3}" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
fi
# cargo-zigbuild runs zig through the `python-zig` launcher the ziglang wheel installs beside it.
export PATH="$TOOLS/bin:$PATH"
rustup target list --installed | grep -qx "$TRIPLE" || rustup target add "$TRIPLE" >&2

step "cargo zigbuild --release -p zinferd --target $TRIPLE.$GLIBC_BASELINE (in $CARGO_TARGET_DIR)"
start=$SECONDS
nice -n 10 cargo-zigbuild zigbuild --release --locked -p zinferd --target "$TRIPLE.$GLIBC_BASELINE" >&2
step "built in $(( SECONDS - start )) s"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release/zinferd"
[[ -x "$BIN" ]] || fail "no binary at $BIN"

# The symbol scan: every GLIBC_x.y version the binary (and each library) needs, from the ELF version-needs section.
newest_glibc() {
    readelf -V --wide "$1" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/Name: GLIBC_//' | sort -u -V | tail -n 1
}
command -v readelf >/dev/null || fail "readelf is missing (binutils)"
for file in "$BIN" "${LIBRARIES[@]}"; do
    newest="$(newest_glibc "$file")"
    [[ -n "$newest" ]] || fail "$file names no GLIBC version: not a dynamically linked glibc binary?"
    highest="$(printf '%s\n%s\n' "$newest" "$GLIBC_BASELINE" | sort -V | tail -n 1)"
    [[ "$highest" == "$GLIBC_BASELINE" ]] || fail "$file needs GLIBC_$newest, newer than the baseline $GLIBC_BASELINE"
    step "$(basename "$file"): newest glibc symbol version GLIBC_$newest (baseline $GLIBC_BASELINE)"
done
echo "$BIN"
