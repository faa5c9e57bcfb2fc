"""The bench's input: the project's trained models, as a JSON file the toolkit writes (``models.json``).

Format (a JSON object with a ``models`` list, or just the list)::

    {
      "title": "Rotten Tomatoes sentiment, test split (1,281 reviews)",   # optional, shown in the report
      "models": [
        {"name": "teacher fp32", "onnx": "teacher/model.onnx", "role": "teacher",
         "accuracy": 0.847, "accuracy_ci95": 0.020, "macro_f1": 0.846},
        {"name": "teacher int8", "onnx": "teacher/model.int8.onnx", "role": "teacher-int8", "accuracy": 0.843},
        {"name": "student half width", "onnx": "shrink/model.onnx", "role": "student-step", "accuracy": 0.80},
        {"name": "+ vocab trim", "onnx": "vocab/model.onnx", "role": "student-step", "accuracy": 0.80},
        {"name": "+ pruning", "onnx": "prune/model.onnx", "role": "student-step", "accuracy": 0.79},
        {"name": "+ int8 (shipped)", "onnx": "quantize/model.onnx", "role": "final", "accuracy": 0.79}
      ]
    }

Fields of an entry:
    name        required, unique: the row's label
    onnx        required: path of the .onnx file, relative to the JSON file's folder (or absolute); inputs named
                input_ids, attention_mask and optionally token_type_ids / position_ids, first output = logits
    role        "teacher" (the original model: the baseline of the "vs teacher" ratios and of the targets; the
                first such entry if several), "final" (the student that is shipped: the targets are checked on
                it), "student-step", "teacher-int8", "reference" or any other word; default "other"
    accuracy    optional, test accuracy as a fraction in [0, 1]
    accuracy_ci95, macro_f1   optional, fractions in [0, 1]
    params      optional, parameter count (default: counted from the ONNX initializers)
    vocab_size  optional, embedding rows (default: read from the graph; token ids are drawn below it)
    notes       optional free text, shown in the report

Rows keep the file's order. The toolkit can write this file with :func:`write_models_json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

KNOWN_ROLES = ("teacher", "teacher-int8", "student-step", "final", "reference", "other")


class EntryError(ValueError):
    pass


@dataclass
class ModelEntry:
    name: str
    onnx: Path
    role: str = "other"
    accuracy: float | None = None
    accuracy_ci95: float | None = None
    macro_f1: float | None = None
    params: int | None = None
    vocab_size: int | None = None
    notes: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, base: Path | None = None) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        path = Path(self.onnx)
        if base is not None:
            try:
                path = path.resolve().relative_to(Path(base).resolve())
            except ValueError:
                path = path.resolve()
        d["onnx"] = str(path)
        d.update(self.extra)
        return d


def _fraction(entry: dict, key: str, where: str) -> float | None:
    v = entry.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
        raise EntryError(f"{where}: {key!r} must be a fraction in [0, 1] (got {v!r}); 84.7% is 0.847")
    return float(v)


def parse_models(data, base_dir: Path) -> tuple[list[ModelEntry], dict]:
    """Validate the decoded JSON; returns the entries and the file's other top-level fields."""
    meta: dict = {}
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if k != "models"}
        data = data.get("models")
    if not isinstance(data, list):
        raise EntryError("models file: expected a list of entries or an object with a 'models' list")
    entries: list[ModelEntry] = []
    names: set[str] = set()
    known = {"name", "onnx", "role", "accuracy", "accuracy_ci95", "macro_f1", "params", "vocab_size", "notes"}
    for i, e in enumerate(data):
        where = f"models[{i}]"
        if not isinstance(e, dict):
            raise EntryError(f"{where}: expected an object")
        name = e.get("name")
        if not isinstance(name, str) or not name.strip():
            raise EntryError(f"{where}: 'name' is required")
        where = f"models[{i}] ({name})"
        if name in names:
            raise EntryError(f"{where}: duplicate name")
        names.add(name)
        onnx_path = e.get("onnx")
        if not isinstance(onnx_path, str) or not onnx_path:
            raise EntryError(f"{where}: 'onnx' (path of the .onnx file) is required")
        path = Path(onnx_path)
        if not path.is_absolute():
            path = Path(base_dir) / path
        path = path.resolve()
        if not path.is_file():
            raise EntryError(f"{where}: ONNX file not found: {path}")
        role = e.get("role", "other")
        if not isinstance(role, str) or not role:
            raise EntryError(f"{where}: 'role' must be a string")
        for key in ("params", "vocab_size"):
            if e.get(key) is not None and (not isinstance(e[key], int) or e[key] <= 0):
                raise EntryError(f"{where}: {key!r} must be a positive integer")
        entries.append(ModelEntry(
            name=name, onnx=path, role=role, accuracy=_fraction(e, "accuracy", where),
            accuracy_ci95=_fraction(e, "accuracy_ci95", where), macro_f1=_fraction(e, "macro_f1", where),
            params=e.get("params"), vocab_size=e.get("vocab_size"), notes=e.get("notes"),
            extra={k: v for k, v in e.items() if k not in known}))
    return entries, meta


def load_models_json(path: Path) -> tuple[list[ModelEntry], dict]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EntryError(f"models file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise EntryError(f"models file {path}: invalid JSON: {e}") from e
    return parse_models(data, path.parent)


def write_models_json(path: Path, entries: list[ModelEntry | dict], title: str | None = None) -> Path:
    """Write the bench's input file; ONNX paths are stored relative to its folder where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in entries:
        if isinstance(e, dict):
            e = ModelEntry(**{**e, "onnx": Path(e["onnx"])})
        rows.append(e.to_json(base=path.parent))
    doc: dict = {"models": rows}
    if title:
        doc = {"title": title, **doc}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
