"""The contracts inside ``harness_ext.run``: what executors and cell handlers may use of a runner,
and what the runner needs of a store, an executor and a loaded model.

Executors and handlers import this module, never :mod:`harness_ext.run.runner`; the runner
imports them. So the runner's public API (:class:`RunnerAPI`) is the only way in, and there is no
import cycle. Where a pair writes is the store's own :class:`~harness_ext.store.Store`; a whole run
needs a :class:`RunDirectory`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness_ext.store import Store

if TYPE_CHECKING:
    import torch

    from harness_ext.run.schedule import UnitKey
    from harness_ext.spec import Cell, ModelSpec, StudySpec
    from harness_ext.spec.schemes import Scheme
    from harness_ext.store import Record

#: The records of a run by cell id: read at the start, updated as cells finish.
Records = dict[str, "Record"]
#: Per task name: its identity for the cells (base task, data file and hash, generative or not).
TaskParams = dict[str, dict[str, Any]]
#: Work units in order: the cells that share one load of a (model, scheme) (see ``schedule``).
Pairs = dict["UnitKey", list["Cell"]]
#: (prompt, text) pairs to score under a reference model.
TextPairs = list[tuple[str, str]]
#: ``progress(done, total)``, called after each scoring batch.
Progress = Callable[[int, int], None] | None


class QuantLM(Protocol):
    """What the run package uses of a loaded ``hf-quant`` model (``harness_ext.backend.HFQuantLM``)."""

    model: torch.nn.Module
    tokenizer: Any
    load_info: Any  # the backend's LoadInfo dataclass, or None
    grid_batching: bool
    show_progress: bool
    progress_hook: Callable[[int, int], None] | None  # (rows generated, rows) after each generate call

    @property
    def device(self) -> torch.device: ...

    @property
    def max_length(self) -> int: ...

    @property
    def prefix_token_id(self) -> int: ...

    def tok_encode(self, string: str, add_special_tokens: bool | None = None) -> list[int]: ...

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]: ...

    def pop_calls(self) -> list[Any]: ...


@runtime_checkable
class RunDirectory(Store, Protocol):
    """What a whole run needs of its run directory (``RunStore``): records to resume from, the
    writer lock, the invocation log and the exported tables."""

    root: Path

    def load_records(self) -> dict[str, Record]: ...

    def begin(self, spec_text: str, environment: dict[str, Any]) -> str: ...

    def export_tables(
        self, records: Iterable[Record], spec_text: str | None = None, extra: dict[str, Any] | None = None
    ) -> Any: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class PairWork:
    """One loaded (model, scheme) and what the handlers of its cells share."""

    lm: QuantLM
    load: dict[str, Any] | None  # the load's facts, stored in every record of the pair
    records: Records
    task_params: TaskParams


class RunnerAPI(Protocol):
    """The runner as executors and cell handlers see it (implemented by ``harness_ext.run.Runner``)."""

    spec: StudySpec
    spec_text: str
    device: str  # resolved: "cpu", "cuda", "cuda:1", ...
    invocation: str  # this invocation's id, stored in every record
    progress: bool
    loads: list[tuple[str, str]]  # (model, scheme) of every load for cells, in order
    scoring_loads: list[tuple[str, str]]  # ... and of every load for reference scoring

    @property
    def store(self) -> Store: ...

    def load_lm(self, model: ModelSpec, scheme: Scheme, *, scoring: bool = False) -> QuantLM:
        """Load (model, scheme); counted in ``loads`` (``scoring_loads`` with ``scoring``)."""
        ...

    def run_pair(self, cells: list[Cell], records: Records, task_params: TaskParams) -> None:
        """Load a unit's (model, scheme) once and run its cells; every cell gets a record."""
        ...

    def check_time(self) -> None:
        """Raise ``TimeLimitReached`` once the run's time limit has passed (call between cells)."""
        ...

    def new_record(self, cell: Cell, started: str, **fields: Any) -> Record:
        """A record of ``cell`` (identity, label, definition, times, invocation) with ``fields``."""
        ...

    def save(self, rec: Record, records: Records) -> None:
        """Store a finished record, count it as ran in this invocation and say it on the console."""
        ...

    def fail(
        self, cells: list[Cell], records: Records, error: str, *, started: str | None = None, **fields: Any
    ) -> None:
        """Store every cell of ``cells`` as failed with the one-line ``error`` (``fields``: a bug's
        ``traceback``, the pair's ``load``)."""
        ...

    def run_cell(self, cell: Cell, work: PairWork, compute: Callable[[], dict[str, Any]]) -> None:
        """Run one cell's ``compute`` (record fields); store it as ok, or failed with the reason."""
        ...

    def note(self, line: str, failure: bool = False) -> None:
        """A line under the progress bar (or in the log); failures always reach stderr."""
        ...

    def status(self, text: str) -> None:
        """What a long phase inside a cell is doing now (rows generated, prompts probed), shown in
        the progress bar; nothing without one."""
        ...


class RunnerFactory(Protocol):
    """How a Ray worker builds the runner for its pair: the driver's runner class, sent by reference."""

    def __call__(
        self,
        spec: StudySpec,
        spec_text: str,
        *,
        progress: bool,
        store: Store,
        device_map: str | None,
    ) -> RunnerAPI: ...


class CellHandler(Protocol):
    """Runs a loaded pair's cells of one kind and stores a record (ok or failed) for each.
    The registry of handlers by kind is :data:`harness_ext.run.handlers.HANDLERS`."""

    def __call__(self, runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None: ...


class Executor(Protocol):
    """Where the work units of a study run (``harness_ext.run.executors``)."""

    def run_pairs(self, runner: RunnerAPI, pairs: Pairs, records: Records, task_params: TaskParams) -> None:
        """Run every unit of ``pairs`` (each through :meth:`RunnerAPI.run_pair`), in order."""
        ...

    def score(
        self, runner: RunnerAPI, model: ModelSpec, ref: Scheme, pairs: TextPairs, progress: Progress = None
    ) -> list[float] | None:
        """Mean NLL of each (prompt, text) under the model's reference scheme."""
        ...
