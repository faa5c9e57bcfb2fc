"""shrink: the student really has half the width, the configured heads and FFN, and inherits teacher slices."""

from __future__ import annotations

import random

import torch

from zinfer_model.data import batches
from zinfer_model.importance import taylor_importance, top_k
from zinfer_model.modeling import (count_params, head_size, load_pretrained_teacher, run_logits,
                                   shrink_from_teacher, structure)
from zinfer_model.recipe import DEFAULTS


def test_student_has_half_width_and_configured_heads(teacher, encoded):
    train, _ = encoded
    scores = taylor_importance(teacher, (b for _, b in zip(range(2), batches(train, 16, random.Random(0)))))
    assert scores["hidden"].shape == (64,) and len(scores["heads"]) == 2 and scores["heads"][0].shape == (4,)
    dims = top_k(scores["hidden"], 32)
    heads = [top_k(s, 2) for s in scores["heads"]]
    neurons = [top_k(s, 64) for s in scores["neurons"]]
    student = shrink_from_teacher(teacher, dims=dims, heads=heads, neurons=neurons, layers=[0, 1], dropout=0.0,
                                  attention_dropout=0.0)
    st = structure(student)
    assert st["hidden"] == structure(teacher)["hidden"] // 2 == 32
    assert student.bert.embeddings.word_embeddings.weight.shape == (30522, 32)
    assert st["heads"] == [2, 2] and student.config.num_attention_heads == 2
    assert head_size(student) == head_size(teacher) == 16
    assert st["intermediate"] == [64, 64]
    layer = student.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (32, 32)
    assert layer.intermediate.dense.weight.shape == (64, 32)
    # every weight is a slice of the teacher's: one kept head's query rows on the kept dimensions
    h = heads[0][1]
    d = torch.tensor(dims)
    want = teacher.bert.encoder.layer[0].attention.self.query.weight[h * 16:(h + 1) * 16][:, d]
    assert torch.equal(layer.attention.self.query.weight[16:32], want)
    ids = torch.tensor([[2, 100, 200, 3]])
    assert run_logits(student, ids, torch.ones_like(ids)).logits.shape == (1, 2)


def test_default_student_from_the_real_teacher():
    """The default recipe's student: 384 → 192 wide, 6 heads of 32, FFN 768, from all-MiniLM-L6-v2."""
    teacher = load_pretrained_teacher()
    c = DEFAULTS["shrink"]
    assert teacher.config.hidden_size == 384 and teacher.config.num_attention_heads == 12
    n = teacher.config.num_hidden_layers
    student = shrink_from_teacher(teacher, dims=list(range(0, 384, 2)), heads=[list(range(c["heads"]))] * n,
                                  neurons=[list(range(c["intermediate"]))] * n, layers=list(range(n)),
                                  dropout=0.1, attention_dropout=0.0)
    st = structure(student)
    assert c["hidden"] * 2 == 384 and st["hidden"] == 192
    assert st["heads"] == [6] * 6 and st["intermediate"] == [768] * 6
    assert student.bert.embeddings.word_embeddings.embedding_dim == 192
    assert count_params(student) < count_params(teacher) / 2
