"""prune: heads and FFN neurons are really removed (shapes shrink), the pruned model still runs, equals the
original with those units zeroed, and survives a save/load round trip."""

from __future__ import annotations

import random

import torch

from zinfer_model.data import batches
from zinfer_model.importance import global_keep, layer_keep, taylor_importance
from zinfer_model.modeling import count_params, load_model, prune_layers, run_logits, save_model, structure
from zinfer_model.steps import original_tokenizer_path


def _zero_units(model, keep_heads, keep_neurons, hs=16):
    for layer, heads, neurons in zip(model.bert.encoder.layer, keep_heads, keep_neurons):
        n_heads = layer.attention.self.query.out_features // hs
        with torch.no_grad():
            for h in set(range(n_heads)) - set(heads):
                layer.attention.self.value.weight[h * hs:(h + 1) * hs] = 0
                layer.attention.self.value.bias[h * hs:(h + 1) * hs] = 0
            for n in set(range(layer.intermediate.dense.out_features)) - set(neurons):
                layer.output.dense.weight[:, n] = 0


def test_pruning_removes_heads_and_neurons(teacher, encoded, tmp_path):
    train, val = encoded
    scores = taylor_importance(teacher, (b for _, b in zip(range(2), batches(train, 16, random.Random(0)))),
                               want_hidden=False)
    keep_heads = global_keep(scores["heads"], 0.5)
    keep_neurons = layer_keep(scores["neurons"], 0.25)
    assert sum(map(len, keep_heads)) == 4 and all(len(h) >= 1 for h in keep_heads)
    assert [len(n) for n in keep_neurons] == [96, 96]

    zeroed = teacher.__class__(teacher.config).eval()
    zeroed.load_state_dict(teacher.state_dict())
    _zero_units(zeroed, keep_heads, keep_neurons)

    before = count_params(teacher)
    prune_layers(teacher, keep_heads, keep_neurons)
    st = structure(teacher)
    assert st["heads"] == [len(h) for h in keep_heads]
    assert st["intermediate"] == [96, 96]
    for layer, heads in zip(teacher.bert.encoder.layer, keep_heads):
        assert layer.attention.self.query.weight.shape == (16 * len(heads), 64)
        assert layer.attention.output.dense.weight.shape == (64, 16 * len(heads))
        assert layer.intermediate.dense.weight.shape == (96, 64)
        assert layer.output.dense.weight.shape == (64, 96)
    assert count_params(teacher) < before

    batch = next(batches(val, 8))
    got = run_logits(teacher, batch.input_ids, batch.attention_mask).logits
    want = run_logits(zeroed, batch.input_ids, batch.attention_mask).logits
    assert got.shape == (8, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    save_model(teacher, original_tokenizer_path(), tmp_path / "m")
    loaded, _, info = load_model(tmp_path / "m")
    assert info["heads"] == st["heads"] and info["intermediate"] == st["intermediate"]
    torch.testing.assert_close(run_logits(loaded, batch.input_ids, batch.attention_mask).logits, got)


def test_global_keep_respects_minimum_per_layer():
    scores = [torch.tensor([10.0, 9.0, 8.0, 7.0]), torch.tensor([0.001, 0.002, 0.0, 0.0])]
    keep = global_keep(scores, 0.75, min_keep=1)
    assert all(len(k) >= 1 for k in keep)
