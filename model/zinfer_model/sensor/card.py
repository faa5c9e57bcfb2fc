"""The shipped sensor model's README.md (model card), written from the run's metrics files and, when it measured
this very file, the side-by-side report (`model/report/sensor/report.json`)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from ..onnx_tools import session
from . import data as sd
from . import model as sm
from .bench import MODEL_ROOT


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(r: dict) -> str:
    lo, hi = r["accuracy_ci95"]
    return f"{_pct(r['accuracy'])} ({_pct(lo)}–{_pct(hi)})"


def latency_probe(path: Path, window: int, channels: int, threads: int = 1, runs: int = 200) -> float:
    """Median batch-1 latency (ms) in this process: a quick figure when no report measured this file."""
    sess = session(path, threads)
    x = np.random.default_rng(0).standard_normal((1, window, channels)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {sm.INPUT_NAME: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {sm.INPUT_NAME: x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _bench_section(sha: str) -> str | None:
    path = MODEL_ROOT / "report" / "sensor" / "report.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not doc["rows"] or doc["rows"][-1]["sha256"] != sha:
        return None
    final, orig = doc["rows"][-1], doc["rows"][0]
    win = str(doc["settings"]["seq_lengths"][0])
    lines = []
    for t in doc["settings"]["threads"]:
        f, o = final["runs"][str(t)], orig["runs"][str(t)]
        lines.append(f"| {t} | {f['latency_b1'][win]['median_ms']:.3f} / {f['latency_b1'][win]['p95_ms']:.3f} ms "
                     f"| {o['latency_b1'][win]['median_ms']:.3f} / {o['latency_b1'][win]['p95_ms']:.3f} ms "
                     f"| {f['throughput']['seq_per_s']:,.0f} | {o['throughput']['seq_per_s']:,.0f} |")
    mib = 2 ** 20
    return f"""From the side-by-side report of record ([`model/report/sensor/report.md`](../../model/report/sensor/report.md),
{doc['started_utc']} UTC, ONNX Runtime {doc['environment']['onnxruntime']}, {doc['environment']['cpu_model']}; a
fresh Python process per model and thread count):

| threads | batch 1 median / p95 (this model) | original fp32 | windows/s at batch {doc['settings']['batch']} (this model) | original fp32 |
| --- | --- | --- | --- | --- |
{chr(10).join(lines)}

Peak RSS of a process that loads and runs it: {final['peak_rss'] / mib:.1f} MiB, of which
{final['net_rss'] / mib:.1f} MiB above the {doc['floor']['peak_rss'] / mib:.1f} MiB floor of Python + numpy +
onnxruntime (original fp32: {orig['peak_rss'] / mib:.1f} MiB, net {orig['net_rss'] / mib:.1f} MiB)."""


def model_card(run, out: Path, sha: str, fixtures: dict, batching: dict) -> str:
    r = run.recipe
    m = {s: run.metrics(s) for s in ("original", "student", "prune", "quantize", "evaluate")}
    ori, stu, pr, q, ev = m["original"], m["student"], m["prune"], m["quantize"], m["evaluate"]
    t, sp = ev["test"], ev["split"]
    d = run.data()
    watch = d["watch"]
    size = (out / "model.onnx").stat().st_size
    st = pr["structure_after"]
    rows = [("original (d_model {0}, {1} heads, FFN {2}, {3} layers), PyTorch fp32".format(
                r["original"]["d_model"], r["original"]["heads"], r["original"]["ffn"], r["original"]["layers"]),
             "original_fp32", ev["parameters"]["original"]),
            ("original, ONNX int8", "original_int8", ev["parameters"]["original"]),
            (f"half width (d_model {r['student']['d_model']}, {r['student']['heads']} heads, FFN "
             f"{r['student']['ffn']}), distilled", "student_fp32", ev["parameters"]["student"]),
            ("pruned + recovery, fp32", "prune_fp32", ev["parameters"]["prune"]),
            ("**pruned, ONNX int8 (`model.onnx`)**", "prune_int8", ev["parameters"]["prune"])]
    table = "\n".join(f"| {name} | {p:,} | {_ci(t[k])} | {t[k]['macro_f1']:.3f} | {_ci(t[k]['per_recording'])} |"
                      for name, k, p in rows)
    bench = _bench_section(sha)
    if bench is None:
        lat1 = latency_probe(out / "model.onnx", int(r["data"]["window"]), len(watch.channels), 1)
        bench = (f"Quick probe (this process, batch 1, 1 thread, median of 200 runs): {lat1:.3f} ms per window. "
                 "The side-by-side report (`python -m zinfer_model sensor bench`) is the measurement of record; "
                 "re-run `sensor export --force` after it to put its figures here.")
    agree = q["agreement"]["prune_int8_vs_torch"]
    diff = ev["int8_minus_original_accuracy"]
    quick_note = "\n> **Quick run (`--quick`)**: tiny data slice and a few steps per stage; the numbers mean nothing.\n" \
        if run.quick else ""
    labels = ", ".join(f"{i} `{lab}` ({sd.LABEL_MEANING.get(lab, '?')})" for i, lab in enumerate(watch.labels))
    fx = "\n".join(f"| `{name}` | {f['recording']} | {f['subject']} | {f['label']} | {f['samples']} | "
                   f"{', '.join(f['window_labels'])} |" for name, f in fixtures.items())
    recipe_json = json.dumps({k: v for k, v in r.items() if k != "quick"}, indent=1)
    return f"""# {r['export']['name']}: small int8 transformer for smartwatch exercise recognition
{quick_note}
A transformer encoder over 2-second windows of six-axis smartwatch data (accelerometer + gyroscope at 50 Hz) that
tells which of 7 shoulder physiotherapy exercises is being performed. Made by the zinfer model toolkit (`model/`,
`python -m zinfer_model sensor …`) from a wider original model by **halving its width and distilling, pruning
whole heads and FFN neurons, and quantizing to int8**. Served by zinferd's sensor pipelines through ONNX Runtime.

| file | what |
| --- | --- |
| `model.onnx` | int8 dynamic-quantized ONNX (opset {q['opset']}), {size:,} bytes, sha256 `{sha}`; input `frames` float32 `[batch, {r['data']['window']}, {len(watch.channels)}]` (batch dynamic; axis 1 time, sample-major; axis 2 channel in manifest order), **already normalised**; output `logits` float32 `[batch, {len(watch.labels)}]` |
| `manifest.toml` | what the daemon reads: labels (index = logits column), channel order, sample rate, window {r['data']['window']} / hop {r['data']['hop']}, per-channel `mean`/`std` |
| `test_recording.json`, `test_recording_b.json` | end-to-end fixtures: test-split recordings (raw samples, float32) and this model's output for every window (see below) |
| `golden.json` | zinferd's drift guard: 32 validation windows (raw readings) with the probabilities of the fp32 PyTorch model this file was exported from, what this file scored against them when made, and the tolerance the manifest's `[golden]` table states (zinferd refuses the model outside it) |

**Input contract.** The daemon takes {r['data']['window']} consecutive samples of the channels
`{", ".join(watch.channels)}` (accelerometer in g, gyroscope in rad/s, as the dataset records them), computes
`x_norm = (x - mean) / std` per channel **in float32** with the manifest's values, and feeds `[1, {r['data']['window']}, 6]`. Windows
start every {r['data']['hop']} samples (1 s). Labels: {labels}.

## Architecture

Patches of {r['original']['patch']} samples × 6 channels (60 values, sample-major) → linear embedding to d_model
{st['d_model']} + learned positional embedding ({r['data']['window'] // r['original']['patch']} positions) →
{len(st['heads'])} pre-LayerNorm transformer blocks (multi-head self-attention with head size {st['head_size']}, heads per
layer {st['heads']}; GELU FFN, neurons per layer {st['ffn']}) → final LayerNorm → mean over the patches → linear head
to {len(watch.labels)} logits. {ev['parameters']['prune']:,} parameters (original {ev['parameters']['original']:,}).

## How it was made (recipe `{r['name']}`, seed {r['seed']})

`python -m zinfer_model sensor recipe --recipe model/recipes/{r['name']}.toml` on CPU (1 torch thread), torch
{torch.__version__}, onnxruntime {onnxruntime.__version__}:

1. **original**: d_model {r['original']['d_model']}, {r['original']['heads']} heads of {r['original']['head_size']}, FFN
   {r['original']['ffn']}, {r['original']['layers']} layers, trained from scratch with cross-entropy for
   {r['original']['epochs']} epochs on training windows taken every {r['data']['train_hop']} samples (augmentation: random
   per-window channel scaling σ={r['data']['augment_scale']} and Gaussian noise σ={r['data']['augment_noise']} in normalised units);
   AdamW lr {r['original']['lr']}, linear warm-up ({_pct(r['original']['warmup'])}) and decay, dropout
   {r['original']['dropout']}; kept epoch {ori['best_epoch']} of {r['original']['epochs']} by validation accuracy
   ({_pct(ori['best_val_accuracy'])}).
2. **half width**: d_model {r['student']['d_model']}, {r['student']['heads']} heads, FFN {r['student']['ffn']} in every layer,
   initialised from the original's most important residual dimensions, whole heads and FFN neurons (first-order
   Taylor importance, |dL/dgate| over {r['student']['importance_batches']} training batches; validation accuracy at
   initialisation {_pct(stu['val_init']['accuracy'])}), then distilled for {r['student']['epochs']} epochs: soft targets of the
   original on the same augmented windows (T={r['student']['temperature']}) + {r['student']['alpha_ce']}× cross-entropy;
   AdamW lr {r['student']['lr']}, linear warm-up/decay, dropout {r['student']['dropout']}; kept epoch {stu['best_epoch']}
   (val {_pct(stu['best_val_accuracy'])}).
3. **prune**: {_pct(pr['head_sparsity'])} of the heads ({pr['heads_before']} → {pr['heads_after']}) and
   {_pct(pr['ffn_sparsity'])} of the FFN neurons ({pr['neurons_before']} → {pr['neurons_after']}) removed by Taylor
   importance ({r['prune']['scope']} ranking, at least one head per layer): parameters {pr['parameters_before']:,} →
   {pr['parameters_after']:,}. Val accuracy {_pct(pr['val_before']['accuracy'])} → {_pct(pr['val_after_prune']['accuracy'])}
   right after pruning → {_pct(pr['val_after_recovery']['accuracy'])} after a {r['prune']['epochs']}-epoch recovery
   (distillation from the original, lr {r['prune']['lr']}).
4. **int8**: `torch.onnx.export` (opset {q['opset']}, dynamic batch axis; fp32 max |Δlogit| vs PyTorch
   {q['agreement']['prune_fp32_vs_torch']['batched']['max_abs_logit_diff']:.1e}), then ONNX Runtime dynamic int8
   quantization of the weights (per-channel: {r['quantize']['per_channel']}); on the validation windows it picks
   the same label as the fp32 PyTorch model on {_pct(agree['argmax_agreement'])} (max |Δlogit|
   {agree['max_abs_logit_diff']:.3f}).

## Data and licence

The smartwatch shoulder-exercise recordings shipped by the PyPI package `seglearn` 1.2.5 (BSD-3-Clause,
© 2018 David M. Burns) as `seglearn/data/watch_dataset.npy`, which `seglearn.datasets.load_watch` documents as
"some of the 6-axis inertial sensor data from my smartwatch project ... recorded as study subjects performed sets
of 20 shoulder exercise repetitions while wearing a smartwatch", the study being Burns et al., 2018, *Shoulder
physiotherapy exercise recognition: machine learning the inertial signals from a smartwatch*
(arXiv:1802.01489). 140 recordings (10 subjects × 7 exercises × left/right arm), 50 Hz, {len(watch.channels)}
channels (`X_labels` ax, ay, az, wx, wy, wz).

**Split by subject** (seed {r['data']['split_seed']}, {_pct(r['data']['train_fraction'])} / {_pct(r['data']['val_fraction'])} /
rest of the subjects; no subject in two splits):

| split | subjects | recordings | windows (hop {r['data']['hop']}) |
| --- | --- | --- | --- |
| train | {sp['subjects']['train']} | {sp['recordings']['train']} | {sp['windows']['train']:,} ({sp['windows']['train_aug']:,} at the training hop {r['data']['train_hop']}) |
| validation | {sp['subjects']['val']} | {sp['recordings']['val']} | {sp['windows']['val']:,} |
| test | {sp['subjects']['test']} | {sp['recordings']['test']} | {sp['windows']['test']:,} |

The normalisation statistics come from the training windows only. The validation split chose the kept epochs;
the test split was used only by the evaluation.

## Measured (test split, {ev['test_windows']:,} windows of {sp['recordings']['test']} recordings, 95% Wilson intervals)

| model | parameters | window accuracy | window macro-F1 | recording accuracy (majority vote of its windows) |
| --- | --- | --- | --- | --- |
{table}

Shipped int8 minus original fp32: {100 * diff['diff']:+.2f} points (paired bootstrap over windows, 95%
{100 * diff['ci95'][0]:+.2f} … {100 * diff['ci95'][1]:+.2f}). One training seed and only two test subjects: windows of one
recording are strongly correlated and subjects differ, so the real uncertainty is wider than these intervals.

## Size and speed

`model.onnx` is {size:,} bytes ({size / 1024:.1f} KiB).

{bench}

## The fixtures

For the daemon's end-to-end tests: raw samples (float32 values, written as the shortest decimal that reads back as
the same float32), and for every window `[start, start + {r['data']['window']})`, `start` = 0, {r['data']['hop']}, … while it fits, the label and
`probs` (softmax of `logits`, float32) of this `model.onnx` in ONNX Runtime (Python, 1 thread, batch 1) on the
window normalised with the manifest's `mean`/`std` in float32.

| file | recording | subject | true class | samples | window labels |
| --- | --- | --- | --- | --- | --- |
{fx}

Dynamic int8 quantization scales each call's activations by that call's range, so a window run in a batch with
others can get slightly different logits than at batch 1. On the test windows, batch 8 vs batch 1: same label on
{_pct(batching['8']['argmax_agreement'])}, largest probability difference {batching['8']['max_abs_prob_diff']:.4f};
batch 256 vs batch 1: same label on {_pct(batching['256']['argmax_agreement'])}, largest probability difference
{batching['256']['max_abs_prob_diff']:.4f}. Compare a server's batch-1 output with `probs` closely; batched output by
label (and loosely by probability).

## Regenerate

```sh
model/setup-venv.sh
.venv/bin/python -m zinfer_model sensor recipe --recipe model/recipes/{r['name']}.toml
(cd model && ../.venv/bin/python -m zinfer_model sensor bench)      # model/report/sensor/
.venv/bin/python -m zinfer_model sensor export --recipe model/recipes/{r['name']}.toml --force   # this card with the report
```

Other package versions or CPUs may change the weights slightly, and with them the sha256 and the numbers above.

<details><summary>Full recipe as run</summary>

```json
{recipe_json}
```
</details>
"""
