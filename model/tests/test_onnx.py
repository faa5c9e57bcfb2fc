"""quantize: the ONNX export matches PyTorch (max |Δlogit| ≤ 1e-4, padded batches and batch 1), the ORT
optimizer keeps it within 1e-3, the int8 model picks the same label, and the fused layer norms unfused keep the
logits."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort

from zinfer_model.data import batches
from zinfer_model.importance import layer_keep, taylor_importance
from zinfer_model.metrics import agreement, onnx_logits, torch_logits
from zinfer_model.modeling import prune_layers
from zinfer_model.onnx_tools import export_onnx, op_counts, optimize, quantize_int8, session, unfuse_skip_layer_norm

FP32_TOL = 1e-4


def test_export_optimize_quantize(teacher, encoded, tmp_path):
    train, val = encoded
    scores = taylor_importance(teacher, (b for _, b in zip(range(2), batches(train, 16, random.Random(0)))),
                               want_hidden=False)
    prune_layers(teacher, [[0, 2], [1]], layer_keep(scores["neurons"], 0.5))  # uneven heads per layer
    fp32 = export_onnx(teacher, tmp_path / "m.onnx", 17)
    m = onnx.load(str(fp32))
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in m.graph.input)
    assert [o.name for o in m.graph.output] == ["logits"]
    dims = [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]

    data = train[:40] + val
    ref = torch_logits(teacher, data)
    a = agreement(ref, onnx_logits(session(fp32), data, batch_size=7))  # uneven batches, padded rows
    assert a["max_abs_logit_diff"] <= FP32_TOL
    sess = session(fp32)
    for ids, _ in data[:10]:  # batch 1, no padding
        x = np.asarray([ids], dtype=np.int64)
        got = sess.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x),
                                    "token_type_ids": np.zeros_like(x)})[0]
        assert np.abs(got - torch_logits(teacher, [(ids, 0)])).max() <= FP32_TOL

    opt = tmp_path / "m.opt.onnx"
    optimize(fp32, opt)
    assert agreement(ref, onnx_logits(session(opt), data))["max_abs_logit_diff"] <= 1e-3

    int8 = quantize_int8(opt, tmp_path / "m.int8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size
    q = onnx_logits(session(int8), data)
    margin = np.abs(ref[:, 1] - ref[:, 0])
    confident = margin > 0.1
    assert confident.sum() >= len(data) // 2
    assert (q.argmax(-1) == ref.argmax(-1))[confident].all()
    assert agreement(ref, q)["argmax_agreement"] >= 0.9

    # The fused layer norms as Add + LayerNormalization: same logits, and ONNX Runtime does not fuse them back.
    fused = op_counts(opt).get("SkipLayerNormalization", 0)
    assert fused > 0
    unfused = tmp_path / "m.unfused.onnx"
    assert unfuse_skip_layer_norm(opt, unfused) == fused
    counts = op_counts(unfused)
    assert "SkipLayerNormalization" not in counts and counts["LayerNormalization"] >= fused
    assert np.abs(onnx_logits(session(unfused), data) - onnx_logits(session(opt), data)).max() <= 1e-5
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "m.unfused.ort-optimized.onnx")
    ort.InferenceSession(str(unfused), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" not in op_counts(tmp_path / "m.unfused.ort-optimized.onnx")
