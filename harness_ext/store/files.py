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
killed run leaves either the old file or the new one, never half of one. Every file is read as a
regular file of bounded size and JSON of bounded depth: a run directory may come from elsewhere,
and a FIFO, a link to a device or a deeply nested file in it is listed as unreadable, not read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from harness_ext.errors import StoreError
from harness_ext.store import run_info
from harness_ext.store.reading import MAX_JSON_BYTES, UnreadableFile, file_kind, read_json, read_regular, why_unreadable
from harness_ext.store.record import RECORD_VERSION, Record, definition_hash, dumps, now, record_dict

#: The writer lock of a run directory, and the note beside it naming its holder.
LOCK_FILE = ".writer.lock"
HOLDER_FILE = ".writer.json"


@runtime_checkable
class Store(Protocol):
    """Where a runner puts what a cell produced: its record and its tensor artifacts. A
    :class:`RunStore` writes them into the run directory; a :class:`MemoryStore` keeps them for a
    remote worker to send back to the driver."""

    problems: list[str]

    def write(self, record: Record) -> None: ...

    def put_tensor(self, name: str, tensor: Any) -> None: ...

    def get_tensor(self, name: str) -> Any: ...


def _write_target(path: Path, through_links: bool) -> Path:
    """Where writing ``path`` goes, never over a folder, a FIFO or a device (one :class:`StoreError`
    line). A symbolic link is written through to the file it names when ``through_links``; otherwise
    the link itself is replaced by the new file, and whatever it pointed at is left alone."""
    target = Path(os.path.realpath(path)) if through_links and path.is_symlink() else path
    try:
        mode = target.lstat().st_mode
    except OSError:  # nothing there yet (or unreachable: the write will say so)
        return target
    if stat.S_ISDIR(mode):
        raise StoreError(f"cannot write {path}: Is a directory")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise StoreError(f"cannot write {path}: it is {file_kind(mode)}, not a regular file; give a file path")
    return target


def atomic_write(path: Path, data: bytes | str, *, through_links: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename); a folder,
    FIFO or device there is refused in one line, never replaced.

    ``through_links``: a symbolic link at ``path`` is written through (its target replaced, keeping
    its permissions) — for a path the user named (``schema -o``). Without it (every file of a run
    directory or a report, which may have come from elsewhere) the link itself is replaced, so that
    a link planted in a received run directory cannot make a run or a report overwrite its target."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot write in {path.parent}: {e.strerror or e}") from None
    target = _write_target(path, through_links)
    try:
        kept = target.stat() if target.is_file() and not target.is_symlink() else None
        mode = stat.S_IMODE(kept.st_mode) if kept else 0o666 & ~_UMASK
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise StoreError(f"cannot write in {target.parent}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, mode)  # mkstemp creates 0600: the usual permissions, or those of the file replaced
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
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
            info = read_json(self.root / HOLDER_FILE, max_bytes=2**16)
            return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def writer(self) -> str | None:
        """Who is writing this run directory now (:meth:`holder`), or None when no run holds its lock.
        Reads only: the lock file is opened read-only and tested with a shared, non-blocking lock."""
        try:
            import fcntl
        except ImportError:  # no flock here: nobody can be told apart
            return None
        try:
            fd = os.open(self.root / LOCK_FILE, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held exclusively: a run is writing
            return self.holder()
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

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
                data = read_json(path)
            except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                self.problems.append(f"{path.name}: unreadable ({why_unreadable(e)}); the cell will be recomputed")
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
            if rec.definition.get("kind") != rec.kind:
                self.problems.append(
                    f"{path.name}: unreadable (its kind {rec.kind!r} is not its definition's "
                    f"{rec.definition.get('kind')!r}); the cell will be recomputed"
                )
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
        """The environment of every invocation (``invocations/*.json``); a file that cannot be read,
        or holds no JSON object, is left out and listed once in :attr:`problems`."""
        folder = self.root / "invocations"
        out = []
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = read_json(p)
                if (wrong := run_info.problem(data, run_info.Invocation)) is not None:
                    raise UnreadableFile(wrong)
            except (OSError, ValueError) as e:
                problem = f"invocations/{p.name}: unreadable ({why_unreadable(e)}); left out"
                if problem not in self.problems:
                    self.problems.append(problem)
                continue
            out.append(data)
        return out

    # -- tables ---------------------------------------------------------------------------------
    def export_tables(
        self, records: Iterable[Record], spec_text: str | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Path]:
        """Write the tidy tables (CSV and parquet; :mod:`harness_ext.store.tables`) and ``run.json``."""
        from harness_ext.store import tables  # pyarrow and pandas: only where tables are written

        spec_text = spec_text if spec_text is not None else _read(self.root / "spec.yaml")
        files = tables.table_files(records, spec_text, self.invocations(), self.problems, extra)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: self.tables_dir / name for name in tables.TABLE_FILES}
        for name in tables.TABLE_FILES:
            atomic_write(paths[name], files[name])
        return paths


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
        return read_regular(p, MAX_JSON_BYTES).decode("utf-8")
    except (OSError, ValueError):
        return None
