"""golden: the drift guard's inputs are spread over the reference's confidence, measured the way zinferd measures
them, written in the format it reads, and the shipped packages carry them with a tolerance they meet."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from zinfer_model import golden

REPO = Path(__file__).resolve().parents[2]


def test_select_spreads_over_confidence():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 500)
    reference = np.stack([p, 1 - p], axis=1)
    picks = golden.select(reference, 32)
    assert len(picks) == 32 == len(set(picks))
    confidence = reference.max(axis=1)
    assert confidence[picks].min() == confidence.min(), "the least confident case is in"
    assert confidence[picks].max() == confidence.max(), "the most confident case is in"
    assert golden.select(reference[:5], 32) == [0, 1, 2, 3, 4], "fewer items than cases: all of them"


def test_compare_measures_agreement_and_deviation_per_case():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    scores = np.array([[0.8, 0.2], [0.7, 0.3], [0.5, 0.5]])
    made = golden.compare(scores, reference)
    assert (made["cases"], made["agreeing"], made["worst_case"]) == (3, 2, 1)
    assert made["max_deviation"] == pytest.approx(0.3)
    assert made["mean_deviation"] == pytest.approx((0.1 + 0.3 + 0.0) / 3)


def test_tolerance_adds_the_margins():
    tol = golden.tolerance({"cases": 32, "agreeing": 32, "max_deviation": 0.08, "mean_deviation": 0.01})
    assert tol == {"min_agreement": 0.9375, "max_deviation": 0.18, "max_mean_deviation": 0.04}
    tol = golden.tolerance({"cases": 4, "agreeing": 1, "max_deviation": 0.95, "mean_deviation": 0.5})
    assert tol["min_agreement"] == 0.0 and tol["max_deviation"] == 1.0


def test_the_golden_table_replaces_an_old_one_and_keeps_other_tables():
    manifest = 'name = "m"\n\n[golden]   # old\nfile = "old.json"\nmin_agreement = 0.5\n\n[sensor]\nwindow = 4\n'
    tol = {"min_agreement": 0.9, "max_deviation": 0.2, "max_mean_deviation": 0.05}
    text = golden.with_golden_table(manifest, tol)
    parsed = tomllib.loads(text)
    assert parsed["sensor"] == {"window": 4}
    assert parsed["golden"] == {"file": "golden.json", **tol}
    assert "old.json" not in text and golden.with_golden_table(text, tol) == text


def test_written_cases_read_back_as_float32(tmp_path):
    samples = np.float32([[0.1, -2.5], [1 / 3, 7.0]])
    reference = np.array([[0.25, 0.75], [0.6, 0.4]])
    tol = golden.write(tmp_path, [{"samples": samples}, {"text": "ünïcode \"quoted\""}], reference, reference,
                       {"inputs": "test"})
    doc = json.loads((tmp_path / "golden.json").read_text(encoding="utf-8"))
    assert doc["tolerance"] == tol and doc["made"]["agreeing"] == 2
    assert np.array_equal(np.float32(doc["cases"][0]["samples"]), samples), "float32 values survive exactly"
    assert doc["cases"][1] == {"text": "ünïcode \"quoted\"", "scores": [0.6, 0.4]}


@pytest.mark.parametrize("name", ["zinfer-sentiment-small", "zinfer-watch-small"])
def test_shipped_packages_carry_golden_inputs_they_meet(name):
    package = REPO / "models" / name
    manifest = tomllib.loads((package / "manifest.toml").read_text(encoding="utf-8"))
    doc = json.loads((package / manifest["golden"]["file"]).read_text(encoding="utf-8"))
    assert len(doc["cases"]) == golden.CASES
    assert {k: manifest["golden"][k] for k in doc["tolerance"]} == doc["tolerance"]
    assert all(len(case["scores"]) == len(manifest["labels"]) for case in doc["cases"])
    reference = np.array([case["scores"] for case in doc["cases"]])
    if "sensor" in manifest:
        s = manifest["sensor"]
        windows = np.float32([case["samples"] for case in doc["cases"]])
        assert windows.shape == (golden.CASES, s["window"], len(s["channels"]))
        int8 = golden.sensor_probs(package / "model.onnx", windows, s["mean"], s["std"], s["input"], "logits")
    else:
        int8 = golden.text_probs(package, [case["text"] for case in doc["cases"]], manifest["max_length"])
    # Measured here, on this CPU and ONNX Runtime: within the tolerance (what zinferd checks at start-up).
    made = golden.compare(int8, reference)
    assert made["agreement"] >= manifest["golden"]["min_agreement"], made
    assert made["max_deviation"] <= manifest["golden"]["max_deviation"], made
    assert made["mean_deviation"] <= manifest["golden"]["max_mean_deviation"], made


def test_the_golden_command_rebuilds_a_text_package(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(REPO / "models" / "zinfer-sentiment-small", package)
    (package / "golden.json").unlink()
    manifest = (package / "manifest.toml").read_text(encoding="utf-8")
    (package / "manifest.toml").write_text(manifest.split("\n[golden]")[0] + "\n", encoding="utf-8")
    result = golden.from_predictions(package, package / "test_predictions.jsonl", 128)
    shipped = json.loads((REPO / "models/zinfer-sentiment-small/golden.json").read_text(encoding="utf-8"))
    rebuilt = json.loads((package / "golden.json").read_text(encoding="utf-8"))
    assert rebuilt["cases"] == shipped["cases"], "the same cases and references, whatever the CPU"
    assert tomllib.loads((package / "manifest.toml").read_text(encoding="utf-8"))["golden"] == {
        "file": "golden.json", **result["tolerance"]}
