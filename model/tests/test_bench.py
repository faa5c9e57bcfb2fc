"""Tests of the efficiency report (`zinfer_model.bench`), on tiny random models: seconds on a CPU.

The standard reference architectures are only checked for their shapes (built on the meta device: no weights,
no export); the harness runs end to end on toy-sized models of the same three families.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the toolkit's folder, when not installed

from zinfer_model import bench  # noqa: E402
from zinfer_model.bench import entries, measure, onnxinfo, reference, report  # noqa: E402

MiB = 2 ** 20


# ------------------------------------------------------------------------------ reference architectures
def _meta_model(key):
    return reference.build_model(reference.STANDARD[key], device="meta")


def test_bert_base_has_the_published_shape():
    cfg = reference.make_config(reference.STANDARD["bert-base"])
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        768, 12, 12, 3072)
    assert cfg.vocab_size == 30522 and cfg.max_position_embeddings == 512 and cfg.type_vocab_size == 2
    model = _meta_model("bert-base")
    assert len(model.bert.encoder.layer) == 12
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape == (3072, 768)
    n = sum(p.numel() for p in model.parameters())
    assert n == 109_483_778  # bert-base-uncased (109,482,240) + a 2-class head
    assert reference.uses_token_type_ids(reference.STANDARD["bert-base"])


def test_distilbert_has_the_published_shape():
    cfg = reference.make_config(reference.STANDARD["distilbert"])
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.hidden_dim, cfg.vocab_size) == (768, 6, 12, 3072, 30522)
    model = _meta_model("distilbert")
    assert len(model.distilbert.transformer.layer) == 6
    n = sum(p.numel() for p in model.parameters())
    assert 66.9e6 < n < 67.0e6  # distilbert-base-uncased: 66.4 M + pre-classifier and head
    assert not reference.uses_token_type_ids(reference.STANDARD["distilbert"])


def test_mobilebert_has_the_published_shape():
    cfg = reference.make_config(reference.STANDARD["mobilebert"])
    assert cfg.num_hidden_layers == 24 and cfg.hidden_size == 512 and cfg.embedding_size == 128
    assert cfg.intra_bottleneck_size == 128 and cfg.true_hidden_size == 128 and cfg.num_attention_heads == 4
    assert cfg.num_feedforward_networks == 4 and cfg.intermediate_size == 512 and cfg.use_bottleneck
    assert cfg.normalization_type == "no_norm" and cfg.trigram_input
    model = _meta_model("mobilebert")
    layers = model.mobilebert.encoder.layer
    assert len(layers) == 24
    bottleneck = layers[0].bottleneck.input.dense  # 512 -> 128
    assert tuple(bottleneck.weight.shape) == (128, 512)
    n = sum(p.numel() for p in model.parameters())
    assert 24.5e6 < n < 24.7e6  # google/mobilebert-uncased: 24.6 M


def test_reference_attention_shapes():
    assert reference.attention_shape(reference.STANDARD["bert-base"]) == (12, 768)
    assert reference.attention_shape(reference.STANDARD["distilbert"]) == (12, 768)
    assert reference.attention_shape(reference.STANDARD["mobilebert"]) == (4, 128)


def test_cache_key_depends_on_config_and_options():
    spec = reference.TINY["bert-base"]
    k = reference.cache_key("bert-base", spec, 2, 0, True)
    assert k == reference.cache_key("bert-base", spec, 2, 0, True)
    assert k != reference.cache_key("bert-base", spec, 3, 0, True)
    assert k != reference.cache_key("bert-base", spec, 2, 0, False)
    other = {**spec, "config": {**spec["config"], "num_hidden_layers": 3}}
    assert k != reference.cache_key("bert-base", other, 2, 0, True)


# --------------------------------------------------------------------------------------- models file
def test_models_file_round_trip_and_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    onnx_file = tmp_path / "a" / "m.onnx"
    onnx_file.write_bytes(b"x")
    path = entries.write_models_json(tmp_path / "models.json", [
        {"name": "teacher", "onnx": onnx_file, "role": "teacher", "accuracy": 0.85},
        entries.ModelEntry(name="final", onnx=onnx_file, role="final", accuracy=0.84, accuracy_ci95=0.02),
    ], title="t")
    raw = json.loads(path.read_text())
    assert raw["title"] == "t" and raw["models"][0]["onnx"] == "a/m.onnx"
    loaded, meta = entries.load_models_json(path)
    assert meta == {"title": "t"}
    assert [e.name for e in loaded] == ["teacher", "final"]
    assert loaded[0].onnx == (tmp_path / "a" / "m.onnx").resolve() and loaded[1].accuracy_ci95 == 0.02
    assert loaded[0].onnx.is_absolute()
    # a bare list is accepted too, roles default to "other"
    bare, _ = entries.parse_models([{"name": "x", "onnx": "a/m.onnx"}], tmp_path)
    assert bare[0].role == "other"


@pytest.mark.parametrize("bad, message", [
    ([{"onnx": "m.onnx"}], "'name' is required"),
    ([{"name": "x"}], "'onnx'"),
    ([{"name": "x", "onnx": "missing.onnx"}], "not found"),
    ([{"name": "x", "onnx": "m.onnx", "accuracy": 84.7}], "fraction"),
    ([{"name": "x", "onnx": "m.onnx"}, {"name": "x", "onnx": "m.onnx"}], "duplicate"),
    ({"rows": []}, "expected a list"),
])
def test_models_file_errors_are_clear(tmp_path, bad, message):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(entries.EntryError, match=message):
        entries.parse_models(bad, tmp_path)


def test_cli_reports_a_bad_models_file(tmp_path, capsys):
    bad = tmp_path / "models.json"
    bad.write_text('[{"name": "x", "onnx": "nope.onnx"}]')
    assert bench.main(["--models", str(bad), "--references", "none", "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ratios and targets
def _fake_row(name, role, *, rss, lat, tput=100.0, acc=None, key=None, precision="fp32", floor=50 * MiB):
    runs = {}
    for t in ("1", "2"):
        runs[t] = {"memory": {"final": {"peak_rss": rss}},
                   "latency_b1": {str(s): {"median_ms": lat * s / 64, "p95_ms": lat * s / 64 * 1.1}
                                  for s in (16, 64, 128)},
                   "throughput": {"seq_per_s": tput}}
    row = {"name": name, "role": role, "runs": runs, "params": 1000, "file_bytes": 10_000, "accuracy": acc,
           "precision": precision}
    if key:
        row["reference"] = {"key": key}
    return report.finish_row(row, floor)


def test_ratios_and_targets_on_synthetic_rows():
    floor = 50 * MiB
    rows = [
        _fake_row("teacher", "teacher", rss=150 * MiB, lat=10.0, acc=0.850),
        _fake_row("final", "final", rss=70 * MiB, lat=3.0, tput=400.0, acc=0.840, precision="int8"),
        _fake_row("BERT-base fp32", "reference", rss=450 * MiB, lat=40.0, key="bert-base"),
        _fake_row("DistilBERT fp32", "reference", rss=300 * MiB, lat=20.0, key="distilbert"),
        _fake_row("MobileBERT int8", "reference", rss=100 * MiB, lat=2.0, key="mobilebert", precision="int8"),
    ]
    report.add_ratios(rows, [1, 2], [16, 64, 128])
    final = rows[1]
    assert final["net_rss"] == 20 * MiB
    vt = final["vs_teacher"]
    assert vt["baseline"] == "teacher"
    assert vt["peak_rss"] == pytest.approx(70 / 150)
    assert vt["net_rss"] == pytest.approx(20 / 100)
    assert vt["latency_p50"]["1"]["64"] == pytest.approx(0.3)
    assert vt["throughput"]["2"] == pytest.approx(4.0)
    assert vt["accuracy_points"] == pytest.approx(-1.0)
    assert final["vs_bert_base"]["baseline"] == "BERT-base fp32"
    assert final["vs_bert_base"]["net_rss"] == pytest.approx(20 / 400)
    assert rows[0]["vs_teacher"]["peak_rss"] == 1.0

    t = report.check_targets(rows, [1, 2], [16, 64, 128])
    checks = t["checks"]
    assert checks[0]["met"] is True and checks[0]["net_cut"] == pytest.approx(0.8)  # net RSS: 80% lower
    # the whole process: 70 vs 150 MiB is only 53% lower, so this one is missed
    assert checks[1]["met"] is False and checks[1]["total_cut"] == pytest.approx(1 - 70 / 150)
    assert checks[2]["met"] is True and checks[2]["cuts"]["1"] == pytest.approx(0.7)  # latency: 70% lower
    assert checks[3]["met"] is True and checks[3]["gap_points"] == pytest.approx(1.0)  # 1 point below
    assert checks[4]["met"] is True                                                    # beats DistilBERT
    assert checks[5]["met"] is False and any("latency" in c["target"] for c in checks[5:])  # MobileBERT faster
    assert all("MobileBERT int8" in m for m in checks[5]["misses"])
    assert t["status"] == "4 of 6 met"


def test_targets_need_a_final_model_and_a_teacher_for_the_teacher_targets():
    rows = [_fake_row("t", "other", rss=150 * MiB, lat=10.0)]
    t = report.check_targets(rows, [1, 2], [16, 64, 128])
    assert t["checks"] == [] and "not checked" in t["status"]
    # no teacher: the teacher targets are "not checked", the reference targets still are
    rows = [_fake_row("a", "student-step", rss=70 * MiB, lat=3.0),
            _fake_row("DistilBERT int8", "reference", rss=300 * MiB, lat=20.0, key="distilbert")]
    report.add_ratios(rows, [1, 2], [16, 64, 128])
    assert rows[0]["vs_teacher"] is None and rows[0]["vs_bert_base"] is None
    t = report.check_targets(rows, [1, 2], [16, 64, 128])
    assert t["final"] == "a" and "student-step" in t["final_from"]  # the last step stands in for "final"
    assert [c["met"] for c in t["checks"]] == [None, None, None, None, True, None]
    assert t["status"] == "1 of 6 met, 5 not checked"
    rows = [_fake_row("t", "teacher", rss=150 * MiB, lat=10.0)] + rows
    t = report.check_targets(rows, [1, 2], [16, 64, 128])
    # net RSS met, whole-process RSS (70 vs 150 MiB) missed, latency met
    assert [c["met"] for c in t["checks"]][:3] == [True, False, True]


# ------------------------------------------------------------------------------- the harness, end to end
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One quick bench run on tiny models: 2 project models + the 3 tiny reference families, fp32 and int8."""
    tmp = tmp_path_factory.mktemp("bench")
    cache = tmp / "cache"
    refs = reference.build_references(["bert-base", "distilbert", "mobilebert"], "tiny", cache, log=lambda m: None)
    by = {r.name: r.path for r in refs}
    project = tmp / "project"
    (project / "teacher").mkdir(parents=True)
    (project / "student").mkdir()
    shutil.copy(by["BERT-base (tiny test shape) fp32"], project / "teacher" / "model.onnx")
    shutil.copy(by["DistilBERT (tiny test shape) int8"], project / "student" / "model.int8.onnx")
    entries.write_models_json(project / "models.json", [
        {"name": "teacher", "onnx": project / "teacher" / "model.onnx", "role": "teacher", "accuracy": 0.80},
        {"name": "student int8", "onnx": project / "student" / "model.int8.onnx", "role": "final",
         "accuracy": 0.79, "accuracy_ci95": 0.02, "notes": "a tiny stand-in"},
    ], title="test report")
    out = tmp / "out"
    argv = ["--models", str(project / "models.json"), "--out", str(out), "--quick", "--references", "tiny",
            "--cache", str(cache)]
    assert bench.main(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    return {"out": out, "doc": doc, "argv": argv, "cache": cache}


def test_bench_writes_markdown_json_and_png(bench_run):
    out = bench_run["out"]
    md = (out / "report.md").read_text()
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    for column in ("params", "file MiB", "peak RSS MiB", "net RSS MiB", "p50 ms @16 (1 thr)",
                   "p50 ms @64 (1 thr)", "p50 ms @128 (1 thr)", "p50 ms @64 (2 thr)", "b8 seq/s (1 thr)",
                   "b8 seq/s (2 thr)", "accuracy", "## Ratios against the teacher",
                   "## Ratios against the BERT-base fp32", "## Latency", "## Memory", "## Targets",
                   "ONNX Runtime 1.", "random weights", "**Machine:**", "Memory floor", "CPU/wall"):
        assert column in md, column
    doc = bench_run["doc"]
    assert doc["title"] == "test report" and doc["quick"] is True
    assert doc["environment"]["onnxruntime"] and doc["environment"]["cpu_model"]
    names = [r["name"] for r in doc["rows"]]
    assert names[:2] == ["teacher", "student int8"]
    assert len(names) == 8 and sum(r["source"] == "reference" for r in doc["rows"]) == 6
    for r in doc["rows"]:
        assert r["name"] in md


def test_every_row_has_every_measurement(bench_run):
    doc = bench_run["doc"]
    floor = doc["floor"]["peak_rss"]
    assert floor > 20 * MiB
    assert doc["floor"]["empty_session_peak_rss"] > floor
    for r in doc["rows"]:
        assert r["params"] > 0 and r["file_bytes"] > 0 and r["vocab_size"] == 200
        assert r["peak_rss"] > floor and r["net_rss"] == r["peak_rss"] - floor > 0
        assert set(r["runs"]) == {"1", "2"}
        for t, run in r["runs"].items():
            assert run["threads"] == int(t)
            assert run["peak_rss"] > floor
            for s in ("16", "64", "128"):
                lat = run["latency_b1"][s]
                assert lat["n"] >= 5 and 0 < lat["median_ms"] <= lat["p95_ms"]
                assert lat["cpu_per_wall"] > 0
            assert run["throughput"]["batch"] == 8 and run["throughput"]["seq_per_s"] > 0
            m = run["memory"]
            assert m["after_load"]["peak_rss"] <= m["after_batch1"]["peak_rss"] <= m["final"]["peak_rss"]


def test_models_with_fewer_inputs_and_reference_details(bench_run):
    rows = {r["name"]: r for r in bench_run["doc"]["rows"]}
    assert rows["DistilBERT (tiny test shape) int8"]["inputs"] == ["input_ids", "attention_mask"]
    assert rows["student int8"]["runs"]["1"]["inputs"] == ["input_ids", "attention_mask"]
    assert rows["BERT-base (tiny test shape) fp32"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    for name, r in rows.items():
        assert r["precision"] == ("int8" if "int8" in name else "fp32")
        if r["source"] == "reference":
            assert r["params"] == r["onnx_params"] == r["reference"]["torch_params"]
            assert r["reference"]["export_max_abs_diff"] < 1e-4
    bert = rows["BERT-base (tiny test shape) fp32"]
    assert bert["reference"]["fusions"].get("Attention", 0) >= 1  # the mask form lets the optimizer fuse
    assert rows["BERT-base (tiny test shape) int8"]["fused_ops"].get("QAttention", 0) >= 1
    assert (bench_run["cache"] / ".gitignore").read_text().strip().endswith("*")


def test_ratios_are_computed_from_the_measurements(bench_run):
    rows = {r["name"]: r for r in bench_run["doc"]["rows"]}
    teacher, final = rows["teacher"], rows["student int8"]
    bert = rows["BERT-base (tiny test shape) fp32"]
    vt, vb = final["vs_teacher"], final["vs_bert_base"]
    assert vt["baseline"] == "teacher" and vb["baseline"] == bert["name"]
    assert vt["peak_rss"] == pytest.approx(final["peak_rss"] / teacher["peak_rss"])
    assert vt["net_rss"] == pytest.approx(final["net_rss"] / teacher["net_rss"])
    assert vt["file_bytes"] == pytest.approx(final["file_bytes"] / teacher["file_bytes"])
    assert vt["params"] == pytest.approx(final["params"] / teacher["params"])
    for t in ("1", "2"):
        for s in ("16", "64", "128"):
            expect = (final["runs"][t]["latency_b1"][s]["median_ms"]
                      / teacher["runs"][t]["latency_b1"][s]["median_ms"])
            assert vt["latency_p50"][t][s] == pytest.approx(expect)
        assert vb["throughput"][t] == pytest.approx(
            final["runs"][t]["throughput"]["seq_per_s"] / bert["runs"][t]["throughput"]["seq_per_s"])
    assert vt["accuracy_points"] == pytest.approx(-1.0)
    assert teacher["vs_teacher"]["peak_rss"] == 1.0 and bert["vs_bert_base"]["net_rss"] == 1.0
    assert rows["DistilBERT (tiny test shape) fp32"]["vs_teacher"]["accuracy_points"] is None

    tg = bench_run["doc"]["targets"]
    assert tg["teacher"] == "teacher" and tg["final"] == "student int8" and len(tg["checks"]) == 6
    lat = tg["checks"][2]
    for t, cut in lat["cuts"].items():
        assert cut == pytest.approx(1 - final["runs"][t]["latency_b1"]["64"]["median_ms"]
                                    / teacher["runs"][t]["latency_b1"]["64"]["median_ms"])
    assert lat["met"] == all(c >= 0.6 for c in lat["cuts"].values())
    assert tg["checks"][3]["met"] is True  # 1 point below the teacher


def test_resume_reuses_saved_measurements(bench_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(bench_run["out"] / "raw", out / "raw")
    argv = bench_run["argv"] + ["--resume", "--reference", "distilbert", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["rows"]) == 4
    assert all(run.get("resumed") for r in doc["rows"] for run in r["runs"].values())


def test_onnxinfo_counts_and_detects(bench_run):
    rows = {r["name"]: r for r in bench_run["doc"]["rows"]}
    info = onnxinfo.inspect(Path(rows["MobileBERT (tiny test shape) int8"]["path"]))
    assert info["precision"] == "int8" and info["vocab_size"] == 200 and info["opset"] == 17
    assert info["fused_ops"].get("MatMulInteger", 0) > 0
    assert math.isclose(info["params"], rows["MobileBERT (tiny test shape) int8"]["reference"]["torch_params"])


def test_settings_quick_is_shorter():
    full, quick = measure.Settings(), measure.Settings.quick()
    assert full.threads == quick.threads == (1, 2) and full.seq_lengths == (16, 64, 128) and full.batch == 8
    assert quick.min_s < full.min_s and quick.min_runs < full.min_runs


def test_merge_rounds_keeps_the_best_latency_and_the_highest_memory():
    def res(lat16, tput, peak, pid):
        return {"pid": pid, "load_s": 0.1, "threads": 1,
                "latency_b1": {"16": {"median_ms": lat16, "p95_ms": lat16 * 2, "n": 30}},
                "throughput": {"seq_per_s": tput}, "memory": {"final": {"peak_rss": peak}}}

    merged = measure.merge_rounds([res(2.0, 100.0, 80, 1), res(1.5, 90.0, 90, 2)])
    assert merged["latency_b1"]["16"] == {"median_ms": 1.5, "p95_ms": 3.0, "n": 30}
    assert merged["throughput"]["seq_per_s"] == 100.0
    assert merged["memory"]["final"]["peak_rss"] == 90
    assert [r["pid"] for r in merged["rounds"]] == [1, 2]
    single = res(1.0, 1.0, 1, 3)
    assert measure.merge_rounds([single]) is single


def test_contention_and_ratio_formatting():
    rows = [_fake_row("a", "teacher", rss=100 * MiB, lat=1.0)]
    for c in rows[0]["runs"]["1"]["latency_b1"].values():
        c["cpu_per_wall"] = 0.6
    rows[0]["runs"]["1"]["throughput"]["cpu_per_wall"] = 0.99
    busy = report.contention(rows)
    assert busy == {"cases": 4, "below_85pct": 3, "median_cpu_per_wall": 0.6, "min_cpu_per_wall": 0.6}
    assert report._x(0.5) == "0.50×" and report._x(0.0031) == "0.0031×" and report._x(1234.5) == "1234×"
    assert report._x(None) == "–"
