"""A small transformer encoder for fixed-length multichannel windows, with uneven per-layer shapes.

    frames [B, window, C]  → patches [B, window/patch, patch·C] (sample-major inside a patch)
                           → Linear → d_model, + learned positional embedding, dropout
                           → N pre-LayerNorm blocks: x += Attn(LN(x)); x += FFN(LN(x))  (GELU)
                           → final LayerNorm → mean over patches → Linear → logits [B, n_labels]

Every block has its own head count (head size is fixed) and FFN width, so heads and neurons can be removed
(`prune_`), and a narrower model can be cut out of a wider one (`shrink_from`). `forward` takes optional gates
(multipliers of each head's context, each FFN neuron's activation and each residual-stream dimension) that the
Taylor importance differentiates; they are None in training and export.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling import _linear


@dataclass
class SensorConfig:
    window: int = 100
    channels: int = 6
    patch: int = 10
    d_model: int = 128
    head_size: int = 32
    heads: list[int] = field(default_factory=lambda: [4] * 4)        # per layer
    ffn: list[int] = field(default_factory=lambda: [256] * 4)        # per layer
    n_labels: int = 7
    dropout: float = 0.1
    attention_dropout: float = 0.0

    @classmethod
    def uniform(cls, *, layers: int, heads: int, ffn: int, **kw) -> "SensorConfig":
        return cls(heads=[heads] * layers, ffn=[ffn] * layers, **kw)

    @property
    def n_patches(self) -> int:
        return self.window // self.patch

    @property
    def layers(self) -> int:
        return len(self.heads)

    def check(self) -> "SensorConfig":
        if self.window % self.patch:
            raise ValueError(f"window {self.window} is not a multiple of patch {self.patch}")
        if len(self.heads) != len(self.ffn) or min(self.heads, default=1) < 1 or min(self.ffn, default=1) < 1:
            raise ValueError(f"bad per-layer shapes: heads {self.heads}, ffn {self.ffn}")
        return self


class Block(nn.Module):
    def __init__(self, d: int, heads: int, head_size: int, ffn: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads, self.head_size = heads, head_size
        self.ln1 = nn.LayerNorm(d)
        self.query = nn.Linear(d, heads * head_size)
        self.key = nn.Linear(d, heads * head_size)
        self.value = nn.Linear(d, heads * head_size)
        self.out = nn.Linear(heads * head_size, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(attention_dropout)

    def forward(self, x, head_gate=None, ffn_gate=None, hidden_gate=None):
        t = x.shape[1]
        h = self.ln1(x)

        def split(z):  # [B, T, H·hs] → [B, H, T, hs]; batch stays symbolic in the ONNX graph
            return z.reshape(-1, t, self.heads, self.head_size).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = self.attn_drop(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v)                                   # [B, H, T, hs]
        if head_gate is not None:
            ctx = ctx * head_gate[None, :, None, None]
        ctx = ctx.transpose(1, 2).reshape(-1, t, self.heads * self.head_size)
        a = self.drop(self.out(ctx))
        if hidden_gate is not None:
            a = a * hidden_gate
        x = x + a
        f = nn.functional.gelu(self.fc1(self.ln2(x)))
        if ffn_gate is not None:
            f = f * ffn_gate
        f = self.drop(self.fc2(f))
        if hidden_gate is not None:
            f = f * hidden_gate
        return x + f


class SensorTransformer(nn.Module):
    def __init__(self, config: SensorConfig):
        super().__init__()
        self.config = config.check()
        c = config
        self.embed = nn.Linear(c.patch * c.channels, c.d_model)
        self.pos = nn.Parameter(torch.zeros(1, c.n_patches, c.d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.d_model, h, c.head_size, f, c.dropout, c.attention_dropout)
                                    for h, f in zip(c.heads, c.ffn))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_labels)

    def forward(self, frames: torch.Tensor, gates: dict | None = None) -> torch.Tensor:
        c = self.config
        x = frames.reshape(-1, c.n_patches, c.patch * c.channels)    # sample-major patches
        x = self.drop(self.embed(x) + self.pos)
        hidden = gates.get("hidden") if gates else None
        if hidden is not None:
            x = x * hidden
        for i, block in enumerate(self.blocks):
            x = block(x, gates["heads"][i] if gates else None, gates["neurons"][i] if gates else None, hidden)
        return self.head(self.ln_f(x).mean(1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structure(model: SensorTransformer) -> dict:
    return {"d_model": model.config.d_model, "heads": [b.heads for b in model.blocks],
            "ffn": [b.fc1.out_features for b in model.blocks], "head_size": model.config.head_size}


# ------------------------------------------------------------------------------------------------ surgery
def _head_rows(heads: list[int], hs: int) -> torch.Tensor:
    return torch.tensor([h * hs + j for h in heads for j in range(hs)], dtype=torch.long)


def _layernorm(ln: nn.LayerNorm, idx: torch.Tensor) -> nn.LayerNorm:
    new = nn.LayerNorm(len(idx), eps=ln.eps)
    with torch.no_grad():
        new.weight.copy_(ln.weight[idx])
        new.bias.copy_(ln.bias[idx])
    return new


def prune_(model: SensorTransformer, keep_heads: list[list[int]], keep_neurons: list[list[int]]) -> SensorTransformer:
    """Remove whole heads and FFN neurons in place (parameter shapes shrink), keeping the listed ones."""
    hs = model.config.head_size
    for block, heads, neurons in zip(model.blocks, keep_heads, keep_neurons):
        if not heads or not neurons:
            raise ValueError("every layer must keep at least one head and one neuron")
        rows = _head_rows(sorted(heads), hs)
        block.query, block.key, block.value = (_linear(block.query, rows), _linear(block.key, rows),
                                               _linear(block.value, rows))
        block.out = _linear(block.out, in_idx=rows)
        block.heads = len(heads)
        cols = torch.tensor(sorted(neurons), dtype=torch.long)
        block.fc1 = _linear(block.fc1, out_idx=cols)
        block.fc2 = _linear(block.fc2, in_idx=cols)
    model.config.heads = [b.heads for b in model.blocks]
    model.config.ffn = [b.fc1.out_features for b in model.blocks]
    return model


def shrink_from(original: SensorTransformer, *, dims: list[int], heads: list[list[int]], neurons: list[list[int]],
                dropout: float | None = None) -> SensorTransformer:
    """A narrower model whose weights are the original's selected residual dimensions, heads and neurons (same
    depth, patching and head size): the half-width student's starting point."""
    c = original.config
    idx = torch.tensor(sorted(dims), dtype=torch.long)
    cfg = SensorConfig(window=c.window, channels=c.channels, patch=c.patch, d_model=len(dims), head_size=c.head_size,
                       heads=[len(h) for h in heads], ffn=[len(n) for n in neurons], n_labels=c.n_labels,
                       dropout=c.dropout if dropout is None else dropout, attention_dropout=c.attention_dropout)
    student = SensorTransformer(cfg)
    with torch.no_grad():
        student.embed = _linear(original.embed, out_idx=idx)
        student.pos.copy_(original.pos[:, :, idx])
        for sb, ob, h, n in zip(student.blocks, original.blocks, heads, neurons):
            rows = _head_rows(sorted(h), c.head_size)
            cols = torch.tensor(sorted(n), dtype=torch.long)
            sb.ln1, sb.ln2 = _layernorm(ob.ln1, idx), _layernorm(ob.ln2, idx)
            # q·k keeps its scale: the kept dimensions carry most of the score; the student is distilled anyway
            sb.query, sb.key, sb.value = (_linear(ob.query, rows, idx), _linear(ob.key, rows, idx),
                                          _linear(ob.value, rows, idx))
            sb.out = _linear(ob.out, idx, rows)
            sb.fc1, sb.fc2 = _linear(ob.fc1, cols, idx), _linear(ob.fc2, idx, cols)
        student.ln_f = _layernorm(original.ln_f, idx)
        student.head = _linear(original.head, in_idx=idx)
    return student


# -------------------------------------------------------------------------------------------- save / load
def save(model: SensorTransformer, out_dir: Path, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({"config": asdict(model.config), **(extra or {})}, indent=1)
                                         + "\n", encoding="utf-8")
    return out_dir


def load(model_dir: Path) -> tuple[SensorTransformer, dict]:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model = SensorTransformer(SensorConfig(**meta.pop("config")))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.eval(), meta


# ------------------------------------------------------------------------------------------ importance
def taylor_importance(model: SensorTransformer, batches, want_hidden: bool = True) -> dict:
    """First-order importance (accumulated |dL/dgate| of the cross-entropy) of every head, FFN neuron and
    residual dimension, as `zinfer_model.importance` computes it for the BERT text model: the same score picks
    the original's slices for the student and the units that pruning removes. Returns {"heads": [L × H],
    "neurons": [L × F], "hidden": [D]}."""
    model.eval()
    gates = {"heads": [torch.ones(b.heads, requires_grad=True) for b in model.blocks],
             "neurons": [torch.ones(b.fc1.out_features, requires_grad=True) for b in model.blocks],
             "hidden": torch.ones(model.config.d_model, requires_grad=want_hidden) if want_hidden else None}
    flat = gates["heads"] + gates["neurons"] + ([gates["hidden"]] if want_hidden else [])
    scores = [torch.zeros_like(g) for g in flat]
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in batches:
            loss = nn.functional.cross_entropy(model(batch.frames, gates), batch.labels, reduction="sum")
            for s, g in zip(scores, torch.autograd.grad(loss, flat)):
                s += g.abs()
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    n_l = len(model.blocks)
    return {"heads": scores[:n_l], "neurons": scores[n_l:2 * n_l], "hidden": scores[2 * n_l] if want_hidden else None}


# -------------------------------------------------------------------------------------------------- ONNX
INPUT_NAME, OUTPUT_NAME = "frames", "logits"


def export_onnx(model: SensorTransformer, path: Path, opset: int = 17) -> Path:
    """fp32 ONNX: input `frames` float32 [batch, window, channels] (batch dynamic), output `logits` [batch, n]."""
    import warnings

    import onnx

    c = model.config
    was_training = model.training
    model.eval()
    example = torch.randn(2, c.window, c.channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model.train(was_training)
    onnx.checker.check_model(str(path))
    return Path(path)
