"""Command line: `python -m zinfer_model <step> --recipe FILE [--quick] [--run-dir DIR] [--force]`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .data import MissingPackage

STEP_HELP = """steps (run one by one, in this order, or all with `recipe`):
  teacher         fine-tune all-MiniLM-L6-v2 (the original model) on Rotten Tomatoes
  shrink          build the half-width student from the teacher and distil it
  vocab           trim the student's embedding table and tokenizer.json to the training corpus
  prune           remove whole heads and FFN neurons by importance, then a recovery fine-tune
  quantize        ONNX export, ORT optimizer fusions, dynamic int8 quantization, agreement checks
  evaluate        test-split accuracy/macro-F1 of every stage; ONNX vs PyTorch agreement
  select          with `seeds`: the student seed to ship, by validation accuracy only (test mean ± spread kept)
  export-shipped  write models/<name>/ (model.onnx, tokenizer.json, manifest.toml, README.md, predictions)
  recipe          all of the above; completed steps are skipped
  bench           the efficiency report (zinfer_model.bench; its own options follow)
  ladder-models   the model ladder's input for `bench`: ladder-models --run model/runs/small
                  --package models/zinfer-sentiment-small --out FILE (the rung's chosen seed beside the default)
  golden          golden inputs for zinferd's drift guard, for an already shipped text package:
                  golden --package models/<name> [--predictions FILE]   (export-shipped writes them itself)
  unfuse          a shipped text package's SkipLayerNormalization nodes as Add + LayerNormalization (faster on
                  ONNX Runtime's CPU kernels; `quantize` does it for new models): unfuse --package models/<name>

The sensor model (a transformer over six-axis smartwatch windows) has its own steps:
  python -m zinfer_model sensor --help

Every step writes into <run-dir>/<step>/ with a metrics.json. An interrupted step resumes from its last
checkpoint when run again with the same --run-dir and recipe."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        if importlib.util.find_spec("zinfer_model.bench") is None:
            print("bench: the efficiency report (zinfer_model.bench) is not available in this checkout",
                  file=sys.stderr)
            return 2
        from . import bench  # type: ignore[attr-defined]

        return int(bench.main(argv[1:]) or 0)

    if argv and argv[0] == "golden":
        return golden_main(argv[1:])

    if argv and argv[0] == "unfuse":
        return unfuse_main(argv[1:])

    if argv and argv[0] == "ladder-models":
        return ladder_main(argv[1:])

    if argv and argv[0] == "sensor":  # the sensor model's recipe and table (zinfer_model.sensor)
        from .sensor.cli import main as sensor_main

        return int(sensor_main(argv[1:]) or 0)

    from .steps import STEPS

    parser = argparse.ArgumentParser(prog="python -m zinfer_model", description=__doc__, epilog=STEP_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=STEPS + ["recipe", "bench"])
    parser.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "default.toml",
                        help="TOML recipe (default: model/recipes/default.toml)")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps per stage (seconds)")
    parser.add_argument("--run-dir", type=Path, help="default: model/runs/<recipe name>[-quick]")
    parser.add_argument("--force", action="store_true", help="redo the step(s) even if complete")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: the recipe's; not part of the recipe's fingerprint)")
    parser.add_argument("--export-dir", type=Path,
                        help="export-shipped target (default: the recipe's export.out; <run-dir>/export/ with --quick)")
    args = parser.parse_args(argv)

    from .recipe import load_recipe
    from .steps import Run, run_recipe_step

    def steps() -> None:
        recipe = load_recipe(args.recipe, args.quick)
        run_dir = args.run_dir or (Path(__file__).resolve().parents[1] / "runs" /
                                   (recipe["name"] + ("-quick" if args.quick else "")))
        run = Run(recipe, run_dir, force=args.force, export_dir=args.export_dir, threads=args.threads)
        for step in (STEPS if args.step == "recipe" else [args.step]):
            run_recipe_step(run, step)

    return run_guarded(steps)


def golden_main(argv: list[str]) -> int:
    """Writes golden.json and the manifest's [golden] table into a shipped text package, from the fp32
    probabilities its predictions file recorded."""
    import json
    import tomllib

    from .golden import from_predictions

    parser = argparse.ArgumentParser(prog="python -m zinfer_model golden", description=golden_main.__doc__)
    parser.add_argument("--package", type=Path, required=True, help="the package folder (models/<name>)")
    parser.add_argument("--predictions", type=Path,
                        help="JSON lines with `text` and fp32 `probs` (default: <package>/test_predictions.jsonl)")
    args = parser.parse_args(argv)
    manifest = tomllib.loads((args.package / "manifest.toml").read_text(encoding="utf-8"))
    predictions = args.predictions or args.package / "test_predictions.jsonl"
    result = from_predictions(args.package, predictions, int(manifest.get("max_length", 128)))
    print(json.dumps(result, indent=1))
    return 0


def unfuse_main(argv: list[str]) -> int:
    """Rewrites a shipped text package's model.onnx with its SkipLayerNormalization nodes unfused (see
    onnx_tools.unfuse_skip_layer_norm) and its manifest's sha256 to match, after checking on every text of its
    predictions file that the rewritten model answers as the shipped one did (batch 1, as zinferd runs a lone
    text), and the predictions file's `int8_probs` to the rewritten model's; the package is left as it was if
    not."""
    import hashlib
    import json
    import re
    import tomllib

    import numpy as np

    from .golden import compare, text_probs
    from .onnx_tools import unfuse_skip_layer_norm

    parser = argparse.ArgumentParser(prog="python -m zinfer_model unfuse", description=unfuse_main.__doc__)
    parser.add_argument("--package", type=Path, required=True, help="the package folder (models/<name>)")
    args = parser.parse_args(argv)
    package = args.package
    manifest_path = package / "manifest.toml"
    manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    model = package / manifest.get("model", "model.onnx")
    rows = [json.loads(line) for line in (package / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    texts, max_length = [row["text"] for row in rows], int(manifest.get("max_length", 128))
    before = text_probs(package, texts, max_length)
    original = model.read_bytes()
    rewritten = unfuse_skip_layer_norm(model, model)
    if rewritten == 0:
        print(f"{model}: no SkipLayerNormalization node; nothing to do")
        return 0
    after = text_probs(package, texts, max_length)
    result = compare(after, before)
    labels = [manifest["labels"].index(row["label"]) for row in rows]
    accuracy = {name: float((probs.argmax(axis=1) == np.asarray(labels)).mean()) for name, probs in
                (("before", before), ("after", after))}
    print(json.dumps({"rewritten": rewritten, "texts": len(texts), "after_vs_before": result,
                      "test_accuracy": accuracy}, indent=1))
    # Float rounding only, which dynamic quantisation may carry into an activation's int8 rounding: no flipped answer,
    # and no probability moved by more than the int8 tolerance zinferd's batching tests allow for padding (0.05).
    if result["agreement"] < 1.0 or result["max_deviation"] > 0.05:
        model.write_bytes(original)
        print("error: the rewritten model answers differently; the package is left as it was", file=sys.stderr)
        return 1
    # The predictions file records what model.onnx answers: the rewritten file's probabilities now.
    for row, probs in zip(rows, after):
        row["int8_probs"] = [float(p) for p in probs]
    (package / "test_predictions.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = manifest_path.read_text(encoding="utf-8")
    manifest_path.write_text(re.sub(r'(?m)^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', text), encoding="utf-8")
    print(f"{model}: {rewritten} nodes unfused; manifest sha256 {digest}")
    return 0


def ladder_main(argv: list[str]) -> int:
    """Writes the bench's models.json for the model ladder (zinfer_model.ladder)."""
    from .ladder import ladder_models

    parser = argparse.ArgumentParser(prog="python -m zinfer_model ladder-models", description=ladder_main.__doc__)
    parser.add_argument("--run", type=Path, required=True, help="the smaller rung's run directory (after select)")
    parser.add_argument("--package", type=Path, required=True, help="the shipped default rung (models/<name>)")
    parser.add_argument("--out", type=Path, required=True, help="the models.json to write")
    args = parser.parse_args(argv)
    print(ladder_models(args.run, args.package, args.out))
    return 0


def run_guarded(work) -> int:
    """Runs a recipe's steps; a missing package or Ctrl-C becomes a message and an exit code, not a traceback."""
    try:
        work()
    except MissingPackage as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
