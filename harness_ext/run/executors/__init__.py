"""Where the (model, scheme) pairs of a study run."""

from harness_ext.run.executors.ray import LocalExecutor, RayExecutor, make, pair_task, waves

__all__ = ["LocalExecutor", "RayExecutor", "make", "pair_task", "waves"]
