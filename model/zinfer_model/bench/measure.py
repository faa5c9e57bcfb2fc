"""Runs the measurement processes (``worker.py``): one fresh process per model and thread count, plus the floor."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


@dataclass
class Settings:
    """What one measurement process does; the defaults are the full report's."""

    threads: tuple[int, ...] = (1, 2)
    seq_lengths: tuple[int, ...] = (16, 64, 128)
    batch: int = 8
    batch_seq: int = 64
    warmup_runs: int = 3
    warmup_s: float = 0.5
    min_runs: int = 30
    min_s: float = 3.0
    max_runs: int = 2000
    max_s: float = 15.0
    floor_runs: int = 3
    rounds: int = 2          # every (model, threads) process is run this many times, interleaved
    # ONNX Runtime session options: zinferd's defaults (configs/example.toml [pipeline.session])
    spinning: bool = False
    arena: bool = True
    memory_pattern: bool = False
    optimization: str = "all"
    seed: int = 0
    timeout_s: float = 900.0

    @classmethod
    def quick(cls) -> "Settings":
        return cls(warmup_runs=1, warmup_s=0.02, min_runs=5, min_s=0.05, max_runs=200, max_s=2.0, floor_runs=1,
                   rounds=1, timeout_s=300.0)

    def worker_spec(self, model: str | None, threads: int, vocab_size: int | None) -> dict:
        return {
            "model": model, "threads": threads, "seq_lengths": list(self.seq_lengths), "batch": self.batch,
            "batch_seq": self.batch_seq, "vocab_size": vocab_size, "warmup_runs": self.warmup_runs,
            "warmup_s": self.warmup_s, "min_runs": self.min_runs, "min_s": self.min_s, "max_runs": self.max_runs,
            "max_s": self.max_s, "spinning": self.spinning, "arena": self.arena,
            "memory_pattern": self.memory_pattern, "optimization": self.optimization, "seed": self.seed,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threads"], d["seq_lengths"] = list(self.threads), list(self.seq_lengths)
        return d


class WorkerError(RuntimeError):
    pass


def _child_env() -> dict:
    env = dict(os.environ)
    # One knob per measurement: ONNX Runtime's own pool has `threads`; keep numpy/OpenMP from adding theirs.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env.pop("PYTHONPATH", None)  # the worker imports numpy and onnxruntime only
    return env


def run_worker(spec: dict, timeout_s: float) -> dict:
    """Run one measurement process and return its JSON result."""
    cmd = [sys.executable, "-s", str(WORKER), json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env(),
                              cwd=str(WORKER.parent))
    except subprocess.TimeoutExpired as e:
        raise WorkerError(f"measurement of {spec.get('model')} timed out after {timeout_s:.0f} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise WorkerError(f"measurement of {spec.get('model')} failed (exit {proc.returncode}):\n  "
                          + "\n  ".join(tail))
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise WorkerError(f"measurement of {spec.get('model')} printed no result: {proc.stdout[-500:]!r}")
    return json.loads(lines[-1])


def measure_floor(settings: Settings) -> dict:
    """Peak RSS of the harness with numpy and onnxruntime imported and no model (median of a few processes)."""
    runs = [run_worker(settings.worker_spec(None, 1, None), settings.timeout_s)["memory"]["final"]["peak_rss"]
            for _ in range(max(1, settings.floor_runs))]
    return {"peak_rss": int(statistics.median(runs)), "runs": runs}


def measure_empty_session(settings: Settings, work_dir: Path) -> int:
    """Peak RSS of the harness after creating a session on a one-node model: the runtime's own fixed cost."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = Path(work_dir) / "empty-session.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    runs = []
    for _ in range(max(1, settings.floor_runs)):
        spec = settings.worker_spec(str(path), max(settings.threads), None)
        spec["load_only"] = True
        runs.append(run_worker(spec, settings.timeout_s)["memory"]["final"]["peak_rss"])
    return int(statistics.median(runs))


def job_key(model_sha256: str, threads: int, settings: Settings, ort_version: str, round_: int = 0) -> str:
    blob = json.dumps({"sha": model_sha256, "threads": threads, "settings": settings.worker_spec("-", threads, 0),
                       "ort": ort_version, "round": round_}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Job:
    name: str
    path: Path
    threads: int
    vocab_size: int | None
    key: str
    result: dict | None = field(default=None)


def run_job(job: Job, settings: Settings, raw_dir: Path | None, resume: bool) -> dict:
    """Measure one (model, threads) pair in a fresh process, reusing a saved result when resuming."""
    saved = raw_dir / f"{job.key}.json" if raw_dir is not None else None
    if resume and saved is not None and saved.exists():
        data = json.loads(saved.read_text())
        data["resumed"] = True
        return data
    data = run_worker(settings.worker_spec(str(job.path), job.threads, job.vocab_size), settings.timeout_s)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, saved)
    return data


def merge_rounds(results: list[dict]) -> dict:
    """One result from several rounds of the same measurement.

    Interference from other work on a shared machine only ever adds time, so each latency case keeps the round
    with the lowest median (and that round's p95), throughput the round with the highest rate; memory keeps the
    round with the highest peak (the conservative figure). Every round's figures stay under "rounds"."""
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    merged["latency_b1"] = {
        seq: min((r["latency_b1"][seq] for r in results), key=lambda c: c["median_ms"])
        for seq in results[0]["latency_b1"]}
    if "throughput" in results[0]:
        merged["throughput"] = max((r["throughput"] for r in results), key=lambda c: c["seq_per_s"])
    merged["memory"] = max((r["memory"] for r in results), key=lambda m: m["final"]["peak_rss"])
    merged["load_s"] = statistics.median(r["load_s"] for r in results)
    merged["resumed"] = all(r.get("resumed") for r in results)
    merged["rounds"] = [{
        "latency_b1_median_ms": {seq: c["median_ms"] for seq, c in r["latency_b1"].items()},
        "throughput_seq_per_s": r.get("throughput", {}).get("seq_per_s"),
        "peak_rss": r["memory"]["final"]["peak_rss"], "load_s": r["load_s"], "pid": r["pid"],
    } for r in results]
    return merged
