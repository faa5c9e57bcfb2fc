"""The training loop every training step uses: AdamW, linear warm-up then linear decay, gradient clipping,
a tqdm bar with running loss/accuracy, validation after each epoch (the best epoch is kept), and checkpoints
that let an interrupted step resume where it stopped.

Resuming: a step's `checkpoint.pt` (model, optimizer, scheduler, RNG states, position in the epoch) is written
every `checkpoint_every` optimizer steps and at the end of every epoch. Re-running the same step with the same
`--run-dir` and recipe continues from it; the batch order of an epoch is a pure function of (seed, epoch), so the
remaining batches are exactly the ones the interrupted run had not seen yet.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .data import Batch, Encoded, batch_order, make_batch


@dataclass
class TrainSpec:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    grad_clip: float = 1.0
    max_steps_per_epoch: int = 0  # 0 = whole epoch (--quick and tests cap it)
    checkpoint_every: int = 100


# step_fn(model, batch, epoch, index) -> (loss, (logits, gold labels) for the running accuracy or None,
#                                         {loss part name: value} shown on the progress bar)
StepFn = Callable[[torch.nn.Module, Batch, int, int], tuple[torch.Tensor, torch.Tensor | None, dict]]
ValFn = Callable[[torch.nn.Module], dict]


def _param_groups(modules: list[torch.nn.Module], weight_decay: float):
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embeddings" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(model: torch.nn.Module, data: list[Encoded], *, spec: TrainSpec, step_fn: StepFn, val_fn: ValFn,
        work_dir: Path, seed: int, desc: str, extra_modules: list[torch.nn.Module] = (), log=print,
        order_fn=batch_order, make_fn=make_batch) -> dict:
    """Train `model` (and `extra_modules`, e.g. projections used only by the loss) in place; leave it at its
    best validation epoch and return the training history.

    `data` is anything `order_fn(data, batch_size, rng)` (→ lists of indices) and `make_fn(data, chunk)` (→ a
    batch with `.labels`) understand: by default token sequences (`zinfer_model.data`); the sensor model passes
    its window set."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, best_path = work_dir / "checkpoint.pt", work_dir / "best.safetensors"
    modules = [model, *extra_modules]
    opt = torch.optim.AdamW(_param_groups(modules, spec.weight_decay), lr=spec.lr)
    n_batches = math.ceil(len(data) / spec.batch_size)
    steps_per_epoch = min(n_batches, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else n_batches
    total = max(1, spec.epochs * steps_per_epoch)
    warmup = max(1, int(spec.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    state = {"epoch": 0, "step_in_epoch": 0, "best": -1.0, "best_epoch": 0, "history": [],
             "running": [0.0, 0, 0, 0], "seconds": 0.0}

    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        for module, sd in zip(modules, ckpt["modules"]):
            module.load_state_dict(sd)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
        log(f"{desc}: resuming from {ckpt_path} at epoch {state['epoch'] + 1}, batch {state['step_in_epoch']}")

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(), "state": state}, tmp)
        tmp.replace(ckpt_path)

    while state["epoch"] < spec.epochs:
        epoch = state["epoch"]
        chunks = order_fn(data, spec.batch_size, random.Random(seed * 1000 + epoch))[:steps_per_epoch]
        start = state["step_in_epoch"]
        if start == 0:
            state["running"] = [0.0, 0, 0, 0]  # loss sum, examples, correct, labelled
        bar = tqdm(total=len(chunks), initial=start, desc=f"{desc} {epoch + 1}/{spec.epochs}", unit="batch",
                   dynamic_ncols=True, mininterval=2.0)
        t0 = time.time()
        for i in range(start, len(chunks)):
            for m in modules:
                m.train()
            batch = make_fn(data, chunks[i])
            loss, scored, parts = step_fn(model, batch, epoch, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for m in modules for p in m.parameters()], spec.grad_clip)
            opt.step()
            sched.step()
            r = state["running"]
            r[0] += loss.item() * len(batch.labels)
            r[1] += len(batch.labels)
            if scored is not None:  # (logits, gold labels) of the rows that count for the running accuracy
                logits, gold_labels = scored
                r[2] += int((logits.argmax(-1) == gold_labels).sum())
                r[3] += len(gold_labels)
            post = {"loss": f"{r[0] / r[1]:.4f}"}
            if r[3]:
                post["acc"] = f"{r[2] / r[3]:.3f}"
            post.update({k: f"{float(v):.4f}" for k, v in parts.items()})
            bar.set_postfix(post, refresh=False)
            bar.update(1)
            state["step_in_epoch"] = i + 1
            if (i + 1) % spec.checkpoint_every == 0 and i + 1 < len(chunks):
                state["seconds"] += time.time() - t0
                t0 = time.time()
                save_checkpoint()
        bar.close()
        state["seconds"] += time.time() - t0
        for m in modules:
            m.eval()
        val = val_fn(model)
        r = state["running"]
        entry = {"epoch": epoch + 1, "train_loss": r[0] / max(1, r[1]),
                 "train_accuracy": (r[2] / r[3]) if r[3] else None, **{f"val_{k}": v for k, v in val.items()}}
        state["history"].append(entry)
        log(f"{desc} epoch {epoch + 1}/{spec.epochs}: train loss {entry['train_loss']:.4f}, "
            f"val accuracy {val['accuracy']:.4f}")
        if val["accuracy"] > state["best"]:
            state["best"], state["best_epoch"] = val["accuracy"], epoch + 1
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(best_path))
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        save_checkpoint()

    model.load_state_dict(load_file(str(best_path)))
    model.eval()
    log(f"{desc}: kept epoch {state['best_epoch']} (val accuracy {state['best']:.4f}); "
        f"{state['seconds']:.0f} s of training")
    return {"history": state["history"], "best_epoch": state["best_epoch"], "best_val_accuracy": state["best"],
            "train_seconds": state["seconds"], "steps_per_epoch": steps_per_epoch}


def clear_checkpoints(work_dir: Path) -> None:
    for name in ("checkpoint.pt", "best.safetensors", "checkpoint.tmp"):
        (work_dir / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- distillation losses
def kd_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T² (Hinton et al.)."""
    t = temperature
    return torch.nn.functional.kl_div(torch.log_softmax(student / t, -1), torch.log_softmax(teacher / t, -1),
                                      reduction="batchmean", log_target=True) * (t * t)


def hidden_mse(student_h: torch.Tensor, teacher_h: torch.Tensor, proj: torch.nn.Module,
               mask: torch.Tensor) -> torch.Tensor:
    """MSE between the projected student hidden states and the teacher's over real tokens, relative to the
    teacher's mean square (so layers with large activations do not dominate)."""
    m = mask.unsqueeze(-1).to(student_h.dtype)
    diff = (proj(student_h) - teacher_h) * m
    denom = (teacher_h.pow(2) * m).sum().clamp_min(1e-6)
    return diff.pow(2).sum() / denom


def attention_kl(student_a: torch.Tensor, teacher_a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions [B, H, T, T], averaged over heads and real
    query positions (padding keys have probability 0 in both)."""
    eps = 1e-12
    kl = (teacher_a * (torch.log(teacher_a + eps) - torch.log(student_a + eps))).sum(-1)  # [B, H, T]
    m = mask[:, None, :].to(kl.dtype)
    return (kl * m).sum() / (m.sum() * kl.shape[1]).clamp_min(1.0)


def augment_ids(ids: torch.Tensor, mask: torch.Tensor, rng: random.Random, *, example_prob: float,
                token_prob: float, mask_id: int, replacement_ids: list[int], special_ids: set[int]):
    """Token-level augmentation for distillation (the teacher labels the altered text): in a fraction of the
    examples, each ordinary token is replaced by [MASK] or by a random in-domain token, or deleted.
    Returns (ids, mask, augmented-row flags)."""
    ids = ids.clone()
    mask = mask.clone()
    flags = torch.zeros(ids.shape[0], dtype=torch.bool)
    for row in range(ids.shape[0]):
        if rng.random() >= example_prob:
            continue
        flags[row] = True
        length = int(mask[row].sum())
        kept: list[int] = []
        for j in range(length):
            tok = int(ids[row, j])
            if tok in special_ids or rng.random() >= token_prob:
                kept.append(tok)
                continue
            u = rng.random()
            if u < 0.4:
                kept.append(mask_id)
            elif u < 0.8:
                kept.append(replacement_ids[rng.randrange(len(replacement_ids))])
            # else: deleted
        ids[row] = 0
        mask[row] = 0
        ids[row, :len(kept)] = torch.tensor(kept)
        mask[row, :len(kept)] = 1
    return ids, mask, flags
