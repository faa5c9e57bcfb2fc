"""Reference architectures for the efficiency report: BERT-base, DistilBERT and MobileBERT with random weights.

Their resource use (parameters, file size, memory, latency) depends on the architecture and the runtime, not on
the weight values, so each is built from its ``transformers`` config class with the standard published shapes
and seeded random weights: nothing is downloaded. Each is exported to ONNX the way the toolkit exports its own
models (legacy exporter, opset 17, eager attention, a 4-D additive mask built by the wrapper), optionally run
through ONNX Runtime's transformer optimizer (fusions), checked against PyTorch, and quantized to int8 with
dynamic quantization. The files are cached under a folder keyed by a hash of the config and the package versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

BUILDER_VERSION = 1  # bump when the export/optimize/quantize recipe changes: invalidates the cache

# The published shapes, spelled out rather than taken from library defaults (which may change).
STANDARD: dict[str, dict] = {
    "bert-base": {
        "label": "BERT-base",
        "family": "bert",
        "config": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512,
                       type_vocab_size=2),
        "about": "bert-base-uncased shapes: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30,522",
    },
    "distilbert": {
        "label": "DistilBERT",
        "family": "distilbert",
        "config": dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, activation="gelu",
                       max_position_embeddings=512, sinusoidal_pos_embds=False),
        "about": "distilbert-base-uncased shapes: 6 layers, hidden 768, 12 heads, FFN 3072, vocab 30,522, "
                 "no token_type_ids",
    },
    "mobilebert": {
        "label": "MobileBERT",
        "family": "mobilebert",
        "config": dict(vocab_size=30522, embedding_size=128, hidden_size=512, num_hidden_layers=24,
                       num_attention_heads=4, intermediate_size=512, hidden_act="relu", true_hidden_size=128,
                       intra_bottleneck_size=128, use_bottleneck=True, use_bottleneck_attention=False,
                       key_query_shared_bottleneck=True, num_feedforward_networks=4, normalization_type="no_norm",
                       trigram_input=True, classifier_activation=False, max_position_embeddings=512,
                       type_vocab_size=2),
        "about": "google/mobilebert-uncased shapes: 24 layers, hidden 512 with bottleneck 128, 4 heads, "
                 "4 stacked FFNs of 512, embedding 128 (trigram input), NoNorm, vocab 30,522",
    },
}

# The same three families at toy sizes, for the tests (seconds to export, same graph structure).
TINY: dict[str, dict] = {
    "bert-base": {
        "label": "BERT-base (tiny test shape)",
        "family": "bert",
        "config": dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, hidden_act="gelu", max_position_embeddings=256, type_vocab_size=2),
        "about": "tiny BERT for tests",
    },
    "distilbert": {
        "label": "DistilBERT (tiny test shape)",
        "family": "distilbert",
        "config": dict(vocab_size=200, dim=32, n_layers=1, n_heads=4, hidden_dim=64, activation="gelu",
                       max_position_embeddings=256, sinusoidal_pos_embds=False),
        "about": "tiny DistilBERT for tests",
    },
    "mobilebert": {
        "label": "MobileBERT (tiny test shape)",
        "family": "mobilebert",
        "config": dict(vocab_size=200, embedding_size=16, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, hidden_act="relu", true_hidden_size=16,
                       intra_bottleneck_size=16, use_bottleneck=True, use_bottleneck_attention=False,
                       key_query_shared_bottleneck=True, num_feedforward_networks=2, normalization_type="no_norm",
                       trigram_input=True, classifier_activation=False, max_position_embeddings=256,
                       type_vocab_size=2),
        "about": "tiny MobileBERT for tests",
    },
}

REFERENCE_SETS = {"standard": STANDARD, "tiny": TINY}


@dataclass
class ReferenceModel:
    key: str                 # "bert-base", "distilbert", "mobilebert"
    label: str               # "BERT-base"
    precision: str           # "fp32" | "int8"
    path: Path
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.label} {self.precision}"


def _config_class(family: str):
    from transformers import BertConfig, DistilBertConfig, MobileBertConfig

    return {"bert": BertConfig, "distilbert": DistilBertConfig, "mobilebert": MobileBertConfig}[family]


def make_config(spec: dict, num_labels: int = 2):
    """The transformers config of a reference (eager attention, so that the exported graph can be fused)."""
    cfg = _config_class(spec["family"])(**spec["config"], num_labels=num_labels)
    cfg._attn_implementation = "eager"
    return cfg


def build_model(spec: dict, num_labels: int = 2, seed: int = 0, device: str | None = None):
    """A randomly initialised (seeded) sequence classifier of the reference architecture, in eval mode.

    ``device="meta"`` builds it without allocating weights (for counting parameters and checking shapes)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = make_config(spec, num_labels)
    if device == "meta":
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    else:
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
        # The default init sets biases to 0 and norms to 1: identical tensors that the exporter stores once.
        # Noise on every parameter makes each one distinct, as in a trained model (same file size, same count).
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def attention_shape(spec: dict) -> tuple[int, int]:
    """(heads, attention width) of a reference, as the transformer optimizer wants them."""
    c = spec["config"]
    if spec["family"] == "distilbert":
        return c["n_heads"], c["dim"]
    if spec["family"] == "mobilebert":
        return c["num_attention_heads"], c["true_hidden_size"]
    return c["num_attention_heads"], c["hidden_size"]


def uses_token_type_ids(spec: dict) -> bool:
    return spec["family"] != "distilbert"


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def cache_key(key: str, spec: dict, num_labels: int, seed: int, optimize: bool) -> str:
    blob = json.dumps({"key": key, "family": spec["family"], "config": spec["config"], "num_labels": num_labels,
                       "seed": seed, "optimize": optimize, "builder": BUILDER_VERSION, "versions": _versions()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _wrapper(model, with_token_types: bool):
    import torch

    class Logits(torch.nn.Module):
        """Builds the 4-D additive mask itself (what eager attention consumes), returns only the logits.

        transformers' own mask builder does not trace to a graph that is valid for every sequence length."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def _mask(self, attention_mask):
            # Written as Unsqueeze-Unsqueeze-Expand-Cast-Sub-Cast-Where, a pattern ONNX Runtime's transformer
            # optimizer recognises as an attention mask (the plain `(1 - m) * min` form is not matched when the
            # scores are scaled by a Mul, as transformers 5 does), so that Attention can be fused.
            b, s = attention_mask.shape
            expanded = attention_mask[:, None, None, :].expand(b, 1, s, s).to(torch.float32)
            inverted = 1.0 - expanded
            return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(torch.float32).min)

        if with_token_types:
            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(input_ids=input_ids, attention_mask=self._mask(attention_mask),
                                  token_type_ids=token_type_ids).logits
        else:
            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=self._mask(attention_mask)).logits

    return Logits(model).eval()


def export_onnx(model, path: Path, with_token_types: bool = True) -> None:
    """Legacy exporter, opset 17, dynamic batch and sequence axes; inputs input_ids/attention_mask(/token_type_ids)."""
    import torch

    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 3], [2, 16, 17, 18, 3, 0, 0, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    args = (ids, mask) + ((torch.zeros_like(ids),) if with_token_types else ())
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and constant-folding chatter; the result is checked instead
        torch.onnx.export(_wrapper(model, with_token_types), args, str(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False,
                          do_constant_folding=True)


def _check_cases(vocab: int, with_token_types: bool):
    """(batch, length, padded) inputs that exercise other shapes than the export's."""
    import numpy as np

    rng = np.random.default_rng(1)
    cases = []
    for batch, seq, pad in ((1, 16, 0), (3, 37, 9), (1, 128, 0)):
        ids = rng.integers(5, min(vocab, 1000), size=(batch, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        if pad:
            mask[-1, seq - pad:] = 0
            ids[-1, seq - pad:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask}
        if with_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        cases.append(feeds)
    return cases


def max_diff_vs_torch(model, onnx_path: Path, with_token_types: bool, vocab: int) -> float:
    """Largest |logit difference| between ONNX Runtime and PyTorch on padded and unpadded inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    wrapper = _wrapper(model, with_token_types)
    worst = 0.0
    for feeds in _check_cases(vocab, with_token_types):
        with torch.no_grad():
            ref = wrapper(*[torch.from_numpy(feeds[k]) for k in feeds]).numpy()
        got = sess.run(["logits"], feeds)[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


@contextlib.contextmanager
def _quiet():
    """Silence ONNX Runtime's Python tools (their shape inference logs whole protobufs)."""
    sink = io.StringIO()
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(level)


def _optimize(src: Path, dst: Path, heads: int, width: int) -> dict:
    """ONNX Runtime's transformer optimizer (model type bert; Python fusions only, no hardware-specific passes)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=width, opt_level=0)
        opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _quantize(src: Path, dst: Path, optimized: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if optimized else None
    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False, extra_options=extra)


def build_reference(key: str, spec: dict, cache_dir: Path, *, num_labels: int = 2, seed: int = 0,
                    optimize: bool = True, log=print) -> list[ReferenceModel]:
    """fp32 and int8 ONNX files of one reference architecture, built once and cached."""
    ck = cache_key(key, spec, num_labels, seed, optimize)
    folder = Path(cache_dir) / f"{key}-{ck}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        ignore = cache_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# built by zinfer_model.bench: large, regenerated on demand\n*\n")
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        try:
            meta = _build_into(key, spec, tmp, num_labels=num_labels, seed=seed, optimize=optimize, log=log)
            meta["cache_key"] = ck
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"reference {spec['label']}: cached in {folder}")
    meta = json.loads(meta_path.read_text())
    return [ReferenceModel(key, spec["label"], p, folder / f"{p}.onnx", meta) for p in ("fp32", "int8")]


def _build_into(key: str, spec: dict, out: Path, *, num_labels: int, seed: int, optimize: bool, log) -> dict:
    t0 = time.time()
    tt = uses_token_type_ids(spec)
    model = build_model(spec, num_labels, seed)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = spec["config"]["vocab_size"]
    log(f"reference {spec['label']}: {n_params:,} parameters (random weights, seed {seed}); exporting to ONNX")
    raw = out / "raw.onnx"
    export_onnx(model, raw, with_token_types=tt)
    diff_raw = max_diff_vs_torch(model, raw, tt, vocab)
    meta = {"key": key, "label": spec["label"], "family": spec["family"], "config": spec["config"],
            "about": spec["about"], "num_labels": num_labels, "seed": seed, "torch_params": n_params,
            "versions": _versions(), "export_max_abs_diff": diff_raw, "optimized": False, "fusions": {}}
    if diff_raw > 1e-3:
        raise RuntimeError(f"{spec['label']}: exported ONNX differs from PyTorch by {diff_raw}")
    fp32 = out / "fp32.onnx"
    if optimize:
        try:
            fused = out / "fused.onnx"
            fusions = _optimize(raw, fused, *attention_shape(spec))
            diff = max_diff_vs_torch(model, fused, tt, vocab)
            if diff <= 1e-3:
                os.replace(fused, fp32)
                meta.update(optimized=True, fusions=fusions, optimized_max_abs_diff=diff)
            else:
                log(f"reference {spec['label']}: optimized graph differs by {diff}; keeping the unfused export")
                meta["optimize_error"] = f"max abs diff {diff}"
        except Exception as e:  # noqa: BLE001 -- the optimizer is best effort; the plain export is still valid
            log(f"reference {spec['label']}: transformer optimizer failed ({e}); keeping the unfused export")
            meta["optimize_error"] = repr(e)
    if not fp32.exists():
        os.replace(raw, fp32)
    raw.unlink(missing_ok=True)
    log(f"reference {spec['label']}: quantizing to int8 (dynamic)")
    _quantize(fp32, out / "int8.onnx", meta["optimized"])
    meta["int8_max_abs_diff_vs_torch"] = max_diff_vs_torch(model, out / "int8.onnx", tt, vocab)
    meta["build_s"] = round(time.time() - t0, 1)
    for f in out.glob("*.onnx.data"):
        f.unlink()
    return meta


def build_references(names: list[str], reference_set: str, cache_dir: Path, *, optimize: bool = True,
                     log=print) -> list[ReferenceModel]:
    specs = REFERENCE_SETS[reference_set]
    models: list[ReferenceModel] = []
    for key in names:
        models.extend(build_reference(key, specs[key], cache_dir, optimize=optimize, log=log))
    return models
