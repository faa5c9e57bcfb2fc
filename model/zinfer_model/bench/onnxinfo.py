"""Static facts about an ONNX model file: parameters, size on disk, precision, inputs, vocabulary size, fusions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

# Initializers that hold learned values (int64/int32 ones are shapes, indices and position-id buffers).
_PARAM_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE,
                TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}
# Quantization bookkeeping, not parameters.
_QUANT_SUFFIXES = ("_scale", "_zero_point")
_INT8_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear", "QLinearMatMul",
             "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QOrderedMatMul"}
_FUSED_OPS = ("Attention", "QAttention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
              "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "MatMulInteger", "DynamicQuantizeMatMul")
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def file_bytes(path: Path) -> int:
    """Size of the model file plus any external-data files it references."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            for kv in init.external_data:
                if kv.key == "location" and kv.value not in seen:
                    seen.add(kv.value)
                    total += (path.parent / kv.value).stat().st_size
    return total


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _numel(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) if len(init.dims) else 1


def count_parameters(model: onnx.ModelProto) -> int:
    """Learned values stored in the graph: float and 8/4-bit initializers, not quantization scales/zero points."""
    n = 0
    for init in model.graph.initializer:
        if init.data_type in _PARAM_TYPES and not init.name.endswith(_QUANT_SUFFIXES):
            n += _numel(init)
    for node in model.graph.node:  # weights folded into Constant nodes (rare, but some exporters do it)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _PARAM_TYPES and len(attr.t.dims) >= 2:
                    n += _numel(attr.t)
    return n


def vocab_size(model: onnx.ModelProto) -> int | None:
    """Rows of the embedding table that `input_ids` indexes (None if the graph hides it)."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))

    def table_rows(name: str) -> int | None:
        for _ in range(4):  # follow DequantizeLinear / Cast back to the stored table
            if name in inits and len(inits[name].dims) == 2:
                return int(inits[name].dims[0])
            node = producers.get(name)
            if node is None or node.op_type not in ("DequantizeLinear", "Cast", "Identity"):
                return None
            name = node.input[0]
        return None

    frontier, seen = ["input_ids"], set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, idx in consumers.get(name, []):
            if node.op_type == "Gather" and idx == 1:
                rows = table_rows(node.input[0])
                if rows:
                    return rows
            elif node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization") and idx == 0:
                rows = table_rows(node.input[2])
                if rows:
                    return rows
            elif node.op_type in _PASS_THROUGH:
                frontier.extend(node.output)
    return None


def inspect(path: Path) -> dict:
    """Everything the report states about a model file without running it."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    int8 = any(op in _INT8_OPS for op in ops) or any(
        i.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(i.dims) >= 2 for i in model.graph.initializer)
    init_names = {i.name for i in model.graph.initializer}
    return {
        "params": count_parameters(model),
        "file_bytes": file_bytes(path),
        "sha256": sha256(path),
        "precision": "int8" if int8 else "fp32",
        "inputs": [i.name for i in model.graph.input if i.name not in init_names],
        "outputs": [o.name for o in model.graph.output],
        "vocab_size": vocab_size(model),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "nodes": len(model.graph.node),
        "fused_ops": {op: ops[op] for op in _FUSED_OPS if op in ops},
    }
