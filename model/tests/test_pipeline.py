"""The whole recipe on a tiny configuration (random tiny teacher, a slice of the data), through export-shipped:
the manifest written is what zinferd reads (the fixture's keys, nothing else; sha256 of model.onnx), the
predictions file covers the test split, and a rerun skips completed steps."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

from zinfer_model.recipe import load_recipe, merge
from zinfer_model.steps import STEPS, Run, run_step

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "name": "tiny", "threads": 1, "max_length": 64,
    "data": {"train_limit": 96, "val_limit": 32, "test_limit": 24},
    "teacher": {"init": "random", "hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "epochs": 1,
                "max_steps_per_epoch": 3, "lr": 1e-3},
    "shrink": {"hidden": 32, "heads": 2, "intermediate": 64, "epochs": 1, "max_steps_per_epoch": 3,
               "importance_batches": 1},
    "vocab": {"check_texts": 20},
    "prune": {"epochs": 1, "max_steps_per_epoch": 2, "importance_batches": 1, "head_sparsity": 0.5},
    "quantize": {"min_int8_agreement": 0.0},
    "evaluate": {"latency_runs": 2},
    "export": {"name": "zinfer-test-tiny"},
}


def test_tiny_recipe_end_to_end(tmp_path):
    recipe = merge(load_recipe(None), TINY)
    out = tmp_path / "shipped"
    run = Run(recipe, tmp_path / "run", export_dir=out)
    for step in STEPS:
        run_step(run, step)
        assert run.done(step), step

    pr = run.metrics("prune")
    assert pr["heads_after"] < pr["heads_before"] and pr["neurons_after"] < pr["neurons_before"]
    assert run.metrics("shrink")["structure"]["hidden"] == 32

    manifest = tomllib.loads((out / "manifest.toml").read_text(encoding="utf-8"))
    fixture = tomllib.loads((REPO / "models" / "fixture" / "manifest.toml").read_text(encoding="utf-8"))
    assert set(manifest) == set(fixture) | {"golden"}  # the daemon denies unknown keys
    golden_doc = json.loads((out / manifest["golden"]["file"]).read_text(encoding="utf-8"))
    assert golden_doc["tolerance"] == {k: v for k, v in manifest["golden"].items() if k != "file"}
    assert len(golden_doc["cases"]) == min(32, len(run.splits().val)) and "validation" in golden_doc["about"]["inputs"]
    assert all(set(case) == {"text", "scores"} for case in golden_doc["cases"])
    assert manifest["name"] == "zinfer-test-tiny" and manifest["task"] == "text-classification"
    assert manifest["model"] == "model.onnx" and manifest["tokenizer"] == "tokenizer.json"
    assert manifest["labels"] == ["negative", "positive"] and manifest["output"] == "logits"
    assert manifest["max_length"] == 64
    assert manifest["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()

    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24
    for row in rows:
        assert set(row) == {"text", "label", "probs", "pred", "int8_probs"}
        assert abs(sum(row["probs"]) - 1) < 1e-9 and row["pred"] in manifest["labels"]

    # the efficiency report's input lists every stage's ONNX file, relative to the JSON file
    bench_in = tmp_path / "run" / "evaluate" / "models.json"
    doc = json.loads(bench_in.read_text(encoding="utf-8"))
    assert [m["role"] for m in doc["models"]] == ["teacher", "teacher-int8", "student-step", "student-step",
                                                   "student-step", "final"]
    assert all((bench_in.parent / m["onnx"]).is_file() and 0 <= m["accuracy"] <= 1 for m in doc["models"])

    # a rerun skips every completed step
    before = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    for step in STEPS:
        run_step(Run(recipe, tmp_path / "run", export_dir=out), step)
    after = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")[len(before):]
    assert after.count("already complete") == len(STEPS)
