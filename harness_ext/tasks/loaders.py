"""Datasets of our tasks: the JSONL shipped in ``data/`` or a user's own file, validated.

lm-eval calls these through ``custom_dataset`` (with the task's ``dataset_kwargs`` and metadata),
which keeps data paths relative to the package instead of the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
REQUIRED_FIELDS = {
    "nextword": ("context", "target"),
    "continuation": ("prompt",),
}


class TaskDataError(ValueError):
    """A task data file is missing, empty, or malformed (the message names file and line)."""


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read a JSONL file of objects with the ``required`` string fields; reject broken lines,
    empty files and duplicate rows with a message that names the line."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: data file not found")
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read: {e.strerror or e}") from None
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskDataError(
                f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line): save it as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            json.dumps(row, ensure_ascii=False).encode("utf-8")  # a "\ud800" escape: a lone surrogate, no text
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise TaskDataError(f"{path}:{lineno}: nested too deeply (a row is one flat JSON object)") from None
        except UnicodeEncodeError as e:  # a tokenizer could not encode it either
            bad = f"\\u{ord(e.object[e.start]):04x}"
            raise TaskDataError(f"{path}:{lineno}: holds a lone surrogate ({bad}), which is not text") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{path}:{lineno}: each line must be a JSON object")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise TaskDataError(f"{path}:{lineno}: field {key!r} must be a non-empty string")
        key = json.dumps([row[k] for k in required])
        if key in seen:
            raise TaskDataError(f"{path}:{lineno}: duplicate of line {seen[key]} ({', '.join(required)} repeated)")
        seen[key] = lineno
        row.setdefault("id", f"{path.stem}-{lineno}")
        rows.append(row)
    if not rows:
        raise TaskDataError(f"{path}: the data file has no rows")
    return rows


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    columns = sorted({k for r in rows for k in r})
    table = {c: [r.get(c) if isinstance(r.get(c), str) else json.dumps(r.get(c)) for r in rows] for c in columns}
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(table)})


def _cached_dataset(path: Path, kind: str) -> Any:
    """The dataset of a file, parsed once per process while the file is unchanged (the runner builds
    one task object per grid point, each of which asks for its data)."""
    stat = path.stat() if path.is_file() else None
    key = (str(path.resolve()), kind, stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
    if key not in _CACHE:
        _CACHE[key] = _dataset(read_jsonl(path, REQUIRED_FIELDS[kind]))
    return _CACHE[key]


_CACHE: dict[tuple, Any] = {}


def load_nextword(data_file: str | None = None, **_: Any) -> Any:
    """``custom_dataset`` of quant_nextword: ``{"context", "target"}`` rows."""
    return _cached_dataset(Path(data_file) if data_file else DATA_DIR / "nextword.jsonl", "nextword")


def load_continuation(data_file: str | None = None, **_: Any) -> Any:
    """``custom_dataset`` of quant_continuation: ``{"prompt"}`` rows (``genre`` optional)."""
    return _cached_dataset(Path(data_file) if data_file else DATA_DIR / "continuation.jsonl", "continuation")
