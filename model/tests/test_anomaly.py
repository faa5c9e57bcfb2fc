"""The smartwatch anomaly detector (zinfer_model.sensor.anomaly): the threshold rule, AUROC, the autoencoder, and the
--quick recipe end to end into a temporary package (CPU, seconds)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from zinfer_model.cli import main
from zinfer_model.onnx_tools import session
from zinfer_model.sensor import anomaly as an

MODEL_ROOT = Path(__file__).resolve().parents[1]
RECIPE = MODEL_ROOT / "recipes" / "anomaly.toml"
WATCH_SMALL = MODEL_ROOT.parent / "models" / "zinfer-watch-small" / "manifest.toml"


# ------------------------------------------------------------------------------------------- threshold rule
def best_f1_reference(scores, labels):
    """Brute force: every midpoint and the flag-everything threshold; the highest F1, the highest threshold of
    equals."""
    u = sorted(set(scores))
    cands = [u[0] - 1e-3] + [(a + b) / 2 for a, b in zip(u, u[1:])]
    best = max((an.confusion(scores, labels, t)["f1"], t) for t in cands)
    return best[1], best[0]


def test_threshold_picks_the_best_f1():
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # flagged above 4.5: windows 5 and 6 (both anomalous) -> F1 0.8; every other cut is worse
    assert an.choose_threshold(scores, [0, 1, 0, 0, 1, 1]) == 4.5
    c = an.confusion(scores, [0, 1, 0, 0, 1, 1], 4.5)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 0, 1, 3) and math.isclose(c["f1"], 0.8)
    # a tie (F1 2/3 above 2.5 and above 5.5) goes to the higher threshold
    assert an.confusion(scores, [0, 0, 1, 0, 0, 1], 2.5)["f1"] == pytest.approx(2 / 3)
    assert an.confusion(scores, [0, 0, 1, 0, 0, 1], 5.5)["f1"] == pytest.approx(2 / 3)
    assert an.choose_threshold(scores, [0, 0, 1, 0, 0, 1]) == 5.5
    # when flagging everything is best, the threshold lies below the smallest score
    t = an.choose_threshold(scores, [1, 0, 0, 0, 0, 0])
    assert t < 1.0 and an.confusion(scores, [1, 0, 0, 0, 0, 0], t)["flagged"] == 6
    # strict: a score equal to the threshold is not flagged
    assert an.confusion([1.0, 2.0], [0, 1], 2.0)["flagged"] == 0
    with pytest.raises(ValueError):
        an.choose_threshold(scores, [0] * 6)


def test_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(4, 30))
        scores = np.round(rng.gamma(2.0, 1.0, n), 1).astype(np.float32)  # rounded: ties between scores too
        labels = rng.random(n) < 0.3
        labels[0], labels[1] = True, False
        t = an.choose_threshold(scores, labels)
        ref_t, ref_f1 = best_f1_reference(scores.astype(np.float64).tolist(), labels)
        assert np.float32(t) == np.float32(t) and math.isfinite(t)
        assert an.confusion(scores, labels, t)["f1"] == pytest.approx(ref_f1)
        # the same windows flagged as the reference's threshold
        assert np.array_equal(scores > np.float32(t), scores.astype(np.float64) > ref_t), trial


def test_auroc_against_pair_counting():
    assert an.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert an.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert an.auroc([0.5, 0.5], [0, 1]) == 0.5
    rng = np.random.default_rng(1)
    s = np.round(rng.random(60), 1)
    y = rng.random(60) < 0.4
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s[y], s[~y])]
    assert an.auroc(s, y) == pytest.approx(np.mean(pairs))


# ------------------------------------------------------------------------------------------------ the model
def test_autoencoder_shapes_and_score():
    recipe = an.load_recipe(RECIPE)
    m = recipe["model"]
    torch.manual_seed(0)
    ae = an.ConvAutoencoder(100, 6, m["channels"], int(m["kernel"]), int(m["latent"])).eval()
    assert 1_000 < an.count_params(ae) <= 50_000  # a few tens of thousands at most
    x = torch.randn(5, 100, 6)
    with torch.no_grad():
        rec = ae(x)
        score, rec2 = an.Scorer(ae)(x)
    assert rec.shape == (5, 100, 6) and score.shape == (5,)
    assert torch.allclose(score, ((rec - x) ** 2).reshape(5, -1).mean(1)) and torch.equal(rec, rec2)
    assert ae.encode(x).shape == (5, int(m["latent"]))
    with pytest.raises(ValueError):
        an.ConvAutoencoder(window=98, channels=[8, 8])


def test_recipe_split_equals_the_sensor_recipe():
    """The anomaly recipe must split, window and normalise the data like the sensor recipe."""
    with open(MODEL_ROOT / "recipes" / "sensor.toml", "rb") as f:
        sensor = tomllib.load(f)["data"]
    ours = an.load_recipe(RECIPE)["data"]
    for key in ("dataset", "split_seed", "train_fraction", "val_fraction", "window", "hop"):
        assert ours[key] == sensor[key], key
    quick = an.load_recipe(RECIPE, quick=True)
    assert quick["quick"] and quick["train"]["max_steps"] > 0 and quick["data"]["train_limit"] > 0


# ------------------------------------------------------------------------------------ the quick recipe, e2e
@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly") / "pkg"
    assert main(["sensor", "anomaly", "--recipe", str(RECIPE), "--quick", "--export-dir", str(out)]) == 0
    return out


def test_quick_manifest(package):
    text = (package / "manifest.toml").read_text()
    man = tomllib.loads(text)
    assert man["name"] == "zinfer-watch-anomaly" and man["version"] == "0.1.0"
    assert man["task"] == "sensor-anomaly" and man["model"] == "model.onnx" and man["output"] == "score"
    assert "labels" not in man and "golden" not in man
    assert man["sha256"] == hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest()
    with open(WATCH_SMALL, "rb") as f:
        small = tomllib.load(f)["sensor"]
    s = man["sensor"]
    assert set(s) == set(small)
    assert (s["input"], s["window"], s["hop"], s["sample_rate_hz"], s["channels"]) == \
        ("frames", 100, 50, 50.0, small["channels"])
    assert len(s["mean"]) == len(s["std"]) == 6 and all(v > 0 for v in s["std"])
    t = man["head"]["threshold"]
    assert isinstance(t, float) and math.isfinite(t)
    assert "validation" in text.split("[head]")[1]  # the comment says where the threshold came from
    report = json.loads((package / "report.json").read_text())
    assert np.float32(report["threshold"]["value"]) == np.float32(t) and report["threshold"]["chosen_on"] == "validation"
    assert report["held_out"] == "ROW" and report["quick"]
    assert report["split"]["recordings"] == {"train": 84, "val": 28, "test": 28}
    assert "Split by subject" in (package / "README.md").read_text()


def test_quick_onnx_scores(package):
    m = onnx.load(str(package / "model.onnx"))
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["frames"]
    assert [o.name for o in m.graph.output] == ["score", "reconstruction"]
    inp = m.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.shape.dim] == ["batch", 100, 6]
    out = m.graph.output[0].type.tensor_type
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["batch"]
    man = tomllib.loads((package / "manifest.toml").read_text())
    mean = np.asarray(man["sensor"]["mean"], np.float32)
    std = np.asarray(man["sensor"]["std"], np.float32)
    doc = json.loads((package / "test_recording_normal.json").read_text())
    raw = np.asarray(doc["samples"], np.float32)
    x = np.stack([(raw[s:s + 100] - mean) / std for s in (0, 130, 400)]).astype(np.float32)
    score, rec = session(package / "model.onnx").run(["score", "reconstruction"], {"frames": x})
    assert score.shape == (3,) and score.dtype == np.float32 and rec.shape == (3, 100, 6)
    assert np.all(np.isfinite(score)) and np.all(score >= 0)
    mse = ((rec.astype(np.float64) - x) ** 2).reshape(3, -1).mean(1)
    assert np.allclose(score, mse, rtol=1e-5, atol=0)


def test_quick_fixtures(package):
    man = tomllib.loads((package / "manifest.toml").read_text())
    mean = np.asarray(man["sensor"]["mean"], np.float32)
    std = np.asarray(man["sensor"]["std"], np.float32)
    t = np.float32(man["head"]["threshold"])
    report = json.loads((package / "report.json").read_text())
    sess = session(package / "model.onnx")
    kinds = []
    for name in ("test_recording_normal.json", "test_recording_anomaly.json"):
        doc = json.loads((package / name).read_text())
        kinds.append((doc["label"], doc["anomaly"]))
        assert doc["subject"] in report["split"]["subjects"]["test"] and len(doc["samples"]) == 600
        assert [w["start"] for w in doc["windows"]] == list(range(0, 501, 50))
        assert doc["threshold"] == man["head"]["threshold"]
        x = np.asarray(doc["samples"], np.float32)
        for w in doc["windows"]:  # reproduces: parse, normalise in float32, run at batch 1, compare
            score = sess.run(["score"], {"frames": ((x[w["start"]:w["start"] + 100] - mean) / std)[None]})[0][0]
            assert np.float32(w["score"]) == score and w["flagged"] == bool(score > t)
        assert report["fixtures"][name]["flagged"] == sum(w["flagged"] for w in doc["windows"])
    assert kinds[0][1] is False and kinds[0][0] != "ROW"
    assert kinds[1] == ("ROW", True)
