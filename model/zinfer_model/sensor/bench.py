"""`sensor bench`: the sensor model's side-by-side table (original fp32/int8, half width, pruned, pruned int8).

    python -m zinfer_model sensor bench [--models runs/sensor/evaluate/models.json] [--out report/sensor]

One run on one machine and one ONNX Runtime: every model is measured in a fresh process per intra-op thread
count by the efficiency report's worker (`zinfer_model.bench.worker`, fed random normal `frames` of the model's
fixed [window, channels] shape): peak RSS, and peak RSS net of the floor (the same worker with numpy and
onnxruntime imported and no model), median and p95 latency at batch 1, throughput at batch 8, after warm-up.
Parameters, file size and test accuracy come from the models file (`evaluate` writes it). Writes report.md and
report.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ..bench import _environment, _loadavg, load_models_json, measure_rows
from ..bench import measure, onnxinfo, report

MODEL_ROOT = Path(__file__).resolve().parents[2]


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=MODEL_ROOT / "runs" / "sensor" / "evaluate" / "models.json")
    p.add_argument("--out", type=Path, default=MODEL_ROOT / "report" / "sensor")
    p.add_argument("--raw-dir", type=Path, default=MODEL_ROOT / "runs" / "sensor-bench" / "raw",
                   help="each process's JSON result (git-ignored; reused with --resume)")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts (default 1,2)")
    p.add_argument("--batch", type=int, default=8, help="throughput batch size (default 8)")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure every model this many times, interleaved, keeping each case's best round "
                        "(default 2; 1 with --quick)")
    p.add_argument("--min-time", type=float, default=None, help="seconds each timed case runs at least (default 3)")
    p.add_argument("--quick", action="store_true", help="short timings (seconds); not for publication")
    p.add_argument("--resume", action="store_true", help="reuse the results of an interrupted run in --raw-dir")
    return p


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def _kib(b) -> str:
    return f"{b / 1024:.1f} KiB" if b < 2**20 else f"{b / 2**20:.2f} MiB"


def markdown(doc: dict) -> str:
    env, s, rows, threads = doc["environment"], doc["settings"], doc["rows"], doc["settings"]["threads"]
    win = s["seq_lengths"][0]
    head = ["model", "parameters", "file size", "peak RSS MiB (net of floor)"]
    for t in threads:
        head += [f"b1 median / p95 ms, {t} thr", f"windows/s at batch {s['batch']}, {t} thr"]
    head += ["test accuracy (95%)", "macro-F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['params']:,}", f"{_kib(r['file_bytes'])} ({r['file_bytes']:,} B)",
                 f"{_mib(r['peak_rss'])} ({_mib(r['net_rss'])})"]
        for t in threads:
            run = r["runs"][str(t)]
            lat = run["latency_b1"][str(win)]
            cells += [f"{lat['median_ms']:.3f} / {lat['p95_ms']:.3f}", f"{run['throughput']['seq_per_s']:,.0f}"]
        ci = r.get("accuracy_ci95")
        cells += [f"{100 * r['accuracy']:.1f}% ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else "–",
                  f"{r['macro_f1']:.3f}" if r.get("macro_f1") is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    c = doc["contention"]
    busy = (f"single-thread cases got a median {c['median_cpu_per_wall']:.2f} CPU s per wall s (min "
            f"{c['min_cpu_per_wall']:.2f}; {c['below_85pct']} of {c['cases']} below 0.85)") if c.get("cases") else ""
    notes = []
    if 1 in threads and 2 in threads:
        def med(r, t):
            return r["runs"][str(t)]["latency_b1"][str(win)]["median_ms"]

        slower = [r["name"] for r in rows if med(r, 2) > med(r, 1)]
        if slower:
            notes.append(f"Batch-1 latency with 2 threads was higher than with 1 for {len(slower)} of {len(rows)} "
                         "models: "
                         "a window is a few hundred microseconds of work, less than what splitting it between two "
                         "threads (and, on a busy machine, waiting for the second core) costs.")
    sess_cost = doc["floor"]["empty_session_peak_rss"] - doc["floor"]["peak_rss"]
    notes.append(f"Of each net peak RSS, about {_mib(sess_cost)} MiB is what ONNX Runtime costs for any session "
                 "(a one-node model), so the models' own differences in memory are small.")
    quick = "**Quick run: short timings, not for publication.**\n\n" if doc["quick"] else ""
    return f"""# {doc['title']}

{quick}Produced by `{doc['command']}` ({doc['started_utc']} – {doc['finished_utc']} UTC) on {env['cpu_model']}
({env['logical_cpus']} logical CPUs, {env['cpu_simd']}), {env['os']}, Python {env['python']}, ONNX Runtime
{env['onnxruntime']}, numpy {env['numpy']}; load average before {env['load_before']}, after {env['load_after']}.

Every model was loaded and run by a fresh process per thread count (`zinfer_model/bench/worker.py`: numpy and
onnxruntime only; sequential execution, 1 inter-op thread, spinning off, arena and memory pattern on, all graph
optimizations), fed random normal `frames` [batch, {win}, 6]; {s['warmup_runs']} warm-up runs (at least
{s['warmup_s']} s) before timing; each case timed for at least {s['min_runs']} runs and {s['min_s']} s;
{s['rounds']} round(s) per model, interleaved, keeping each case's best round and the highest peak RSS. Peak RSS is
the process's VmHWM; the floor is the same worker with numpy and onnxruntime imported and no session
({_mib(doc['floor']['peak_rss'])} MiB; with an empty session {_mib(doc['floor']['empty_session_peak_rss'])} MiB).
{busy}.

{chr(10).join(lines)}

{" ".join(notes)}

Accuracy is window-level on the test split (subjects never seen in training), 95% Wilson intervals; windows of
the same recording are correlated, so the intervals are optimistic. Parameters are the PyTorch model's (int8 rows:
the same weights, stored as int8). The shipped model is `models/zinfer-watch-small/model.onnx`
(sha256 `{doc['rows'][-1]['sha256']}`).
"""


def run(args: argparse.Namespace, command: str) -> dict:
    settings = measure.Settings.quick() if args.quick else measure.Settings()
    settings.threads = tuple(int(t) for t in str(args.threads).split(",") if t.strip())
    entries, meta = load_models_json(args.models)
    window = None
    rows = []
    for e in entries:
        info = onnxinfo.inspect(e.onnx)
        import onnx

        shape = [d.dim_value for d in onnx.load(str(e.onnx), load_external_data=False).graph.input[0]
                 .type.tensor_type.shape.dim]
        window = window or shape[1]
        try:  # paths relative to model/ where they are inside it (the report is committed)
            shown = str(Path(e.onnx).resolve().relative_to(MODEL_ROOT))
        except ValueError:
            shown = str(e.onnx)
        rows.append({"name": e.name, "role": e.role, "path": str(e.onnx), "file": shown,
                     "params": e.params or info["params"],
                     "onnx_params": info["params"], "file_bytes": info["file_bytes"], "sha256": info["sha256"],
                     "precision": info["precision"], "inputs": info["inputs"], "input_shape": shape,
                     "accuracy": e.accuracy, "accuracy_ci95": e.extra.get("accuracy_ci95_bounds"),
                     "macro_f1": e.macro_f1, "runs": {}})
    settings.seq_lengths = (int(window),)
    settings.batch, settings.batch_seq = int(args.batch), int(window)
    if args.rounds is not None:
        settings.rounds = max(1, args.rounds)
    if args.min_time is not None:
        settings.min_s = args.min_time
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    env = _environment()
    floor = measure_rows(rows, settings, list(settings.threads), env["onnxruntime"], Path(args.raw_dir),
                         args.resume)
    for r in rows:
        report.finish_row(r, floor["peak_rss"])
        r["path"] = r.pop("file")
    env["load_after"] = _loadavg()
    doc = {"title": meta.get("title", "sensor models"), "command": command, "quick": bool(args.quick),
           "started_utc": started, "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "environment": env, "settings": settings.to_dict(), "floor": floor, "rows": rows,
           "contention": report.contention(rows)}
    doc["title"] = "Sensor model side by side: " + doc["title"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(doc), encoding="utf-8")
    return doc


def main(argv: list[str], prog: str = "python -m zinfer_model sensor bench") -> int:
    args = build_parser(prog).parse_args(argv)
    command = " ".join([prog] + [shlex.quote(a) for a in argv])
    doc = run(args, command)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0 if doc else 1
