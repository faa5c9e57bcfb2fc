"""The sensor recipe's steps, each writing `<run-dir>/<step>/` with a `metrics.json` (skipped when complete):

    original → original/model/     the wider transformer (d_model 128, 4 heads, FFN 256, 4 layers), cross-entropy
    student  → student/model/      half width (64, 2 heads, FFN 128), cut out of the original by Taylor importance
                                   and distilled from it (soft targets + CE)
    prune    → prune/model/        whole heads and FFN neurons removed by Taylor importance, recovery fine-tune
    quantize → quantize/*.onnx     fp32 exports of every stage, dynamic int8 of the original and the pruned model,
                                   ORT vs PyTorch agreement
    evaluate → evaluate/           test-split accuracy / macro-F1 (Wilson 95%) of every stage, models.json
    export   → models/<name>/      model.onnx, manifest.toml, test_recording.json, test_recording_b.json, README.md

The run directory machinery (recipe fingerprint, logging, metrics files, resumable training) is the text
recipe's (`zinfer_model.steps.Run`, `zinfer_model.train.fit`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..importance import global_keep, layer_keep, top_k
from ..metrics import agreement, paired_bootstrap, summary
from ..onnx_tools import quantize_int8, session
from .. import golden
from .. import steps as text_steps
from ..steps import REPO_ROOT, Run
from ..train import TrainSpec, clear_checkpoints, fit, kd_logits
from . import data as sd
from . import model as sm

STEPS = ["original", "student", "prune", "quantize", "evaluate", "export"]


class SensorRun(Run):
    """A run directory of the sensor recipe: the text recipe's Run with the watch data instead of reviews."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._data = None

    def data(self) -> dict:
        """The dataset, the subject split, the window sets, the training statistics and the batch views."""
        if self._data is None:
            d = self.recipe["data"]
            if d["dataset"] != "seglearn-watch":
                raise SystemExit(f"unknown dataset {d['dataset']!r}")
            watch = sd.load_watch()
            split = sd.split_subjects([r.subject for r in watch.recordings], int(d["split_seed"]),
                                      (float(d["train_fraction"]), float(d["val_fraction"])))
            w, hop = int(d["window"]), int(d["hop"])
            recs = {k: sd.recordings_of(watch, split.of(k)) for k in ("train", "val", "test")}
            windows = {
                "train": sd.make_windows(recs["train"], w, hop).limit(int(d["train_limit"])),
                "train_aug": sd.make_windows(recs["train"], w, int(d["train_hop"])).limit(int(d["train_limit"])),
                "val": sd.make_windows(recs["val"], w, hop).limit(int(d["val_limit"])),
                "test": sd.make_windows(recs["test"], w, hop).limit(int(d["test_limit"])),
            }
            mean, std = sd.channel_stats(windows["train"])
            views = {"train_aug": sd.WindowData(windows["train_aug"], mean, std, scale=float(d["augment_scale"]),
                                                noise=float(d["augment_noise"])),
                     **{k: sd.WindowData(windows[k], mean, std) for k in ("train", "val", "test")}}
            self._data = {"watch": watch, "split": split, "recordings": recs, "windows": windows, "mean": mean,
                          "std": std, "views": views}
        return self._data

    def spec(self, step: str) -> TrainSpec:
        spec = super().spec(step)
        spec.grad_clip = 1.0
        return spec

    def train_fit(self, model, step: str, step_fn, desc: str) -> dict:
        views = self.data()["views"]
        return fit(model, views["train_aug"], spec=self.spec(step), step_fn=step_fn,
                   val_fn=lambda m: summary(logits(m, views["val"]), views["val"].windows.y),
                   work_dir=self.step_dir(step), seed=self.seed, desc=desc, log=self.log,
                   order_fn=lambda data, bs, rng: data.order(bs, rng),
                   make_fn=lambda data, chunk: data.batch(chunk, augment=True))

    def val_summary(self, model) -> dict:
        v = self.data()["views"]["val"]
        return summary(logits(model, v), v.windows.y)


@torch.no_grad()
def logits(model, view: sd.WindowData) -> np.ndarray:
    model.eval()
    return torch.cat([model(b.frames) for b in view.eval_batches()]).numpy() if len(view) else np.zeros((0, 0))


def onnx_logits(sess, view: sd.WindowData, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([sess.run([sm.OUTPUT_NAME], {sm.INPUT_NAME: b.frames.numpy()})[0]
                           for b in view.eval_batches(batch_size)])


def split_info(run: SensorRun) -> dict:
    d = run.data()
    return {"subjects": {k: d["split"].of(k) for k in ("train", "val", "test")},
            "recordings": {k: len(v) for k, v in d["recordings"].items()},
            "windows": {k: len(v) for k, v in d["windows"].items()}}


def _importance_batches(run: SensorRun, n: int, seed_offset: int):
    view = run.data()["views"]["train"]
    chunks = view.order(64, random.Random(run.seed + seed_offset))[:n]
    return (view.batch(c) for c in chunks)


# ------------------------------------------------------------------------------------------------ original
def step_original(run: SensorRun) -> None:
    c = run.cfg("original")
    t0 = time.time()
    d = run.data()
    torch.manual_seed(run.seed)
    cfg = sm.SensorConfig.uniform(layers=int(c["layers"]), heads=int(c["heads"]), ffn=int(c["ffn"]),
                                  window=int(run.recipe["data"]["window"]), channels=len(d["watch"].channels),
                                  patch=int(c["patch"]), d_model=int(c["d_model"]), head_size=int(c["head_size"]),
                                  n_labels=len(d["watch"].labels), dropout=float(c["dropout"]),
                                  attention_dropout=float(c["attention_dropout"]))
    model = sm.SensorTransformer(cfg)
    info = split_info(run)
    run.log(f"original: subjects {info['subjects']}; recordings {info['recordings']}; windows {info['windows']}; "
            f"{sm.count_params(model):,} parameters")

    def step_fn(m, batch, epoch, i):
        out = m(batch.frames)
        loss = torch.nn.functional.cross_entropy(out, batch.labels)
        return loss, (out.detach(), batch.labels), {}

    hist = run.train_fit(model, "original", step_fn, "original")
    sm.save(model, run.step_dir("original") / "model")
    clear_checkpoints(run.step_dir("original"))
    run.write_metrics("original", {"split": info, "mean": d["mean"].tolist(), "std": d["std"].tolist(),
                                   "structure": sm.structure(model), "parameters": sm.count_params(model),
                                   "val": run.val_summary(model), **hist, "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------------- student
def _distil_step(teacher, c: dict):
    temp, a_kd, a_ce = float(c["temperature"]), float(c["alpha_kd"]), float(c["alpha_ce"])

    def step_fn(m, batch, epoch, i):
        with torch.no_grad():  # the teacher labels the same (augmented) windows the student sees
            t_out = teacher(batch.frames)
        out = m(batch.frames)
        kd = kd_logits(out, t_out, temp)
        ce = torch.nn.functional.cross_entropy(out, batch.labels)
        return a_kd * kd + a_ce * ce, (out.detach(), batch.labels), {"kd": kd.detach(), "ce": ce.detach()}
    return step_fn


def step_student(run: SensorRun) -> None:
    c = run.cfg("student")
    out = run.step_dir("student")
    t0 = time.time()
    original, _ = sm.load(run.dir / "original" / "model")
    oc = original.config
    d_model, heads, ffn = int(c["d_model"]), int(c["heads"]), int(c["ffn"])
    if heads > min(oc.heads) or ffn > min(oc.ffn) or d_model > oc.d_model:
        raise SystemExit(f"student {d_model}/{heads}/{ffn} does not fit inside the original {sm.structure(original)}")
    sel_path = out / "selection.json"
    if sel_path.exists():
        sel = json.loads(sel_path.read_text(encoding="utf-8"))
    elif c["init"] == "original":
        scores = sm.taylor_importance(original, _importance_batches(run, int(c["importance_batches"]), 7))
        sel = {"dims": top_k(scores["hidden"], d_model),
               "heads": [top_k(s, heads) for s in scores["heads"]],
               "neurons": [top_k(s, ffn) for s in scores["neurons"]],
               "head_scores": [s.tolist() for s in scores["heads"]]}
        sel_path.write_text(json.dumps(sel) + "\n", encoding="utf-8")
    elif c["init"] == "random":
        sel = None
    else:
        raise SystemExit(f"unknown student init {c['init']!r} (original, random)")
    if sel is not None:
        student = sm.shrink_from(original, dims=sel["dims"], heads=sel["heads"], neurons=sel["neurons"],
                                 dropout=float(c["dropout"]))
    else:
        torch.manual_seed(run.seed + 1)
        cfg = sm.SensorConfig.uniform(layers=oc.layers, heads=heads, ffn=ffn, window=oc.window,
                                      channels=oc.channels, patch=oc.patch, d_model=d_model,
                                      head_size=oc.head_size, n_labels=oc.n_labels, dropout=float(c["dropout"]))
        student = sm.SensorTransformer(cfg)
    val_init = run.val_summary(student)
    run.log(f"student: {sm.structure(student)} ({sm.count_params(student):,} parameters, original "
            f"{sm.count_params(original):,}); val accuracy at initialisation {val_init['accuracy']:.4f}")
    original.eval()
    hist = run.train_fit(student, "student", _distil_step(original, c), "student (distil)")
    sm.save(student, out / "model")
    clear_checkpoints(out)
    run.write_metrics("student", {"structure": sm.structure(student), "parameters": sm.count_params(student),
                                  "parameters_original": sm.count_params(original), "init": c["init"],
                                  "val_init": val_init, "val": run.val_summary(student), **hist,
                                  "seconds": time.time() - t0})


# --------------------------------------------------------------------------------------------------- prune
def step_prune(run: SensorRun) -> None:
    c = run.cfg("prune")
    out = run.step_dir("prune")
    t0 = time.time()
    student, _ = sm.load(run.dir / "student" / "model")
    original, _ = sm.load(run.dir / "original" / "model")
    before, params_before = sm.structure(student), sm.count_params(student)
    val_before = run.val_summary(student)
    sel_path = out / "selection.json"
    if sel_path.exists():
        sel = json.loads(sel_path.read_text(encoding="utf-8"))
    else:
        scores = sm.taylor_importance(student, _importance_batches(run, int(c["importance_batches"]), 11),
                                      want_hidden=False)
        chooser = global_keep if c["scope"] == "global" else layer_keep
        sel = {"heads": chooser(scores["heads"], float(c["head_sparsity"])),
               "neurons": chooser(scores["neurons"], float(c["ffn_sparsity"])),
               "head_scores": [s.tolist() for s in scores["heads"]]}
        sel_path.write_text(json.dumps(sel) + "\n", encoding="utf-8")
    sm.prune_(student, sel["heads"], sel["neurons"])
    after, params_after = sm.structure(student), sm.count_params(student)
    val_pruned = run.val_summary(student)
    run.log(f"prune: heads {before['heads']} → {after['heads']}, FFN {before['ffn']} → {after['ffn']}; parameters "
            f"{params_before:,} → {params_after:,}; val accuracy {val_before['accuracy']:.4f} → "
            f"{val_pruned['accuracy']:.4f} before recovery")
    original.eval()
    hist = run.train_fit(student, "prune", _distil_step(original, c), "prune recovery")
    sm.save(student, out / "model")
    clear_checkpoints(out)
    hb, ha, fb, fa = sum(before["heads"]), sum(after["heads"]), sum(before["ffn"]), sum(after["ffn"])
    run.write_metrics("prune", {
        "structure_before": before, "structure_after": after, "heads_before": hb, "heads_after": ha,
        "head_sparsity": 1 - ha / hb, "neurons_before": fb, "neurons_after": fa, "ffn_sparsity": 1 - fa / fb,
        "parameters_before": params_before, "parameters_after": params_after,
        "total_sparsity": 1 - params_after / params_before, "val_before": val_before,
        "val_after_prune": val_pruned, "val_after_recovery": run.val_summary(student), **hist,
        "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------------ quantize
STAGES = ["original", "student", "prune"]


def step_quantize(run: SensorRun) -> None:
    c = run.cfg("quantize")
    out = run.step_dir("quantize")
    t0 = time.time()
    val = run.data()["views"]["val"]
    files, checks = {}, {}
    for stage in STAGES:
        model, _ = sm.load(run.dir / stage / "model")
        fp32 = sm.export_onnx(model, out / f"{stage}.fp32.onnx", int(c["opset"]))
        ref = logits(model, val)
        a = agreement(ref, onnx_logits(session(fp32), val, batch_size=37))  # uneven batches
        b1 = agreement(ref[:20], np.concatenate([session(fp32).run(None, {sm.INPUT_NAME: val.x[i:i + 1].numpy()})[0]
                                                 for i in range(min(20, len(val)))]))
        if max(a["max_abs_logit_diff"], b1["max_abs_logit_diff"]) > float(c["fp32_tolerance"]):
            raise SystemExit(f"quantize: {stage} ONNX fp32 differs from PyTorch by {a['max_abs_logit_diff']:.2e}")
        files[f"{stage}_fp32"], checks[f"{stage}_fp32_vs_torch"] = fp32, {"batched": a, "batch1": b1}
        if stage in ("original", "prune"):
            int8 = quantize_int8(fp32, out / f"{stage}.int8.onnx", per_channel=bool(c["per_channel"]),
                                 reduce_range=bool(c["reduce_range"]))
            q = agreement(ref, onnx_logits(session(int8), val))
            checks[f"{stage}_int8_vs_torch"] = q
            files[f"{stage}_int8"] = int8
            run.log(f"quantize: {stage} fp32 max |Δlogit| {a['max_abs_logit_diff']:.1e}; int8 label agreement "
                    f"{q['argmax_agreement']:.4f}, max |Δlogit| {q['max_abs_logit_diff']:.3f}")
    final = checks["prune_int8_vs_torch"]["argmax_agreement"]
    if final < float(c["min_int8_agreement"]):
        raise SystemExit(f"quantize: int8 agrees with PyTorch on only {final:.3f} of validation windows "
                         f"(< {c['min_int8_agreement']})")
    val_int8 = summary(onnx_logits(session(files["prune_int8"]), val), val.windows.y)
    run.write_metrics("quantize", {"files": {k: str(v.relative_to(run.dir)) for k, v in files.items()},
                                   "sizes": {k: v.stat().st_size for k, v in files.items()},
                                   "agreement": checks, "val_int8": val_int8, "opset": int(c["opset"]),
                                   "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------------ evaluate
ROWS = [  # (key, table name, ONNX file, bench role)
    ("original_fp32", "original fp32", "original_fp32", "teacher"),
    ("original_int8", "original int8", "original_int8", "teacher-int8"),
    ("student_fp32", "half width fp32", "student_fp32", "student-step"),
    ("prune_fp32", "pruned fp32", "prune_fp32", "student-step"),
    ("prune_int8", "pruned int8 (shipped)", "prune_int8", "final"),
]


def per_recording(lg: np.ndarray, view: sd.WindowData) -> dict:
    """Accuracy of a majority vote of each recording's windows (a coarser, independent-unit figure)."""
    pred = lg.argmax(-1)
    recs = sorted(set(view.windows.recording.tolist()))
    votes, gold = [], []
    for r in recs:
        sel = view.windows.recording == r
        votes.append(int(np.bincount(pred[sel], minlength=lg.shape[-1]).argmax()))
        gold.append(int(view.windows.y[sel][0]))
    votes, gold = np.asarray(votes), np.asarray(gold)
    from ..metrics import wilson_interval
    acc = float((votes == gold).mean()) if len(gold) else 0.0
    return {"accuracy": acc, "accuracy_ci95": list(wilson_interval(acc, len(gold))), "n": len(gold)}


def step_evaluate(run: SensorRun) -> None:
    out = run.step_dir("evaluate")
    t0 = time.time()
    test = run.data()["views"]["test"]
    gold = test.windows.y
    q = run.metrics("quantize")
    all_logits, res, params = {}, {}, {}
    for stage in STAGES:
        model, _ = sm.load(run.dir / stage / "model")
        params[stage] = sm.count_params(model)
        all_logits[f"{stage}_torch"] = logits(model, test)
    for key, _, f, _ in ROWS:
        all_logits[key] = onnx_logits(session(run.dir / q["files"][f]), test)
    for key, lg in all_logits.items():
        res[key] = {**summary(lg, gold), "per_recording": per_recording(lg, test)}
    for key, _, _, _ in ROWS:
        run.log(f"evaluate: {key}: test accuracy {res[key]['accuracy']:.4f} "
                f"({res[key]['accuracy_ci95'][0]:.3f}–{res[key]['accuracy_ci95'][1]:.3f}), macro-F1 "
                f"{res[key]['macro_f1']:.4f}")
    diff = paired_bootstrap(all_logits["prune_int8"].argmax(-1), all_logits["original_fp32"].argmax(-1), gold)
    np.savez_compressed(out / "predictions.npz", gold=gold, recording=test.windows.recording,
                        start=test.windows.start, **all_logits)
    rows = []
    for key, name, f, role in ROWS:
        r = res[key]
        stage = f.split("_")[0]
        rows.append({"name": name, "onnx": os.path.relpath((run.dir / q["files"][f]).resolve(), out.resolve()),
                     "role": role, "accuracy": r["accuracy"],
                     "accuracy_ci95": (r["accuracy_ci95"][1] - r["accuracy_ci95"][0]) / 2,  # the bench's half width
                     "accuracy_ci95_bounds": r["accuracy_ci95"],
                     "macro_f1": r["macro_f1"], "params": params[stage]})
    n = len(gold)
    (out / "models.json").write_text(json.dumps(
        {"title": f"seglearn watch exercises, test split ({n:,} windows of {len(set(test.windows.recording))} "
                  "recordings)", "models": rows}, indent=2) + "\n", encoding="utf-8")
    run.write_metrics("evaluate", {"test": res, "test_windows": n, "split": split_info(run), "parameters": params,
                                   "int8_minus_original_accuracy": {"diff": diff[0], "ci95": [diff[1], diff[2]]},
                                   "int8_vs_torch_test": agreement(all_logits["prune_torch"],
                                                                   all_logits["prune_int8"]),
                                   "seconds": time.time() - t0})


# -------------------------------------------------------------------------------------------------- export
def f32(v) -> str:
    """The shortest decimal text that reads back as the same float32 (what `repr` of a float32 gives)."""
    s = str(np.float32(v))
    if not np.isfinite(np.float32(v)):
        raise ValueError(f"not a finite float: {v}")
    return s


def _f32_list(values) -> str:
    return "[" + ", ".join(f32(v) for v in np.asarray(values, dtype=np.float32).ravel()) + "]"


def softmax_f32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def recording_json(sess, rec: sd.Recording, n_samples: int, labels: list[str], mean, std, window: int, hop: int,
                   rate: float) -> tuple[str, list[dict]]:
    """The daemon's end-to-end fixture: the first n_samples raw samples and the shipped model's output for every
    window [start, start+window), normalised in float32, run at batch 1."""
    x = rec.x[:n_samples].astype(np.float32)
    wins = []
    for s in sd.window_starts(len(x), window, hop):
        frames = sd.normalise(x[s:s + window], mean, std)[None]
        lg = sess.run([sm.OUTPUT_NAME], {sm.INPUT_NAME: frames})[0][0]
        p = softmax_f32(lg)
        wins.append({"start": s, "label": labels[int(p.argmax())], "probs": p, "logits": lg})
    header = recording_header(rec, labels) + [("sample_rate_hz", rate), ("window", window), ("hop", hop)]
    entries = [f'{{"start": {w["start"]}, "label": {json.dumps(w["label"])}, "probs": {_f32_list(w["probs"])}, '
               f'"logits": {_f32_list(w["logits"])}}}' for w in wins]
    return recording_text(header, x, entries), wins


def recording_header(rec: sd.Recording, labels: list[str]) -> list[tuple[str, object]]:
    """Where a recording fixture comes from: subject, exercise label, recording index and arm."""
    return [("subject", rec.subject), ("label", json.dumps(labels[rec.label])), ("recording", rec.index),
            ("side", json.dumps("right" if rec.side else "left"))]


def recording_text(header: list[tuple[str, object]], x: np.ndarray, windows: list[str]) -> str:
    """A recording fixture's JSON, laid out one sample and one window per line: the `header` keys (values already
    in JSON), the raw `samples`, then the `windows` entries (each a JSON object)."""
    lines = ["{"] + [f'  "{key}": {value},' for key, value in header] + ['  "samples": [']
    lines += [f"    {_f32_list(row)}{',' if i + 1 < len(x) else ''}" for i, row in enumerate(x)]
    lines += ["  ],", '  "windows": [']
    lines += [f'    {entry}{"," if i + 1 < len(windows) else ""}' for i, entry in enumerate(windows)]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def sensor_table(channels: list[str], rate: float, window: int, hop: int, mean, std) -> str:
    """A manifest's `[sensor]` table: how the daemon's `window` stage feeds the model."""
    return f"""[sensor]
input = "frames"
channels = [{", ".join(json.dumps(x) for x in channels)}]
sample_rate_hz = {rate}
window = {window}
hop = {hop}
mean = {_f32_list(mean)}
std = {_f32_list(std)}
"""


def manifest_text(name: str, version: str, sha256: str, labels: list[str], channels: list[str], rate: float,
                  window: int, hop: int, mean, std) -> str:
    return f"""# what the daemon reads; paths are relative to this file
name = "{name}"
version = "{version}"
task = "sensor-classification"
model = "model.onnx"
labels = [{", ".join(json.dumps(x) for x in labels)}]   # index = logits column
output = "logits"
sha256 = "{sha256}"

""" + sensor_table(channels, rate, window, hop, mean, std)


def step_export(run: SensorRun) -> None:
    from .card import model_card

    c = run.cfg("export")
    t0 = time.time()
    if run.export_dir is not None:
        out = Path(run.export_dir)
    elif run.quick:
        out = run.dir / "export" / c["name"]
    else:
        out = REPO_ROOT / c["out"]
    out.mkdir(parents=True, exist_ok=True)
    d = run.data()
    watch, dcfg = d["watch"], run.recipe["data"]
    window, hop = int(dcfg["window"]), int(dcfg["hop"])
    q = run.metrics("quantize")
    shutil.copyfile(run.dir / q["files"]["prune_int8"], out / "model.onnx")
    sha = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    manifest = manifest_text(c["name"], c["version"], sha, watch.labels, watch.channels, sd.SAMPLE_RATE_HZ, window,
                             hop, d["mean"], d["std"])
    golden_made, tol = write_golden(run, out)
    (out / "manifest.toml").write_text(golden.with_golden_table(manifest, tol), encoding="utf-8")
    # the daemon's fixtures: test-split recordings, in dataset order
    sess = session(out / "model.onnx")
    test_recs = d["recordings"]["test"]
    n_a, n_b = int(c["recording_samples"]), int(c["recording_b_samples"])
    rec_a = next((r for r in test_recs if len(r.x) >= n_a), None)
    rec_b = next((r for r in test_recs if rec_a is not None and r.label != rec_a.label and len(r.x) >= n_b), None)
    if rec_a is None or rec_b is None:
        raise SystemExit("export: the test split has no recording long enough for the fixtures")
    fixtures = {}
    for fname, rec, n in (("test_recording.json", rec_a, n_a), ("test_recording_b.json", rec_b, n_b)):
        text, wins = recording_json(sess, rec, n, watch.labels, d["mean"], d["std"], window, hop, sd.SAMPLE_RATE_HZ)
        (out / fname).write_text(text, encoding="utf-8")
        json.loads(text)  # valid JSON
        fixtures[fname] = {"recording": rec.index, "subject": rec.subject, "label": watch.labels[rec.label],
                           "samples": min(n, len(rec.x)), "window_labels": [w["label"] for w in wins]}
        run.log(f"export: {fname}: recording {rec.index} (subject {rec.subject}, {watch.labels[rec.label]}), "
                f"window labels {[w['label'] for w in wins]}")
    # dynamic int8 quantizes activations with each call's range: batched results differ slightly from batch 1
    test = d["views"]["test"]
    b1 = np.concatenate([sess.run([sm.OUTPUT_NAME], {sm.INPUT_NAME: test.x[i:i + 1].numpy()})[0]
                         for i in range(len(test))])
    batching = {str(bs): agreement(b1, onnx_logits(sess, test, batch_size=bs)) for bs in (8, 256)}
    (out / "README.md").write_text(model_card(run, out, sha, fixtures, batching), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    run.log(f"export: wrote {out} {files}")
    run.write_metrics("export", {"out": str(out), "sha256": sha, "files": files, "fixtures": fixtures,
                                 "golden": {"made": golden_made, "tolerance": tol},
                                 "batched_vs_batch1_test": batching,
                                 "seconds": time.time() - t0})


def write_golden(run: SensorRun, out: Path) -> tuple[dict, dict]:
    """zinferd's drift guard inputs (zinfer_model.golden): golden.CASES validation windows, raw, with the
    probabilities of the fp32 PyTorch model the shipped int8 file was exported from; measured against the shipped
    file at batch 1. Returns what the int8 file scored and the tolerance."""
    d = run.data()
    val = d["views"]["val"]
    model, _ = sm.load(run.dir / "prune" / "model")
    reference = softmax_f32(logits(model, val)).astype(np.float64)
    picks = golden.select(reference)
    raw = d["windows"]["val"].x[picks]
    int8 = golden.sensor_probs(out / "model.onnx", raw, d["mean"], d["std"], sm.INPUT_NAME, sm.OUTPUT_NAME)
    about = {"inputs": f"{len(picks)} validation windows ({len(val)} in the split), raw readings, spread over the "
                       "reference's confidence",
             "reference": "probabilities of the fp32 PyTorch model (prune step) the int8 file was exported from",
             "made_with": golden.versions()}
    tol = golden.write(out, [{"samples": w} for w in raw], reference[picks], int8, about)
    made = golden.compare(int8, reference[picks])
    run.log(f"export: golden.json: {made}, tolerance {tol}")
    return made, tol


STEP_FUNCS = {"original": step_original, "student": step_student, "prune": step_prune, "quantize": step_quantize,
              "evaluate": step_evaluate, "export": step_export}


def run_step(run: SensorRun, step: str) -> None:
    text_steps.run_step(run, step, STEP_FUNCS)
