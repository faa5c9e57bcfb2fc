"""Golden inputs for zinferd's drift guard: a few inputs, the fp32 model's outputs on them, and a tolerance.

zinferd runs them through the shipped int8 model where it serves (at start-up, before a reload, and optionally
every N seconds) and refuses a model whose answers fall outside the tolerance: another ONNX Runtime build, a CPU
whose int8 kernels round differently, or a wrong file all show up there (daemon/src/pipeline/golden.rs).

The file (`golden.json`) holds, per case, the input (`text`, or `samples`: a sensor window of raw readings, one row
of channel values per sample) and `scores`: the reference probabilities of the fp32 model the int8 file was made
from. `made` records what the int8 file itself scored against them when it was made (batch 1, ONNX Runtime on the
CPU that made it); the tolerance written into the manifest's `[golden]` table is derived from it with a margin.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CASES = 32
# Margins over what the int8 model scored when made: one more top-1 flip per 16 cases, 0.1 more on the largest
# probability difference, and the mean difference may at most double plus 0.02. A legitimate change of ONNX
# Runtime build or CPU moves int8 results by far less than that (dynamic quantization rounds activations per run);
# a perturbed or swapped model moves them by far more (the daemon's tests check both).
AGREEMENT_MARGIN_PER_CASE = 1 / 16
DEVIATION_MARGIN = 0.1
MEAN_DEVIATION_MARGIN = 0.02


def select(reference: np.ndarray, k: int = CASES) -> list[int]:
    """k case indices spread evenly over the reference's top-1 confidence, from the least confident up, so that the
    golden set holds borderline cases (the first to flip when a model drifts) and confident ones."""
    confidence = np.asarray(reference).max(axis=1)
    order = np.argsort(confidence, kind="stable")
    k = min(k, len(order))
    picks = np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))
    return sorted(int(order[i]) for i in picks)


def compare(scores: np.ndarray, reference: np.ndarray) -> dict:
    """What the daemon measures: top-1 agreement, the largest difference of any score, and the mean over cases of
    each case's largest difference."""
    scores, reference = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    per_case = np.abs(scores - reference).max(axis=1)
    agreeing = int((scores.argmax(axis=1) == reference.argmax(axis=1)).sum())
    return {"cases": len(scores), "agreeing": agreeing, "agreement": agreeing / len(scores),
            "max_deviation": float(per_case.max()), "mean_deviation": float(per_case.mean()),
            "worst_case": int(per_case.argmax())}


def tolerance(made: dict) -> dict:
    """The manifest's [golden] tolerance for a model that scored `made` (see the margins above)."""
    allowed_flips = max(1, math.ceil(made["cases"] * AGREEMENT_MARGIN_PER_CASE))
    return {"min_agreement": round(max(0.0, (made["agreeing"] - allowed_flips) / made["cases"]), 4),
            "max_deviation": round(min(1.0, made["max_deviation"] + DEVIATION_MARGIN), 4),
            "max_mean_deviation": round(2 * made["mean_deviation"] + MEAN_DEVIATION_MARGIN, 4)}


def manifest_table(tol: dict, file: str = "golden.json") -> str:
    """The manifest's [golden] table."""
    return ("\n[golden]   # zinferd runs these inputs at start-up and refuses a model outside this tolerance\n"
            f'file = "{file}"\n'
            f"min_agreement = {tol['min_agreement']}\n"
            f"max_deviation = {tol['max_deviation']}\n"
            f"max_mean_deviation = {tol['max_mean_deviation']}\n")


def _number(v) -> str:
    """The shortest text that reads back as the same float32: the daemon reads inputs and scores as float32."""
    v = np.float32(v)
    if not np.isfinite(v):
        raise ValueError(f"not a finite number: {v}")
    return str(v)


def _case_json(case: dict, scores) -> str:
    parts = []
    if "text" in case:
        parts.append(f'"text": {json.dumps(case["text"], ensure_ascii=False)}')
    if "samples" in case:
        rows = ", ".join("[" + ", ".join(_number(v) for v in row) + "]" for row in np.asarray(case["samples"]))
        parts.append(f'"samples": [{rows}]')
    parts.append('"scores": [' + ", ".join(_number(v) for v in scores) + "]")
    return "{" + ", ".join(parts) + "}"


def write(out: Path, inputs: list[dict], reference: np.ndarray, int8: np.ndarray, about: dict) -> dict:
    """Writes out/golden.json for `inputs` (each {"text": ...} or {"samples": ...}) with their fp32 `reference`
    probabilities, after measuring the int8 probabilities `int8` against them. One case per line. Returns the
    tolerance."""
    made = compare(int8, reference)
    tol = tolerance(made)
    head = json.dumps({"about": about, "made": made, "tolerance": tol}, ensure_ascii=False, indent=1)
    cases = ",\n".join("  " + _case_json(case, ref) for case, ref in zip(inputs, reference))
    text = head[:-2] + ',\n "cases": [\n' + cases + "\n ]\n}\n"
    json.loads(text)  # valid JSON
    (Path(out) / "golden.json").write_text(text, encoding="utf-8")
    return tol


def with_golden_table(manifest: str, tol: dict) -> str:
    """The manifest text with its [golden] table (and the comment line before it) replaced by, or given, one for
    `tol`, at the end."""
    kept, skipping = [], False
    for line in manifest.splitlines():
        if line.startswith("["):
            skipping = line.startswith("[golden]")
        if not skipping:
            kept.append(line)
    return "\n".join(kept).rstrip("\n") + "\n" + manifest_table(tol)


def text_probs(package: Path, texts: list[str], max_length: int) -> np.ndarray:
    """The shipped int8 model's probabilities for `texts`, as zinferd runs a lone text: the package's tokenizer,
    truncation to max_length, no padding, batch 1, ONNX Runtime on one CPU thread."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(package) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(Path(package) / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    rows = []
    for enc in tok.encode_batch(texts):
        ids = np.asarray([enc.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        rows.append(sess.run(["logits"], feeds)[0][0])
    logits = np.asarray(rows, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_text_package(package: Path, texts: list[str], reference: np.ndarray, max_length: int, about: dict) -> dict:
    """Golden inputs for a text package: picks CASES of `texts` by their fp32 `reference` probabilities, measures
    the package's int8 model on them, writes golden.json and the manifest's [golden] table. Returns `made` and the
    tolerance."""
    package = Path(package)
    picks = select(reference)
    chosen = [texts[i] for i in picks]
    ref = np.asarray(reference, dtype=np.float64)[picks]
    int8 = text_probs(package, chosen, max_length)
    tol = write(package, [{"text": t} for t in chosen], ref, int8, about)
    manifest = package / "manifest.toml"
    manifest.write_text(with_golden_table(manifest.read_text(encoding="utf-8"), tol), encoding="utf-8")
    return {"made": compare(int8, ref), "tolerance": tol}


def from_predictions(package: Path, predictions: Path, max_length: int) -> dict:
    """Golden inputs for an already shipped text package from its predictions file (JSON lines with `text` and
    `probs`, the fp32 model's probabilities): for a package whose run directory, and so whose fp32 model, is gone."""
    rows = [json.loads(line) for line in Path(predictions).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["text"] for row in rows]
    reference = np.asarray([row["probs"] for row in rows], dtype=np.float64)
    about = {"inputs": f"{len(select(reference))} texts of {Path(predictions).name} ({len(rows)} test-split reviews), "
                       "spread over the reference's confidence",
             "reference": "probabilities of the fp32 PyTorch model the int8 file was exported from, as recorded "
                          f"in {Path(predictions).name} when the package was made",
             "made_with": versions()}
    return write_text_package(package, texts, reference, max_length, about)


def versions() -> dict:
    import onnxruntime
    import tokenizers

    return {"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__}


def sensor_probs(model: Path, windows: np.ndarray, mean, std, input_name: str, output_name: str) -> np.ndarray:
    """The int8 model's probabilities for raw `windows` (n, window, channels), as zinferd's window stage feeds it:
    normalised in float32 with the training statistics, batch 1, ONNX Runtime on one CPU thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    rows = [sess.run([output_name], {input_name: ((w.astype(np.float32) - mean) / std)[None]})[0][0] for w in windows]
    logits = np.asarray(rows, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
