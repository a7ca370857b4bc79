"""Run a study spec: cells -> lm-eval (through ``hf-quant``) -> one stored record per cell.

Each (model, scheme) pair is loaded once; its eval cells go through ``lm_eval.simple_evaluate``
(one call per task, every grid point and seed a task variant of its own, so that grid batching can
put them in one batch), then its probe and speed cells run in the same load. The unquantized
reference of each model runs first. Cells already stored as ``ok`` are skipped, so a re-run
resumes; a failing cell is recorded with its reason and the study goes on.

After all pairs, metrics against the reference (agreement with its outputs; negative
log-likelihood of every scheme's text under the reference model) are added to the records; that
needs one more load of each model's reference.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness_ext import environment, machine
from harness_ext.run import schedule
from harness_ext.errors import DataError, HarnessExtError, SpecError, StoreError
from harness_ext.measure import measure_copy_bandwidth
from harness_ext.models import file_sha256
from harness_ext.spec import Cell, ModelSpec, StudySpec, expand, resolve_device
from harness_ext.store import Record, RunStore, now
from harness_ext.tasks import loaders

log = logging.getLogger("harness_ext")
REFERENCE_METRICS = {"quant_nextword": ("agree_ref",), "quant_continuation": ("rouge_l_ref", "nll_ref")}


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


# -- tasks ---------------------------------------------------------------------------------------
def prepare_tasks(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Check every task before anything loads; return per-task identity for the cells (data hash,
    generative or not). Unknown tasks and bad data files raise one-line errors."""
    out: dict[str, dict[str, Any]] = {}
    for t in spec.task_list:
        if t.kind is not None:
            kind = "nextword" if t.kind == "quant_nextword" else "continuation"
            path = Path(t.data) if t.data else loaders.DATA_DIR / f"{kind}.jsonl"
            try:
                loaders.read_jsonl(path, loaders.REQUIRED_FIELDS[kind])
            except loaders.TaskDataError as e:
                raise DataError(f"task {t.name!r}: {e}") from None
            out[t.name] = {
                "generative": True,
                "base": t.kind,
                "data_sha256": file_sha256(path)[:16],
                "data_file": str(path) if t.data else None,
            }
            continue
        from harness_ext.tasks import output_type

        try:
            otype = output_type(t.name)
        except KeyError:
            raise SpecError(
                f"unknown task {t.name!r}: not one of ours (quant_nextword, quant_continuation) "
                "nor an lm-eval task; `lm_eval ls tasks` lists them"
            ) from None
        except ValueError as e:
            raise SpecError(f"task {t.name!r}: {e}") from None
        out[t.name] = {"generative": otype == "generate_until", "base": t.name, "output_type": otype}
        out[t.name].update(_stock_task_identity(t.name))
    return out


def _stock_task_identity(name: str) -> dict[str, Any]:
    """What of a stock lm-eval task's config can change its results beyond its name: the task's
    version (lm-eval bumps it when the prompt or scoring changes) and its default few-shot count."""
    from harness_ext.tasks import base_config

    cfg = base_config(name) or {}
    out: dict[str, Any] = {}
    version = (cfg.get("metadata") or {}).get("version")
    if version is not None:
        out["task_version"] = version
    if cfg.get("num_fewshot") is not None:
        out["num_fewshot"] = cfg["num_fewshot"]
    return out


def plan(spec: StudySpec, device: str | None = None) -> list[Cell]:
    """All cells of a spec on a device (``auto`` resolved here)."""
    device = resolve_device(device or spec.device)
    return expand(spec, torch.device(device).type, prepare_tasks(spec))


# -- the runner ----------------------------------------------------------------------------------
class Runner:
    """Runs the cells of one spec into one run directory."""

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
        executor: Any = None,
        store: Any = None,
        device_map: str | None = None,
    ):
        from harness_ext.run import executors

        self.spec = spec
        self.spec_text = spec_text
        self.device = resolve_device(spec.device)
        self.store = store if store is not None else RunStore(output_dir or spec.run_dir)
        self.executor = executor if executor is not None else executors.make(spec.executor)
        self.device_map = device_map  # "auto": spread over the GPUs this process sees (a Ray task's)
        self.argv = argv
        self.progress = progress
        self.loads: list[tuple[str, str]] = []
        self.scoring_loads: list[tuple[str, str]] = []
        self._bandwidth: float | None = None
        self._pbar: Any = None
        self.ran: dict[str, Record] = {}  # the records this invocation wrote, by cell id
        self._tracebacks_shown: set[str] = set()
        self.time_limit_s = time_limit_s
        self.only = only or {}
        self.redo = redo  # recompute the selected cells even where a finished record exists
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

    def _check_time(self) -> None:
        if self._deadline is not None and time.perf_counter() > self._deadline:
            raise TimeLimitReached

    # extension point for tests and executors: how a pair is loaded
    def load_lm(self, model: ModelSpec, scheme: Any, *, scoring: bool = False) -> Any:
        """Load (model, scheme) as an ``hf-quant`` LM; counted in :attr:`loads` or :attr:`scoring_loads`."""
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

    def run(self) -> RunResult:
        start = time.perf_counter()
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        task_params = prepare_tasks(self.spec)
        cells = expand(self.spec, torch.device(self.device).type, task_params)
        records = self.store.load_records()  # first: a run directory of a newer version is left untouched
        problems = list(self.store.problems)
        self.invocation = self.store.begin(self.spec_text, environment.capture(self.argv))
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
            with _quiet_lm_eval():
                try:
                    self.executor.run_pairs(self, dict(pairs), records, task_params)
                finally:
                    self._pbar.close()
                    self._pbar = None
                self._check_time()
                self._reference_metrics(cells, records)
        except KeyboardInterrupt:
            interrupted = True
        except TimeLimitReached:
            timed_out = True
        finally:
            current = {c.id for c in cells}
            try:
                final = self.store.load_records()
                self.store.export_tables(
                    [r for r in final.values() if r.cell_id in current],
                    self.spec_text,
                    extra=run_summary(self.spec, cells),
                )
            finally:
                if hasattr(self.store, "release"):
                    self.store.release()  # the writer lock taken by begin()
        ran = [self.ran[c.id] for c in cells if c.id in self.ran]
        finished = {c.id for c in cells if c.id in final and final[c.id].status == "ok"}
        skipped = len(finished - set(self.ran))
        return RunResult(
            run_dir=self.store.root,
            cells=len(cells),
            skipped=skipped,
            ok=sum(r.status == "ok" for r in ran),
            failed=sum(r.status == "failed" for r in ran),
            missing=len(cells) - len(ran) - skipped,
            unexpected=sum(r.status == "failed" and r.traceback is not None for r in ran),
            wall_s=time.perf_counter() - start,
            loads=self.loads,
            scoring_loads=self.scoring_loads,
            problems=list(dict.fromkeys(problems + self.store.problems)),
            interrupted=interrupted,
            timed_out=timed_out,
        )

    # -- one (model, scheme) -------------------------------------------------------------------
    def _run_pair(self, cells: list[Cell], records: dict[str, Record], task_params: dict[str, dict[str, Any]]) -> None:
        model, scheme = cells[0].model, cells[0].scheme
        started = now()
        try:
            lm = self.load_lm(model, scheme)
        except Exception as e:  # the whole pair fails: record every cell with the reason
            failure = failure_fields(e)
            self._note(f"load failed: {model.label} / {scheme.name}: {failure['error']}", failure=True)
            failure["error"] = f"load failed: {failure['error']}"
            for c in cells:
                self._save(Record(**self._base(c, started), status="failed", **failure), records)
            return
        load = asdict(lm.load_info) if lm.load_info else None
        try:
            by_task: dict[str, list[Cell]] = defaultdict(list)
            for c in cells:
                if c.kind == "eval":
                    by_task[c.task.name].append(c)
            for task_cells in by_task.values():
                chunks = [task_cells] if self.spec.grid_batching else [[c] for c in task_cells]
                for chunk in chunks:
                    self._check_time()
                    self._eval_chunk(lm, chunk, task_params, load, records)
            for c in cells:
                self._check_time()
                if c.kind == "probe":
                    self._guard(c, load, records, lambda c=c, lm=lm: self._probe(lm, c, records))
                elif c.kind == "speed":
                    self._guard(c, load, records, lambda c=c, lm=lm: self._speed(lm, c))
        finally:
            del lm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _guard(
        self, cell: Cell, load: dict[str, Any] | None, records: dict[str, Record], work: Callable[[], dict[str, Any]]
    ) -> None:
        """Run one cell's work; store its record as ok or failed."""
        started = now()
        try:
            fields = work()
            rec = Record(**self._base(cell, started), status="ok", load=load, **fields)
        except Exception as e:
            rec = Record(**self._base(cell, started), status="failed", load=load, **failure_fields(e))
        self._save(rec, records)

    def _base(self, cell: Cell, started: str) -> dict[str, Any]:
        return {
            "cell_id": cell.id,
            "kind": cell.kind,
            "label": cell.label(),
            "definition": cell.definition(),
            "started_at": started,
            "finished_at": now(),
            "invocation": self.invocation,
        }

    def _save(self, rec: Record, records: dict[str, Record]) -> None:
        rec.finished_at = now()
        self.store.write(rec)
        records[rec.cell_id] = rec
        self.ran[rec.cell_id] = rec
        if self._pbar is not None:
            self._pbar.update(1)
        self._note(_summary_line(rec), failure=rec.status != "ok")
        if rec.traceback is not None:  # a bug, not a failed measurement: loud, with its traceback (once)
            _stderr(f"warning: {rec.label}: unexpected error (a bug in harness_ext or a library?)")
            if rec.traceback not in self._tracebacks_shown:
                self._tracebacks_shown.add(rec.traceback)
                _stderr(rec.traceback)

    def _note(self, line: str, failure: bool = False) -> None:
        """A line per cell under the progress bar; without it, failures still reach stderr."""
        if self.progress:
            tqdm.write(line)
        elif failure:
            log.warning("%s", line)
        else:
            log.info("%s", line)

    # -- eval cells ----------------------------------------------------------------------------
    def _eval_chunk(
        self,
        lm: Any,
        cells: list[Cell],
        task_params: dict[str, dict[str, Any]],
        load: dict[str, Any] | None,
        records: dict[str, Record],
    ) -> None:
        import lm_eval

        from harness_ext.tasks import make_variant, task_manager

        started = now()
        task = cells[0].task
        tp = task_params[task.name]
        variants: dict[str, Cell] = {}
        objs = []
        try:
            for c in cells:
                name = f"{task.name}@{c.id}"
                gen = {**c.point.gen_kwargs(), "seed": c.seed} if c.point is not None else None
                objs.append(
                    make_variant(
                        tp["base"],
                        name,
                        data_file=tp.get("data_file"),
                        gen_kwargs=gen,
                        repeats=c.params["repeats"] if c.point is not None else None,
                    )
                )
                _pin_fewshot_seed(objs[-1], c.seed or 0)
                variants[name] = c
            seed = cells[0].seed or 0
            lm.pop_calls()
            t0 = time.perf_counter()
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=objs,
                limit=cells[0].params.get("limit"),
                task_manager=task_manager(),
                bootstrap_iters=0,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
            wall = time.perf_counter() - t0
        except Exception as e:
            failure = failure_fields(e)
            for c in cells:
                self._save(Record(**self._base(c, started), status="failed", load=load, **failure), records)
            return
        calls = lm.pop_calls()
        shared = {
            "grid_batched": bool(getattr(lm, "grid_batching", False)),
            "kv_cache": calls[0].kv_cache if calls else None,  # null: the evaluation generated nothing
            "evaluation": {
                "cells": len(cells),
                "wall_s": wall,
                "generate_calls": len(calls),
                "rows": sum(c.rows for c in calls),
                "new_tokens": sum(c.new_tokens for c in calls),
                "generate_wall_s": sum(c.wall_ms for c in calls) / 1e3,
                "peak_memory_bytes": max((c.peak_memory_bytes or 0 for c in calls), default=None) or None,
                "peak_memory_kind": calls[0].peak_memory_kind if calls else None,
            },
        }
        for name, c in variants.items():
            try:
                fields = split_results(results, name)
            except Exception as e:
                self._save(Record(**self._base(c, started), status="failed", load=load, **failure_fields(e)), records)
                continue
            fields["measurements"] = {
                **shared,
                "new_tokens": sum(g.get("new_tokens") or 0 for g in fields["generations"]),
            }
            self._save(Record(**self._base(c, started), status="ok", load=load, **fields), records)

    # -- probe cells ---------------------------------------------------------------------------
    def _probe(self, lm: Any, cell: Cell, records: dict[str, Record]) -> dict[str, Any]:
        from harness_ext import probes

        t0 = time.perf_counter()
        path = Path(cell.params["data_file"]) if cell.params.get("data_file") else loaders.DATA_DIR / "nextword.jsonl"
        docs = loaders.read_jsonl(path, loaders.REQUIRED_FIELDS["nextword"])[: cell.params.get("limit") or None]
        ids, gold = [], []
        for d in docs:
            ctx = lm.tok_encode(d["context"])
            whole = lm.tok_encode(d["context"] + " " + d["target"])
            cont = (
                whole[len(ctx) :]
                if whole[: len(ctx)] == ctx
                else lm.tok_encode(" " + d["target"], add_special_tokens=False)
            )
            ids.append(ctx)
            gold.append(cont[0])
        logits = probes.next_token_logits(lm.model, ids, lm.device)
        ref_scheme = self.spec.reference_scheme(cell.model)
        reference = None
        if ref_scheme is not None and ref_scheme.name == cell.scheme.name:
            self.store.put_tensor(probe_artifact(cell), logits)
            reference = logits
        elif ref_scheme is not None:
            reference = self.store.get_tensor(probe_artifact(cell, ref_scheme.name))
            if reference is None:
                raise StoreError(
                    f"the reference ({ref_scheme.name}) probe has no stored logits; it must run first "
                    "(it failed or was removed): this cell is retried on the next run"
                )
            if reference.shape != logits.shape:
                raise StoreError(f"reference logits {tuple(reference.shape)} do not match {tuple(logits.shape)}")
        points = probes.grid_points(cell.params["grid"])
        gold_t = torch.tensor(gold)
        per = probes.probe_metrics(
            logits, gold_t, points, reference=reference, seen=probes.seen_tokens(ids, logits.shape[-1])
        )
        out_points, samples = [], []
        for p, metrics in per.items():
            pd = asdict(p)
            out_points.append({"point": pd, "metrics": {m: _mean_sem(v) for m, v in metrics.items()}})
            for i in range(len(docs)):
                samples.append({"doc_id": i, "point": pd, **{m: _finite(v[i]) for m, v in metrics.items()}})
        return {
            "points": out_points,
            "sample_metrics": samples,
            "measurements": {
                "prompts": len(docs),
                "wall_s": time.perf_counter() - t0,
                "reference": ref_scheme.name if ref_scheme else None,
                "forward": probes.FORWARD,
                "dtype": probes.DTYPE,
                "single_token_targets": sum(
                    len(lm.tok_encode(" " + d["target"], add_special_tokens=False)) == 1 for d in docs
                ),
            },
        }

    # -- speed cells ---------------------------------------------------------------------------
    def _speed(self, lm: Any, cell: Cell) -> dict[str, Any]:
        from harness_ext import speed
        from harness_ext.measure import cuda_devices, model_devices

        # the floor needs the bandwidth of every GPU the model is on, each measured once per run
        self._bandwidth = self._bandwidth or {}
        for d in cuda_devices(model_devices(lm.model)):
            if str(d) not in self._bandwidth:
                self._bandwidth[str(d)] = measure_copy_bandwidth(d)
        p = cell.params
        before = machine.snapshot()
        result = speed.benchmark(
            lm,
            p["batch_size"],
            p["prompt_tokens"],
            p["new_tokens"],
            p["warmup"],
            p["repeats"],
            bandwidth=self._bandwidth,
            mode=p.get("mode", "eager"),
        )
        after = machine.snapshot()
        busy = machine.contention(before, after)
        order = {"round": p.get("round", 0), "round_position": schedule.position(self.spec, cell)}
        metrics = {**speed.metrics_of(result), **{k: _point(v) for k, v in order.items()}}
        metrics["contended"] = _point(float(busy["contended"]))
        result = {**result, **order, "machine": {"before": before, "after": after, "contention": busy}}
        return {"metrics": metrics, "measurements": result}

    # -- metrics against the reference ---------------------------------------------------------
    def _reference_cell(self, cell: Cell) -> Cell | None:
        """The reference scheme's cell with the same task, point and seed (None: no reference)."""
        ref = self.spec.reference_scheme(cell.model)
        if ref is None:
            return None
        resolved = ref.resolve(cell.model.dtype)
        return Cell(cell.kind, cell.model, resolved, cell.device, cell.task, cell.point, cell.seed, cell.params)

    def _needs_reference_metrics(self, cell: Cell, records: dict[str, Record]) -> bool:
        """A finished eval cell of our tasks whose reference metrics are missing or were computed
        against another reference record than the one stored now (the reference was redone)."""
        if cell.kind != "eval" or cell.task.kind not in REFERENCE_METRICS:
            return False
        rec, ref_cell = records.get(cell.id), self._reference_cell(cell)
        if rec is None or rec.status != "ok" or ref_cell is None:
            return False
        ref_rec = records.get(ref_cell.id)
        if ref_rec is None or ref_rec.status != "ok":
            return False
        used = rec.measurements.get("reference_metrics") or {}
        return used.get("reference_record") != reference_record_hash(ref_rec)

    def _reference_metrics(self, cells: list[Cell], records: dict[str, Record]) -> None:
        """Add agreement with the reference's outputs and NLL under the reference model."""
        by_model: dict[str, list[Cell]] = defaultdict(list)
        for c in cells:
            if self._needs_reference_metrics(c, records):
                by_model[c.model.label].append(c)
        if not by_model:
            return
        todo_all = [c for cs in by_model.values() for c in cs]
        self._note(
            f"metrics against the reference: agreement of {len(todo_all)} cells with the reference's outputs, and "
            "the NLL of every continuation under the reference model (one more load of each reference)"
        )
        bar = tqdm(total=len(todo_all), desc="vs reference", unit="cell", disable=not self.progress, dynamic_ncols=True)
        try:
            for model in self.spec.models:
                todo = by_model.get(model.label)
                ref = self.spec.reference_scheme(model)
                if todo and ref is not None:
                    self._reference_metrics_of(model, ref, todo, records, bar)
        finally:
            bar.close()

    def _reference_metrics_of(
        self, model: ModelSpec, ref: Any, todo: list[Cell], records: dict[str, Record], bar: Any
    ) -> None:
        needs_nll = [c for c in todo if c.task.kind == "quant_continuation"]
        # every continuation of the model scored in one pass: shared texts and prefixes once
        pairs = [(g["prompt"] or "", g["text"]) for c in needs_nll for g in records[c.id].generations]
        scores = None
        if pairs:
            bar.set_postfix_str(f"scoring {len(pairs)} texts under {model.label} {ref.name}")
            try:
                scores = iter(self.executor.score(self, model, ref, pairs, progress=_bar_progress(bar)))
            except Exception as e:
                self._note(f"reference scoring failed for {model.label}: {_reason(e)}; NLL left out", failure=True)
                if not expected_failure(e):
                    _stderr("".join(traceback.format_exception(e)))
            gc.collect()
            bar.set_postfix_str("")
        for c in todo:
            rec = records[c.id]
            nll = [next(scores) for _ in rec.generations] if scores and c.task.kind == "quant_continuation" else None
            ref_cell = self._reference_cell(c)
            add_reference_metrics(rec, records[ref_cell.id], c.task.kind, nll, is_reference=c.id == ref_cell.id)
            self.store.write(rec)
            bar.update(1)


def _bar_progress(bar: Any) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that shows scoring batches in a bar's postfix."""

    def update(done: int, total: int) -> None:
        bar.set_postfix_str(f"scoring: {done}/{total} sequences")

    return update


def reference_record_hash(ref: Record) -> str:
    """What the metrics against a reference depend on in its record: its cell and its outputs."""
    from harness_ext.spec import content_hash

    return content_hash(
        {"cell_id": ref.cell_id, "texts": [[g["doc_id"], g["sample"], g["text"]] for g in ref.generations]}
    )


def run_summary(spec: StudySpec, cells: list[Cell]) -> dict[str, Any]:
    """What a report needs from the spec besides the tables: references, families, notes, the
    expected cells (so that missing ones can be listed) and the report options."""
    from harness_ext.models import BUILTIN_MODELS, SHAPE_NOTE

    return {
        "study": {"name": spec.name, "description": spec.description},
        "references": {m.label: (r.name if (r := spec.reference_scheme(m)) else None) for m in spec.models},
        "families": {m.label: m.family for m in spec.models if m.family},
        "model_notes": {m.label: SHAPE_NOTE for m in spec.models if m.shape}
        | {m.label: BUILTIN_MODELS[m.pretrained]["note"] for m in spec.models if m.pretrained in BUILTIN_MODELS},
        "schemes": {s.name: s.describe() for s in spec.scheme_list},
        "trust_remote_code": {m.label: m.trust_remote_code for m in spec.models},
        "expected_cells": [{"cell_id": c.id, "label": c.label(), "kind": c.kind} for c in cells],
        "report": spec.report.model_dump(mode="json"),
        "seeds": spec.seeds,
        "tasks": {
            t.name: {"limit": t.limit or spec.limit, "data": Path(t.data).name if t.data else None, "kind": t.kind}
            for t in spec.task_list
        },
    }


def probe_artifact(cell: Cell, scheme: str | None = None) -> str:
    """Artifact name of a probe's logits: model, scheme, and a hash of what the logits depend on."""
    from harness_ext.spec import content_hash

    key = {k: v for k, v in cell.params.items() if k != "grid"} | {
        "model": cell.model.identity(),
        "device": cell.device,
    }
    return f"probe/{cell.model.label}/{scheme or cell.scheme.name}-{content_hash(key)}.pt"


# -- helpers -------------------------------------------------------------------------------------
def metric_key(metric: str, filt: str, filters: set[str]) -> str:
    """Our name of an lm-eval metric under a filter: the bare metric name when the filter is lm-eval's
    default (``none``) or the only one the task reports the metric under; else lm-eval's own key
    ``<metric>,<filter>`` — so the filters of a multi-filter task (gsm8k's strict-match and
    flexible-extract) stay distinct metrics everywhere downstream."""
    return metric if filt == "none" or filters == {filt} else f"{metric},{filt}"


def split_results(results: dict[str, Any], name: str) -> dict[str, Any]:
    """One cell's share of a ``simple_evaluate`` result: lm-eval's dict restricted to the variant,
    aggregate metrics, per-prompt metrics and the generated texts (metric names: :func:`metric_key`)."""
    res = results["results"][name]
    samples = results.get("samples", {}).get(name, [])
    n = results.get("n-samples", {}).get(name, {}).get("effective")
    filters: dict[str, set[str]] = defaultdict(set)  # metric -> the filters it is reported under
    for key in res:
        if "," in key and "_stderr" not in key:
            metric, filt = key.split(",", 1)
            filters[metric].add(filt)
    for s in samples:
        for m in s.get("metrics") or []:
            filters[m].add(s.get("filter", "none"))
    metrics: dict[str, dict[str, float | None]] = {}
    for key, value in res.items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filt = key.split(",", 1)
        stderr = res.get(f"{metric}_stderr,{filt}")
        metrics[metric_key(metric, filt, filters[metric])] = {
            "value": _finite(value),
            "stderr": _finite(stderr) if isinstance(stderr, (int, float)) else None,
            "n": n,
            "lo": None,
            "hi": None,
        }
    by_doc: dict[Any, dict[str, Any]] = {}  # one row per prompt, every filter's metrics in it
    generations: list[dict[str, Any]] = []
    texts_of: set[Any] = set()
    for s in samples:
        filt = s.get("filter", "none")
        row = by_doc.setdefault(s["doc_id"], {"doc_id": s["doc_id"]})
        row.update({metric_key(m, filt, filters[m]): _finite(s.get(m)) for m in s.get("metrics") or []})
        if s["doc_id"] in texts_of:
            continue  # the same responses again under another filter: the texts once
        texts_of.add(s["doc_id"])
        generations.extend(_generations_of(s))
    keep = {k: {name: v[name]} for k, v in results.items() if isinstance(v, dict) and name in v}
    keep["config"] = results.get("config")
    return {"metrics": metrics, "sample_metrics": list(by_doc.values()), "generations": generations, "lm_eval": keep}


def _generations_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The generated texts of one logged lm-eval sample (its raw responses, before any filter)."""
    context = _context_of(sample)
    resps = sample.get("resps") or []
    flat = (
        resps[0]
        if resps and isinstance(resps[0], list) and len(resps) == 1
        else [r[0] if isinstance(r, list) else r for r in resps]
    )
    return [
        {
            "doc_id": sample["doc_id"],
            "sample": k,
            "prompt": context,
            "text": str(text),
            "new_tokens": getattr(text, "new_tokens", None),
            "finish": getattr(text, "finish", None),
        }
        for k, text in enumerate(flat)
        if isinstance(text, str)
    ]


def _context_of(sample: dict[str, Any]) -> str | None:
    args = sample.get("arguments")
    if isinstance(args, dict) and args:
        first = next(iter(args.values()))
        if isinstance(first, dict):
            return first.get("arg_0")
    if isinstance(args, (list, tuple)) and args:
        first = args[0]
        return first[0] if isinstance(first, (list, tuple)) else first
    return None


def add_reference_metrics(rec: Record, ref: Record, kind: str, nll: list[float] | None, *, is_reference: bool) -> None:
    """Per prompt: agreement with the reference's output for the same prompt, sample and seed
    (nextword: same first word; continuation: ROUGE-L F1), and the continuation's mean token NLL
    under the reference model (``nll``, one per generation, from :func:`score_nll`). Updates ``rec``."""
    from harness_ext.tasks.metrics import first_word, rouge_l

    stale = (rec.measurements.get("reference_metrics") or {}).get("metrics") or []
    for m in stale:  # recomputed below from this reference (or left out if it cannot be)
        rec.metrics.pop(m, None)
        for row in rec.sample_metrics:
            row.pop(m, None)
    ref_text = {(g["doc_id"], g["sample"]): g["text"] for g in ref.generations}
    per_doc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if not is_reference:
        for g in rec.generations:
            other = ref_text.get((g["doc_id"], g["sample"]))
            if other is None:
                continue
            if kind == "quant_nextword":
                per_doc[g["doc_id"]]["agree_ref"].append(float(first_word(g["text"]) == first_word(other)))
            else:
                per_doc[g["doc_id"]]["rouge_l_ref"].append(rouge_l(g["text"], other))
    if nll is not None:
        for g, v in zip(rec.generations, nll, strict=True):
            if not math.isnan(v):
                per_doc[g["doc_id"]]["nll_ref"].append(v)
    names = sorted({m for d in per_doc.values() for m in d})
    by_doc = {s["doc_id"]: s for s in rec.sample_metrics}
    for doc_id, metrics in per_doc.items():
        row = by_doc.setdefault(doc_id, {"doc_id": doc_id})
        for m, vals in metrics.items():
            row[m] = sum(vals) / len(vals)
    rec.sample_metrics = list(by_doc.values())
    for m in names:
        rec.metrics[m] = _mean_sem([s.get(m) for s in rec.sample_metrics])
    rec.measurements["reference_metrics"] = {
        "reference_cell": ref.cell_id,
        "reference_record": reference_record_hash(ref),
        "metrics": names,
        "at": now(),
    }


def encode_pair(lm: Any, prompt: str, text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Context and continuation tokens as lm-eval's loglikelihood splits them
    (``TemplateLM._encode_pair``: the prompt's trailing spaces go with the text, the whole is
    encoded once); an empty prompt becomes the model's prefix token, as in lm-eval."""
    if not prompt:
        return (lm.prefix_token_id,), tuple(lm.tok_encode(text, add_special_tokens=False))
    ctx, cont = lm._encode_pair(prompt, text)
    return tuple(ctx), tuple(cont)


@torch.no_grad()
def score_nll(
    lm: Any,
    pairs: list[tuple[str, str]],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each continuation given its prompt under ``lm``'s
    model; NaN for an empty continuation. ``progress(done, total)`` is called after each batch.

    Each distinct token sequence is scored once: identical texts (greedy rows shared across top-k
    and seeds) and continuations that are a prefix of a longer one for the same prompt (a short
    max_new_tokens cut of the same stream) reuse the longer sequence's per-token log-probabilities —
    only where the longer sequence fits the model's window, so that the prefix's tokens see the
    same context as when scored alone. A sequence longer than the window keeps its last tokens.
    """
    encoded = [encode_pair(lm, prompt, text) for prompt, text in pairs]
    # the longest continuation per prompt covers every continuation that is its prefix
    cover: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
    for ctx, cont in sorted(set(encoded), key=lambda e: -len(e[1])):
        if cont and not any(_covers(long, cont, ctx, lm.max_length) for long in cover[ctx]):
            cover[ctx].append(cont)
    jobs = [(ctx, cont) for ctx, conts in cover.items() for cont in conts]
    token_logp: dict[tuple[tuple[int, ...], tuple[int, ...]], list[float]] = {}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    jobs.sort(key=lambda j: -(len(j[0]) + len(j[1])))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        seqs = [list(ctx + cont)[-lm.max_length :] for ctx, cont in batch]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, q in enumerate(seqs):
            ids[r, : len(q)] = torch.tensor(q)
            mask[r, : len(q)] = 1
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        for r, (ctx, cont) in enumerate(batch):
            n = min(len(cont), len(seqs[r]) - 1)  # the continuation's last n tokens are in the window
            end = len(seqs[r])
            targets = torch.tensor(seqs[r][end - n :], device=logits.device)
            logp = torch.log_softmax(logits[r, end - n - 1 : end - 1].float(), -1)  # the continuation's rows only
            token_logp[(ctx, cont)] = logp.gather(1, targets[:, None]).squeeze(1).tolist()
        if progress is not None:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    out = []
    for ctx, cont in encoded:
        if not cont:
            out.append(math.nan)
            continue
        long = next(c for c in cover[ctx] if _covers(c, cont, ctx, lm.max_length))
        lp = token_logp[(ctx, long)]
        if long != cont:  # a prefix of a sequence that fits the window: its log-probs are the first ones
            lp = lp[: len(cont)]
        out.append(-sum(lp) / len(lp))
    return out


def _covers(long: tuple[int, ...], cont: tuple[int, ...], ctx: tuple[int, ...], window: int) -> bool:
    """Whether ``cont``'s log-probs can be read off ``long``'s: the same sequence, or a prefix of a
    sequence scored whole (no token of it cut off by the window)."""
    return long == cont or (long[: len(cont)] == cont and len(ctx) + len(long) <= window)


def _point(v: float) -> dict[str, Any]:
    """A single recorded figure as a store metric (round, position, contended flag)."""
    return {"value": float(v), "lo": None, "hi": None, "n": 1, "stderr": None}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _mean_sem(values: list[Any]) -> dict[str, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"value": None, "stderr": None, "n": 0, "lo": None, "hi": None}
    sem = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return {"value": statistics.fmean(vals), "stderr": sem, "n": len(vals), "lo": None, "hi": None}


def expected_failure(e: BaseException) -> bool:
    """Failures a cell may meet without a bug: out of memory, our own errors (unsupported scheme, a
    task's data, a model that cannot load), a task's data error, the file system or the network."""
    from harness_ext.tasks.loaders import TaskDataError

    return isinstance(e, (torch.OutOfMemoryError, MemoryError, HarnessExtError, TaskDataError, OSError))


def failure_fields(e: BaseException) -> dict[str, str | None]:
    """A failed record's ``error`` (one line) and, for an unexpected error (a bug), its ``traceback``."""
    tb = None if expected_failure(e) else "".join(traceback.format_exception(e))
    if tb is None:
        log.debug("cell failed\n%s", "".join(traceback.format_exception(e)))
    return {"error": _reason(e), "traceback": tb}


def _stderr(text: str) -> None:
    """A message on stderr that does not break the progress bar."""
    tqdm.write(text, file=sys.stderr)


def _reason(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return "CUDA out of memory: " + str(e).splitlines()[0][:200]
    if isinstance(e, HarnessExtError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _summary_line(rec: Record) -> str:
    if rec.status != "ok":
        return f"FAILED {rec.label}: {rec.error}"
    if rec.kind == "probe":
        return f"ok     {rec.label}: {len(rec.points)} grid points"
    show = [(k, v["value"]) for k, v in rec.metrics.items() if v.get("value") is not None][:3]
    return f"ok     {rec.label}: " + ", ".join(f"{k}={v:.4g}" for k, v in show)


def _pin_fewshot_seed(task: Any, seed: int) -> None:
    """Seed a task's few-shot draw with its own cell's seed. ``simple_evaluate`` seeds every task
    of a call with its one ``fewshot_random_seed``; a grid-batched call holds cells of several
    seeds, and each must draw the examples it would draw alone."""
    set_seed = task.set_fewshot_seed
    set_seed(seed=seed)
    task.set_fewshot_seed = lambda seed_=None, **_: set_seed(seed=seed)


def _git_hash_quietly() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without its ``fatal: not a git repository`` on stderr
    (its ``git describe`` inherits stderr; outside a git checkout that line reaches the terminal)."""
    import os
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs a warning and draws a progress bar per task variant: keep its errors only, and
    the runner's own bar over cells."""
    import functools

    import lm_eval.api.task as lm_eval_task
    import lm_eval.evaluator as lm_eval_evaluator
    import transformers

    logger = logging.getLogger("lm_eval")
    level, task_tqdm = logger.level, lm_eval_task.tqdm
    git_hash, lm_eval_evaluator.get_git_commit_hash = lm_eval_evaluator.get_git_commit_hash, _git_hash_quietly
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.ERROR)
        lm_eval_task.tqdm = functools.partial(task_tqdm, disable=True)
        transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        lm_eval_task.tqdm = task_tqdm
        lm_eval_evaluator.get_git_commit_hash = git_hash
        transformers.utils.logging.enable_progress_bar()
