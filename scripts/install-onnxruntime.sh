#!/usr/bin/env bash
# Install the ONNX Runtime shared library (libonnxruntime.so) that the daemon loads at run time
# (`ort` crate =2.0.0-rc.15 with `load-dynamic`, written for ONNX Runtime 1.31).
#
# The library is taken from the PyPI `onnxruntime` wheel, fetched with `pip download` (no Python package is
# installed anywhere), and unpacked into .ort/<arch>/lib/ under the repository root unless --dest is given.
#
# Usage: scripts/install-onnxruntime.sh [--arch x86_64|aarch64] [--dest DIR] [--version X.Y.Z]
#
# Idempotent: if DIR already holds libonnxruntime.so.<version>, nothing is downloaded.
# The last line of stdout is the absolute path of DIR/libonnxruntime.so (a symlink to the versioned file);
# point ORT_DYLIB_PATH at it. Progress messages go to stderr.
#
# Environment: PYTHON (default python3) is the interpreter whose pip does the download.
set -euo pipefail

ORT_VERSION="1.31.1"
ARCH="$(uname -m)"
DEST=""
WHEEL_PYTHON_VERSION="3.11"   # the wheel's shared library is the same for every CPython version
PYTHON="${PYTHON:-python3}"

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
        --arch=*) ARCH="${1#*=}"; shift ;;
        --dest) DEST="${2:?--dest needs a value}"; shift 2 ;;
        --dest=*) DEST="${1#*=}"; shift ;;
        --version) ORT_VERSION="${2:?--version needs a value}"; shift 2 ;;
        --version=*) ORT_VERSION="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-onnxruntime: unknown argument: $1" >&2; usage; exit 2 ;;
    esac
done

case "$ARCH" in
    x86_64|amd64) ARCH="x86_64" ;;
    aarch64|arm64) ARCH="aarch64" ;;
    *) echo "install-onnxruntime: unsupported architecture: $ARCH (x86_64 or aarch64)" >&2; exit 2 ;;
esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$DEST" ]]; then
    DEST="$REPO_ROOT/.ort/$ARCH/lib"
fi
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

LIB="libonnxruntime.so.$ORT_VERSION"
LINK="$DEST/libonnxruntime.so"

link_all() {
    # libonnxruntime.so -> versioned file; libonnxruntime.so.1 is the library's SONAME.
    ln -sfn "$LIB" "$DEST/libonnxruntime.so"
    ln -sfn "$LIB" "$DEST/libonnxruntime.so.${ORT_VERSION%%.*}"
}

if [[ -f "$DEST/$LIB" && -s "$DEST/$LIB" ]]; then
    if [[ "$(readlink "$LINK" 2>/dev/null || true)" != "$LIB" ]]; then
        link_all
    fi
    echo "install-onnxruntime: ONNX Runtime $ORT_VERSION ($ARCH) already in $DEST" >&2
    echo "$LINK"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "install-onnxruntime: downloading the onnxruntime==$ORT_VERSION wheel for $ARCH" >&2
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "manylinux_2_28_$ARCH" --python-version "$WHEEL_PYTHON_VERSION" \
    "onnxruntime==$ORT_VERSION" -d "$TMP/wheel" >&2

shopt -s nullglob
wheels=("$TMP"/wheel/onnxruntime-"$ORT_VERSION"-*.whl)
shopt -u nullglob
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "install-onnxruntime: expected one wheel, found ${#wheels[@]}" >&2
    exit 1
fi
echo "install-onnxruntime: extracting from $(basename "${wheels[0]}")" >&2

# Extract onnxruntime/capi/libonnxruntime*.so* (the runtime and its provider bridge) flat into $TMP/lib.
"$PYTHON" - "${wheels[0]}" "$TMP/lib" <<'EOF'
import fnmatch, os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
n = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if fnmatch.fnmatch(name, "onnxruntime/capi/libonnxruntime*.so*"):
            target = os.path.join(out, os.path.basename(name))
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o755)
            print(f"install-onnxruntime:   {os.path.basename(name)}", file=sys.stderr)
            n += 1
if n == 0:
    sys.exit("install-onnxruntime: no libonnxruntime*.so* in the wheel")
EOF

if [[ ! -f "$TMP/lib/$LIB" ]]; then
    echo "install-onnxruntime: $LIB is not in the wheel" >&2
    exit 1
fi

# Move the provider libraries first and the main library last, so that an interrupted run is redone.
for f in "$TMP"/lib/*; do
    [[ "$(basename "$f")" == "$LIB" ]] && continue
    mv -f "$f" "$DEST/"
done
mv -f "$TMP/lib/$LIB" "$DEST/$LIB"
link_all

echo "install-onnxruntime: installed ONNX Runtime $ORT_VERSION ($ARCH) in $DEST" >&2
echo "$LINK"
