"""Running a study: the runner (orchestration), one handler per cell kind, the metrics against the
reference, the executors (local, Ray) and the schedule of loads.

The runner's public API, the one executors and handlers call, is :class:`RunnerAPI`; the kind ->
handler registry is :data:`HANDLERS`."""

from harness_ext.run.api import CellHandler, Executor, RunnerAPI
from harness_ext.run.handlers import HANDLERS
from harness_ext.run.runner import Runner, RunResult, TimeLimitReached

__all__ = ["HANDLERS", "CellHandler", "Executor", "RunResult", "Runner", "RunnerAPI", "TimeLimitReached"]
