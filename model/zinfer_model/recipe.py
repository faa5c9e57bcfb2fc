"""Recipes: a TOML file overriding the defaults below, table by table; `--quick` then applies the recipe's
`[quick]` table (and caps every loop) so that the whole recipe runs in seconds."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path

DEFAULTS: dict = {
    "name": "default",
    "seed": 0,
    "seeds": [],  # student seeds (shrink … evaluate once each, in <run-dir>/seed-<n>/); [] = just `seed`
    "threads": 2,
    "max_length": 128,
    "data": {"dataset": "rotten_tomatoes", "split_seed": 0, "train_limit": 0, "val_limit": 0, "test_limit": 0},
    "teacher": {
        "from_run": "",  # another run directory (beside this one) whose teacher this recipe shares
        "init": "pretrained",  # "pretrained" (all-MiniLM-L6-v2 from its package) or "random" (tests)
        "hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536,  # only for init = "random"
        "epochs": 3, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "warmup": 0.1, "dropout": 0.1,
    },
    "shrink": {
        "hidden": 192, "heads": 6, "intermediate": 768,
        "layers": [],  # teacher layers the student keeps; [] = all
        "init": "teacher",  # "teacher" (importance-selected slices) or "random"
        "importance_batches": 40,
        "epochs": 10, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.01, "warmup": 0.1,
        "dropout": 0.1, "attention_dropout": 0.0,
        "temperature": 2.0, "alpha_kd": 1.0, "alpha_ce": 0.5, "alpha_hidden": 1.0, "alpha_attention": 1.0,
        "augment": 0.5, "augment_token_prob": 0.15,
    },
    "vocab": {"min_count": 1, "keep_whole_words": False, "check_texts": 1000},
    "prune": {
        "head_sparsity": 0.25, "ffn_sparsity": 0.25, "scope": "global", "importance_batches": 40,
        "epochs": 2, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "warmup": 0.1,
        "temperature": 2.0, "alpha_kd": 1.0, "alpha_ce": 0.5,
    },
    "quantize": {"opset": 17, "optimize": True, "per_channel": True, "reduce_range": False,
                 "fp32_tolerance": 1e-4, "optimized_tolerance": 1e-3, "min_int8_agreement": 0.97},
    "evaluate": {"latency_seq": 64, "latency_runs": 50},
    "export": {"name": "zinfer-sentiment-small", "version": "0.1.0", "out": "models/zinfer-sentiment-small",
               "role": "zinfer's default model"},
    "quick": {
        "data": {"train_limit": 256, "val_limit": 96, "test_limit": 96},
        "teacher": {"epochs": 1, "max_steps_per_epoch": 4},
        "shrink": {"epochs": 1, "max_steps_per_epoch": 4, "importance_batches": 2},
        "prune": {"epochs": 1, "max_steps_per_epoch": 3, "importance_batches": 2},
        "vocab": {"check_texts": 100},
        "evaluate": {"latency_runs": 5},
    },
}


def merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in out and key not in ("max_steps_per_epoch", "checkpoint_every"):
            raise KeyError(f"unknown recipe key {where}{key!r}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_recipe(path: Path | None, quick: bool = False) -> dict:
    recipe = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(path, "rb") as f:
            recipe = merge(recipe, tomllib.load(f))
    if quick:
        quick_over = recipe.pop("quick")
        recipe = merge(recipe, quick_over)
        recipe["quick"] = True
    else:
        recipe.pop("quick")
        recipe["quick"] = False
    return recipe


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
