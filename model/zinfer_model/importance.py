"""First-order (Taylor) importance of attention heads, FFN neurons and residual-stream dimensions.

A mask of ones multiplies each unit's output (a head's context vector, a neuron's activation, a dimension of the
embedding and of every LayerNorm output); the importance of a unit is the accumulated |dL/dmask| over a few
batches, i.e. the first-order estimate of how much the loss changes when the unit is removed (Michel et al.,
2019; CoFi's hidden-dimension mask). The same scores pick the teacher slices that initialise the student (shrink)
and the heads/neurons that pruning removes.
"""

from __future__ import annotations

import torch

from .modeling import head_size, run_logits


def taylor_importance(model, batch_iter, *, id_map: torch.Tensor | None = None, want_hidden: bool = True) -> dict:
    """Return {"heads": [L x H], "neurons": [L x F], "hidden": [D]} tensors of importance (higher = keep)."""
    model.eval()
    hs = head_size(model)
    layers = model.bert.encoder.layer
    head_masks = [torch.ones(layer.attention.self.query.out_features // hs, requires_grad=True) for layer in layers]
    ffn_masks = [torch.ones(layer.intermediate.dense.out_features, requires_grad=True) for layer in layers]
    hidden_mask = torch.ones(model.config.hidden_size, requires_grad=True)
    scores = {"heads": [torch.zeros_like(m) for m in head_masks],
              "neurons": [torch.zeros_like(m) for m in ffn_masks],
              "hidden": torch.zeros_like(hidden_mask)}
    handles = []

    def head_hook(mask):
        def hook(_module, _inputs, output):
            ctx = output[0]
            b, t, _ = ctx.shape
            ctx = (ctx.view(b, t, -1, hs) * mask[None, None, :, None]).view(b, t, -1)
            return (ctx,) + tuple(output[1:])
        return hook

    def mul_hook(mask):
        def hook(_module, _inputs, output):
            return output * mask
        return hook

    for layer, hm, fm in zip(layers, head_masks, ffn_masks):
        handles.append(layer.attention.self.register_forward_hook(head_hook(hm)))
        handles.append(layer.intermediate.register_forward_hook(mul_hook(fm)))
        if want_hidden:
            handles.append(layer.attention.output.register_forward_hook(mul_hook(hidden_mask)))
            handles.append(layer.output.register_forward_hook(mul_hook(hidden_mask)))
    if want_hidden:
        handles.append(model.bert.embeddings.register_forward_hook(mul_hook(hidden_mask)))
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in batch_iter:
            ids = batch.input_ids if id_map is None else id_map[batch.input_ids]
            logits = run_logits(model, ids, batch.attention_mask).logits
            loss = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
            masks = head_masks + ffn_masks + ([hidden_mask] if want_hidden else [])
            grads = torch.autograd.grad(loss, masks, allow_unused=True)
            for i, g in enumerate(grads):
                if g is None:
                    continue
                if i < len(head_masks):
                    scores["heads"][i] += g.abs()
                elif i < len(head_masks) + len(ffn_masks):
                    scores["neurons"][i - len(head_masks)] += g.abs()
                else:
                    scores["hidden"] += g.abs()
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return {k: ([s.detach() for s in v] if isinstance(v, list) else v.detach()) for k, v in scores.items()}


def top_k(score: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores, in ascending index order (ties broken by index: deterministic)."""
    order = sorted(range(len(score)), key=lambda i: (-float(score[i]), i))
    return sorted(order[:k])


def global_keep(scores: list[torch.Tensor], sparsity: float, min_keep: int = 1, multiple: int = 1) -> list[list[int]]:
    """Keep the (1 - sparsity) most important units over all layers, each layer's scores normalised by its L2
    norm (so layers compete fairly), at least `min_keep` per layer, per-layer counts rounded to `multiple`."""
    normed = [s / (s.norm() + 1e-12) for s in scores]
    total = sum(len(s) for s in scores)
    n_keep = max(len(scores) * min_keep, round(total * (1.0 - sparsity)))
    flat = sorted(((float(v), li, ui) for li, s in enumerate(normed) for ui, v in enumerate(s)),
                  key=lambda x: (-x[0], x[1], x[2]))
    counts = [0] * len(scores)
    for _, li, _ in flat[:n_keep]:
        counts[li] += 1
    counts = [min(len(s), max(min_keep, int(round(c / multiple)) * multiple)) for c, s in zip(counts, scores)]
    return [top_k(s, c) for s, c in zip(scores, counts)]


def layer_keep(scores: list[torch.Tensor], sparsity: float, min_keep: int = 1) -> list[list[int]]:
    """Keep the same fraction (1 - sparsity) in every layer."""
    return [top_k(s, max(min_keep, round(len(s) * (1.0 - sparsity)))) for s in scores]
