"""The model ladder's efficiency report input: the smaller rung's recipe run (its chosen seed's int8 file, beside the
teacher it was distilled from) and the shipped default rung, in one models.json for ``zinfer_model.bench``.

The default rung's package no longer has its run directory, so its row is the shipped file itself, with the test
accuracy of its own ``int8_probs`` (ONNX Runtime, batch 1) from ``test_predictions.jsonl``: the same test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .data import LABELS
from .metrics import summary


def package_accuracy(package: Path) -> dict:
    """Test accuracy, macro-F1 and 95% half-interval of a shipped text package's int8 file, from its predictions."""
    rows = [json.loads(line) for line in (package / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = np.array([LABELS.index(row["label"]) for row in rows])
    probs = np.array([row["int8_probs"] for row in rows], dtype=np.float64)
    s = summary(np.log(np.clip(probs, 1e-12, 1.0)), labels)
    return {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"],
            "accuracy_ci95": (s["accuracy_ci95"][1] - s["accuracy_ci95"][0]) / 2}


def ladder_models(run_dir: Path, package: Path, out: Path) -> Path:
    """Writes `out`: the teacher and the int8 file of the chosen seed's models.json, the rung named as such, and the
    shipped default rung `package` beside them."""
    select = json.loads((run_dir / "select" / "metrics.json").read_text(encoding="utf-8"))
    source = run_dir / select["chosen_dir"] / "evaluate" / "models.json"
    doc = json.loads(source.read_text(encoding="utf-8"))
    manifest = (package / "manifest.toml").read_text(encoding="utf-8")
    name = next(line.split('"')[1] for line in manifest.splitlines() if line.startswith("name = "))
    rows = []
    # The rung's intermediate stages are in its model card; the report compares what is served.
    for row in (row for row in doc["models"] if row["role"] != "student-step"):
        row = dict(row)
        row["onnx"] = str((source.parent / row["onnx"]).resolve())
        if row["role"] == "final":
            row["name"] = "rung 1 int8 (zinfer-sentiment-tiny)"
            row["notes"] = f"seed {select['chosen_seed']} of {len(select['seeds'])}, chosen by validation accuracy"
        rows.append(row)
    rows.append({"name": f"rung 0 int8 ({name}, the default)", "onnx": str((package / "model.onnx").resolve()),
                 "role": "other", **package_accuracy(package),
                 "notes": "the shipped file; distilled from an earlier run of the same teacher recipe"})
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:  # relative to the file's folder, as the bench reads them (and reports them)
        row["onnx"] = os.path.relpath(Path(row["onnx"]).resolve(), out.parent.resolve())
    out.write_text(json.dumps({"title": doc.get("title", "") + ": the model ladder", "models": rows}, indent=2) + "\n",
                   encoding="utf-8")
    return out
