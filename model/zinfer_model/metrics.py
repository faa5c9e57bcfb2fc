"""Accuracy, macro-F1, confidence intervals and model predictions (PyTorch and ONNX Runtime)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import Encoded, batch_order, make_batch
from .modeling import run_logits


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_labels: int = 2) -> float:
    f1s = []
    for c in range(n_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, gold: np.ndarray, rounds: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Accuracy difference a - b with a 95% percentile interval from resampling the test rows."""
    ca = (pred_a == gold).astype(np.float64)
    cb = (pred_b == gold).astype(np.float64)
    n = len(gold)
    diffs = []
    rs = np.random.default_rng(seed)
    for _ in range(rounds):
        idx = rs.integers(0, n, n)
        diffs.append(ca[idx].mean() - cb[idx].mean())
    diffs.sort()
    return float(ca.mean() - cb.mean()), float(diffs[int(0.025 * rounds)]), float(diffs[int(0.975 * rounds) - 1])


def summary(logits: np.ndarray, gold: np.ndarray) -> dict:
    pred = logits.argmax(-1)
    acc = accuracy(pred, gold)
    lo, hi = wilson_interval(acc, len(gold))
    return {"accuracy": acc, "macro_f1": macro_f1(pred, gold, logits.shape[-1]), "accuracy_ci95": [lo, hi],
            "n": int(len(gold))}


@torch.no_grad()
def torch_logits(model, data: list[Encoded], batch_size: int = 64, id_map: torch.Tensor | None = None) -> np.ndarray:
    """Logits in the order of `data` (batches are length-sorted and padded; the mask hides the padding)."""
    model.eval()
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    for chunk in batch_order(data, batch_size, None):
        b = make_batch(data, chunk)
        ids = b.input_ids if id_map is None else id_map[b.input_ids]
        out[chunk] = run_logits(model, ids, b.attention_mask).logits.numpy()
    return out


def onnx_logits(session, data: list[Encoded], batch_size: int = 64) -> np.ndarray:
    out = None
    for chunk in batch_order(data, batch_size, None):
        b = make_batch(data, chunk)
        ids = b.input_ids.numpy()
        got = session.run(["logits"], {"input_ids": ids, "attention_mask": b.attention_mask.numpy(),
                                       "token_type_ids": np.zeros_like(ids)})[0]
        if out is None:
            out = np.zeros((len(data), got.shape[-1]), dtype=np.float32)
        out[chunk] = got
    return out


def gold(data: list[Encoded]) -> np.ndarray:
    return np.array([y for _, y in data])


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How closely logits b follow logits a."""
    pa, pb = softmax(a), softmax(b)
    return {"argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max()),
            "mean_abs_logit_diff": float(np.abs(a - b).mean()),
            "max_abs_prob_diff": float(np.abs(pa - pb).max())}
