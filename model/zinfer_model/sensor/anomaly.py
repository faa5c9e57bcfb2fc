"""The anomaly recipe: a small 1-D convolutional autoencoder over the smartwatch windows, trained on the windows of
6 of the 7 exercises ("normal"); the seventh exercise (the recipe's `data.held_out`) is the anomaly it never saw.

    python -m zinfer_model sensor anomaly --recipe model/recipes/anomaly.toml [--quick] [--export-dir DIR]

Data, subject split, windowing and normalisation are the sensor recipe's (`zinfer_model.sensor.data`); the
normalisation statistics come from the training split's *normal* windows only. The exported ONNX model takes the
normalised window `frames` float32 [batch, 100, 6] and returns `score` float32 [batch], the mean squared
reconstruction error over the window's 600 values (computed inside the graph), and `reconstruction` [batch, 100,
6]. A window is flagged anomalous when score > threshold; the threshold is chosen on the validation split only
(`choose_threshold`), the test split is used only for the evaluation.

Writes <export-dir>/: model.onnx, manifest.toml (with a [head] threshold), test_recording_normal.json,
test_recording_anomaly.json, report.json and README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as sd
from .recipe import load_with_defaults

INPUT_NAME = "frames"
SCORE_NAME = "score"
RECON_NAME = "reconstruction"
MODEL_ROOT = Path(__file__).resolve().parents[2]
REPO_ROOT = MODEL_ROOT.parent

DEFAULTS: dict = {
    "name": "anomaly",
    "seed": 0,
    "threads": 1,
    "data": {
        "dataset": "seglearn-watch",
        "split_seed": 0, "train_fraction": 0.6, "val_fraction": 0.2,
        "window": 100, "hop": 50, "train_hop": 10, "augment_scale": 0.1,
        "held_out": "ROW",
        "train_limit": 0, "val_limit": 0, "test_limit": 0,
    },
    "model": {"channels": [16, 32], "kernel": 5, "latent": 4},
    "train": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "max_steps": 0},
    "export": {"name": "zinfer-watch-anomaly", "version": "0.1.0", "out": "models/zinfer-watch-anomaly",
               "opset": 17, "torch_tolerance": 1e-4, "recording_samples": 600},
    "quick": {
        "data": {"train_limit": 256, "val_limit": 160, "test_limit": 160},
        "model": {"channels": [4, 8], "latent": 4},
        "train": {"epochs": 1, "max_steps": 3},
    },
}


def load_recipe(path: Path | None, quick: bool = False) -> dict:
    return load_with_defaults(DEFAULTS, path, quick)


# ---------------------------------------------------------------------------------------------------- model
class ConvAutoencoder(nn.Module):
    """[B, window, C] → Conv1d (stride 2, GELU) per entry of `channels` → flatten → Linear to `latent` (the
    bottleneck) → Linear back → ConvTranspose1d (stride 2) mirror → [B, window, C]. The window length must be
    divisible by 2 ** len(channels)."""

    def __init__(self, window: int = 100, in_channels: int = 6, channels=(16, 32), kernel: int = 5,
                 latent: int = 16):
        super().__init__()
        channels = [int(c) for c in channels]
        steps = 2 ** len(channels)
        if window % steps or kernel % 2 == 0:
            raise ValueError(f"window {window} must be divisible by {steps} and kernel {kernel} odd")
        self.window, self.in_channels, self.channels = window, in_channels, channels
        self.kernel, self.latent_size = kernel, latent
        self.reduced = window // steps
        enc, prev = [], in_channels
        for c in channels:
            enc += [nn.Conv1d(prev, c, kernel, stride=2, padding=kernel // 2), nn.GELU()]
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(prev * self.reduced, latent)
        self.from_latent = nn.Linear(latent, prev * self.reduced)
        dec = []
        outs = list(reversed(channels[:-1])) + [in_channels]
        for i, c in enumerate(outs):
            dec.append(nn.ConvTranspose1d(prev, c, 4, stride=2, padding=1))  # exactly doubles the length
            if i + 1 < len(outs):
                dec.append(nn.GELU())
            prev = c
        self.decoder = nn.Sequential(*dec)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.encoder(frames.transpose(1, 2))
        return self.to_latent(h.flatten(1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        z = self.encode(frames)
        h = torch.nn.functional.gelu(self.from_latent(z)).view(-1, self.channels[-1], self.reduced)
        return self.decoder(h).transpose(1, 2)


class Scorer(nn.Module):
    """What the ONNX file holds: (score [B], reconstruction [B, window, C]), score = mean squared error over a
    window's window × C values."""

    def __init__(self, ae: ConvAutoencoder):
        super().__init__()
        self.ae = ae

    def forward(self, frames: torch.Tensor):
        rec = self.ae(frames)
        return ((rec - frames) ** 2).mean(dim=(1, 2)), rec


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(ae: ConvAutoencoder) -> str:
    dims = [ae.in_channels] + ae.channels
    enc = " → ".join(f"Conv1d {a}→{b} (kernel {ae.kernel}, stride 2), GELU" for a, b in zip(dims, dims[1:]))
    back = list(reversed(dims))
    dec = " → ".join(f"ConvTranspose1d {a}→{b} (kernel 4, stride 2){', GELU' if i + 2 < len(back) else ''}"
                     for i, (a, b) in enumerate(zip(back, back[1:])))
    return (f"[batch, {ae.window}, {ae.in_channels}] → {enc} → flatten ({ae.channels[-1]} × {ae.reduced}) → "
            f"Linear → bottleneck of {ae.latent_size} → Linear, GELU → {dec} → [batch, {ae.window}, "
            f"{ae.in_channels}]")


@torch.no_grad()
def torch_scores(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    scorer = model if isinstance(model, Scorer) else Scorer(model)
    scorer.eval()
    out = [scorer(torch.from_numpy(x[s:s + batch_size]))[0] for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def onnx_scores(sess, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = [sess.run([SCORE_NAME], {INPUT_NAME: x[s:s + batch_size]})[0] for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def export_onnx(ae: ConvAutoencoder, path: Path, opset: int = 17) -> Path:
    import warnings

    import onnx

    scorer = Scorer(ae).eval()
    example = torch.randn(2, ae.window, ae.in_channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(scorer, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[SCORE_NAME, RECON_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}, RECON_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(str(path))
    return Path(path)


# ------------------------------------------------------------------------------------------------ threshold
THRESHOLD_RULE = ("the candidates are the midpoints between consecutive distinct validation scores (and, to flag "
                  "every window, the float32 just below the smallest); a window is flagged when score > threshold; "
                  "the candidate with the highest F1 (held-out exercise = positive) wins, ties broken toward the "
                  "higher threshold")


def confusion(scores, is_anomaly, threshold: float) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    flag = s > threshold
    tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
    fn, tn = int((~flag & y).sum()), int((~flag & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "fpr": fp / (fp + tn) if fp + tn else 0.0, "flagged": tp + fp}


def choose_threshold(scores, is_anomaly) -> float:
    """The threshold of THRESHOLD_RULE (returned as a float32 value, as the manifest stores it)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    if len(s) == 0 or not y.any() or y.all():
        raise ValueError("choose_threshold needs both normal and anomalous scores")
    u = np.unique(s)
    below = float(np.nextafter(np.float32(u[0]), np.float32(-np.inf)))
    u = np.concatenate([[below], u])  # flag everything: the lowest candidate lies between `below` and u[0]
    cands = (u[:-1] + u[1:]) / 2
    cands[0] = below
    # counts flagged (score > t) per candidate, from the sorted scores
    order = np.sort(s)
    pos = np.sort(s[y])
    flagged = len(s) - np.searchsorted(order, cands, side="right")
    tp = len(pos) - np.searchsorted(pos, cands, side="right")
    fp = flagged - tp
    fn = len(pos) - tp
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]  # candidates ascend: the last of the best is the highest
    if best == 0:
        return below
    t32 = np.float32(cands[best])
    if not (u[best] < float(t32) < u[best + 1]):  # adjacent float32 scores: no float32 lies between them
        t32 = np.float32(u[best])                 # (score > t flags the same windows)
    return float(t32)


def auroc(scores, is_anomaly) -> float:
    """Area under the ROC curve (anomaly = positive): the Mann–Whitney U statistic with average ranks for ties."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def distribution(scores) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return {"n": 0}
    q = np.quantile(s, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(len(s)), "min": float(s.min()), "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]),
            "p75": float(q[3]), "p95": float(q[4]), "max": float(s.max())}


# ------------------------------------------------------------------------------------------------------ data
def prepare(recipe: dict) -> dict:
    d = recipe["data"]
    if d["dataset"] != "seglearn-watch":
        raise SystemExit(f"unknown dataset {d['dataset']!r}")
    watch = sd.load_watch()
    if d["held_out"] not in watch.labels:
        raise SystemExit(f"data.held_out {d['held_out']!r} is not one of {watch.labels}")
    held = watch.labels.index(d["held_out"])
    split = sd.split_subjects([r.subject for r in watch.recordings], int(d["split_seed"]),
                              (float(d["train_fraction"]), float(d["val_fraction"])))
    w, hop = int(d["window"]), int(d["hop"])
    recs = {k: sd.recordings_of(watch, split.of(k)) for k in ("train", "val", "test")}
    normal_train = [r for r in recs["train"] if r.label != held]
    windows = {
        "train": sd.make_windows(normal_train, w, hop).limit(int(d["train_limit"])),
        "train_aug": sd.make_windows(normal_train, w, int(d["train_hop"])).limit(int(d["train_limit"])),
        "val": sd.make_windows(recs["val"], w, hop).limit(int(d["val_limit"])),
        "test": sd.make_windows(recs["test"], w, hop).limit(int(d["test_limit"])),
    }
    mean, std = sd.channel_stats(windows["train"])
    return {"watch": watch, "held": held, "split": split, "recordings": recs, "windows": windows,
            "mean": mean, "std": std, "x": {k: sd.normalise(v.x, mean, std) for k, v in windows.items()}}


# ----------------------------------------------------------------------------------------------------- train
def train(ae: ConvAutoencoder, data: dict, recipe: dict, log) -> dict:
    c, d = recipe["train"], recipe["data"]
    view = sd.WindowData(data["windows"]["train_aug"], data["mean"], data["std"],
                         scale=float(d["augment_scale"]), noise=0.0)
    epochs, bs, max_steps = int(c["epochs"]), int(c["batch_size"]), int(c.get("max_steps", 0))
    steps_per_epoch = math.ceil(len(view) / bs)
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(ae.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    rng = random.Random(int(recipe["seed"]))
    val_normal = data["x"]["val"][data["windows"]["val"].y != data["held"]]
    history = []
    for epoch in range(epochs):
        ae.train()
        t0, losses = time.time(), []
        for chunk in view.order(bs, rng)[:steps_per_epoch]:
            x = view.batch(chunk, augment=True).frames
            loss = ((ae(x) - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        val_mse = float(torch_scores(ae, val_normal).mean()) if len(val_normal) else float("nan")
        history.append({"epoch": epoch + 1, "train_mse": float(np.mean(losses)), "val_normal_mse": val_mse,
                        "seconds": time.time() - t0})
        log(f"epoch {epoch + 1}/{epochs}: train mse {np.mean(losses):.4f}, val normal mse {val_mse:.4f} "
            f"({time.time() - t0:.1f} s)")
    ae.eval()
    return {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "steps": total, "history": history}


# ---------------------------------------------------------------------------------------------------- export
def recording_doc(sess, rec: sd.Recording, n_samples: int, labels: list[str], held: int, mean, std, window: int,
                  hop: int, rate: float, threshold: float) -> tuple[str, list[dict]]:
    """The daemon's end-to-end fixture: the first n_samples raw samples and the shipped model's score (and flag,
    score > threshold) for every window [start, start + window), normalised in float32, run at batch 1."""
    from .steps import f32, recording_header, recording_text

    x = rec.x[:n_samples].astype(np.float32)
    wins = []
    for s in sd.window_starts(len(x), window, hop):
        score = np.float32(sess.run([SCORE_NAME], {INPUT_NAME: sd.normalise(x[s:s + window], mean, std)[None]})[0][0])
        wins.append({"start": s, "score": score, "flagged": bool(score > np.float32(threshold))})
    header = recording_header(rec, labels)
    header.insert(2, ("anomaly", json.dumps(rec.label == held)))
    header += [("sample_rate_hz", rate), ("window", window), ("hop", hop), ("threshold", f32(threshold))]
    entries = [f'{{"start": {w["start"]}, "score": {f32(w["score"])}, "flagged": {json.dumps(w["flagged"])}}}'
               for w in wins]
    return recording_text(header, x, entries), wins


def manifest_text(name: str, version: str, sha256: str, channels: list[str], rate: float, window: int, hop: int,
                  mean, std, threshold: float) -> str:
    from .steps import f32, sensor_table

    return f"""# what the daemon reads; paths are relative to this file
name = "{name}"
version = "{version}"
task = "sensor-anomaly"
model = "model.onnx"
output = "score"   # float32 [batch]: mean squared reconstruction error over the window's normalised values
sha256 = "{sha256}"

{sensor_table(channels, rate, window, hop, mean, std)}
[head]
# chosen on the validation split only (never the test split): {THRESHOLD_RULE}
threshold = {f32(threshold)}
"""


def pick_fixtures(sess, recs: list[sd.Recording], held: int, n: int, mean, std, window: int, hop: int,
                  threshold: float) -> tuple[dict, dict]:
    """Every test recording at least n samples long, scored on its first n samples' windows; returns the chosen
    normal and anomalous recording and the flagged counts of all candidates. The normal fixture is the normal
    recording with the fewest flagged windows, the anomalous one the held-out recording with the most; ties go to
    the larger margin (highest normal / lowest anomalous window score the farthest from the threshold), then to
    dataset order."""
    cands = {"normal": [], "anomaly": []}
    for r in recs:
        if len(r.x) < n:
            continue
        starts = sd.window_starts(n, window, hop)
        x = np.stack([sd.normalise(r.x[s:s + window], mean, std) for s in starts])
        sc = np.array([sess.run([SCORE_NAME], {INPUT_NAME: x[i:i + 1]})[0][0] for i in range(len(x))])
        flagged = int((sc > np.float32(threshold)).sum())
        kind = "anomaly" if r.label == held else "normal"
        cands[kind].append({"recording": r, "flagged": flagged, "windows": len(sc),
                            "max": float(sc.max()), "min": float(sc.min())})
    if not cands["normal"] or not cands["anomaly"]:
        raise SystemExit(f"anomaly: the test split has no {n}-sample recording of both kinds")
    normal = min(cands["normal"], key=lambda c: (c["flagged"], c["max"]))
    anomaly = min(cands["anomaly"], key=lambda c: (-c["flagged"], -c["min"]))
    summary = {k: [{"recording": c["recording"].index, "subject": c["recording"].subject,
                    "flagged": c["flagged"], "windows": c["windows"]} for c in v] for k, v in cands.items()}
    return {"normal": normal, "anomaly": anomaly}, summary


def run(recipe: dict, export_dir: Path | None, command: str, log=print) -> dict:
    from ..onnx_tools import session

    t_start = time.time()
    torch.set_num_threads(int(recipe["threads"]))
    seed = int(recipe["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    c_exp, d = recipe["export"], recipe["data"]
    if export_dir is not None:
        out = Path(export_dir)
    elif recipe["quick"]:
        out = MODEL_ROOT / "runs" / f"{recipe['name']}-quick" / c_exp["name"]
    else:
        out = REPO_ROOT / c_exp["out"]
    out.mkdir(parents=True, exist_ok=True)

    data = prepare(recipe)
    watch, held, w, hop = data["watch"], data["held"], int(d["window"]), int(d["hop"])
    labels = watch.labels
    counts = {k: len(v) for k, v in data["windows"].items()}
    log(f"anomaly: held-out class {labels[held]} ({sd.LABEL_MEANING.get(labels[held], '')}); subjects "
        f"{ {k: data['split'].of(k) for k in ('train', 'val', 'test')} }; windows {counts}")

    m = recipe["model"]
    torch.manual_seed(seed)
    ae = ConvAutoencoder(w, len(watch.channels), m["channels"], int(m["kernel"]), int(m["latent"]))
    params = count_params(ae)
    log(f"anomaly: {describe(ae)}; {params:,} parameters")
    t0 = time.time()
    hist = train(ae, data, recipe, log)
    train_seconds = time.time() - t0

    onnx_path = export_onnx(ae, out / "model.onnx", int(c_exp["opset"]))
    sess = session(onnx_path)
    # ONNX vs PyTorch on the validation windows: batched (uneven batches) and at batch 1
    xv = data["x"]["val"]
    ref = torch_scores(ae, xv)
    got = onnx_scores(sess, xv, batch_size=37)
    b1 = np.array([sess.run([SCORE_NAME], {INPUT_NAME: xv[i:i + 1]})[0][0] for i in range(min(32, len(xv)))])
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12))) if len(ref) else 0.0
    rel1 = float(np.max(np.abs(b1 - ref[:len(b1)]) / np.maximum(np.abs(ref[:len(b1)]), 1e-12))) if len(b1) else 0.0
    if max(rel, rel1) > float(c_exp["torch_tolerance"]):
        raise SystemExit(f"anomaly: ONNX score differs from PyTorch by {max(rel, rel1):.2e} (relative)")
    log(f"anomaly: ONNX vs PyTorch score on {len(xv)} validation windows: max relative difference {rel:.1e} "
        f"(batch 37), {rel1:.1e} (batch 1, {len(b1)} windows)")

    # threshold on the validation split, evaluation on the test split, both with the ONNX scores
    yv = data["windows"]["val"].y == held
    threshold = choose_threshold(got, yv)
    val_metrics = {**confusion(got, yv, threshold), "auroc": auroc(got, yv),
                   "windows": {"normal": int((~yv).sum()), "anomaly": int(yv.sum())}}
    log(f"anomaly: threshold {threshold:.6g} (validation F1 {val_metrics['f1']:.4f}, AUROC {val_metrics['auroc']:.4f})")
    xt, yt = data["x"]["test"], data["windows"]["test"].y == held
    st = onnx_scores(sess, xt)
    test_metrics = {**confusion(st, yt, threshold), "auroc": auroc(st, yt),
                    "windows": {"normal": int((~yt).sum()), "anomaly": int(yt.sum())},
                    "scores": {"normal": distribution(st[~yt]), "anomaly": distribution(st[yt])}}
    per_class = {}
    for k, name in enumerate(labels):
        sel = data["windows"]["test"].y == k
        if sel.any():
            per_class[name] = {"windows": int(sel.sum()), "flagged": int((st[sel] > threshold).sum()),
                               "median_score": float(np.median(st[sel]))}
    test_metrics["per_class"] = per_class
    log(f"anomaly: test ({test_metrics['windows']['normal']} normal, {test_metrics['windows']['anomaly']} anomalous "
        f"windows): AUROC {test_metrics['auroc']:.4f}, precision {test_metrics['precision']:.4f}, recall "
        f"{test_metrics['recall']:.4f}, F1 {test_metrics['f1']:.4f}, FPR {test_metrics['fpr']:.4f}; median score "
        f"normal {test_metrics['scores']['normal'].get('median', float('nan')):.4f}, anomalous "
        f"{test_metrics['scores']['anomaly'].get('median', float('nan')):.4f}")

    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (out / "manifest.toml").write_text(
        manifest_text(c_exp["name"], c_exp["version"], sha, watch.channels, sd.SAMPLE_RATE_HZ, w, hop,
                      data["mean"], data["std"], threshold), encoding="utf-8")

    n = int(c_exp["recording_samples"])
    chosen, candidates = pick_fixtures(sess, data["recordings"]["test"], held, n, data["mean"], data["std"], w, hop,
                                       threshold)
    fixtures = {}
    for kind, fname in (("normal", "test_recording_normal.json"), ("anomaly", "test_recording_anomaly.json")):
        rec = chosen[kind]["recording"]
        text, wins = recording_doc(sess, rec, n, labels, held, data["mean"], data["std"], w, hop, sd.SAMPLE_RATE_HZ,
                                   threshold)
        json.loads(text)
        (out / fname).write_text(text, encoding="utf-8")
        scores = [float(x["score"]) for x in wins]
        fixtures[fname] = {"recording": rec.index, "subject": rec.subject, "label": labels[rec.label],
                           "side": "right" if rec.side else "left", "samples": n, "windows": len(wins),
                           "flagged": sum(x["flagged"] for x in wins), "scores": scores,
                           "closest_to_threshold": float(min(abs(s - threshold) / threshold for s in scores))}
        log(f"anomaly: {fname}: recording {rec.index} (subject {rec.subject}, {labels[rec.label]}): "
            f"{fixtures[fname]['flagged']} of {len(wins)} windows flagged")
    fxn, fxa = fixtures["test_recording_normal.json"], fixtures["test_recording_anomaly.json"]
    if not recipe["quick"] and (fxn["flagged"] * 2 >= fxn["windows"] or fxa["flagged"] * 2 <= fxa["windows"]):
        log("anomaly: WARNING: the fixtures do not separate (most normal windows flagged or most anomalous not)")

    import onnxruntime

    report = {
        "name": c_exp["name"], "version": c_exp["version"], "command": command, "quick": recipe["quick"],
        "held_out": labels[held], "labels": labels,
        "split": {"subjects": {k: data["split"].of(k) for k in ("train", "val", "test")},
                  "recordings": {k: len(v) for k, v in data["recordings"].items()},
                  "windows": counts},
        "mean": data["mean"].tolist(), "std": data["std"].tolist(),
        "model": {"architecture": describe(ae), "parameters": params, **recipe["model"]},
        "train": {**hist, "seconds": train_seconds},
        "onnx": {"bytes": onnx_path.stat().st_size, "sha256": sha, "opset": int(c_exp["opset"]),
                 "max_rel_diff_vs_torch": {"batched": rel, "batch1": rel1}},
        "threshold": {"value": threshold, "rule": THRESHOLD_RULE, "chosen_on": "validation", "validation": val_metrics},
        "test": test_metrics,
        "fixtures": fixtures, "fixture_candidates": candidates,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "recipe": recipe,
    }
    report["seconds"] = time.time() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(report), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    log(f"anomaly: wrote {out} {files} in {report['seconds']:.1f} s")
    return report


# ------------------------------------------------------------------------------------------------ model card
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(r: dict) -> str:
    from .steps import f32

    labels, held = r["labels"], r["held_out"]
    normal = [x for x in labels if x != held]
    t, v, th = r["test"], r["threshold"]["validation"], r["threshold"]["value"]
    sp, rec = r["split"], r["recipe"]
    d, tr = rec["data"], rec["train"]
    last = r["train"]["history"][-1] if r["train"]["history"] else {}
    fx = r["fixtures"]
    fn, fa = fx["test_recording_normal.json"], fx["test_recording_anomaly.json"]
    cand = r["fixture_candidates"]

    def cands(kind):
        return ", ".join(f"{c['recording']} ({c['flagged']}/{c['windows']})" for c in cand[kind])

    per_class = "\n".join(f"| {k}{' (held out)' if k == held else ''} | {c['windows']} | {c['flagged']} | "
                          f"{c['median_score']:.4f} |" for k, c in t["per_class"].items())
    sn, sa = t["scores"]["normal"], t["scores"]["anomaly"]
    quick = ("\n> **This is a `--quick` run** (tiny data and model, a few training steps): its numbers say nothing "
             "about the real model.\n" if r["quick"] else "")
    return f"""# zinfer-watch-anomaly: a small autoencoder that flags unfamiliar smartwatch movements
{quick}
A 1-D convolutional autoencoder over 2-second windows of six-axis smartwatch data (accelerometer + gyroscope at
50 Hz), trained only on windows of 6 of the 7 shoulder physiotherapy exercises of the data set
({", ".join(f"`{x}` {sd.LABEL_MEANING.get(x, '')}" for x in normal)}). Its score is how badly it reconstructs a
window; a window it reconstructs worse than the threshold is flagged as **anomalous**. The seventh exercise,
`{held}` ({sd.LABEL_MEANING.get(held, '')}), was held out of training entirely and plays the anomaly in the
threshold choice and the evaluation. Made by the zinfer model toolkit (`model/`, `python -m zinfer_model sensor
anomaly`); served by zinferd's `sensor` decoder + `window` stage and a head stage that compares `score` with the
manifest's `[head] threshold`.

| file | what |
| --- | --- |
| `model.onnx` | fp32 ONNX (opset {r['onnx']['opset']}), {r['onnx']['bytes']:,} bytes, sha256 `{r['onnx']['sha256']}`; input `frames` float32 `[batch, 100, 6]` (batch dynamic; axis 1 time, axis 2 channel in manifest order), **already normalised**; outputs `score` float32 `[batch]` (mean squared reconstruction error over the window's 600 values, computed in the graph) and `reconstruction` float32 `[batch, 100, 6]` |
| `manifest.toml` | what the daemon reads: output `score`, channel order, sample rate, window 100 / hop 50, per-channel `mean`/`std`, and `[head] threshold` |
| `test_recording_normal.json`, `test_recording_anomaly.json` | end-to-end fixtures: {fn['samples']} raw samples (float32) of a test-split recording each, with this model's score and flag for every window (see below) |
| `report.json` | every number of this card, the training history and the full recipe as run |

**Input contract.** As for `zinfer-watch-small`: 100 consecutive samples of `acc_x, acc_y, acc_z, gyro_x, gyro_y,
gyro_z` (accelerometer in g, gyroscope in rad/s), normalised `x_norm = (x - mean) / std` per channel in float32 with
the manifest's values (statistics of the training split's normal windows), fed as `[1, 100, 6]`; windows start
every 50 samples. **A window is anomalous when `score > threshold`** (threshold {f32(th)}).

## Architecture

{r['model']['architecture']}. {r['model']['parameters']:,} parameters, fp32 (no quantization).

## How it was made (recipe `{rec['name']}`, seed {rec['seed']})

Trained for {tr['epochs']} epochs ({r['train']['steps']:,} steps of {tr['batch_size']} windows) to minimise the mean
squared error between a window and its reconstruction, on the training subjects' windows of the 6 normal exercises
taken every {d['train_hop']} samples ({sp['windows']['train_aug']:,} windows; augmentation: random per-window channel
scaling σ={d['augment_scale']}, applied to input and target alike); AdamW lr {tr['lr']}, weight decay
{tr['weight_decay']}, cosine decay to 0, gradient clipping at 1.0; the last epoch's weights are shipped (final
training MSE {last.get('train_mse', float('nan')):.4f}, validation normal-window MSE
{last.get('val_normal_mse', float('nan')):.4f}). Training took {r['train']['seconds']:.0f} s on 1 CPU thread.
`torch.onnx.export` (opset {r['onnx']['opset']}, dynamic batch axis); the ONNX score matches the PyTorch score on
the {sp['windows']['val']:,} validation windows to a relative {r['onnx']['max_rel_diff_vs_torch']['batched']:.1e}
(uneven batches) and {r['onnx']['max_rel_diff_vs_torch']['batch1']:.1e} (batch 1). torch {r['versions']['torch']},
onnxruntime {r['versions']['onnxruntime']}, numpy {r['versions']['numpy']}.

**Design choices.** The bottleneck size (`latent`) was chosen by validation AUROC (never the test split) in scratch
runs outside this recipe over bottlenecks of 2 to 64, wider convolutions and an MLP autoencoder: a narrow bottleneck
separates better (a wide one learns to reconstruct every movement); 2 was unstable across seeds, 4 was not. The test
metrics of one earlier version (bottleneck 16) had been looked at before that choice.

**The held-out class.** `{held}` was chosen a priori and arbitrarily (the last class in the data set's label
order) before any model was trained; no other held-out class was tried, so these numbers are not the best of
several choices.

**Threshold: {f32(th)}**, chosen on the validation split only: {r['threshold']['rule']}. On the validation windows
({v['windows']['normal']} normal, {v['windows']['anomaly']} anomalous) it gives precision {v['precision']:.3f},
recall {v['recall']:.3f}, F1 {v['f1']:.3f}, false-positive rate {v['fpr']:.3f} (AUROC {v['auroc']:.3f}).

## Data and licence

The smartwatch shoulder-exercise recordings shipped by the PyPI package `seglearn` 1.2.5 (BSD-3-Clause,
© 2018 David M. Burns) as `seglearn/data/watch_dataset.npy`, which `seglearn.datasets.load_watch` documents as
"some of the 6-axis inertial sensor data from my smartwatch project ... recorded as study subjects performed sets
of 20 shoulder exercise repetitions while wearing a smartwatch", the study being Burns et al., 2018, *Shoulder
physiotherapy exercise recognition: machine learning the inertial signals from a smartwatch*
(arXiv:1802.01489). 140 recordings (10 subjects × 7 exercises × left/right arm), 50 Hz, 6
channels (`X_labels` ax, ay, az, wx, wy, wz).

**Split by subject** exactly as the `zinfer-watch-small` recipe (seed {d['split_seed']}, {_pct(d['train_fraction'])} /
{_pct(d['val_fraction'])} / rest of the subjects; no subject in two splits). Training uses only the normal
exercises' windows of the training subjects; validation and test hold every exercise of their subjects:

| split | subjects | recordings | windows (hop 50) |
| --- | --- | --- | --- |
| train | {sp['subjects']['train']} | {sp['recordings']['train']} (of which the normal exercises' train the model) | {sp['windows']['train']:,} normal ({sp['windows']['train_aug']:,} at the training hop {d['train_hop']}) |
| validation | {sp['subjects']['val']} | {sp['recordings']['val']} | {sp['windows']['val']:,} ({v['windows']['normal']:,} normal, {v['windows']['anomaly']:,} `{held}`) |
| test | {sp['subjects']['test']} | {sp['recordings']['test']} | {sp['windows']['test']:,} ({t['windows']['normal']:,} normal, {t['windows']['anomaly']:,} `{held}`) |

The normalisation statistics come from the training split's normal windows (hop 50) only. The validation split
chose the threshold; the test split was used only for the evaluation below.

## Measured (test split, threshold {f32(th)}, `{held}` = positive)

| windows | AUROC | precision | recall | F1 | false-positive rate (normal windows flagged) |
| --- | --- | --- | --- | --- | --- |
| {t['windows']['normal']:,} normal + {t['windows']['anomaly']:,} anomalous | {t['auroc']:.3f} | {t['precision']:.3f} ({t['tp']} of {t['flagged']} flagged) | {t['recall']:.3f} ({t['tp']} of {t['windows']['anomaly']}) | {t['f1']:.3f} | {t['fpr']:.3f} ({t['fp']} of {t['windows']['normal']}) |

Scores (mean squared error in normalised units): normal windows median {sn['median']:.4f} (5–95%
{sn['p05']:.4f}–{sn['p95']:.4f}), anomalous windows median {sa['median']:.4f} (5–95% {sa['p05']:.4f}–{sa['p95']:.4f}).

| test class | windows | flagged | median score |
| --- | --- | --- | --- |
{per_class}

One training seed, two test subjects and one held-out exercise: windows of one recording are strongly correlated
and subjects differ, so these figures are rough. A different held-out exercise would give a different detector and
different numbers.

## The fixtures

For the daemon's end-to-end tests: the first {fn['samples']} raw samples of a test-split recording (float32 values,
written as the shortest decimal that reads back as the same float32), and for every window `[start, start + 100)`,
`start` = 0, 50, … while it fits, this `model.onnx`'s `score` in ONNX Runtime (Python, 1 thread, batch 1) on the
window normalised with the manifest's `mean`/`std` in float32, and `flagged` = score > threshold.

| file | recording | subject | class | windows flagged | closest score to the threshold |
| --- | --- | --- | --- | --- | --- |
| `test_recording_normal.json` | {fn['recording']} | {fn['subject']} | {fn['label']} | **{fn['flagged']} of {fn['windows']}** | {100 * fn['closest_to_threshold']:.1f}% away |
| `test_recording_anomaly.json` | {fa['recording']} | {fa['subject']} | {fa['label']} (held out) | **{fa['flagged']} of {fa['windows']}** | {100 * fa['closest_to_threshold']:.1f}% away |

They were **picked** to make clear fixtures, not at random: among the test recordings at least {fn['samples']}
samples long, the normal one with the fewest flagged windows in its first {fn['samples']} samples and the `{held}`
one with the most (ties: the larger margin to the threshold). Flagged windows of every candidate (recording id
(flagged/windows)): normal {cands('normal')}; `{held}` {cands('anomaly')}.

## Regenerate

```sh
model/setup-venv.sh
{r['command']}
```

Other package versions or CPUs may change the weights slightly, and with them the sha256 and the numbers above.

<details><summary>Full recipe as run</summary>

```json
{json.dumps(rec, indent=1)}
```
</details>
"""


# ---------------------------------------------------------------------------------------------------------- cli
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zinfer_model sensor anomaly",
        description="The smartwatch anomaly detector: a small conv autoencoder trained on 6 of the 7 exercises; "
                    "score = reconstruction error, flagged above a threshold chosen on validation data. Writes "
                    "models/zinfer-watch-anomaly/ (or --export-dir).")
    parser.add_argument("--recipe", type=Path, default=MODEL_ROOT / "recipes" / "anomaly.toml",
                        help="TOML recipe (default: model/recipes/anomaly.toml)")
    parser.add_argument("--quick", action="store_true", help="tiny data and model, a few steps (seconds)")
    parser.add_argument("--export-dir", type=Path,
                        help="target (default: the recipe's export.out; model/runs/<name>-quick/ with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the recipe's, 1)")
    args = parser.parse_args(argv)

    from ..cli import run_guarded

    def work() -> None:
        recipe = load_recipe(args.recipe, args.quick)
        if args.threads:
            recipe["threads"] = int(args.threads)
        try:
            shown = args.recipe.resolve().relative_to(REPO_ROOT)
        except ValueError:
            shown = args.recipe
        command = f".venv/bin/python -m zinfer_model sensor anomaly --recipe {shown}" + (" --quick" if args.quick else "")
        if args.export_dir is not None:
            command += f" --export-dir {args.export_dir}"
        run(recipe, args.export_dir, command,
            log=lambda msg: print(f"[zinfer_model {time.strftime('%H:%M:%S')}] {msg}", flush=True))

    return run_guarded(work)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
