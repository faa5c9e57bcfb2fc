"""`python -m zinfer_model sensor <step> --recipe FILE [--quick] [--run-dir DIR] [--force] [--threads N]`."""

from __future__ import annotations

import argparse
from pathlib import Path


STEP_HELP = """steps (run one by one, in this order, or all with `recipe`):
  original   train the wider sensor transformer (d_model 128, 4 heads, FFN 256, 4 layers) with cross-entropy
  student    half width (64, 2 heads, FFN 128) cut out of the original by Taylor importance, distilled
  prune      remove whole heads and FFN neurons by Taylor importance, then a recovery fine-tune
  quantize   ONNX export of every stage (input `frames` [batch, 100, 6]), dynamic int8, agreement checks
  evaluate   test-split accuracy / macro-F1 (95% intervals) of every stage; evaluate/models.json for `bench`
  export     models/<name>/: model.onnx, manifest.toml, test_recording*.json, README.md
  recipe     all of the above; completed steps are skipped
  bench      the side-by-side table (its own options follow the word `bench`; see `sensor bench --help`)
  anomaly    a separate model: the conv autoencoder anomaly detector (models/zinfer-watch-anomaly/), one command:
             sensor anomaly --recipe model/recipes/anomaly.toml [--quick] [--export-dir DIR]

Every step writes into <run-dir>/<step>/ with a metrics.json. An interrupted training step resumes from its last
checkpoint when run again with the same --run-dir and recipe."""

MODEL_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "anomaly":
        from .anomaly import main as anomaly_main

        return anomaly_main(argv[1:])
    from .steps import STEPS

    parser = argparse.ArgumentParser(prog="python -m zinfer_model sensor", epilog=STEP_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="The sensor model: a small transformer encoder over six-axis "
                                                 "smartwatch windows (seglearn's watch data set).")
    parser.add_argument("step", choices=STEPS + ["recipe", "bench"])
    parser.add_argument("--recipe", type=Path, default=MODEL_ROOT / "recipes" / "sensor.toml",
                        help="TOML recipe (default: model/recipes/sensor.toml)")
    parser.add_argument("--quick", action="store_true", help="tiny models and data, a few steps per stage (seconds)")
    parser.add_argument("--run-dir", type=Path, help="default: model/runs/<recipe name>[-quick]")
    parser.add_argument("--force", action="store_true", help="redo the step(s) even if complete")
    parser.add_argument("--threads", type=int, help="torch threads (default: the recipe's, 1)")
    parser.add_argument("--export-dir", type=Path,
                        help="export target (default: the recipe's export.out; <run-dir>/export/ with --quick)")
    args = parser.parse_args(argv)

    from .recipe import load_sensor_recipe
    from .steps import SensorRun, run_step

    from ..cli import run_guarded

    def steps() -> None:
        recipe = load_sensor_recipe(args.recipe, args.quick)
        run_dir = args.run_dir or (MODEL_ROOT / "runs" / (recipe["name"] + ("-quick" if args.quick else "")))
        run = SensorRun(recipe, run_dir, force=args.force, export_dir=args.export_dir, threads=args.threads)
        for step in (STEPS if args.step == "recipe" else [args.step]):
            run_step(run, step)

    return run_guarded(steps)
