"""The training loop resumes an interrupted run from its checkpoint and ends with the same weights as an
uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from zinfer_model.metrics import gold, summary, torch_logits
from zinfer_model.modeling import run_logits
from zinfer_model.train import TrainSpec, fit

from conftest import tiny_teacher


class Interrupt(Exception):
    pass


def _train(data, val, work, stop_at=None):
    torch.manual_seed(0)
    model = tiny_teacher()
    spec = TrainSpec(epochs=2, batch_size=16, lr=1e-3, max_steps_per_epoch=4, checkpoint_every=2)
    calls = {"n": 0}

    def step_fn(m, batch, epoch, i):
        calls["n"] += 1
        if stop_at is not None and calls["n"] == stop_at:
            raise Interrupt()
        logits = run_logits(m, batch.input_ids, batch.attention_mask).logits
        return torch.nn.functional.cross_entropy(logits, batch.labels), (logits.detach(), batch.labels), {}

    def val_fn(m):
        return summary(torch_logits(m, val), gold(val))

    hist = fit(model, data, spec=spec, step_fn=step_fn, val_fn=val_fn, work_dir=work, seed=0, desc="t",
               log=lambda *_: None)
    return model, hist, calls["n"]


def test_resume_after_interrupt(encoded, tmp_path):
    train, val = encoded
    straight, hist, _ = _train(train, val, tmp_path / "a")
    with pytest.raises(Interrupt):
        _train(train, val, tmp_path / "b", stop_at=7)  # dies at epoch 2 batch 3, after the checkpoint at batch 2
    resumed, hist_b, calls = _train(train, val, tmp_path / "b")
    assert calls == 2  # only the batches after the checkpoint ran again
    assert hist_b["best_epoch"] == hist["best_epoch"]
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
