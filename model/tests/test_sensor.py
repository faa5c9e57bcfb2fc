"""The sensor model: data split and windows, normalisation, student width, pruning, ONNX export (CPU, seconds)."""

from __future__ import annotations

import json
import platform
import random

import numpy as np
import onnx
import pytest
import torch

from zinfer_model.importance import global_keep
from zinfer_model.metrics import agreement
from zinfer_model.onnx_tools import quantize_int8, session
from zinfer_model.sensor import data as sd
from zinfer_model.sensor import model as sm
from zinfer_model.sensor.steps import f32, manifest_text, onnx_logits, recording_json, logits


@pytest.fixture(scope="module")
def watch():
    return sd.load_watch()


@pytest.fixture(scope="module")
def split(watch):
    return sd.split_subjects([r.subject for r in watch.recordings], 0)


@pytest.fixture(scope="module")
def small_views(watch, split):
    tr = sd.make_windows(sd.recordings_of(watch, split.train), 100, 50)
    va = sd.make_windows(sd.recordings_of(watch, split.val), 100, 50).limit(64)
    mean, std = sd.channel_stats(tr)
    return sd.WindowData(tr.limit(128), mean, std), sd.WindowData(va, mean, std)


def tiny(seed=0, **kw) -> sm.SensorTransformer:
    torch.manual_seed(seed)
    cfg = dict(layers=2, heads=4, ffn=32, d_model=32, head_size=8, patch=10, dropout=0.0)
    cfg.update(kw)
    return sm.SensorTransformer(sm.SensorConfig.uniform(**cfg)).eval()


def test_dataset_layout(watch):
    assert len(watch.recordings) == 140
    assert watch.channels == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert watch.labels == ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
    assert {r.label for r in watch.recordings} == set(range(7))
    assert all(r.x.dtype == np.float32 and r.x.shape[1] == 6 for r in watch.recordings)
    # accelerometer in g: the magnitude of a still watch is about 1
    first = watch.recordings[0].x[:20, :3]
    assert 0.8 < float(np.linalg.norm(first, axis=1).mean()) < 1.2


def test_subject_split_has_no_overlap(watch, split):
    parts = [set(split.train), set(split.val), set(split.test)]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == {r.subject for r in watch.recordings}
    assert (len(split.train), len(split.val), len(split.test)) == (6, 2, 2)
    assert sd.split_subjects([r.subject for r in watch.recordings], 0) == split  # seeded
    assert sd.split_subjects([r.subject for r in watch.recordings], 1) != split
    for name in ("train", "val", "test"):
        assert {r.subject for r in sd.recordings_of(watch, split.of(name))} == set(split.of(name))


def test_window_starts():
    assert sd.window_starts(600, 100, 50) == list(range(0, 501, 50))
    assert sd.window_starts(300, 100, 50) == [0, 50, 100, 150, 200]
    assert sd.window_starts(349, 100, 50) == [0, 50, 100, 150, 200]
    assert sd.window_starts(350, 100, 50) == [0, 50, 100, 150, 200, 250]
    assert sd.window_starts(99, 100, 50) == []
    rec = sd.Recording(3, 1, 2, 0, np.arange(250 * 6, dtype=np.float32).reshape(250, 6))
    w = sd.make_windows([rec], 100, 50)
    assert w.start.tolist() == [0, 50, 100, 150] and w.y.tolist() == [2] * 4 and w.recording.tolist() == [3] * 4
    assert np.array_equal(w.x[1], rec.x[50:150])


def test_normalisation_from_train_only(watch, split):
    train = sd.make_windows(sd.recordings_of(watch, split.train), 100, 50)
    everything = sd.make_windows(watch.recordings, 100, 50)
    mean, std = sd.channel_stats(train)
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (6,)
    flat = train.x.reshape(-1, 6).astype(np.float64)
    assert np.allclose(mean, flat.mean(0), atol=1e-6) and np.allclose(std, flat.std(0), atol=1e-6)
    m_all, _ = sd.channel_stats(everything)
    assert not np.allclose(mean, m_all, atol=1e-4)  # the held-out subjects would change them
    z = sd.normalise(train.x, mean, std)
    assert z.dtype == np.float32
    assert np.allclose(z.reshape(-1, 6).mean(0), 0, atol=1e-3) and np.allclose(z.reshape(-1, 6).std(0), 1, atol=1e-3)
    # exactly the float32 arithmetic the daemon does
    x = train.x[0, 0]
    assert np.array_equal(z[0, 0], (x - mean) / std)


def test_student_has_half_width_and_inherits(small_views):
    train, val = small_views
    orig = tiny(layers=2, heads=4, ffn=32, d_model=32)
    scores = sm.taylor_importance(orig, (train.batch(c) for c in train.order(32, random.Random(0))[:2]))
    assert [len(s) for s in scores["heads"]] == [4, 4] and len(scores["hidden"]) == 32
    dims = sorted(range(32), key=lambda i: -float(scores["hidden"][i]))[:16]
    heads = [sorted(range(4), key=lambda i: -float(s[i]))[:2] for s in scores["heads"]]
    neurons = [list(range(0, 32, 2))] * 2
    student = sm.shrink_from(orig, dims=dims, heads=heads, neurons=neurons)
    st = sm.structure(student)
    assert st["d_model"] == 16 and st["heads"] == [2, 2] and st["ffn"] == [16, 16]
    assert student.embed.weight.shape == (16, 60) and student.blocks[0].query.weight.shape == (16, 16)
    assert student.blocks[1].fc1.weight.shape == (16, 16) and student.head.weight.shape == (7, 16)
    assert sm.count_params(student) < sm.count_params(orig) / 3
    d = sorted(dims)
    h = heads[0][0] if heads[0][0] < heads[0][1] else heads[0][1]
    assert torch.equal(student.embed.weight, orig.embed.weight[d])
    assert torch.equal(student.blocks[0].query.weight[:8], orig.blocks[0].query.weight[h * 8:(h + 1) * 8][:, d])
    assert student(val.x[:3]).shape == (3, 7)


def test_pruning_removes_heads_and_neurons(small_views):
    train, val = small_views
    model = tiny()
    scores = sm.taylor_importance(model, (train.batch(c) for c in train.order(32, random.Random(1))[:2]),
                                  want_hidden=False)
    keep_heads = global_keep(scores["heads"], 0.25)
    keep_neurons = global_keep(scores["neurons"], 0.5)
    before = sm.count_params(model)
    sm.prune_(model, keep_heads, keep_neurons)
    st = sm.structure(model)
    assert sum(st["heads"]) == 6 and sum(st["ffn"]) == 32
    for block, h, n in zip(model.blocks, keep_heads, keep_neurons):
        assert block.query.weight.shape[0] == len(h) * 8 == block.out.weight.shape[1]
        assert block.fc1.weight.shape[0] == len(n) == block.fc2.weight.shape[1]
    assert sm.count_params(model) < before
    assert model(val.x[:2]).shape == (2, 7)
    # pruning = zeroing the removed units' gates in the unpruned model
    ref = tiny()
    gates = {"heads": [torch.tensor([1.0 if i in h else 0.0 for i in range(4)]) for h in keep_heads],
             "neurons": [torch.tensor([1.0 if i in n else 0.0 for i in range(32)]) for n in keep_neurons],
             "hidden": None}
    with torch.no_grad():
        assert torch.allclose(ref(val.x[:8], gates), model(val.x[:8]), atol=1e-5)


def test_onnx_export_matches_torch(small_views, tmp_path):
    _, val = small_views
    model = tiny()
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # wider margins, so int8 rounding rarely flips a label
    sm.prune_(model, [[0, 2, 3], [1]], [list(range(20)), list(range(0, 32, 3))])  # uneven layers
    path = sm.export_onnx(model, tmp_path / "m.onnx", 17)
    m = onnx.load(str(path))
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["frames"] and [o.name for o in m.graph.output] == ["logits"]
    inp = m.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.shape.dim] == ["batch", 100, 6]
    ref = logits(model, val)
    a = agreement(ref, onnx_logits(session(path), val, batch_size=7))
    assert a["max_abs_logit_diff"] <= 1e-4
    sess = session(path)
    for i in range(3):
        got = sess.run(["logits"], {"frames": val.x[i:i + 1].numpy()})[0]
        assert got.shape == (1, 7) and np.abs(got - ref[i:i + 1]).max() <= 1e-4
    q = quantize_int8(path, tmp_path / "m.int8.onnx")
    assert agreement(ref, onnx_logits(session(q), val))["argmax_agreement"] >= int8_agreement_floor()


def int8_agreement_floor() -> float:
    """How often the int8 model must keep the float model's label here. ONNX Runtime picks its int8 kernels by
    instruction set: x86 CPUs without VNNI sum u8 x s8 pairs in 16 bits and saturate (ONNX Runtime's documented reason
    for reduce_range). Where earlier CI ran (VNNI) 0.9 held; on an AVX2-only AMD EPYC this tiny model kept 0.859
    (the Rust tests' int8_tolerance says the same of the shipped models)."""
    if platform.machine() != "x86_64":
        return 0.9
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:
        return 0.9
    return 0.9 if flags & {"avx512_vnni", "avx_vnni"} else 0.8


def test_fixture_json_and_manifest(watch, small_views, tmp_path):
    train, _ = small_views
    model = tiny()
    path = sm.export_onnx(model, tmp_path / "m.onnx", 17)
    mean, std = sd.channel_stats(train.windows)
    rec = watch.recordings[0]
    text, wins = recording_json(session(path), rec, 300, watch.labels, mean, std, 100, 50, 50.0)
    doc = json.loads(text)
    assert [w["start"] for w in doc["windows"]] == [0, 50, 100, 150, 200]
    assert len(doc["samples"]) == 300 and np.array_equal(np.asarray(doc["samples"], np.float32), rec.x[:300])
    sess = session(path)
    for w in doc["windows"]:  # the file reproduces: parse, normalise in float32, run, softmax
        frames = (np.asarray(doc["samples"], np.float32)[w["start"]:w["start"] + 100] - mean) / std
        lg = sess.run(["logits"], {"frames": frames[None]})[0][0]
        assert np.array_equal(np.asarray(w["logits"], np.float32), lg)
        assert abs(sum(w["probs"]) - 1) < 1e-5 and w["label"] == watch.labels[int(np.argmax(lg))]
    assert f32(np.float32(0.1)) == "0.1" and np.float32(float(f32(1 / 3))) == np.float32(1 / 3)
    import tomllib

    man = tomllib.loads(manifest_text("n", "0.1.0", "ab", watch.labels, watch.channels, 50.0, 100, 50, mean, std))
    assert man["sensor"]["input"] == "frames" and man["labels"] == watch.labels
    assert np.array_equal(np.asarray(man["sensor"]["mean"], np.float32), mean)
    assert np.array_equal(np.asarray(man["sensor"]["std"], np.float32), std)
