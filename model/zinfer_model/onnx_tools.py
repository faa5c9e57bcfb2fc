"""ONNX export (legacy exporter, opset ≥ 17, dynamic batch/sequence axes, BERT input names), ONNX Runtime's
transformer optimizer (fusions), dynamic int8 quantization, and small latency probes."""

from __future__ import annotations

import math
import statistics
import time
import types
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .modeling import LogitsOnly

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _classic_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BERT self-attention written as the graph ORT's attention fusion recognises: an explicit head count in
    the reshapes (it reads the heads of each layer from them; -1 defeats it) and the scaling as a Div (with a
    Mul, the fusion's mask matcher finds the scaling Mul first and gives up). Same numbers as eager attention."""
    b, t, _ = hidden_states.shape
    hs = self.attention_head_size
    n = self.query.out_features // hs

    def heads(x):
        return x.view(b, t, n, hs).transpose(1, 2)

    q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hs)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, t, n * hs), probs


@contextmanager
def classic_attention(model):
    """Temporarily give every self-attention module of `model` the fusion-friendly forward above."""
    modules = [layer.attention.self for layer in model.bert.encoder.layer]
    for m in modules:
        m.forward = types.MethodType(_classic_self_attention, m)
    try:
        yield model
    finally:
        for m in modules:
            del m.forward


def export_onnx(model, path: Path, opset: int = 17) -> Path:
    """fp32 ONNX with inputs input_ids/attention_mask/token_type_ids (int64 [batch, sequence]) → logits."""
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    was_training = model.training
    model.eval()
    wrapper = LogitsOnly(model).eval()
    dynamic = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    dynamic["logits"] = {0: "batch"}
    with warnings.catch_warnings(), classic_attention(model):
        # the legacy (TorchScript) exporter is deprecated, but its graphs are the ones ORT's fusions know
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (ids, mask, torch.zeros_like(ids)), str(path), input_names=INPUT_NAMES,
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    model.train(was_training)
    onnx.checker.check_model(str(path))
    return path


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def optimize(src: Path, dst: Path) -> dict:
    """ORT transformer optimizer for BERT (Attention/SkipLayerNorm/BiasGelu… fusions); heads and hidden size
    are detected from the graph (they may differ per layer after pruning)."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=None)
    opt.save_model_to_file(str(dst))
    fused = opt.get_fused_operator_statistics()
    return {k: int(v) for k, v in fused.items() if v}


def unfuse_skip_layer_norm(src: Path, dst: Path) -> int:
    """Writes `src` to `dst` with every SkipLayerNormalization (com.microsoft) as Add(input, skip), Add(bias) and the
    standard LayerNormalization; returns how many it rewrote.

    Why: ONNX Runtime's CPU kernel for the fused op cost more than the matrix products in our hidden-192 students
    (1.31, one thread: 30% of the shipped model's kernel time at 1×16 tokens, 37% at 8×64), while the standard op
    computes the same sums far faster: the shipped model ran 24-31% faster per run (see the commit). ONNX Runtime's
    own graph optimizer does not fuse the pattern back. The weights are untouched: predictions change only where
    float rounding moves a dynamically quantised activation across an int8 step (`unfuse` checks them)."""
    from onnx import helper

    model = onnx.load(str(src))
    nodes, rewritten = [], 0
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        if any(output for output in node.output[1:]):
            raise ValueError(f"{node.name}: the fused op's extra outputs are used; leaving such a graph alone")
        x, skip, gamma = node.input[:3]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        epsilon = next((attribute.f for attribute in node.attribute if attribute.name == "epsilon"), 1e-12)
        summed = f"{node.name}/sum"
        nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{node.name}/add_skip"))
        if bias:
            biased = f"{node.name}/sum_bias"
            nodes.append(helper.make_node("Add", [summed, bias], [biased], name=f"{node.name}/add_bias"))
            summed = biased
        inputs = [summed, gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node("LayerNormalization", inputs, [node.output[0]], name=f"{node.name}/layer_norm",
                                      axis=-1, epsilon=epsilon))
        rewritten += 1
    if rewritten and not any(opset.domain in ("", "ai.onnx") and opset.version >= 17 for opset in model.opset_import):
        raise ValueError("LayerNormalization needs opset 17; this graph imports an older one")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return rewritten


def quantize_int8(src: Path, dst: Path, per_channel: bool = False, reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


def latency_ms(path: Path, seq: int = 64, threads: int = 1, runs: int = 50, warmup: int = 10) -> float:
    """Median batch-1 latency of one session (a quick probe; the efficiency report measures properly)."""
    sess = session(path, threads)
    ids = np.full((1, seq), 1005, dtype=np.int64)  # any ordinary token id
    ids[0, 0], ids[0, -1] = 2, 3
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
