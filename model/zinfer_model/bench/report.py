"""Rows, ratios, target checks and the three outputs of the efficiency report (markdown, JSON, PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

MiB = 1024 * 1024
TARGET_RSS_CUT = 0.75        # >= 75% lower peak RSS than the teacher
TARGET_LATENCY_CUT = 0.60    # >= 60% lower median latency at sequence length 64
TARGET_SEQ = 64
TARGET_ACC_POINTS = 1.5      # test accuracy within 1.5 points of the teacher's
PAPER = "the paper: 52% less memory, 33% less time (NumPy prototype, sequence length 10, no accuracy)"


# --------------------------------------------------------------------------------------------- rows
def finish_row(row: dict, floor_rss: int) -> dict:
    """Add the headline figures of one row from its per-thread measurements."""
    runs = row["runs"]
    peaks = [r["memory"]["final"]["peak_rss"] for r in runs.values()]
    row["peak_rss"] = max(peaks)
    row["net_rss"] = row["peak_rss"] - floor_rss
    for r in runs.values():
        r["peak_rss"] = r["memory"]["final"]["peak_rss"]
        r["net_rss"] = r["peak_rss"] - floor_rss
    return row


def latency(row: dict, threads, seq, stat: str = "median_ms") -> float | None:
    r = row["runs"].get(str(threads))
    if r is None:
        return None
    c = r["latency_b1"].get(str(seq))
    return None if c is None else c[stat]


def throughput(row: dict, threads) -> float | None:
    r = row["runs"].get(str(threads))
    return None if r is None or "throughput" not in r else r["throughput"]["seq_per_s"]


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(row: dict, base: dict, threads: list[int], seqs: list[int]) -> dict:
    """row / base for every measured figure (below 1 = smaller/faster, except throughput: above 1 = faster)."""
    out = {
        "baseline": base["name"],
        "params": _ratio(row.get("params"), base.get("params")),
        "file_bytes": _ratio(row["file_bytes"], base["file_bytes"]),
        "peak_rss": _ratio(row["peak_rss"], base["peak_rss"]),
        "net_rss": _ratio(row["net_rss"], base["net_rss"]) if base["net_rss"] > 0 else None,
        "latency_p50": {str(t): {str(s): _ratio(latency(row, t, s), latency(base, t, s)) for s in seqs}
                        for t in threads},
        "throughput": {str(t): _ratio(throughput(row, t), throughput(base, t)) for t in threads},
        "accuracy_points": None,
    }
    if row.get("accuracy") is not None and base.get("accuracy") is not None:
        out["accuracy_points"] = 100.0 * (row["accuracy"] - base["accuracy"])
    return out


def find_teacher(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["role"] == "teacher"), None)


def find_final(rows: list[dict]) -> tuple[dict | None, str]:
    final = next((r for r in rows if r["role"] == "final"), None)
    if final is not None:
        return final, "role final"
    steps = [r for r in rows if r["role"] == "student-step"]
    if steps:
        return steps[-1], "last student-step entry (no entry has role final)"
    return None, ""


def find_bert_base(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r.get("reference", {}).get("key") == "bert-base"
                 and r["precision"] == "fp32"), None)


def add_ratios(rows: list[dict], threads: list[int], seqs: list[int]) -> None:
    teacher, bert = find_teacher(rows), find_bert_base(rows)
    for row in rows:
        row["vs_teacher"] = ratios(row, teacher, threads, seqs) if teacher else None
        row["vs_bert_base"] = ratios(row, bert, threads, seqs) if bert else None


# ------------------------------------------------------------------------------------------ targets
def check_targets(rows: list[dict], threads: list[int], seqs: list[int]) -> dict:
    teacher = find_teacher(rows)
    final, how = find_final(rows)
    res: dict = {"teacher": teacher and teacher["name"], "final": final and final["name"], "final_from": how,
                 "checks": []}
    if final is None:
        res["status"] = "not checked: needs a final student (role final or student-step)"
        return res
    checks = res["checks"]
    if teacher is not None:
        _teacher_checks(checks, teacher, final, threads)
    else:
        for what in (f">= {TARGET_RSS_CUT:.0%} lower peak RSS than the teacher, net of the runtime floor",
                     f">= {TARGET_RSS_CUT:.0%} lower peak RSS than the teacher, whole process",
                     f">= {TARGET_LATENCY_CUT:.0%} lower median latency at sequence length {TARGET_SEQ}",
                     f"test accuracy within {TARGET_ACC_POINTS} points of the teacher"):
            checks.append({"target": what, "met": None, "detail": "no entry with role teacher"})
    _reference_checks(checks, rows, final, threads, seqs)
    verdicts = [c["met"] for c in checks]
    res["status"] = ("all met" if all(v is True for v in verdicts) else
                     f"{sum(v is True for v in verdicts)} of {len(verdicts)} met"
                     + (f", {sum(v is None for v in verdicts)} not checked" if None in verdicts else ""))
    return res


def _teacher_checks(checks: list, teacher: dict, final: dict, threads: list[int]) -> None:
    net_cut = 1 - final["net_rss"] / teacher["net_rss"] if teacher["net_rss"] > 0 else None
    tot_cut = 1 - final["peak_rss"] / teacher["peak_rss"]
    # Two checks, not one: the model's own memory (net of the harness's floor) and the whole process's peak. A
    # small model can meet the first and miss the second because the runtime's floor dominates its process.
    checks.append({
        "target": f">= {TARGET_RSS_CUT:.0%} lower peak RSS than the teacher, net of the runtime floor",
        "met": net_cut is not None and net_cut >= TARGET_RSS_CUT,
        "detail": (f"net (peak minus the {_mib(teacher['peak_rss'] - teacher['net_rss'])} MiB floor) "
                   f"{_pct_cut(net_cut)} lower ({_mib(final['net_rss'])} vs {_mib(teacher['net_rss'])} MiB)"),
        "net_cut": net_cut,
    })
    checks.append({
        "target": f">= {TARGET_RSS_CUT:.0%} lower peak RSS than the teacher, whole process",
        "met": tot_cut >= TARGET_RSS_CUT,
        "detail": (f"total peak {_pct_cut(tot_cut)} lower ({_mib(final['peak_rss'])} vs "
                   f"{_mib(teacher['peak_rss'])} MiB), of which the Python + ONNX Runtime floor is "
                   f"{_mib(final['peak_rss'] - final['net_rss'])} MiB in both"),
        "total_cut": tot_cut,
    })
    cuts = {}
    for t in threads:
        a, b = latency(final, t, TARGET_SEQ), latency(teacher, t, TARGET_SEQ)
        cuts[str(t)] = None if a is None or not b else 1 - a / b
    checks.append({
        "target": f">= {TARGET_LATENCY_CUT:.0%} lower median latency at sequence length {TARGET_SEQ}",
        "met": all(c is not None and c >= TARGET_LATENCY_CUT for c in cuts.values()),
        "detail": "; ".join(f"{t} thread(s): {_pct_cut(c)} lower ({_ms(latency(final, t, TARGET_SEQ))} vs "
                            f"{_ms(latency(teacher, t, TARGET_SEQ))} ms)" for t, c in cuts.items()),
        "cuts": cuts,
    })
    if final.get("accuracy") is not None and teacher.get("accuracy") is not None:
        gap = 100.0 * (teacher["accuracy"] - final["accuracy"])
        ci = ""
        if final.get("accuracy_ci95") is not None:
            ci = f"; the final model's 95% interval is ±{100 * final['accuracy_ci95']:.1f} points"
        checks.append({
            "target": f"test accuracy within {TARGET_ACC_POINTS} points of the teacher",
            "met": gap <= TARGET_ACC_POINTS,
            "detail": f"{100 * final['accuracy']:.1f}% vs {100 * teacher['accuracy']:.1f}%: "
                      + (f"{gap:.1f} points below" if gap >= 0 else f"{-gap:.1f} points above") + ci,
            "gap_points": gap,
        })
    else:
        checks.append({"target": f"test accuracy within {TARGET_ACC_POINTS} points of the teacher", "met": None,
                       "detail": "accuracy not given for both models"})


def _reference_checks(checks: list, rows: list[dict], final: dict, threads: list[int], seqs: list[int]) -> None:
    for key, label in (("distilbert", "DistilBERT"), ("mobilebert", "MobileBERT")):
        refs = [r for r in rows if r.get("reference", {}).get("key") == key]
        if not refs:
            checks.append({"target": f"lower peak RSS and latency than {label}", "met": None,
                           "detail": f"{label} not measured in this run"})
            continue
        misses = []
        for ref in refs:
            if final["peak_rss"] >= ref["peak_rss"]:
                misses.append(f"peak RSS {_mib(final['peak_rss'])} >= {_mib(ref['peak_rss'])} MiB of {ref['name']}")
            for t in threads:
                for s in seqs:
                    a, b = latency(final, t, s), latency(ref, t, s)
                    if a is not None and b is not None and a >= b:
                        misses.append(f"{_ms(a)} >= {_ms(b)} ms at seq {s}, {t} thread(s), vs {ref['name']}")
        names = ", ".join(r["name"] for r in refs)
        worst_mem = min(ref["peak_rss"] for ref in refs)
        shown = misses[:6] + ([f"… and {len(misses) - 6} more"] if len(misses) > 6 else [])
        checks.append({
            "target": f"lower peak RSS and lower latency than {label} at every measured sequence length",
            "met": not misses,
            "misses": misses,
            "detail": ("; ".join(shown) if misses else
                       f"below {names} everywhere (peak RSS {_mib(final['peak_rss'])} vs >= {_mib(worst_mem)} MiB)"),
        })


# ------------------------------------------------------------------------------------------ format
def _mib(b) -> str:
    if b is None:
        return "–"
    v = b / MiB
    return f"{v:.2f}" if abs(v) < 1 else f"{v:.1f}"


def _ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _x(v) -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}×"
    return f"{v:.2f}×" if v >= 0.1 else f"{v:.2g}×"


def contention(rows: list[dict]) -> dict:
    """How much CPU the single-thread processes got while timing (1.0 = a whole core all the time)."""
    vals = []
    for r in rows:
        run = r["runs"].get("1")
        if not run:
            continue
        cases = list(run["latency_b1"].values()) + ([run["throughput"]] if run.get("throughput") else [])
        vals += [c["cpu_per_wall"] for c in cases if c.get("cpu_per_wall") is not None]
    if not vals:
        return {"cases": 0}
    vals.sort()
    low = [v for v in vals if v < 0.85]
    return {"cases": len(vals), "below_85pct": len(low), "median_cpu_per_wall": vals[len(vals) // 2],
            "min_cpu_per_wall": vals[0]}


def _pct_cut(c) -> str:
    return "–" if c is None else f"{100 * c:.1f}%"


def _params(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _acc(row) -> str:
    a = row.get("accuracy")
    if a is None:
        return "–"
    s = f"{100 * a:.1f}%"
    if row.get("accuracy_ci95") is not None:
        s += f" ±{100 * row['accuracy_ci95']:.1f}"
    return s


def _tput(v) -> str:
    return "–" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _row_label(row: dict) -> str:
    return row["name"].replace("|", "/")


def markdown(doc: dict) -> str:
    rows, env, s = doc["rows"], doc["environment"], doc["settings"]
    threads, seqs = s["threads"], s["seq_lengths"]
    t0 = threads[0]
    lines = [f"# {doc['title']}", ""]
    lines += [
        f"Measured {doc['started_utc']} → {doc['finished_utc']} UTC with `{doc['command']}`"
        f"{' (quick mode: short timings, not for publication)' if doc['quick'] else ''}.", "",
        f"- **Machine:** {env['cpu_model']}, {env['logical_cpus']} logical CPUs "
        f"(SIMD: {env['cpu_simd']}), {env['os']}; load average {env['load_before']} before, "
        f"{env['load_after']} after (other work on the machine adds noise).",
        f"- **Runtime:** ONNX Runtime {env['onnxruntime']} (CPUExecutionProvider), Python {env['python']}, "
        f"numpy {env['numpy']}; session options as zinferd's defaults: graph optimization "
        f"`{s['optimization']}`, CPU memory arena {'on' if s['arena'] else 'off'}, memory pattern "
        f"{'on' if s['memory_pattern'] else 'off'}, spinning {'on' if s['spinning'] else 'off'}, "
        f"1 inter-op thread, sequential execution.",
        f"- **Method:** one fresh process per model and thread count ({', '.join(map(str, threads))} intra-op "
        f"threads) loads the model, times batch 1 at sequence lengths {', '.join(map(str, seqs))} and then batch "
        f"{s['batch']} at length {s['batch_seq']} (random token ids, full attention mask); each case is warmed up "
        f"(≥ {s['warmup_runs']} runs and {s['warmup_s']} s) and timed for ≥ {s['min_runs']} runs and "
        f"≥ {s['min_s']} s (at most {s['max_runs']} runs or {s['max_s']} s; the batch-{s['batch']} case "
        f"≥ {max(3, s['min_runs'] // 2)} runs). "
        + (f"Every process ran {s['rounds']} times, interleaved across models; each latency keeps the round "
           f"with the lowest median (interference only adds time), throughput the best round, memory the "
           f"highest peak. " if s.get("rounds", 1) > 1 else "")
        + "Peak RSS is the process's VmHWM after all runs, the largest over its thread counts.",
        f"- **Memory floor:** the same harness with numpy and onnxruntime imported and no model peaks at "
        f"{_mib(doc['floor']['peak_rss'])} MiB; *net RSS* = peak RSS − floor"
        + (f". With an empty ONNX Runtime session (a one-node model) it peaks at "
           f"{_mib(doc['floor']['empty_session_peak_rss'])} MiB: about "
           f"{_mib(doc['floor']['empty_session_peak_rss'] - doc['floor']['peak_rss'])} MiB of every net figure "
           f"is the runtime's own cost, not the model's." if doc["floor"].get("empty_session_peak_rss") else "."),
    ]
    resumed = sum(bool(run.get("resumed")) for r in rows for run in r["runs"].values())
    if resumed:
        lines.append(f"- **Resumed:** {resumed} of {sum(len(r['runs']) for r in rows)} measurements were reused "
                     f"from an earlier, interrupted run (`--resume`, saved in `raw/`); the times above are this "
                     f"run's.")
    cont = doc.get("contention") or {}
    if cont.get("below_85pct"):
        lines.append(
            f"- ⚠️ **Busy machine:** {cont['below_85pct']} of {cont['cases']} single-thread timed cases got less "
            f"than 85% of a core (median {cont['median_cpu_per_wall']:.2f}, lowest {cont['min_cpu_per_wall']:.2f} "
            f"CPU s per wall s; see the CPU/wall column): other work competed for the cores, so latencies are "
            f"inflated and 2-thread figures especially unreliable. Rerun on an idle machine for publication.")
    if doc.get("references"):
        lines.append(
            "- **Reference models** (BERT-base, DistilBERT, MobileBERT) have their standard published shapes and "
            "**random weights** (seeded; nothing downloaded): parameters, file size, memory and latency do not "
            "depend on the weight values, accuracy does, so they have none. Each was exported like the toolkit's "
            "models (legacy exporter, opset 17, eager attention, 4-D mask built in the wrapper), run through "
            "ONNX Runtime's transformer optimizer, checked against PyTorch, and quantized with dynamic int8.")
    lines.append("")

    # summary
    lines += ["## Summary", ""]
    head = ["model", "role", "prec", "params", "file MiB", "peak RSS MiB", "net RSS MiB"]
    head += [f"p50 ms @{s_} ({t0} thr)" for s_ in seqs]
    head += [f"p50 ms @{TARGET_SEQ} ({t} thr)" for t in threads[1:]]
    head += [f"b{s['batch']} seq/s ({t} thr)" for t in threads]
    head += ["accuracy"]
    body = []
    for r in rows:
        cells = [_row_label(r), r["role"], r["precision"], _params(r.get("params")), _mib(r["file_bytes"]),
                 _mib(r["peak_rss"]), _mib(r["net_rss"])]
        cells += [_ms(latency(r, t0, s_)) for s_ in seqs]
        cells += [_ms(latency(r, t, TARGET_SEQ)) for t in threads[1:]]
        cells += [_tput(throughput(r, t)) for t in threads]
        cells += [_acc(r)]
        body.append(cells)
    lines += [_table(head, body), ""]

    # ratios
    for key, title in (("vs_teacher", "teacher"), ("vs_bert_base", "BERT-base fp32")):
        if not any(r.get(key) for r in rows):
            continue
        base = next(r[key]["baseline"] for r in rows if r.get(key))
        lines += [f"## Ratios against the {title} ({base})", "",
                  "Model ÷ baseline: below 1× is smaller or faster; for throughput above 1× is faster; "
                  "accuracy in points.", ""]
        head = ["model", "params", "file", "peak RSS", "net RSS"]
        head += [f"p50 @{s_} ({t} thr)" for t in threads for s_ in seqs]
        head += [f"b{s['batch']} thrpt ({t} thr)" for t in threads]
        head += ["accuracy Δ"]
        body = []
        for r in rows:
            q = r.get(key)
            if not q:
                continue
            cells = [_row_label(r), _x(q["params"]), _x(q["file_bytes"]), _x(q["peak_rss"]), _x(q["net_rss"])]
            cells += [_x(q["latency_p50"][str(t)][str(s_)]) for t in threads for s_ in seqs]
            cells += [_x(q["throughput"][str(t)]) for t in threads]
            cells += ["–" if q["accuracy_points"] is None else f"{q['accuracy_points']:+.1f}"]
            body.append(cells)
        lines += [_table(head, body), ""]

    # latency detail
    lines += ["## Latency (batch 1: median / p95 in ms) and throughput", ""]
    head = ["model", "threads"] + [f"seq {s_}" for s_ in seqs] + [f"batch {s['batch']}×{s['batch_seq']}: "
                                                                 "p50 ms, seq/s", "timed runs", "CPU/wall"]
    body = []
    for r in rows:
        for t in threads:
            run = r["runs"][str(t)]
            cells = [_row_label(r), str(t)]
            cells += [f"{_ms(latency(r, t, s_))} / {_ms(latency(r, t, s_, 'p95_ms'))}" for s_ in seqs]
            tp = run.get("throughput")
            cells.append(f"{_ms(tp['median_ms'])}, {_tput(tp['seq_per_s'])}" if tp else "–")
            ns = [str(run["latency_b1"][str(s_)]["n"]) for s_ in seqs] + ([str(tp["n"])] if tp else [])
            cells.append("/".join(ns))
            cpu = [run["latency_b1"][str(s_)].get("cpu_per_wall") for s_ in seqs] + (
                [tp.get("cpu_per_wall")] if tp else [])
            cells.append("/".join("–" if c is None else f"{c:.2f}" for c in cpu))
            body.append(cells)
    lines += [_table(head, body), "",
              "*CPU/wall*: the measuring process's CPU seconds per wall second in each timed case (seq lengths, "
              "then the batch): close to the thread count when it had the cores to itself, lower when other work "
              "on the machine took them (or when a model is too small to keep 2 threads busy).", ""]

    # memory detail
    lines += ["## Memory (MiB; VmHWM of the measuring process at each stage)", ""]
    head = ["model", "threads", "after load", "after batch 1", f"after batch {s['batch']}", "peak", "net",
            "load s"]
    body = []
    for r in rows:
        for t in threads:
            run = r["runs"][str(t)]
            m = run["memory"]
            body.append([_row_label(r), str(t), _mib(m["after_load"]["peak_rss"]),
                         _mib(m["after_batch1"]["peak_rss"]),
                         _mib(m.get("after_batch", {}).get("peak_rss")), _mib(run["peak_rss"]),
                         _mib(run["net_rss"]), f"{run['load_s']:.2f}"])
    lines += [_table(head, body), ""]

    # targets
    tg = doc["targets"]
    lines += ["## Targets (issue 3)", ""]
    if not tg["checks"]:
        lines += [f"{tg['status']}.", ""]
    else:
        lines += [f"Final student: **{tg['final']}** ({tg['final_from']}); teacher: **{tg['teacher'] or 'none'}**. "
                  f"Overall: **{tg['status']}**. For comparison, {PAPER}.", ""]
        for c in tg["checks"]:
            mark = {True: "✅ met", False: "❌ missed", None: "➖ not checked"}[c["met"]]
            lines.append(f"- {mark}: {c['target']} — {c['detail']}")
        lines.append("")

    # model notes
    lines += ["## Models", ""]
    for r in rows:
        bits = [f"`{r['path']}`", f"{r['file_bytes']:,} bytes", f"sha256 {r['sha256'][:12]}…",
                f"inputs {', '.join(r['inputs'])}", f"vocab {r['vocab_size'] or '?'}",
                f"params {r['params']:,} ({r['params_source']})"]
        if r.get("fused_ops"):
            bits.append("ops " + ", ".join(f"{k}×{v}" for k, v in r["fused_ops"].items()))
        ref = r.get("reference")
        if ref:
            bits.append(ref["about"])
            bits.append(f"export vs PyTorch max |Δlogit| {ref['export_max_abs_diff']:.1e}, int8 vs PyTorch "
                        f"{ref['int8_max_abs_diff_vs_torch']:.1e}")
            if not ref.get("fusions") and ref.get("optimized"):
                bits.append("the transformer optimizer found no fusable pattern (runs unfused)")
        if r.get("macro_f1") is not None:
            bits.append(f"macro-F1 {100 * r['macro_f1']:.1f}%")
        if r.get("notes"):
            bits.append(r["notes"])
        lines.append(f"- **{_row_label(r)}**: " + "; ".join(bits))
    lines += ["", f"Plot: `{doc['outputs']['png']}`; all numbers: `{doc['outputs']['json']}`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plot
_REF_COLORS = {"bert-base": ("#555555", "#9a9a9a"), "distilbert": ("#b8860b", "#e0c068"),
               "mobilebert": ("#8c564b", "#c49c94")}
_STEP_COLORS = ["#1f77b4", "#17becf", "#6baed6", "#9467bd", "#3182bd", "#08519c"]


def _colors(rows: list[dict]) -> list[str]:
    out, step = [], 0
    for row in rows:
        ref = row.get("reference")
        if ref:
            dark, light = _REF_COLORS.get(ref["key"], ("#7f7f7f", "#b0b0b0"))
            out.append(dark if row["precision"] == "fp32" else light)
        elif row["role"] == "student-step":
            out.append(_STEP_COLORS[step % len(_STEP_COLORS)])
            step += 1
        else:
            out.append({"teacher": "#d62728", "teacher-int8": "#ff9896", "final": "#2ca02c"}.get(row["role"],
                                                                                             "#e377c2"))
    return out


def _plain_log_axis(axis) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, s = doc["rows"], doc["settings"]
    threads, seqs = s["threads"], s["seq_lengths"]
    t0 = threads[0]
    names = [r["name"] for r in rows]
    colors = _colors(rows)
    fig, axes = plt.subplots(2, 2, figsize=(15, 10.5))

    ax = axes[0][0]
    for r, c in zip(rows, colors):
        x, y = max(r["net_rss"], 1) / MiB, latency(r, t0, TARGET_SEQ)
        ax.scatter([x], [y], s=60, color=c, edgecolor="black", zorder=3,
                   marker="s" if r["precision"] == "int8" else "o")
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("net peak RSS, MiB (peak − floor; log)")
    ax.set_ylabel(f"median latency, ms, batch 1, seq {TARGET_SEQ}, {t0} thread (log)")
    ax.set_title("memory vs latency (square = int8)")
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[0][1]
    for r, c in zip(rows, colors):
        ys = [latency(r, t0, s_) for s_ in seqs]
        ax.plot(seqs, ys, marker="s" if r["precision"] == "int8" else "o", color=c,
                linestyle="--" if r["precision"] == "int8" else "-", label=r["name"])
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xticks(seqs)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(f"median latency, ms, batch 1, {t0} thread (log)")
    ax.set_title("latency by sequence length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    ypos = list(range(len(rows)))[::-1]
    ax = axes[1][0]
    h = 0.4
    ax.barh([y + h / 2 for y in ypos], [r["file_bytes"] / MiB for r in rows], height=h, color=colors,
            edgecolor="black", label="file size")
    ax.barh([y - h / 2 for y in ypos], [max(r["net_rss"], 0) / MiB for r in rows], height=h, color=colors,
            edgecolor="black", hatch="//", label="net peak RSS")
    ax.set_yticks(ypos)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("MiB (log)")
    ax.set_title("file size (plain) and net peak RSS (hatched)")
    ax.grid(True, axis="x", which="both", alpha=0.3)

    ax = axes[1][1]
    h = 0.8 / max(1, len(threads))
    for i, t in enumerate(threads):
        vals = [throughput(r, t) or 0 for r in rows]
        ax.barh([y + 0.4 - h * (i + 0.5) for y in ypos], vals, height=h, color=colors, edgecolor="black",
                alpha=1.0 if i == 0 else 0.55, label=f"{t} thread(s)")
    ax.set_yticks(ypos)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel(f"sequences/s, batch {s['batch']}, seq {s['batch_seq']} (log)")
    shades = ["solid", "faded", "lighter", "lightest"]
    ax.set_title("throughput (" + ", ".join(f"{shades[min(i, 3)]}: {t} thread{'s' if t > 1 else ''}"
                                            for i, t in enumerate(threads)) + ")")
    ax.grid(True, axis="x", which="both", alpha=0.3)

    env = doc["environment"]
    fig.suptitle(f"{doc['title']} — {env['cpu_model']}, ONNX Runtime {env['onnxruntime']}"
                 f"{' (quick)' if doc['quick'] else ''}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(doc: dict, path: Path) -> None:
    def clean(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        if isinstance(o, Path):
            return str(o)
        return o

    path.write_text(json.dumps(clean(doc), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
