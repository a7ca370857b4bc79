"""Running a study: the runner, its cell handlers, executors and schedule."""

from harness_ext.run.runner import Runner, RunResult

__all__ = ["RunResult", "Runner"]
