"""BERT classifiers of any width and of uneven per-layer shapes: building, structural surgery, saving, loading.

Every model here is a transformers `BertForSequenceClassification` with eager attention (so attention maps can
be read and ORT's optimizer can fuse the exported graph). Pruning leaves layers with different numbers of heads
and FFN neurons, which a `BertConfig` cannot say; `structure.json` next to the weights records them and
`load_model` rebuilds the modules at those shapes before loading the weights. The attention code reshapes with
`-1` heads and a fixed head size, so narrower q/k/v projections are all a pruned layer needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import BertConfig, BertForSequenceClassification

from .data import LABELS, teacher_dir


def bert_config(*, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                max_position: int = 512, dropout: float = 0.1, attention_dropout: float = 0.1,
                labels: list[str] = LABELS) -> BertConfig:
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=max_position, type_vocab_size=2,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=attention_dropout,
        num_labels=len(labels), pad_token_id=0,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )
    config._attn_implementation = "eager"
    return config


def new_model(config: BertConfig) -> BertForSequenceClassification:
    config._attn_implementation = "eager"
    return BertForSequenceClassification(config)


def load_pretrained_teacher(dropout: float = 0.1, labels: list[str] = LABELS) -> BertForSequenceClassification:
    """all-MiniLM-L6-v2 from the installed package, with a fresh classification head."""
    path = teacher_dir()
    config = BertConfig.from_json_file(str(path / "config.json"))
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.hidden_dropout_prob = dropout
    config.attention_probs_dropout_prob = dropout
    model = new_model(config)
    state = load_file(str(path / "model.safetensors"))
    # the package stores a BertModel: prefix its keys; the pooler is pretrained, the classifier is new
    state = {("bert." + k if not k.startswith("bert.") else k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    assert set(missing) <= {"classifier.weight", "classifier.bias"}, missing
    assert not unexpected, unexpected
    return model


# ------------------------------------------------------------------------------------------------ shapes
def head_size(model: BertForSequenceClassification) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def structure(model: BertForSequenceClassification) -> dict:
    hs = head_size(model)
    layers = model.bert.encoder.layer
    return {
        "hidden": model.config.hidden_size,
        "head_size": hs,
        "heads": [layer.attention.self.query.out_features // hs for layer in layers],
        "intermediate": [layer.intermediate.dense.out_features for layer in layers],
        "vocab": model.bert.embeddings.word_embeddings.num_embeddings,
    }


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_params(model: BertForSequenceClassification) -> int:
    return sum(p.numel() for p in model.bert.encoder.parameters())


def _linear(lin: torch.nn.Linear, out_idx=None, in_idx=None) -> torch.nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _head_rows(heads: list[int], hs: int) -> torch.Tensor:
    return torch.tensor([h * hs + j for h in heads for j in range(hs)], dtype=torch.long)


def _set_heads_attrs(self_attn, n_heads: int, hs: int) -> None:
    self_attn.num_attention_heads = n_heads
    self_attn.all_head_size = n_heads * hs


def prune_layers(model: BertForSequenceClassification, keep_heads: list[list[int]],
                 keep_neurons: list[list[int]]) -> BertForSequenceClassification:
    """Remove whole attention heads and FFN neurons in place (parameter shapes shrink); keeps the given ones."""
    hs = head_size(model)
    for layer, heads, neurons in zip(model.bert.encoder.layer, keep_heads, keep_neurons):
        if not heads:
            raise ValueError("every layer must keep at least one head")
        rows = _head_rows(sorted(heads), hs)
        sa = layer.attention.self
        sa.query, sa.key, sa.value = (_linear(sa.query, rows), _linear(sa.key, rows), _linear(sa.value, rows))
        _set_heads_attrs(sa, len(heads), hs)
        layer.attention.output.dense = _linear(layer.attention.output.dense, in_idx=rows)
        cols = torch.tensor(sorted(neurons), dtype=torch.long)
        layer.intermediate.dense = _linear(layer.intermediate.dense, out_idx=cols)
        layer.output.dense = _linear(layer.output.dense, in_idx=cols)
    return model


def apply_structure(model: BertForSequenceClassification, heads: list[int], intermediate: list[int]):
    """Give a freshly built model the per-layer shapes of a pruned one (weights are loaded afterwards)."""
    current = structure(model)
    if (list(heads), list(intermediate)) == (current["heads"], current["intermediate"]):
        return model
    return prune_layers(model, [list(range(h)) for h in heads], [list(range(n)) for n in intermediate])


def shrink_from_teacher(teacher: BertForSequenceClassification, *, dims: list[int], heads: list[list[int]],
                        neurons: list[list[int]], layers: list[int], dropout: float,
                        attention_dropout: float) -> BertForSequenceClassification:
    """A narrower student whose every weight is a slice of the teacher's.

    `dims`: the residual-stream dimensions kept (embedding width = hidden = len(dims)); `layers`: the teacher
    layers kept, in order; `heads[i]` / `neurons[i]`: the teacher heads / FFN neurons kept in student layer i.
    The student's head size equals the teacher's, so every kept head is a whole teacher head.
    """
    tc = teacher.config
    hs = head_size(teacher)
    n_heads = len(heads[0])
    if any(len(h) != n_heads for h in heads) or any(len(n) != len(neurons[0]) for n in neurons):
        raise ValueError("the student keeps the same number of heads and neurons in every layer")
    if len(dims) != n_heads * hs:
        raise ValueError(f"student hidden {len(dims)} must be heads {n_heads} x teacher head size {hs}")
    config = bert_config(vocab_size=tc.vocab_size, hidden=len(dims), layers=len(layers), heads=n_heads,
                         intermediate=len(neurons[0]), max_position=tc.max_position_embeddings,
                         dropout=dropout, attention_dropout=attention_dropout,
                         labels=[tc.id2label[i] for i in range(tc.num_labels)])
    student = new_model(config)
    d = torch.tensor(dims, dtype=torch.long)
    t, s = teacher.bert, student.bert
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(s.embeddings, name).weight.copy_(getattr(t.embeddings, name).weight[:, d])
        s.embeddings.LayerNorm.weight.copy_(t.embeddings.LayerNorm.weight[d])
        s.embeddings.LayerNorm.bias.copy_(t.embeddings.LayerNorm.bias[d])
        for i, src in enumerate(layers):
            tl, sl = t.encoder.layer[src], s.encoder.layer[i]
            rows = _head_rows(heads[i], hs)
            cols = torch.tensor(neurons[i], dtype=torch.long)
            for name in ("query", "key", "value"):
                getattr(sl.attention.self, name).load_state_dict(
                    _linear(getattr(tl.attention.self, name), rows, d).state_dict())
            sl.attention.output.dense.load_state_dict(_linear(tl.attention.output.dense, d, rows).state_dict())
            sl.intermediate.dense.load_state_dict(_linear(tl.intermediate.dense, cols, d).state_dict())
            sl.output.dense.load_state_dict(_linear(tl.output.dense, d, cols).state_dict())
            for ln_s, ln_t in ((sl.attention.output.LayerNorm, tl.attention.output.LayerNorm),
                               (sl.output.LayerNorm, tl.output.LayerNorm)):
                ln_s.weight.copy_(ln_t.weight[d])
                ln_s.bias.copy_(ln_t.bias[d])
        s.pooler.dense.load_state_dict(_linear(t.pooler.dense, d, d).state_dict())
        student.classifier.load_state_dict(_linear(teacher.classifier, None, d).state_dict())
    return student


def trim_embeddings(model: BertForSequenceClassification, keep_ids: list[int]) -> BertForSequenceClassification:
    """Keep only the word-embedding rows `keep_ids` (new id i = old id keep_ids[i]), in place."""
    emb = model.bert.embeddings.word_embeddings
    idx = torch.tensor(keep_ids, dtype=torch.long)
    new = torch.nn.Embedding(len(keep_ids), emb.embedding_dim, padding_idx=0)
    with torch.no_grad():
        new.weight.copy_(emb.weight[idx])
    model.bert.embeddings.word_embeddings = new
    model.config.vocab_size = len(keep_ids)
    return model


# ------------------------------------------------------------------------------------------- save / load
def save_model(model: BertForSequenceClassification, tokenizer_path: Path | str, out_dir: Path,
               extra: dict | None = None) -> Path:
    """config.json + structure.json + model.safetensors + tokenizer.json in out_dir (written atomically)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(model.config.to_json_string(), encoding="utf-8")
    info = structure(model)
    info.update(extra or {})
    (tmp / "structure.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def load_model(model_dir: Path | str) -> tuple[BertForSequenceClassification, Tokenizer, dict]:
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model in {model_dir}: run the step that makes it first")
    config = BertConfig.from_json_file(str(model_dir / "config.json"))
    info = json.loads((model_dir / "structure.json").read_text(encoding="utf-8"))
    model = new_model(config)
    apply_structure(model, info["heads"], info["intermediate"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    model.eval()
    return model, Tokenizer.from_file(str(model_dir / "tokenizer.json")), info


# ------------------------------------------------------------------------------------------------ export
class LogitsOnly(torch.nn.Module):
    """Takes the three BERT inputs, returns logits; builds the 4-D additive mask itself.

    transformers' own mask builder does not trace to a graph that is valid for every sequence length, so the
    ready 4-D float mask (what eager attention adds to the scores) is passed through as-is.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask[:, None, None, :].to(torch.float32)
        mask = (1.0 - mask) * torch.finfo(torch.float32).min
        return self.model(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids).logits


def run_logits(model, input_ids, attention_mask, **kwargs):
    """Forward with the 4-D mask built as in the export (identical numerics to the ONNX graph)."""
    mask = attention_mask[:, None, None, :].to(torch.float32)
    mask = (1.0 - mask) * torch.finfo(torch.float32).min
    return model(input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids), **kwargs)
