"""Speed rounds in fresh processes: each (model, scheme, round) is loaded, warmed up and timed in a
process of its own, which returns its records to the runner that stores them.

Rounds timed inside one long-lived process share its allocator, its warm caches and whatever the
earlier rounds left behind, so they are not independent replicates (optimum-benchmark isolates each
benchmark the same way). On the CPU a round's process is forked from a
*forkserver* that has already imported torch, transformers, lm-eval, harness_ext's backend and
bitsandbytes (with its import log kept for the fingerprint), so a round pays the fork and its own
load, not a fresh import; the forkserver is a fresh interpreter, not a fork of the runner. On CUDA a
round's process is *spawned* (a fresh interpreter that imports for itself): libraries initialise CUDA
at import (bitsandbytes does; on an H200, a forkserver that preloaded only the backend, without
bitsandbytes, still had CUDA initialised, by a library not identified), and a process forked after
that cannot use CUDA at all.

:func:`unit_task` is also what a Ray task runs (``executors/ray.py``): a unit's cells in a runner
built from the driver's runner class, writing into a :class:`~harness_ext.store.MemoryStore`.
``HARNESS_EXT_ROUNDS_IN_PROCESS=1`` times rounds inside the runner's process instead (the test
suite does, to inject failures into a runner; results then carry ``isolation: null``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from harness_ext.run.api import Records, RunnerAPI, RunnerFactory, TaskParams
from harness_ext.run.failures import reason
from harness_ext.store import MemoryStore, Record, now

if TYPE_CHECKING:
    from harness_ext.spec import Cell

#: Set to 1 to time speed rounds inside the runner's process.
IN_PROCESS_ENV = "HARNESS_EXT_ROUNDS_IN_PROCESS"
#: What the CPU's forkserver imports before forking a round's process.
PRELOAD = ["harness_ext.import_noise", "harness_ext.backend", "harness_ext.run.runner", "harness_ext.run.warm"]


def isolating() -> bool:
    """Whether speed rounds run in fresh processes (the default) or, with :data:`IN_PROCESS_ENV`, inline."""
    return os.environ.get(IN_PROCESS_ENV, "").strip() in ("", "0")


def is_round(cells: list[Cell]) -> bool:
    """A unit of speed cells only: one (model, scheme, round), timed in a process of its own."""
    return bool(cells) and all(c.kind == "speed" for c in cells)


def start_method(device: str) -> str:
    """How a round's process starts: forked from the preloaded forkserver on the CPU, spawned on CUDA."""
    return "spawn" if device.startswith("cuda") else "forkserver"


def context(device: str) -> Any:
    """The multiprocessing context of round processes on ``device`` (the CPU's forkserver, one per
    process, preloads :data:`PRELOAD`)."""
    ctx = multiprocessing.get_context(start_method(device))
    if start_method(device) == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def payload(runner: RunnerAPI, cells: list[Cell], task_params: TaskParams, **extra: Any) -> dict[str, Any]:
    """What a unit's process needs to rebuild its cells and runner (all of it picklable)."""
    return {
        "runner": type(runner),
        "spec": runner.spec.model_dump(mode="json"),
        "spec_text": runner.spec_text,
        "cell_ids": [c.id for c in cells],
        "device": cells[0].device,
        "machine": next((c.params["machine"] for c in cells if "machine" in c.params), None),
        "weights": {cells[0].model.label: cells[0].weights},  # the driver's: a worker may see other paths
        "task_params": task_params,
        "invocation": runner.invocation,
        **extra,
    }


def unit_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one unit's cells in this process (a round's own, or a Ray worker); return its records,
    new artifacts and loads, with this process's pid and when it started."""
    entered = time.time()
    if payload.get("cuda_visible_devices") is not None:  # a reused forkserver may hold another task's GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = payload["cuda_visible_devices"]
    import torch

    from harness_ext.run.quiet import quiet_lm_eval
    from harness_ext.spec import StudySpec, expand

    spec = StudySpec.model_validate(payload["spec"])
    if spec.threads:
        torch.set_num_threads(spec.threads)
    wanted = set(payload["cell_ids"])
    cells = expand(
        spec, payload["device"], payload["task_params"], weights=payload.get("weights"), machine=payload.get("machine")
    )
    cells = [c for c in cells if c.id in wanted]
    store = MemoryStore(payload.get("artifacts") or {})
    make_runner: RunnerFactory = payload["runner"]
    runner = make_runner(spec, payload["spec_text"], progress=False, store=store, device_map=payload.get("device_map"))
    runner.invocation = payload["invocation"]
    with quiet_lm_eval():
        runner.run_pair(cells, {}, payload["task_params"])
    return {
        "records": [r.model_dump(mode="json") for r in store.records],
        "artifacts": store.new_artifacts,
        "loads": runner.loads,
        "pid": os.getpid(),
        "entered": entered,
    }


def in_fresh_process(unit: dict[str, Any]) -> dict[str, Any]:
    """:func:`unit_task` of ``unit`` (a :func:`payload`) in a process forked for it alone; each speed
    record says which process timed it and how long that process took to start (``isolation``).
    Raises where the process died or could not start."""
    submitted = time.time()
    with ProcessPoolExecutor(1, mp_context=context(unit["device"]), max_tasks_per_child=1) as pool:
        result = pool.submit(unit_task, unit).result()
    started = result["entered"] - submitted
    isolation = {"process": start_method(unit["device"]), "pid": result["pid"], "startup_s": started}
    for data in result["records"]:
        if data.get("kind") == "speed":
            data["measurements"] = {**data.get("measurements", {}), "isolation": isolation}
    return result


def warm(device: str) -> None:
    """Start this process's forkserver (its imports) now, so that the first round does not wait for it
    (on CUDA there is none: each round's process is spawned)."""
    from multiprocessing import forkserver

    if start_method(device) == "forkserver":
        context(device)
        forkserver.ensure_running()


def run_round(runner: RunnerAPI, cells: list[Cell], records: Records, task_params: TaskParams) -> None:
    """Time one unit of speed cells in a fresh process and store what it returns; a process that
    dies fails the unit's cells with the reason."""
    started = now()
    try:
        result = in_fresh_process(payload(runner, cells, task_params))
    except Exception as e:  # the process died or could not start: not a measurement
        runner.fail(cells, records, f"the round's process failed: {reason(e)}", started=started)
        return
    for data in result["records"]:
        runner.save(Record.model_validate(data), records)
    runner.loads.extend(tuple(x) for x in result["loads"])
