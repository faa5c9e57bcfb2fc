"""``bench``: the efficiency report of zinfer's models against BERT-base, DistilBERT and MobileBERT.

    python -m zinfer_model bench [--models models.json] [--out DIR] [--quick] [options]
    python -m zinfer_model.bench  [same options]

One run on one machine and one ONNX Runtime measures every model in a fresh process per intra-op thread count
(parameters, file size, peak RSS and peak RSS minus the harness's floor, median/p95 latency at batch 1 for
several sequence lengths, throughput at batch 8) and writes ``report.md``, ``report.json`` and ``report.png``
into the output folder, with ratios against the teacher and BERT-base and the issue's targets marked met or
missed. The project's own models come from a JSON file (format: :mod:`zinfer_model.bench.entries`); the
reference models are built with random weights and cached (:mod:`zinfer_model.bench.reference`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from .entries import EntryError, ModelEntry, load_models_json, parse_models, write_models_json

__all__ = ["main", "ModelEntry", "load_models_json", "parse_models", "write_models_json", "EntryError",
           "default_paths"]

REFERENCE_KEYS = ("bert-base", "distilbert", "mobilebert")


def default_paths() -> tuple[Path, Path]:
    """(output folder, reference cache): under model/runs/ in a checkout, else under ./runs/."""
    model_root = Path(__file__).resolve().parents[2]
    runs = model_root / "runs" if (model_root / "zinfer_model").is_dir() and (
        (model_root / "pyproject.toml").exists() or (model_root / "tests").is_dir()) else Path.cwd() / "runs"
    return runs / "bench", runs / "bench-cache"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def build_parser(prog: str = "python -m zinfer_model bench") -> argparse.ArgumentParser:
    out_default, cache_default = default_paths()
    p = argparse.ArgumentParser(
        prog=prog, description="Efficiency report: the project's models side by side with BERT-base, DistilBERT "
                               "and MobileBERT (random weights) on this machine's ONNX Runtime.")
    p.add_argument("--models", type=Path, help="JSON list of the project's models (see zinfer_model.bench.entries)")
    p.add_argument("--out", type=Path, default=out_default, help=f"output folder (default {out_default})")
    p.add_argument("--quick", action="store_true", help="short timings (seconds per model); not for publication")
    p.add_argument("--references", choices=("standard", "tiny", "none"), default="standard",
                   help="reference architectures: published shapes (default), toy shapes (tests) or none")
    p.add_argument("--reference", action="append", choices=REFERENCE_KEYS, dest="reference_keys",
                   help="only this reference (repeatable; default: all three)")
    p.add_argument("--no-optimize-references", action="store_true",
                   help="skip ONNX Runtime's transformer optimizer (fusions) for the references")
    p.add_argument("--cache", type=Path, default=cache_default,
                   help=f"folder of the built reference models (default {cache_default})")
    p.add_argument("--threads", type=_csv_ints, default=None, help="intra-op thread counts (default 1,2)")
    p.add_argument("--seq-lengths", type=_csv_ints, default=None, help="batch-1 lengths (default 16,64,128)")
    p.add_argument("--batch", type=int, default=None, help="throughput batch size (default 8; 0 skips)")
    p.add_argument("--batch-seq", type=int, default=None, help="throughput sequence length (default 64)")
    p.add_argument("--min-time", type=float, default=None, help="seconds each timed case runs at least")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure every model this many times, interleaved, keeping each case's best round "
                        "(default 2; 1 with --quick)")
    p.add_argument("--resume", action="store_true",
                   help="reuse measurements an interrupted run saved in OUT/raw/ (same model file and settings)")
    p.add_argument("--title", default=None, help="report title (default: the models file's title)")
    return p


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _environment() -> dict:
    import numpy
    import onnxruntime

    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Model")) and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
            if f in flags]
    return {
        "cpu_model": cpu, "cpu_simd": ", ".join(simd) or "unknown", "logical_cpus": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
        "load_before": _loadavg(),
    }


def _loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def measure_rows(rows: list[dict], settings: measure.Settings, threads: list[int], ort_version: str,
                 raw_dir: Path | None, resume: bool) -> dict:
    """Measures the harness's memory floor, then every row at every thread count, `settings.rounds` times
    interleaved, into each row's `runs`; returns the floor. A row needs `name`, `path`, `sha256`, and `vocab_size`
    when its inputs are token ids (None for float inputs)."""
    _log(f"memory floor of the harness ({settings.floor_runs} process(es))")
    floor = measure.measure_floor(settings)
    with tempfile.TemporaryDirectory() as tmp:
        floor["empty_session_peak_rss"] = measure.measure_empty_session(settings, Path(tmp))
    _log(f"floor {floor['peak_rss'] / 2**20:.1f} MiB; with an empty session "
         f"{floor['empty_session_peak_rss'] / 2**20:.1f} MiB")
    jobs = [(k, measure.Job(r["name"], Path(r["path"]), t, r.get("vocab_size"),
                            measure.job_key(r["sha256"], t, settings, ort_version, k)))
            for k in range(settings.rounds) for r in rows for t in threads]
    bar = _progress(len(jobs))
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for k, job in jobs:
            round_txt = f", round {k + 1}/{settings.rounds}" if settings.rounds > 1 else ""
            bar.set_description(f"{job.name}, {job.threads} thr{round_txt}")
            results.setdefault((job.name, job.threads), []).append(measure.run_job(job, settings, raw_dir, resume))
            bar.update(1)
    finally:
        bar.close()
    for (name, t), res in results.items():
        next(r for r in rows if r["name"] == name)["runs"][str(t)] = measure.merge_rounds(res)
    return floor


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = 0

            def set_description(self, d):
                _log(f"[{self.n + 1}/{total}] {d}")

            def update(self, k=1):
                self.n += k

            def close(self):
                pass

        return Plain()


def run(args: argparse.Namespace, command: str) -> dict:
    """The whole report; returns the JSON document (also written to args.out)."""
    from . import measure, onnxinfo, report

    settings = measure.Settings.quick() if args.quick else measure.Settings()
    if args.threads:
        settings.threads = tuple(args.threads)
    if args.seq_lengths:
        settings.seq_lengths = tuple(args.seq_lengths)
    if args.batch is not None:
        settings.batch = args.batch
    if args.batch_seq is not None:
        settings.batch_seq = args.batch_seq
    if args.rounds is not None:
        settings.rounds = max(1, args.rounds)
    if args.min_time is not None:
        settings.min_s = args.min_time
    threads, seqs = list(settings.threads), list(settings.seq_lengths)

    entries, meta = (load_models_json(args.models) if args.models else ([], {}))
    title = args.title or meta.get("title") or "zinfer efficiency report"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    env = _environment()

    # ---- models: the project's, then the references
    models: list[dict] = []
    for e in entries:
        models.append({"name": e.name, "role": e.role, "path": Path(e.onnx), "accuracy": e.accuracy,
                       "accuracy_ci95": e.accuracy_ci95, "macro_f1": e.macro_f1, "notes": e.notes,
                       "given_params": e.params, "given_vocab": e.vocab_size, "extra": e.extra})
    refs_meta = []
    if args.references != "none":
        from . import reference

        keys = args.reference_keys or list(REFERENCE_KEYS)
        keys = [k for k in REFERENCE_KEYS if k in keys]
        _log(f"reference models ({args.references} shapes) in {args.cache}")
        for ref in reference.build_references(keys, args.references, args.cache,
                                              optimize=not args.no_optimize_references, log=_log):
            refs_meta.append(ref.meta)
            models.append({"name": ref.name, "role": "reference", "path": ref.path, "accuracy": None,
                           "accuracy_ci95": None, "macro_f1": None, "notes": None, "given_params": None,
                           "given_vocab": None, "extra": {},
                           "reference": {"key": ref.key, "label": ref.label, "about": ref.meta["about"],
                                         "optimized": ref.meta["optimized"], "fusions": ref.meta["fusions"],
                                         "torch_params": ref.meta["torch_params"],
                                         "export_max_abs_diff": ref.meta["export_max_abs_diff"],
                                         "int8_max_abs_diff_vs_torch": ref.meta["int8_max_abs_diff_vs_torch"],
                                         "cache_key": ref.meta["cache_key"]}})
    if not models:
        raise EntryError("nothing to measure: give --models and/or keep the reference models")

    rows = []
    for m in models:
        info = onnxinfo.inspect(m["path"])
        if m["given_params"]:
            params, source = m["given_params"], "given in the models file"
        elif m.get("reference"):
            params, source = m["reference"]["torch_params"], "PyTorch model"
        else:
            params, source = info["params"], "counted from the ONNX initializers"
        row = {k: v for k, v in m.items() if k not in ("given_params", "given_vocab", "extra") and v is not None}
        row.update(m["extra"])
        row.update({"path": str(m["path"]), "source": "reference" if m.get("reference") else "project",
                    "precision": info["precision"], "params": params, "params_source": source,
                    "onnx_params": info["params"], "file_bytes": info["file_bytes"], "sha256": info["sha256"],
                    "inputs": info["inputs"], "vocab_size": m["given_vocab"] or info["vocab_size"],
                    "opset": info["opset"], "fused_ops": info["fused_ops"], "runs": {}})
        rows.append(row)

    # ---- measurements
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw_dir = out / "raw"
    floor = measure_rows(rows, settings, threads, env["onnxruntime"], raw_dir, args.resume)

    for r in rows:
        missing = [r_ for r_ in r["inputs"] if r_ not in ("input_ids", "attention_mask", "token_type_ids",
                                                         "position_ids")]
        if missing:
            r["notes"] = (r.get("notes") or "") + f" unexpected inputs {missing}"
        report.finish_row(r, floor["peak_rss"])
    report.add_ratios(rows, threads, seqs)
    targets = report.check_targets(rows, threads, seqs)
    busy = report.contention(rows)
    env["load_after"] = _loadavg()

    doc = {
        "title": title, "command": command, "quick": bool(args.quick), "started_utc": started,
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "environment": env,
        "settings": settings.to_dict(), "floor": floor, "models_file": str(args.models) if args.models else None,
        "models_file_meta": meta, "references": refs_meta, "rows": rows, "targets": targets,
        "contention": busy,
        "outputs": {"markdown": "report.md", "json": "report.json", "png": "report.png"},
    }
    report.write_json(doc, out / "report.json")
    (out / "report.md").write_text(report.markdown(doc), encoding="utf-8")
    report.plot(doc, out / "report.png")
    _log(f"wrote {out / 'report.md'}, report.json, report.png; targets: {targets['status']}")
    return doc


def main(argv: list[str] | None = None, prog: str = "python -m zinfer_model bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    command = " ".join([prog] + [shlex.quote(a) for a in argv])
    try:
        doc = run(args, command)
    except EntryError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nbench: interrupted; `{command} --resume` reuses the measurements saved in {args.out}/raw/",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- a measurement process failed: say which, without a traceback
        from .measure import WorkerError

        if isinstance(e, WorkerError):
            print(f"bench: {e}", file=sys.stderr)
            return 1
        raise
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0 if doc else 1
