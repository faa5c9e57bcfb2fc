"""One measurement process of the efficiency report: load one ONNX model, time it, report peak memory.

This file is run as a *script* in a fresh interpreter (``python worker.py '<json spec>'``), never imported by the
harness, so that the process imports exactly ``numpy`` and ``onnxruntime`` and nothing of the toolkit: its peak
RSS is the model's cost plus the fixed cost of that harness, and the same script without a model (``"model":
null``) measures that fixed cost (the *floor*). It prints one JSON object on its last stdout line.

Spec keys (all set by the harness, see ``measure.py``):
    model            path of the .onnx file, or null for the floor measurement
    threads          intra-op threads (inter-op is 1, sequential execution)
    seq_lengths      batch-1 latency is measured at each of these sequence lengths
    batch, batch_seq throughput is measured at this batch size and sequence length
    vocab_size       token ids are drawn from [5, min(vocab_size, 1000))
    warmup_runs, warmup_s, min_runs, min_s, max_runs, max_s   repetition policy of each timed case
    spinning, arena, memory_pattern, optimization             session options (the daemon's defaults)
    seed             seed of the token ids
    load_only        create the session and stop (the empty-session floor)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _status_kib(field: str) -> int | None:
    """A `VmHWM`/`VmRSS` field of /proc/self/status in KiB (None where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory() -> dict:
    """Peak and current resident set size of this process, in bytes."""
    hwm = _status_kib("VmHWM")
    rss = _status_kib("VmRSS")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_rss": (hwm if hwm is not None else maxrss) * 1024,
        "rss": (rss * 1024) if rss is not None else None,
        "ru_maxrss": maxrss * 1024,
    }


def _stats(times_ns: list[int]) -> dict:
    import numpy as np

    a = np.asarray(times_ns, dtype=np.float64) / 1e6  # ms
    return {
        "n": int(a.size),
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "total_s": float(a.sum() / 1e3),
    }


times_cpu: list[float] = []  # CPU-per-wall ratio of each timed case, in order


def _timed(run, spec: dict) -> list[int]:
    """Warm up, then time `run` until both the minimum count and time are reached (or a maximum is)."""
    t0 = time.perf_counter()
    n = 0
    while n < spec["warmup_runs"] or (time.perf_counter() - t0) < spec["warmup_s"]:
        run()
        n += 1
    times: list[int] = []
    start = time.perf_counter_ns()
    cpu0 = time.process_time()
    while True:
        a = time.perf_counter_ns()
        run()
        b = time.perf_counter_ns()
        times.append(b - a)
        elapsed = (b - start) / 1e9
        if len(times) >= spec["max_runs"] or elapsed >= spec["max_s"]:
            break
        if len(times) >= spec["min_runs"] and elapsed >= spec["min_s"]:
            break
    # CPU time of this process per wall second while timing: about `threads` when it had the cores to itself
    # (less when other work took them; spinning off, so idle waits don't count)
    times_cpu.append((time.process_time() - cpu0) / max(1e-9, (time.perf_counter_ns() - start) / 1e9))
    return times


_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32"}


def _inputs(np, session_inputs, batch: int, seq: int, vocab: int, rng) -> dict:
    """Inputs of one BERT-style call (random token ids, a full attention mask, segment 0), or random normal
    values for a float input."""
    feeds = {}
    high = max(6, min(int(vocab), 1000))
    for inp in session_inputs:
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise SystemExit(f"input {inp.name!r} has unsupported type {inp.type}")
        if inp.name == "input_ids":
            a = rng.integers(5, high, size=(batch, seq))
            a[:, 0] = 2 if high > 3 else 0  # [CLS]-like start
        elif inp.name == "attention_mask":
            a = np.ones((batch, seq))
        elif inp.name in ("token_type_ids", "segment_ids"):
            a = np.zeros((batch, seq))
        elif inp.name == "position_ids":
            a = np.broadcast_to(np.arange(seq), (batch, seq))
        elif dtype == "float32":
            # a float input (the sensor model's `frames` [batch, window, channels]): standard-normal values (it
            # takes normalised data), batch first; a fixed axis keeps its size, another symbolic axis gets `seq`
            shape = [batch] + [d if isinstance(d, int) and d > 0 else seq for d in list(inp.shape)[1:]]
            a = rng.standard_normal(shape)
        else:
            raise SystemExit(f"don't know how to feed input {inp.name!r} (known: input_ids, attention_mask, "
                             "token_type_ids, position_ids, or any float32 input)")
        feeds[inp.name] = np.ascontiguousarray(a, dtype=dtype)
    return feeds


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    wall0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(spec.get("seed", 0))
    result: dict = {"pid": os.getpid(), "ort_version": ort.__version__, "numpy_version": np.__version__,
                    "threads": spec["threads"]}
    if spec.get("model") is None:
        # the floor: the same interpreter and imports, plus the arrays the model runs would use, and no session
        for seq in spec["seq_lengths"]:
            _ = np.ones((1, seq), dtype=np.int64)
        _ = np.ones((spec["batch"], spec["batch_seq"]), dtype=np.int64)
        _ = ort.SessionOptions()
        result["memory"] = {"final": memory()}
        result["wall_s"] = time.perf_counter() - wall0
        print(json.dumps(result))
        return 0

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec["threads"])
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = bool(spec.get("arena", True))
    so.enable_mem_pattern = bool(spec.get("memory_pattern", False))
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[spec.get("optimization", "all")]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec.get("spinning") else "0")
    so.log_severity_level = 3

    mem = {}
    t = time.perf_counter()
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    result["load_s"] = time.perf_counter() - t
    mem["after_load"] = memory()
    if spec.get("load_only"):  # the empty-session floor: a session on a one-node model, never run
        mem["final"] = memory()
        result["memory"] = mem
        result["wall_s"] = time.perf_counter() - wall0
        print(json.dumps(result))
        return 0
    inputs = sess.get_inputs()
    result["inputs"] = [i.name for i in inputs]
    out_name = sess.get_outputs()[0].name
    vocab = int(spec.get("vocab_size") or 100)

    latency = {}
    for seq in spec["seq_lengths"]:
        feeds = _inputs(np, inputs, 1, seq, vocab, rng)
        times = _timed(lambda: sess.run([out_name], feeds), spec)
        latency[str(seq)] = _stats(times)
        latency[str(seq)]["cpu_per_wall"] = times_cpu[-1]
    result["latency_b1"] = latency
    mem["after_batch1"] = memory()

    batch, bseq = int(spec["batch"]), int(spec["batch_seq"])
    if batch > 0:
        feeds = _inputs(np, inputs, batch, bseq, vocab, rng)
        tspec = dict(spec)
        tspec["min_runs"] = max(3, spec["min_runs"] // 2)
        times = _timed(lambda: sess.run([out_name], feeds), tspec)
        st = _stats(times)
        st["batch"], st["seq"] = batch, bseq
        st["cpu_per_wall"] = times_cpu[-1]
        st["seq_per_s"] = batch * st["n"] / st["total_s"]
        st["seq_per_s_median"] = batch * 1000.0 / st["median_ms"]
        result["throughput"] = st
        mem["after_batch"] = memory()
    mem["final"] = memory()
    result["memory"] = mem
    result["wall_s"] = time.perf_counter() - wall0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
