"""Where the work units of a study run: in this process (:class:`LocalExecutor`), or as tasks on a
Ray cluster (:class:`RayExecutor`). Both call the runner's public API only
(:class:`harness_ext.run.api.RunnerAPI`), so neither imports the runner."""

from __future__ import annotations

from harness_ext.run.api import Executor
from harness_ext.run.executors.local import LocalExecutor
from harness_ext.run.executors.ray import RayExecutor, count_parameters, gpus_needed, pair_task, score_task, waves


def make(name: str) -> Executor:
    """The executor a spec names (``executor: local | ray``)."""
    return RayExecutor() if name == "ray" else LocalExecutor()


__all__ = [
    "LocalExecutor",
    "RayExecutor",
    "count_parameters",
    "gpus_needed",
    "make",
    "pair_task",
    "score_task",
    "waves",
]
