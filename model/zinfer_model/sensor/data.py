"""The smartwatch exercise recordings that `seglearn` ships, the subject-wise split, windowing and normalisation.

`seglearn/data/watch_dataset.npy` (seglearn 1.2.5, BSD-3-Clause; `seglearn.datasets.load_watch`): 140 recordings
of 6-axis inertial data at 50 Hz from a smartwatch worn while study subjects performed sets of 20 shoulder
exercise repetitions (Burns et al., 2018, "Shoulder physiotherapy exercise recognition: machine learning the
inertial signals from a smartwatch", arXiv:1802.01489). Keys: X (list of [T, 6] float64 arrays, channels
`X_labels` = ax, ay, az, wx, wy, wz: accelerometer xyz then gyroscope xyz), y (class index into `y_labels`, 7
exercises), subject (1..10), side (1 = right, 0 = left). The file is read without importing seglearn (its
scipy/scikit-learn dependencies are not installed).

Windows are [start, start + window) for start = 0, hop, 2·hop, … while start + window <= T, each labelled with its
recording's class. Normalisation statistics (per channel, float32) come from the training split's windows only;
the model takes x_norm = (x - mean) / std computed in float32 (the daemon applies it, not the model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import MissingPackage, package_dir

DATA_FILE = "seglearn/data/watch_dataset.npy"
PIP_HINT = ("model/setup-venv.sh (or: .venv/bin/python -m pip install --no-deps seglearn==1.2.5, pinned in "
            "model/requirements-data.txt)")
# The dataset's channel names (X_labels) and the manifest's names for them, in the same order.
CHANNEL_NAMES = {"ax": "acc_x", "ay": "acc_y", "az": "acc_z", "wx": "gyro_x", "wy": "gyro_y", "wz": "gyro_z"}
# The dataset's class names (y_labels) as the study names the exercises.
LABEL_MEANING = {"PEN": "pendulum", "ABD": "abduction", "FEL": "forward elevation", "IR": "internal rotation",
                 "ER": "external rotation", "TRAP": "trapezius extension", "ROW": "upright row"}
SAMPLE_RATE_HZ = 50.0


def watch_path() -> Path:
    try:
        path = package_dir("seglearn") / "data" / "watch_dataset.npy"
    except MissingPackage as e:
        raise MissingPackage(f"package 'seglearn' is not installed (it ships {DATA_FILE}); run {PIP_HINT}. "
                             "Nothing is downloaded at run time.") from e
    if not path.is_file():
        raise MissingPackage(f"{path} is missing: reinstall it with {PIP_HINT}")
    return path


@dataclass
class Recording:
    index: int            # position in the dataset file
    subject: int
    label: int
    side: int
    x: np.ndarray         # [T, C] float32 (the raw values, as a sensor publishes them)


@dataclass
class WatchData:
    recordings: list[Recording]
    labels: list[str]     # index = class id = logits column
    channels: list[str]   # manifest names, in the file's column order
    source: str


def load_watch() -> WatchData:
    path = watch_path()
    d = np.load(path, allow_pickle=True).item()
    x_labels, y_labels = list(d["X_labels"]), list(d["y_labels"])
    if len(d["X"]) != len(d["y"]) or any(a.ndim != 2 or a.shape[1] != len(x_labels) for a in d["X"]):
        raise ValueError(f"{path}: unexpected layout (X {len(d['X'])}, y {len(d['y'])}, X_labels {x_labels})")
    unknown = [c for c in x_labels if c not in CHANNEL_NAMES]
    if unknown:
        raise ValueError(f"{path}: unknown channels {unknown}")
    recs = [Recording(i, int(s), int(y), int(side), np.asarray(x, dtype=np.float32))
            for i, (x, y, s, side) in enumerate(zip(d["X"], d["y"], d["subject"], d["side"]))]
    return WatchData(recs, y_labels, [CHANNEL_NAMES[c] for c in x_labels], str(path))


# ------------------------------------------------------------------------------------------------- split
@dataclass
class SubjectSplit:
    train: list[int]
    val: list[int]
    test: list[int]

    def of(self, name: str) -> list[int]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def split_subjects(subjects, seed: int, fractions: tuple[float, float] = (0.6, 0.2)) -> SubjectSplit:
    """Shuffle the distinct subject ids with `seed` and cut them train/val/test (no subject in two splits)."""
    ids = sorted(set(int(s) for s in subjects))
    random.Random(seed).shuffle(ids)
    n = len(ids)
    n_train = max(1, round(fractions[0] * n))
    n_val = max(1, round(fractions[1] * n)) if n - n_train >= 2 else 0
    return SubjectSplit(sorted(ids[:n_train]), sorted(ids[n_train:n_train + n_val]), sorted(ids[n_train + n_val:]))


def recordings_of(data: WatchData, subjects: list[int]) -> list[Recording]:
    keep = set(subjects)
    return [r for r in data.recordings if r.subject in keep]


# --------------------------------------------------------------------------------------------- windowing
def window_starts(length: int, window: int, hop: int) -> list[int]:
    """[0, hop, 2·hop, …] while start + window <= length (the daemon's windows)."""
    return list(range(0, length - window + 1, hop)) if length >= window else []


@dataclass
class Windows:
    x: np.ndarray                 # [N, window, C] float32, raw
    y: np.ndarray                 # [N] int64
    recording: np.ndarray         # [N] dataset index of the window's recording
    start: np.ndarray             # [N] first sample
    subjects: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def limit(self, n: int) -> "Windows":
        """Every k-th window (all classes stay in), for --quick runs and tests."""
        if not n or n >= len(self):
            return self
        idx = (np.arange(n) * (len(self) / n)).astype(np.int64)
        return Windows(self.x[idx], self.y[idx], self.recording[idx], self.start[idx], self.subjects)


def make_windows(recs: list[Recording], window: int, hop: int) -> Windows:
    xs, ys, rec, st = [], [], [], []
    for r in recs:
        for s in window_starts(len(r.x), window, hop):
            xs.append(r.x[s:s + window])
            ys.append(r.label)
            rec.append(r.index)
            st.append(s)
    c = recs[0].x.shape[1] if recs else 0
    return Windows(np.stack(xs).astype(np.float32) if xs else np.zeros((0, window, c), np.float32),
                   np.asarray(ys, dtype=np.int64), np.asarray(rec, dtype=np.int64), np.asarray(st, dtype=np.int64),
                   sorted({r.subject for r in recs}))


# ------------------------------------------------------------------------------------------ normalisation
def channel_stats(train: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over every sample of the given (training) windows, accumulated
    in float64 and stored as float32 (what the manifest carries)."""
    flat = train.x.reshape(-1, train.x.shape[-1]).astype(np.float64)
    mean = flat.mean(0)
    std = flat.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """x_norm = (x - mean) / std, every operand float32 (the daemon computes exactly this)."""
    return (np.asarray(x, dtype=np.float32) - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


# ------------------------------------------------------------------------------ batches for train.fit
@dataclass
class WindowBatch:
    frames: torch.Tensor          # [B, window, C] float32, normalised
    labels: torch.Tensor          # [B]
    index: list[int]              # positions in the window set


class WindowData:
    """Normalised windows as the training loop (`zinfer_model.train.fit`) consumes them: `len()`, a batch order
    that depends only on the rng, and batches built from index chunks. Optional jitter augmentation (random
    per-window amplitude scaling and Gaussian noise in normalised units) is applied when a batch is built with
    an rng."""

    def __init__(self, windows: Windows, mean: np.ndarray, std: np.ndarray, *, scale: float = 0.0,
                 noise: float = 0.0):
        self.windows = windows
        self.x = torch.from_numpy(normalise(windows.x, mean, std))
        self.y = torch.from_numpy(windows.y)
        self.scale, self.noise = scale, noise
        self._gen: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.y)

    def order(self, batch_size: int, rng: random.Random | None) -> list[list[int]]:
        idx = list(range(len(self)))
        if rng is not None:
            rng.shuffle(idx)
            self._gen = torch.Generator().manual_seed(rng.randrange(2**31))
        return [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]

    def batch(self, chunk: list[int], augment: bool = False) -> WindowBatch:
        x = self.x[chunk]
        if augment and self._gen is not None and (self.scale or self.noise):
            b, _, c = x.shape
            if self.scale:
                x = x * (1.0 + self.scale * torch.randn(b, 1, c, generator=self._gen))
            if self.noise:
                x = x + self.noise * torch.randn(x.shape, generator=self._gen)
        return WindowBatch(x, self.y[chunk], list(chunk))

    def eval_batches(self, batch_size: int = 256):
        for s in range(0, len(self), batch_size):
            chunk = list(range(s, min(len(self), s + batch_size)))
            yield WindowBatch(self.x[chunk], self.y[chunk], chunk)
