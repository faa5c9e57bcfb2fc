"""The sensor recipe: defaults, overridden table by table by a TOML file (`model/recipes/sensor.toml`); `--quick`
applies the recipe's `[quick]` table (tiny window sets, a few steps per stage: seconds)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from ..recipe import merge

DEFAULTS: dict = {
    "name": "sensor",
    "seed": 0,
    "threads": 1,
    "data": {
        "dataset": "seglearn-watch",
        "split_seed": 0, "train_fraction": 0.6, "val_fraction": 0.2,   # of the subjects
        "window": 100, "hop": 50, "train_hop": 10,
        "augment_scale": 0.1, "augment_noise": 0.05,
        "train_limit": 0, "val_limit": 0, "test_limit": 0,             # windows; 0 = all (--quick caps them)
    },
    "original": {
        "patch": 10, "d_model": 128, "heads": 4, "head_size": 32, "ffn": 256, "layers": 4,
        "dropout": 0.1, "attention_dropout": 0.0,
        "epochs": 6, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "warmup": 0.1,
    },
    "student": {
        "d_model": 64, "heads": 2, "ffn": 128, "init": "original", "importance_batches": 20,
        "dropout": 0.1,
        "epochs": 10, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "warmup": 0.1,
        "temperature": 2.0, "alpha_kd": 1.0, "alpha_ce": 0.5,
    },
    "prune": {
        "head_sparsity": 0.25, "ffn_sparsity": 0.25, "scope": "global", "importance_batches": 20,
        "epochs": 3, "batch_size": 64, "lr": 3e-4, "weight_decay": 0.01, "warmup": 0.1,
        "temperature": 2.0, "alpha_kd": 1.0, "alpha_ce": 0.5,
    },
    "quantize": {"opset": 17, "per_channel": False, "reduce_range": False, "fp32_tolerance": 1e-4,
                 "min_int8_agreement": 0.97},
    "export": {"name": "zinfer-watch-small", "version": "0.1.0", "out": "models/zinfer-watch-small",
               "recording_samples": 600, "recording_b_samples": 300},
    "quick": {
        "data": {"train_limit": 256, "val_limit": 96, "test_limit": 96},
        "original": {"d_model": 32, "heads": 2, "head_size": 8, "ffn": 64, "layers": 2, "epochs": 1,
                     "max_steps_per_epoch": 4},
        "student": {"d_model": 16, "heads": 1, "ffn": 32, "epochs": 1, "max_steps_per_epoch": 4,
                    "importance_batches": 2},
        "prune": {"epochs": 1, "max_steps_per_epoch": 3, "importance_batches": 2},
        "quantize": {"min_int8_agreement": 0.0},
    },
}


def load_sensor_recipe(path: Path | None, quick: bool = False) -> dict:
    return load_with_defaults(DEFAULTS, path, quick)


def load_with_defaults(defaults: dict, path: Path | None, quick: bool = False) -> dict:
    """`defaults`, overridden by the recipe file at `path`, then (with `quick`) by its own `[quick]` table."""
    recipe = copy.deepcopy(defaults)
    if path is not None:
        with open(path, "rb") as f:
            recipe = merge(recipe, tomllib.load(f))
    quick_over = recipe.pop("quick")
    if quick:
        recipe = merge(recipe, quick_over)
    recipe["quick"] = bool(quick)
    return recipe
