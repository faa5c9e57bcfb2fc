"""The sensor recipe end to end with --quick (tiny models, a few steps), then its side-by-side table (seconds)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np

from zinfer_model.cli import main
from zinfer_model.onnx_tools import session

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sensor.toml"


def test_quick_recipe_and_bench(tmp_path):
    run = tmp_path / "run"
    assert main(["sensor", "recipe", "--recipe", str(RECIPE), "--quick", "--run-dir", str(run)]) == 0
    for step in ("original", "student", "prune", "quantize", "evaluate", "export"):
        assert json.loads((run / step / "metrics.json").read_text())["complete"]
    split = json.loads((run / "original" / "metrics.json").read_text())["split"]
    assert split["recordings"] == {"train": 84, "val": 28, "test": 28}
    out = run / "export" / "zinfer-watch-small"
    man = tomllib.loads((out / "manifest.toml").read_text())
    assert man["task"] == "sensor-classification" and man["output"] == "logits" and len(man["labels"]) == 7
    assert man["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    s = man["sensor"]
    assert (s["input"], s["window"], s["hop"], s["sample_rate_hz"]) == ("frames", 100, 50, 50.0)
    assert s["channels"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    mean, std = np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)
    sess = session(out / "model.onnx")
    labels = set()
    for name, n in (("test_recording.json", 600), ("test_recording_b.json", 300)):
        doc = json.loads((out / name).read_text())
        labels.add(doc["label"])
        assert doc["subject"] in split["subjects"]["test"] and len(doc["samples"]) == n
        assert [w["start"] for w in doc["windows"]] == list(range(0, n - 100 + 1, 50))
        x = np.asarray(doc["samples"], np.float32)
        for w in doc["windows"]:
            lg = sess.run(["logits"], {"frames": ((x[w["start"]:w["start"] + 100] - mean) / std)[None]})[0][0]
            e = np.exp(lg - lg.max())
            assert np.allclose(np.asarray(w["probs"]), e / e.sum(), atol=1e-6)
            assert w["label"] == man["labels"][int(lg.argmax())]
    assert len(labels) == 2  # two different classes
    assert "Split by subject" in (out / "README.md").read_text()

    rep = tmp_path / "report"
    assert main(["sensor", "bench", "--quick", "--threads", "1", "--models", str(run / "evaluate" / "models.json"),
                 "--out", str(rep), "--raw-dir", str(tmp_path / "raw")]) == 0
    doc = json.loads((rep / "report.json").read_text())
    names = [r["name"] for r in doc["rows"]]
    assert names == ["original fp32", "original int8", "half width fp32", "pruned fp32", "pruned int8 (shipped)"]
    for r in doc["rows"]:
        run1 = r["runs"]["1"]
        assert run1["latency_b1"]["100"]["median_ms"] > 0 and run1["throughput"]["batch"] == 8
        assert r["peak_rss"] > doc["floor"]["peak_rss"] and r["file_bytes"] > 0 and r["params"] > 0
    assert doc["rows"][1]["file_bytes"] < doc["rows"][0]["file_bytes"]
    assert "pruned int8 (shipped)" in (rep / "report.md").read_text()
