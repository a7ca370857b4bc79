"""The run directory: one record per cell, written atomically, plus tidy tables.

Layout of a run directory (the contract between running and reporting; see docs/RECORDS.md)::

    spec.yaml                 the spec as given (latest invocation)
    invocations/<id>.json     environment and command line of every invocation
    records/<cell_id>.json    one Record per cell (kind eval | probe | speed)
    artifacts/                large side files (reference next-token logits of the probe)
    tables/cells.{csv,parquet}        one row per cell x metric
    tables/samples.parquet            one row per cell x prompt x metric (for confidence intervals)
    tables/generations.parquet        one row per cell x prompt x sample: the generated text
    tables/run.json                   spec, environments, cell counts: what a report needs besides tables

Every file is written to a temporary name in the same folder and renamed over the target, so a
killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness_ext.errors import StoreError

RECORD_VERSION = 1
#: The writer lock of a run directory, and the note beside it naming its holder.
LOCK_FILE = ".writer.lock"
HOLDER_FILE = ".writer.json"
#: Columns of tables/cells.* describing a cell (then metric, value, stderr, lo, hi, n).
CELL_COLUMNS = (
    "cell_id",
    "kind",
    "status",
    "model",
    "scheme",
    "quant",
    "bits",
    "double_quant",
    "dtype",
    "compute_dtype",
    "device",
    "task",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "repetition_penalty",
    "seed",
    "batch_size",
    "mode",
    "grid_batched",
    "invocation",
    "error",
)
VALUE_COLUMNS = ("metric", "value", "stderr", "lo", "hi", "n")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Record(BaseModel):
    """One cell's outcome. ``metrics`` are aggregates (name -> value/stderr/lo/hi/n); ``sample_metrics``
    are per prompt (``doc_id`` plus metric values; probe rows also carry their grid point)."""

    model_config = ConfigDict(extra="forbid")

    record_version: int = RECORD_VERSION
    cell_id: str
    kind: Literal["eval", "probe", "speed"]
    label: str
    definition: dict[str, Any]
    status: Literal["ok", "failed"]
    error: str | None = None
    traceback: str | None = None  # failed on an unexpected error (a bug): the traceback, for the report
    started_at: str
    finished_at: str
    invocation: str
    metrics: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)  # probe: per grid point {point, metrics}
    sample_metrics: list[dict[str, Any]] = Field(default_factory=list)
    generations: list[dict[str, Any]] = Field(default_factory=list)  # doc_id, sample, prompt, text, new_tokens
    measurements: dict[str, Any] = Field(default_factory=dict)
    load: dict[str, Any] | None = None
    lm_eval: dict[str, Any] | None = None  # lm-eval's own results dict for this cell, as it is


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StoreError(f"cannot write in {path.parent}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _unlink(p: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, str subclasses plain str, unknown objects their str()."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, bool) or o is None:
        return o
    if isinstance(o, str):
        return str(o)
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, int):
        return int(o)
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _clean(o.item())
    return _json_default(o)


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=1, allow_nan=False)


class RunStore:
    """A run directory. Reading it needs nothing but this module: no model, no GPU."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.tables_dir = self.root / "tables"
        self.artifacts_dir = self.root / "artifacts"
        self.problems: list[str] = []  # corrupt or unreadable records found by load_records
        self._lock: Any = None  # the writer lock, held from begin() to release()

    # -- writing --------------------------------------------------------------------------------
    def begin(self, spec_text: str, environment: dict[str, Any]) -> str:
        """Create the directory, take its writer lock, store the spec and this invocation's
        environment; return its id. A second writer is refused with one line naming the holder."""
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the run directory {self.root}: {e.strerror or e}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"the run directory {self.root} is not writable")
        self.lock()
        inv = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        for stale in self._stale_temporary_files():  # left by a killed writer: never read, now removed
            _unlink(stale)
        atomic_write(self.root / "spec.yaml", spec_text)
        atomic_write(self.root / "invocations" / f"{inv}.json", dumps({"invocation": inv, **environment}))
        return inv

    def _stale_temporary_files(self) -> list[Path]:
        """Temporary files of the run's own folders. Only called holding the lock, which proves that
        no other writer is mid-write here (a report rendering into ``report/`` is left alone)."""
        folders = (self.records_dir, self.tables_dir, self.artifacts_dir, self.root / "invocations")
        return [*self.root.glob(".*.tmp"), *(p for f in folders if f.is_dir() for p in f.rglob(".*.tmp"))]

    def lock(self) -> None:
        """Take the run directory's writer lock (``.writer.lock``; who holds it: ``.writer.json``).

        One run directory has one writer: a second ``run`` on it is refused at once rather than
        computing the same cells and removing the first one's temporary files. The lock is the
        operating system's (flock), so a killed holder releases it; :meth:`release` gives it back."""
        if self._lock is not None:
            return
        from filelock import FileLock, Timeout

        lock = FileLock(self.root / LOCK_FILE, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(
                f"the run directory {self.root} is in use by another run ({self.holder()}); "
                "wait for it to finish, or give this run another --output-dir"
            ) from None
        except OSError as e:
            raise StoreError(f"cannot lock the run directory {self.root}: {e.strerror or e}") from None
        self._lock = lock
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now()}
        atomic_write(self.root / HOLDER_FILE, dumps(holder))

    def release(self) -> None:
        """Give the writer lock back (the holder note goes first, so it never names the next holder)."""
        if self._lock is None:
            return
        _unlink(self.root / HOLDER_FILE)
        self._lock.release()
        self._lock = None

    def holder(self) -> str:
        """Who holds the writer lock, as written by the holder: ``pid N on HOST since TIME``."""
        try:
            info = json.loads((self.root / HOLDER_FILE).read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def write(self, record: Record) -> None:
        atomic_write(self.records_dir / f"{record.cell_id}.json", dumps(record_dict(record)))

    def artifact(self, name: str) -> Path:
        """Path of an artifact file (its parent created); ``name`` must stay inside artifacts/."""
        path = (self.artifacts_dir / name).resolve()
        if self.artifacts_dir.resolve() not in path.parents:
            raise StoreError(f"artifact name {name!r} escapes the run directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def put_tensor(self, name: str, tensor: Any) -> None:
        """Store a tensor artifact atomically (e.g. the reference probe's logits)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(tensor, buf)
        atomic_write(self.artifact(name), buf.getvalue())

    def get_tensor(self, name: str) -> Any:
        """A stored tensor artifact, or None if there is none."""
        import torch

        path = self.artifact(name)
        return torch.load(path) if path.is_file() else None

    # -- reading --------------------------------------------------------------------------------
    def load_records(self) -> dict[str, Record]:
        """All readable records by cell id. Corrupt files are listed in :attr:`problems` and skipped
        (their cells count as not done and are recomputed); a newer record version is an error."""
        self.problems = []
        out: dict[str, Record] = {}
        if not self.records_dir.is_dir():
            return out
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                self.problems.append(f"{path.name}: unreadable ({type(e).__name__}); the cell will be recomputed")
                continue
            version = data.get("record_version") if isinstance(data, dict) else None
            if type(version) is int and version > RECORD_VERSION:
                raise StoreError(
                    f"{path}: written by a newer harness_ext (record version {version} > {RECORD_VERSION}); "
                    "upgrade harness_ext or use another output_dir"
                )
            if type(version) is not int or version != RECORD_VERSION:  # "1", 1.0, true: not written by us
                self.problems.append(
                    f"{path.name}: unreadable (record_version {version!r} is not {RECORD_VERSION}); "
                    "the cell will be recomputed"
                )
                continue
            try:
                rec = Record.model_validate(data)
            except ValidationError as e:
                self.problems.append(
                    f"{path.name}: invalid record ({e.error_count()} problems); the cell will be recomputed"
                )
                continue
            if rec.cell_id != path.stem:
                self.problems.append(f"{path.name}: holds cell {rec.cell_id}; the cell will be recomputed")
                continue
            if definition_hash(rec.definition) != rec.cell_id:
                self.problems.append(
                    f"{path.name}: unreadable (its definition does not hash to its cell id: edited by hand?); "
                    "the cell will be recomputed"
                )
                continue
            out[rec.cell_id] = rec
        return out

    def invocations(self) -> list[dict[str, Any]]:
        folder = self.root / "invocations"
        out = []
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    # -- tables ---------------------------------------------------------------------------------
    def export_tables(
        self, records: Iterable[Record], spec_text: str | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Path]:
        """Write the tidy tables (CSV and parquet) and ``run.json`` from ``records``."""
        import pandas as pd

        records = list(records)
        cells = pd.DataFrame(cell_rows(records), columns=[*CELL_COLUMNS, *VALUE_COLUMNS])
        samples = pd.DataFrame(sample_rows(records), columns=[*SAMPLE_COLUMNS])
        gens = pd.DataFrame(generation_rows(records), columns=[*GENERATION_COLUMNS])
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "cells.csv": self.tables_dir / "cells.csv",
            "cells.parquet": self.tables_dir / "cells.parquet",
            "samples.parquet": self.tables_dir / "samples.parquet",
            "generations.parquet": self.tables_dir / "generations.parquet",
            "run.json": self.tables_dir / "run.json",
        }
        atomic_write(paths["cells.csv"], cells.to_csv(index=False))
        for name, frame in (("cells.parquet", cells), ("samples.parquet", samples), ("generations.parquet", gens)):
            atomic_write(paths[name], _parquet_bytes(frame))
        run = {
            "record_version": RECORD_VERSION,
            "spec_text": spec_text if spec_text is not None else _read(self.root / "spec.yaml"),
            "invocations": self.invocations(),
            "loads": _loads(records),
            "problems": self.problems,
            **(extra or {}),
        }
        atomic_write(paths["run.json"], dumps(run))
        return paths


def definition_hash(definition: dict[str, Any]) -> str:
    """The cell id a definition hashes to (:func:`harness_ext.spec.content_hash`)."""
    from harness_ext.spec import content_hash

    return content_hash(definition)


def record_dict(record: Record) -> dict[str, Any]:
    """A record as stored. ``traceback`` is left out when empty, so that records without one stay
    byte-identical to those written before the field existed."""
    return record.model_dump(mode="python", exclude={"traceback"} if record.traceback is None else None)


class MemoryStore:
    """What a remote worker writes into: records and tensor artifacts kept in memory and sent back
    to the driver, which writes them into the run directory (the same contract as :class:`RunStore`)."""

    def __init__(self, artifacts: dict[str, Any] | None = None):
        self.records: list[Record] = []
        self.artifacts = dict(artifacts or {})
        self.new_artifacts: dict[str, Any] = {}
        self.problems: list[str] = []

    def write(self, record: Record) -> None:
        self.records = [r for r in self.records if r.cell_id != record.cell_id] + [record]

    def put_tensor(self, name: str, tensor: Any) -> None:
        self.artifacts[name] = self.new_artifacts[name] = tensor

    def get_tensor(self, name: str) -> Any:
        return self.artifacts.get(name)


def _read(p: Path) -> str | None:
    try:
        return p.read_text(encoding="utf-8")
    except OSError:
        return None


def _parquet_bytes(frame: Any) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _describe(rec: Record) -> dict[str, Any]:
    d = rec.definition
    scheme = d.get("scheme", {})
    point = d.get("point") or {}
    params = d.get("params", {})
    bits = {"nf4": 4, "fp4": 4, "int8": 8}.get(scheme.get("quant"), 32 if scheme.get("dtype") == "float32" else 16)
    return {
        "cell_id": rec.cell_id,
        "kind": rec.kind,
        "status": rec.status,
        "model": d.get("model", {}).get("name"),
        "scheme": scheme.get("name"),
        "quant": scheme.get("quant"),
        "bits": bits,
        "double_quant": scheme.get("double_quant"),
        "dtype": scheme.get("dtype"),
        "compute_dtype": scheme.get("compute_dtype"),
        "device": d.get("device"),
        "task": d.get("task") if rec.kind != "probe" else f"probe:{d.get('task')}",
        "temperature": point.get("temperature"),
        "top_k": point.get("top_k"),
        "top_p": point.get("top_p"),
        "max_new_tokens": point.get("max_new_tokens"),
        "repetition_penalty": point.get("repetition_penalty"),
        "seed": d.get("seed"),
        "batch_size": params.get("batch_size"),
        "mode": params.get("mode"),
        "grid_batched": rec.measurements.get("grid_batched"),
        "invocation": rec.invocation,
        "error": rec.error,
    }


def cell_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per cell x metric (probe: per grid point x metric); failed cells get one row."""
    rows = []
    for rec in records:
        base = _describe(rec)
        if rec.status != "ok":
            rows.append({**base, "metric": None, "value": None, "stderr": None, "lo": None, "hi": None, "n": None})
            continue
        if rec.kind == "probe":
            for pt in rec.points:
                b = {**base, **{k: pt["point"][k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")}}
                for metric, v in pt["metrics"].items():
                    rows.append({**b, "metric": metric, **_value(v)})
            continue
        for metric, v in rec.metrics.items():
            rows.append({**base, "metric": metric, **_value(v)})
    return rows


def _value(v: dict[str, Any]) -> dict[str, Any]:
    return {"value": v.get("value"), "stderr": v.get("stderr"), "lo": v.get("lo"), "hi": v.get("hi"), "n": v.get("n")}


SAMPLE_COLUMNS = (
    "cell_id",
    "kind",
    "model",
    "scheme",
    "task",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "repetition_penalty",
    "seed",
    "doc_id",
    "metric",
    "value",
)


def sample_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per cell x prompt x metric, for bootstrap confidence intervals and paired differences."""
    rows = []
    keys = (
        "cell_id",
        "kind",
        "model",
        "scheme",
        "task",
        "temperature",
        "top_k",
        "top_p",
        "max_new_tokens",
        "repetition_penalty",
        "seed",
    )
    for rec in records:
        if rec.status != "ok":
            continue
        base = {k: v for k, v in _describe(rec).items() if k in keys}
        for s in rec.sample_metrics:
            b = base
            if "point" in s:
                b = {**base, **{k: s["point"][k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")}}
            for metric, value in s.items():
                if metric in ("doc_id", "point"):
                    continue
                rows.append({**b, "doc_id": s["doc_id"], "metric": metric, "value": value})
    return rows


GENERATION_COLUMNS = (
    "cell_id",
    "model",
    "scheme",
    "task",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "repetition_penalty",
    "seed",
    "doc_id",
    "sample",
    "prompt",
    "text",
    "new_tokens",
    "finish",
)


def generation_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        if rec.status != "ok" or rec.kind != "eval":
            continue
        base = {k: v for k, v in _describe(rec).items() if k in GENERATION_COLUMNS}
        for g in rec.generations:
            rows.append(
                {**base, **{k: g.get(k) for k in ("doc_id", "sample", "prompt", "text", "new_tokens", "finish")}}
            )
    return rows


def _loads(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One entry per (model, scheme): the load information of its most recent record."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if rec.load:
            key = (rec.definition["model"]["name"], rec.definition["scheme"]["name"])
            fields = {k: v for k, v in rec.load.items() if k != "scheme"}
            seen[key] = {**fields, "model": key[0], "scheme": key[1], "scheme_fields": rec.load.get("scheme")}
    return list(seen.values())
