"""Run a study spec: cells -> lm-eval (through ``hf-quant``) -> one stored record per cell.

Each (model, scheme) pair is loaded once; its cells run kind by kind through their handlers
(:mod:`harness_ext.run.handlers`: eval cells through ``lm_eval.simple_evaluate``, then probe cells;
speed rounds are loads of their own, see :mod:`harness_ext.run.schedule`). The unquantized
reference of each model runs first. Cells already stored as ``ok`` are skipped, so a re-run
resumes; a failing cell is recorded with its reason and the study goes on.

After all pairs, metrics against the reference (:mod:`harness_ext.run.reference`) are added to
the records; that needs one more load of each model's reference.

Executors and handlers see the runner through :class:`harness_ext.run.api.RunnerAPI`, its public
API: ``load_lm``, ``run_pair``, ``check_time``, ``new_record``, ``save``, ``fail``, ``run_cell``,
``note``.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from harness_ext import environment
from harness_ext.run import executors, schedule
from harness_ext.run.api import Executor, PairWork, QuantLM, Records, RunDirectory, Store, TaskParams
from harness_ext.run.failures import failure_fields, write_stderr
from harness_ext.run.handlers import HANDLERS
from harness_ext.run.quiet import library_warnings, quiet_lm_eval
from harness_ext.run.reference import add_run_reference_metrics
from harness_ext.spec import Cell, ModelSpec, StudySpec, expand, prepare_tasks, resolve_device
from harness_ext.spec.plan import device_type
from harness_ext.store import Record, RunStore, now, timing_family

if TYPE_CHECKING:
    from harness_ext.spec.schemes import Scheme

log = logging.getLogger("harness_ext")


@dataclass
class RunResult:
    """What one invocation did. ``ok``/``failed``: cells that ran in this invocation (``unexpected``:
    those of the failed that hit a bug, with a traceback in their record); ``skipped``: cells already
    finished before it (not run again); ``missing``: cells still without a finished record.
    ``ok + failed + skipped + missing == cells``."""

    run_dir: Path
    cells: int
    skipped: int
    ok: int
    failed: int
    wall_s: float
    missing: int = 0
    unexpected: int = 0
    loads: list[tuple[str, str]] = field(default_factory=list)
    scoring_loads: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False
    timed_out: bool = False


class TimeLimitReached(Exception):
    """The run's time limit passed: stop before the next cell (finished cells are stored)."""


# -- the runner ----------------------------------------------------------------------------------
class Runner:
    """Runs the cells of one spec into one run directory. Implements
    :class:`harness_ext.run.api.RunnerAPI`, the part of it executors and handlers call."""

    def __init__(
        self,
        spec: StudySpec,
        spec_text: str,
        *,
        argv: list[str] | None = None,
        progress: bool = True,
        output_dir: str | Path | None = None,
        time_limit_s: float | None = None,
        only: dict[str, set[str]] | None = None,
        redo: bool = False,
        executor: Executor | None = None,
        store: Store | None = None,
        device_map: str | None = None,
        add_rounds: int | None = None,
    ):
        """``store``: the run directory's store (default: a ``RunStore`` of ``output_dir`` or the
        spec's ``run_dir``); a :class:`~harness_ext.store.Store` suffices for :meth:`run_pair` (a Ray worker's).
        ``add_rounds``: time this many speed rounds beyond the highest one stored for this machine
        (instead of ``speed.rounds``)."""
        self.spec = spec
        self.spec_text = spec_text
        self.device = resolve_device(spec.device)
        self.store: Store = store if store is not None else RunStore(output_dir or spec.run_dir)
        self.executor: Executor = executor if executor is not None else executors.make(spec.executor)
        self.device_map = device_map  # "auto": spread over the GPUs this process sees (a Ray task's)
        self.argv = argv
        self.progress = progress
        self.loads: list[tuple[str, str]] = []
        self.scoring_loads: list[tuple[str, str]] = []
        self.invocation = ""  # set by run() (or, on a Ray worker, from the driver's)
        self.ran: dict[str, Record] = {}  # the records this invocation wrote, by cell id
        self.handlers = {kind: make() for kind, make in HANDLERS.items()}  # per run: handlers keep state
        self.time_limit_s = time_limit_s
        self.only = only or {}
        self.redo = redo  # recompute the selected cells even where a finished record exists
        self.add_rounds = add_rounds
        self.machine: str | None = None  # this machine's fingerprint key, set by run()
        self._pbar: Any = None
        self._tracebacks_shown: set[str] = set()
        self._deadline: float | None = None

    def _selected(self, cell: Cell) -> bool:
        """Whether ``only`` (key -> allowed values: model, scheme, kind, task, mode, batch) admits the cell."""
        values = {
            "model": cell.model.label,
            "scheme": cell.scheme.name,
            "kind": cell.kind,
            "task": cell.task.name if cell.task else None,
            "mode": cell.params.get("mode"),
            "batch": str(cell.params["batch_size"]) if cell.kind == "speed" else None,
        }
        return all(values[k] in allowed for k, allowed in self.only.items())

    def _run_store(self) -> RunDirectory:
        if not isinstance(self.store, RunDirectory):
            raise TypeError(f"Runner.run needs a run directory store, not {type(self.store).__name__}")
        return self.store

    def run(self) -> RunResult:
        """Run every selected cell not yet finished, then the metrics against the reference; export
        the tables whatever happens (Ctrl-C, the time limit), and say what was done."""
        start = time.perf_counter()
        store = self._run_store()
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        task_params = prepare_tasks(self.spec)
        records = store.load_records()  # first: a run directory of a newer version is left untouched
        problems = list(store.problems)
        env = environment.capture(self.argv, self.device)
        self.machine = env["fingerprint"]["key"]
        cells = expand(self._planned_spec(records), device_type(self.device), task_params, machine=self.machine)
        self.invocation = store.begin(self.spec_text, env)
        for p in problems:  # an unreadable record is recomputed; say so where a user sees it
            print(f"warning: {p}", file=sys.stderr)
        done = {c.id for c in cells if c.id in records and records[c.id].status == "ok"}
        todo = [c for c in cells if self._selected(c) and (self.redo or c.id not in done)]
        pairs = schedule.work_units(todo, self.spec.name, schedule.spec_pairs(self.spec))  # loads, in order
        self.ran = {}
        interrupted = timed_out = False
        self._deadline = start + self.time_limit_s if self.time_limit_s else None
        self._pbar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not self.progress, dynamic_ncols=True)
        try:
            with quiet_lm_eval(), library_warnings(self.note):
                try:
                    self.executor.run_pairs(self, dict(pairs), records, task_params)
                finally:
                    self._pbar.close()
                    self._pbar = None
                self.check_time()
                add_run_reference_metrics(self, self.executor, cells, records)
        except KeyboardInterrupt:
            interrupted = True
        except TimeLimitReached:
            timed_out = True
        finally:
            current = {c.id for c in cells}
            families = {timing_family(c.definition()) for c in cells} - {None}
            try:
                final = store.load_records()
                store.export_tables(  # with the rounds of other machines and invocations of the same cells
                    [r for r in final.values() if r.cell_id in current or timing_family(r.definition) in families],
                    self.spec_text,
                    extra=run_context(self.spec, cells),
                )
            finally:
                store.release()  # the writer lock taken by begin()
        ran = [self.ran[c.id] for c in cells if c.id in self.ran]
        finished = {c.id for c in cells if c.id in final and final[c.id].status == "ok"}
        skipped = len(finished - set(self.ran))
        return RunResult(
            run_dir=store.root,
            cells=len(cells),
            skipped=skipped,
            ok=sum(r.status == "ok" for r in ran),
            failed=sum(r.status == "failed" for r in ran),
            missing=len(cells) - len(ran) - skipped,
            unexpected=sum(r.status == "failed" and r.traceback is not None for r in ran),
            wall_s=time.perf_counter() - start,
            loads=self.loads,
            scoring_loads=self.scoring_loads,
            problems=list(dict.fromkeys(problems + store.problems)),
            interrupted=interrupted,
            timed_out=timed_out,
        )

    def _planned_spec(self, records: dict[str, Record]) -> StudySpec:
        """The spec as planned: with ``add_rounds``, ``speed.rounds`` is the highest round stored for
        this machine (ok) + 1 + ``add_rounds``, so that the invocation adds rounds time-separated from
        the earlier ones."""
        if not self.add_rounds:
            return self.spec
        done = [
            int(r.definition["params"].get("round", 0))
            for r in records.values()
            if r.kind == "speed" and r.status == "ok" and r.definition["params"].get("machine") == self.machine
        ]
        rounds = (max(done) + 1 if done else 0) + self.add_rounds
        return self.spec.model_copy(update={"speed": self.spec.speed.model_copy(update={"rounds": rounds})})

    # -- the public API (harness_ext.run.api.RunnerAPI) ----------------------------------------
    def load_lm(self, model: ModelSpec, scheme: Scheme, *, scoring: bool = False) -> QuantLM:
        """Load (model, scheme) as an ``hf-quant`` LM; counted in :attr:`loads` or :attr:`scoring_loads`.
        The one place a model is loaded: tests replace it to inject failures."""
        from harness_ext.backend import HFQuantLM

        (self.scoring_loads if scoring else self.loads).append((model.label, scheme.name))
        lm = HFQuantLM(
            pretrained=model.pretrained,
            quant=scheme,
            model_dtype=model.dtype,
            gguf_file=model.gguf_file,
            revision=model.revision,
            tokenizer=model.tokenizer,
            trust_remote_code=model.trust_remote_code,
            device=self.device,
            batch_size=self.spec.batch_size,
            grid_batching=self.spec.grid_batching,
            mode=self.spec.mode,
            shape=model.shape,
            device_map=self.device_map,
        )
        lm.show_progress = False  # the runner shows its own bar over cells
        return lm

    def run_pair(self, cells: list[Cell], records: Records, task_params: TaskParams) -> None:
        """Load the unit's (model, scheme) once and run its cells kind by kind (:data:`HANDLERS`
        order); a load that fails fails every cell of the unit, with the reason."""
        model, scheme = cells[0].model, cells[0].scheme
        started = now()
        self.status(f"loading {model.label} / {scheme.name}")
        try:
            lm = self.load_lm(model, scheme)
        except Exception as e:  # the whole pair fails: record every cell with the reason
            failure = failure_fields(e)
            self.note(f"load failed: {model.label} / {scheme.name}: {failure['error']}", failure=True)
            self.fail(
                cells, records, f"load failed: {failure['error']}", started=started, traceback=failure["traceback"]
            )
            return
        lm.progress_hook = lambda done, total: self.status(
            f"{model.label} / {scheme.name}: {done}/{total} rows generated"
        )
        work = PairWork(lm, asdict(lm.load_info) if lm.load_info else None, records, task_params)
        try:
            for kind, handler in self.handlers.items():
                of_kind = [c for c in cells if c.kind == kind]
                if of_kind:
                    handler(self, work, of_kind)
        finally:
            self.status("")
            del lm, work
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def check_time(self) -> None:
        """Raise :class:`TimeLimitReached` once the run's time limit has passed."""
        if self._deadline is not None and time.perf_counter() > self._deadline:
            raise TimeLimitReached

    def new_record(self, cell: Cell, started: str, **fields: Any) -> Record:
        """A record of ``cell`` started at ``started``, in this invocation, with ``fields``."""
        return Record(
            cell_id=cell.id,
            kind=cell.kind,
            label=cell.label(),
            definition=cell.definition(),
            started_at=started,
            finished_at=now(),
            invocation=self.invocation,
            **fields,
        )

    def save(self, rec: Record, records: Records) -> None:
        """Store a finished record (stamped now), count it as ran in this invocation, say it under
        the progress bar; a record of a bug says so loudly, with its traceback once."""
        rec.finished_at = now()
        self.store.write(rec)
        records[rec.cell_id] = rec
        self.ran[rec.cell_id] = rec
        if self._pbar is not None:
            self._pbar.update(1)
        self.note(_summary_line(rec), failure=rec.status != "ok")
        if rec.traceback is not None:  # a bug, not a failed measurement: loud, with its traceback (once)
            write_stderr(f"warning: {rec.label}: unexpected error (a bug in harness_ext or a library?)")
            if rec.traceback not in self._tracebacks_shown:
                self._tracebacks_shown.add(rec.traceback)
                write_stderr(rec.traceback)

    def fail(
        self, cells: list[Cell], records: Records, error: str, *, started: str | None = None, **fields: Any
    ) -> None:
        """Store every cell of ``cells`` as failed with the one-line ``error`` (``fields``: a bug's
        ``traceback``, the pair's ``load``)."""
        started = started or now()
        for c in cells:
            self.save(self.new_record(c, started, status="failed", error=error, **fields), records)

    def run_cell(self, cell: Cell, work: PairWork, compute: Callable[[], dict[str, Any]]) -> None:
        """Run one cell's ``compute`` (its record fields); store it as ok, or failed with the reason."""
        started = now()
        try:
            fields = compute()
            rec = self.new_record(cell, started, status="ok", load=work.load, **fields)
        except Exception as e:
            rec = self.new_record(cell, started, status="failed", load=work.load, **failure_fields(e))
        self.save(rec, work.records)

    def status(self, text: str) -> None:
        """What a long phase is doing now, in the cells bar's postfix (a cell of a grid-batched
        evaluation finishes only with all of them: without it the bar stands still for minutes)."""
        if self._pbar is not None:
            self._pbar.set_postfix_str(text, refresh=True)

    def note(self, line: str, failure: bool = False) -> None:
        """A line per cell under the progress bar; without it, failures still reach stderr."""
        if self.progress:
            tqdm.write(line)
        elif failure:
            log.warning("%s", line)
        else:
            log.info("%s", line)


def _summary_line(rec: Record) -> str:
    if rec.status != "ok":
        return f"FAILED {rec.label}: {rec.error}"
    if rec.kind == "probe":
        return f"ok     {rec.label}: {len(rec.points)} grid points"
    show = [(k, v["value"]) for k, v in rec.metrics.items() if v.get("value") is not None][:3]
    return f"ok     {rec.label}: " + ", ".join(f"{k}={v:.4g}" for k, v in show)


def _expected(cell: Cell) -> dict[str, Any]:
    """An expected cell as run.json lists it; a speed cell with its timing family (its rounds on any
    machine: :func:`harness_ext.store.timing_family`), so a report keeps every round of it."""
    out = {"cell_id": cell.id, "label": cell.label(), "kind": cell.kind}
    family = timing_family(cell.definition())
    return out | ({"family": family} if family else {})


def run_context(spec: StudySpec, cells: list[Cell]) -> dict[str, Any]:
    """What a report needs from the spec besides the tables: references, families, notes, the
    expected cells (so that missing ones can be listed) and the report options."""
    from harness_ext.catalog import BUILTIN_MODELS, SHAPE_NOTE

    return {
        "study": {"name": spec.name, "description": spec.description},
        "references": {m.label: (r.name if (r := spec.reference_scheme(m)) else None) for m in spec.models},
        "families": {m.label: m.family for m in spec.models if m.family},
        "model_notes": {m.label: SHAPE_NOTE for m in spec.models if m.shape}
        | {m.label: BUILTIN_MODELS[m.pretrained]["note"] for m in spec.models if m.pretrained in BUILTIN_MODELS},
        "schemes": {s.name: s.describe() for s in spec.scheme_list},
        "trust_remote_code": {m.label: m.trust_remote_code for m in spec.models},
        "expected_cells": [_expected(c) for c in cells],
        "report": spec.report.model_dump(mode="json"),
        "seeds": spec.seeds,
        "tasks": {
            t.name: {"limit": t.limit or spec.limit, "data": Path(t.data).name if t.data else None, "kind": t.kind}
            for t in spec.task_list
        },
    }
