"""Our lm-eval tasks (YAML + metrics + shipped data) and how the runner builds them per cell.

Use them from lm-eval directly with ``--include_path`` set to :data:`TASKS_DIR`. The runner builds
one lm-eval task object per (task, grid point, seed) — a *variant* with its own name and
``generation_kwargs`` — so that every cell gets its own lm-eval results while all of a pair's
variants can go through one ``simple_evaluate`` call (and so reach ``generate_until`` together).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).parent


#: the tasks of our own YAMLs (``task:`` of each file in TASKS_DIR)
OUR_YAML_TASKS = frozenset(p.stem for p in TASKS_DIR.glob("quant_*.yaml"))


@functools.cache
def task_manager(defaults: bool = True) -> Any:
    """lm-eval's ``TaskManager`` with our tasks included, built once per process. ``defaults``: index
    lm-eval's own thousands of task YAMLs too (seconds); our tasks alone need none of them."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=defaults)


def base_config(name: str) -> dict[str, Any] | None:
    """The full config dict of a YAML task (functions resolved, includes merged); None for
    Python-class tasks. Raises KeyError for an unknown name, ValueError for a group or tag."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager(defaults=name not in OUR_YAML_TASKS).task_index.get(name)
    if entry is None:
        raise KeyError(name)
    if entry.kind in (Kind.GROUP, Kind.TAG):
        raise ValueError(f"{name!r} is a group or tag of lm-eval tasks: name its tasks one by one")
    if entry.kind == Kind.PY_TASK or entry.yaml_path is None:
        return None
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return cfg


def output_type(name: str) -> str:
    """``generate_until``, ``loglikelihood``, ... of a task by name."""
    cfg = base_config(name)
    if cfg is not None:
        return cfg.get("output_type", "generate_until")
    task = task_manager(defaults=name not in OUR_YAML_TASKS).load([name])["tasks"][name]
    return task.get_config("output_type")


def make_variant(
    name: str,
    variant: str,
    *,
    data_file: str | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    repeats: int | None = None,
) -> Any:
    """A fresh lm-eval task object for one cell: ``name`` renamed to ``variant``, with the cell's
    generation kwargs merged over the task's own (its ``until`` stays) and its own data file."""
    from lm_eval.api.task import ConfigurableTask

    cfg = base_config(name)
    if cfg is None:  # a Python-class task: build it, then adjust its config in place
        task = task_manager(defaults=name not in OUR_YAML_TASKS).load([name])["tasks"][name]
        task.config.task = variant
    else:
        cfg = copy.deepcopy(cfg)
        cfg["task"] = variant
        if data_file is not None:
            cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_file": data_file}
        if repeats is not None:
            cfg["repeats"] = repeats
            for f in cfg.get("filter_list") or []:  # take_first_k needs k == repeats
                for step in f.get("filter", []):
                    if step.get("function") == "take_first_k":
                        step["k"] = repeats
        cfg["metadata"] = {**(cfg.get("metadata") or {}), "harness_ext_base_task": name}
        task = ConfigurableTask(config=cfg)
    if gen_kwargs and task.get_config("output_type") == "generate_until":
        task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
    if repeats is not None and cfg is None:
        task.config.repeats = repeats
    return task
