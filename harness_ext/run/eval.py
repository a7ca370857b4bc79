"""Eval cells: a task at a grid point and seed, through ``lm_eval.simple_evaluate``.

A pair's eval cells of one task go through one call (each cell a task variant of its own, so that
grid batching can put them in one batch); without grid batching, one call per cell.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from harness_ext.run.api import PairWork, QuantLM, RunnerAPI
from harness_ext.run.failures import failure_fields
from harness_ext.run.results import split_results
from harness_ext.spec import Cell
from harness_ext.store import now


class EvalHandler:
    """Runs a pair's eval cells, task by task; every cell gets a record, ok or failed."""

    def __call__(self, runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None:
        by_task: dict[str, list[Cell]] = defaultdict(list)
        for c in cells:
            by_task[c.task.name].append(c)
        for task_cells in by_task.values():
            chunks = [task_cells] if runner.spec.grid_batching else [[c] for c in task_cells]
            for chunk in chunks:
                runner.check_time()
                evaluate_chunk(runner, work, chunk)


def evaluate_chunk(runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None:
    """One ``simple_evaluate`` call over cells of one task; a record per cell."""
    import lm_eval

    from harness_ext.tasks import make_variant, task_manager

    started, lm = now(), work.lm
    task = cells[0].task
    tp = work.task_params[task.name]
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
            task_manager=task_manager(defaults=any(c.task.kind is None for c in cells)),
            bootstrap_iters=0,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        wall = time.perf_counter() - t0
    except Exception as e:
        runner.fail(cells, work.records, started=started, load=work.load, **failure_fields(e))
        return
    shared = _shared_measurements(lm, len(cells), wall)
    for name, c in variants.items():
        try:
            fields = split_results(results, name)
        except Exception as e:
            runner.fail([c], work.records, started=started, load=work.load, **failure_fields(e))
            continue
        fields["measurements"] = {
            **shared,
            "new_tokens": sum(g.get("new_tokens") or 0 for g in fields["generations"]),
        }
        runner.save(runner.new_record(c, started, status="ok", load=work.load, **fields), work.records)


def _shared_measurements(lm: QuantLM, cells: int, wall: float) -> dict[str, Any]:
    """What the cells of one evaluation share: its generate calls, rows, tokens, time and peak memory."""
    calls = lm.pop_calls()
    return {
        "grid_batched": bool(getattr(lm, "grid_batching", False)),
        "kv_cache": calls[0].kv_cache if calls else None,  # null: the evaluation generated nothing
        "evaluation": {
            "cells": cells,
            "wall_s": wall,
            "generate_calls": len(calls),
            "rows": sum(c.rows for c in calls),
            "new_tokens": sum(c.new_tokens for c in calls),
            "generate_wall_s": sum(c.wall_ms for c in calls) / 1e3,
            "peak_memory_bytes": max((c.peak_memory_bytes or 0 for c in calls), default=None) or None,
            "peak_memory_kind": calls[0].peak_memory_kind if calls else None,
        },
    }


def _pin_fewshot_seed(task: Any, seed: int) -> None:
    """Seed a task's few-shot draw with its own cell's seed. ``simple_evaluate`` seeds every task
    of a call with its one ``fewshot_random_seed``; a grid-batched call holds cells of several
    seeds, and each must draw the examples it would draw alone."""
    set_seed = task.set_fewshot_seed
    set_seed(seed=seed)
    task.set_fewshot_seed = lambda seed_=None, **_: set_seed(seed=seed)
