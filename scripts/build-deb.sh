#!/usr/bin/env bash
# Builds the zinfer Debian package for amd64 or arm64 with cargo-deb, then checks and lists it.
#
# Usage: scripts/build-deb.sh [--arch amd64|arm64] [--no-smoke]     (default: this machine's architecture)
#   --no-smoke  skip the final scripts/deb-smoke.sh run (the package, overlaid on / in a private mount namespace,
#               must pass `zinferd check` and classify over zenoh as user nobody; arm64 under qemu-aarch64)
#
# The package (metadata: [package.metadata.deb] at the end of daemon/Cargo.toml) installs
#   /usr/bin/zinferd                                      the daemon, release build (cross-compiled for arm64)
#   /usr/lib/systemd/system/zinferd.service               enabled and started on install, restarted on upgrade
#   /etc/zinfer/zinferd.toml                              conffile: the shipped model on loopback
#   /etc/zinfer/conf.d/README                             local overrides go here (*.toml, merged in name order)
#   /usr/share/zinfer/models/zinfer-sentiment-small/      the default model (text)
#   /usr/share/zinfer/models/zinfer-sentiment-tiny/       the text model's smaller rung, used by examples/conf.d/40-ladder.toml
#   /usr/share/zinfer/models/zinfer-watch-small/          the sensor model, enabled by examples/conf.d/50-sensor.toml
#   /usr/lib/zinfer/libonnxruntime.so.1.31.1              ONNX Runtime, CPU build, from the pinned PyPI wheel
#   /usr/share/zinfer/examples/                           example.toml, the GPU, ladder and sensor drop-ins (not under doc/,
#                                                         which minimal images may leave out)
#   /usr/share/doc/zinfer/                                README, ONNX Runtime's licence and third-party notices
# ONNX Runtime is bundled (the pinned onnxruntime==1.31.1 wheel's libonnxruntime.so.1.31.1 of the package's
# architecture, as scripts/install-onnxruntime.sh fetches it) and /etc/zinfer/zinferd.toml points
# onnxruntime.library at it: Debian and Ubuntu have no ONNX Runtime package of a usable version, and one pinned
# build is what the tests run against. A Jetson overrides the key in /etc/zinfer/conf.d with JetPack's GPU build.
#
# Output: target/pkg/debian/zinfer_<version>-1_<arch>.deb (its path is the last line of stdout).
# Builds in CARGO_TARGET_DIR (default target/pkg, so it does not contend with a developer's target/ lock), with
# nice -n 10. Installs what is missing: cargo-deb (pinned, `cargo install --locked`, a few minutes once), and through
# scripts/zigbuild.sh cargo-zigbuild and zig (PyPI) and the Rust target: the binary is linked against glibc 2.28,
# the floor of the bundled ONNX Runtime, so the package installs on Ubuntu 20.04 (JetPack 5) too.
# Time on 2 cores (busy with other builds), from clean: amd64 ~11 min, arm64 ~9.5 min, plus ~1.5 min once for
# cargo-deb; afterwards only what changed is recompiled. The checks, lintian and the smoke test take ~10-20 s.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION="3.8.0"
host_arch="$(dpkg --print-architecture)"
ARCH="$host_arch"
SMOKE=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
        --arch=*) ARCH="${1#*=}"; shift ;;
        --no-smoke) SMOKE=0; shift ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ARCH" in
    amd64|x86_64) ARCH=amd64; ORT_ARCH=x86_64; TRIPLE=x86_64-unknown-linux-gnu; ELF_MACHINE="X86-64" ;;
    arm64|aarch64) ARCH=arm64; ORT_ARCH=aarch64; TRIPLE=aarch64-unknown-linux-gnu; ELF_MACHINE="AArch64" ;;
    *) echo "build-deb: unsupported architecture: $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/pkg}"
NOTICES="$PWD/.ort/notices"   # beside the libraries install-onnxruntime.sh puts in .ort/<arch>/lib (git-ignored)
step() { echo "build-deb: $*" >&2; }
fail() { echo "build-deb: FAIL: $*" >&2; exit 1; }
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

# --- Tools -------------------------------------------------------------------------------------------------------
if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked; a few minutes, once)"
    nice -n 10 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
fi
command -v dpkg-deb >/dev/null || fail "dpkg-deb is missing (Debian's dpkg)"
command -v readelf >/dev/null || { step "installing binutils"; apt_install binutils; }
if [[ "$ARCH" != "$host_arch" ]]; then
    [[ "$host_arch" == amd64 && "$ARCH" == arm64 ]] || fail "cross builds are set up for amd64 -> arm64 only"
fi

# --- ONNX Runtime: the library and its notices from the pinned wheel ---------------------------------------------
ORT_VERSION="$(sed -n 's/^ORT_VERSION="\(.*\)"$/\1/p' scripts/install-onnxruntime.sh)"
[[ -n "$ORT_VERSION" ]] || fail "cannot read ORT_VERSION from scripts/install-onnxruntime.sh"
for file in daemon/Cargo.toml configs/zinferd.toml; do
    grep -q "libonnxruntime.so.$ORT_VERSION" "$file" \
        || fail "$file does not name libonnxruntime.so.$ORT_VERSION (scripts/install-onnxruntime.sh pins $ORT_VERSION)"
done
step "ONNX Runtime $ORT_VERSION for $ORT_ARCH"
scripts/install-onnxruntime.sh --arch "$ORT_ARCH" >/dev/null
[[ -f ".ort/$ORT_ARCH/lib/libonnxruntime.so.$ORT_VERSION" ]] || fail "no .ort/$ORT_ARCH/lib/libonnxruntime.so.$ORT_VERSION"
if [[ ! -s "$NOTICES/LICENSE" || "$(cat "$NOTICES/VERSION" 2>/dev/null)" != "$ORT_VERSION" ]]; then
    step "extracting ONNX Runtime's LICENSE and ThirdPartyNotices.txt from the onnxruntime==$ORT_VERSION wheel"
    wheel_dir="$(mktemp -d)"
    # The notices are the same in every platform's wheel; pip's cache usually has it from install-onnxruntime.sh.
    "${PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "manylinux_2_28_$ORT_ARCH" --python-version 3.11 "onnxruntime==$ORT_VERSION" -d "$wheel_dir" >&2
    mkdir -p "$NOTICES"
    "${PYTHON:-python3}" - "$wheel_dir"/onnxruntime-"$ORT_VERSION"-*.whl "$NOTICES" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt"):
        with z.open(name) as src, open(os.path.join(out, os.path.basename(name)), "wb") as dst:
            dst.write(src.read())
EOF
    echo "$ORT_VERSION" > "$NOTICES/VERSION"
    rm -rf "$wheel_dir"
fi

# --- Build and package ---------------------------------------------------------------------------------------------
out_dir="$CARGO_TARGET_DIR/debian"
mkdir -p "$out_dir"
# The binary is built against the glibc baseline by scripts/zigbuild.sh, which also proves it (and the bundled
# library) needs nothing newer; cargo-deb then only packages it.
step "release build of zinferd for $ARCH against the glibc baseline (scripts/zigbuild.sh)"
start=$SECONDS
scripts/zigbuild.sh --arch "$ARCH" --with-library ".ort/$ORT_ARCH/lib/libonnxruntime.so.$ORT_VERSION" >/dev/null
# --no-strip: the release profile already strips symbols (strip = "symbols"), and the host's strip may not know
# the target's ELF.
nice -n 10 cargo deb -p zinferd --variant "$ARCH" --target "$TRIPLE" --no-build --no-strip --output "$out_dir" >&2
step "built in $(( SECONDS - start )) s"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
deb="$out_dir/zinfer_${version}-1_${ARCH}.deb"
[[ -f "$deb" ]] || fail "expected $deb"

# --- Check the package -----------------------------------------------------------------------------------------------
info="$(dpkg-deb -I "$deb")"
contents="$(dpkg-deb -c "$deb")"
grep -q "^ Architecture: $ARCH$" <<<"$info" || fail "Architecture is not $ARCH"
grep -q "^ Package: zinfer$" <<<"$info" || fail "Package is not zinfer"
baseline="$(sed -n 's/^GLIBC_BASELINE="\(.*\)"$/\1/p' scripts/zigbuild.sh)"
grep -q "^ Depends: libc6 (>= $baseline)," <<<"$info" || fail "Depends does not start with libc6 (>= $baseline), the build's glibc baseline"
for path in ./usr/bin/zinferd ./usr/lib/systemd/system/zinferd.service ./etc/zinfer/zinferd.toml ./etc/zinfer/conf.d/README \
    "./usr/lib/zinfer/libonnxruntime.so.$ORT_VERSION" ./usr/lib/zinfer/libonnxruntime.so \
    ./usr/share/zinfer/models/zinfer-sentiment-small/model.onnx ./usr/share/zinfer/models/zinfer-sentiment-small/manifest.toml \
    ./usr/share/zinfer/models/zinfer-sentiment-small/tokenizer.json ./usr/share/zinfer/examples/cuda.conf \
    ./usr/share/zinfer/models/zinfer-sentiment-small/golden.json ./usr/share/zinfer/models/zinfer-watch-small/golden.json \
    ./usr/share/zinfer/models/zinfer-watch-small/model.onnx ./usr/share/zinfer/models/zinfer-watch-small/manifest.toml \
    ./usr/share/zinfer/examples/conf.d/50-sensor.toml ./usr/share/zinfer/examples/conf.d/40-ladder.toml \
    ./usr/share/zinfer/models/zinfer-sentiment-tiny/model.onnx ./usr/share/zinfer/models/zinfer-sentiment-tiny/golden.json \
    ./usr/share/doc/zinfer/onnxruntime/LICENSE; do
    grep -q " $path\( ->.*\)\?$" <<<"$contents" || fail "$path is not in the package"
done
extract="$(mktemp -d)"
trap 'rm -rf "$extract"' EXIT
dpkg-deb -x "$deb" "$extract"
dpkg-deb -e "$deb" "$extract/DEBIAN"
for binary in usr/bin/zinferd "usr/lib/zinfer/libonnxruntime.so.$ORT_VERSION"; do
    machine="$(readelf -h "$extract/$binary" | sed -n 's/^ *Machine: *//p')"
    [[ "$machine" == *"$ELF_MACHINE"* ]] || fail "$binary is for '$machine', not $ELF_MACHINE"
done
grep -qx /etc/zinfer/zinferd.toml "$extract/DEBIAN/conffiles" || fail "/etc/zinfer/zinferd.toml is not a conffile"
grep -q "deb-systemd-helper" "$extract/DEBIAN/postinst" || fail "postinst does not enable the unit"
cmp -s systemd/zinferd.service "$extract/usr/lib/systemd/system/zinferd.service" || fail "the packaged unit differs from systemd/zinferd.service"
[[ "$(readlink "$extract/usr/lib/zinfer/libonnxruntime.so")" == "libonnxruntime.so.$ORT_VERSION" ]] \
    || fail "usr/lib/zinfer/libonnxruntime.so does not link to libonnxruntime.so.$ORT_VERSION"
glibc="$(readelf -V "$extract/usr/bin/zinferd" "$extract/usr/lib/zinfer/libonnxruntime.so.$ORT_VERSION" \
    | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)"

echo "---- dpkg-deb -I $(basename "$deb")" >&2
echo "$info" >&2
echo "---- dpkg-deb -c $(basename "$deb")" >&2
echo "$contents" >&2
echo "---- $(basename "$deb"): $(du -h "$deb" | cut -f1) ($(stat -c %s "$deb") bytes), installed $(grep '^ Installed-Size:' <<<"$info" | awk '{print $2}') KiB; needs glibc >= ${glibc#GLIBC_}" >&2
if command -v lintian >/dev/null; then
    echo "---- lintian (informational)" >&2
    lintian --tag-display-limit 0 "$deb" >&2 || true
fi
if [[ "$SMOKE" == 1 ]]; then
    echo "---- scripts/deb-smoke.sh $(basename "$deb")" >&2
    scripts/deb-smoke.sh "$deb" >&2 || fail "the package does not run (scripts/deb-smoke.sh); --no-smoke skips this"
fi
echo "$deb"
