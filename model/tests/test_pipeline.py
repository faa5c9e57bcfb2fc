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


def test_seeds_share_one_teacher_and_validation_alone_chooses(tmp_path):
    """A ladder rung's recipe: its teacher comes from another recipe's run (not retrained), each student seed runs
    in its own directory, and the shipped file is the seed with the best validation accuracy."""
    from zinfer_model.steps import SEED_STEPS, run_recipe_step

    base_recipe = merge(load_recipe(None), TINY)
    base = Run(base_recipe, tmp_path / "runs" / "base")
    run_step(base, "teacher")
    teacher_metrics = (tmp_path / "runs" / "base" / "teacher" / "metrics.json").read_text(encoding="utf-8")

    rung = merge(base_recipe, {"name": "rung", "seeds": [0, 1], "teacher": {"from_run": "base"},
                               "shrink": {"hidden": 16, "heads": 1, "intermediate": 32, "layers": [1]}})
    out = tmp_path / "shipped"
    run = Run(rung, tmp_path / "runs" / "rung", export_dir=out)
    for step in STEPS:
        run_recipe_step(run, step)
    assert not (tmp_path / "runs" / "rung" / "teacher").exists()  # shared, not retrained
    assert (tmp_path / "runs" / "base" / "teacher" / "metrics.json").read_text(encoding="utf-8") == teacher_metrics
    for seed in (0, 1):
        sub = tmp_path / "runs" / "rung" / f"seed-{seed}"
        assert all((sub / step / "metrics.json").is_file() for step in SEED_STEPS), seed
        assert json.loads((sub / "recipe.json").read_text(encoding="utf-8"))["recipe"]["seed"] == seed

    select = run.metrics("select")
    vals = {s["seed"]: s["val_int8"] for s in select["seeds"]}
    assert set(vals) == {0, 1}
    assert select["chosen_seed"] == max(sorted(vals), key=lambda n: vals[n])
    tests = [s["test_int8"] for s in select["seeds"]]
    assert abs(select["test_int8_mean"] - sum(tests) / 2) < 1e-12
    chosen_int8 = tmp_path / "runs" / "rung" / f"seed-{select['chosen_seed']}" / "quantize" / "model.int8.onnx"
    assert (out / "model.onnx").read_bytes() == chosen_int8.read_bytes()
    assert "student seeds on one teacher" in (out / "README.md").read_text(encoding="utf-8")

    # the ladder's report input: the rung's chosen seed beside the shipped default rung, every file present
    from zinfer_model.ladder import ladder_models
    doc = json.loads(ladder_models(tmp_path / "runs" / "rung", REPO / "models" / "zinfer-sentiment-small",
                                   tmp_path / "ladder.json").read_text(encoding="utf-8"))
    names = [m["name"] for m in doc["models"]]
    assert names[0] == "teacher fp32" and names[-1].startswith("rung 0 int8 (zinfer-sentiment-small")
    assert "rung 1 int8 (zinfer-sentiment-tiny)" in names
    assert all((tmp_path / m["onnx"]).is_file() for m in doc["models"]), "paths relative to the file's folder"
    assert 0.8 < doc["models"][-1]["accuracy"] < 0.9, "the shipped default's test accuracy, from its predictions file"

    # a rung whose teacher table differs from the run it borrows from is refused, naming the table
    other = merge(rung, {"teacher": {"lr": 1e-2}})
    try:
        Run(other, tmp_path / "runs" / "other")
    except SystemExit as e:
        assert "[teacher]" in str(e)
    else:
        raise AssertionError("a mismatched shared teacher was accepted")
