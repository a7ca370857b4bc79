"""The local executor: the work units one after another, each speed round in a fresh process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness_ext.run import isolated
from harness_ext.run.api import Pairs, Progress, Records, RunnerAPI, TaskParams, TextPairs

if TYPE_CHECKING:
    from harness_ext.spec import ModelSpec
    from harness_ext.spec.schemes import Scheme


class LocalExecutor:
    """Units one after another: quality units in this process, each speed round in a process of its
    own (:mod:`harness_ext.run.isolated`; ``isolate=False``, or ``HARNESS_EXT_ROUNDS_IN_PROCESS=1``,
    times them here)."""

    def __init__(self, isolate: bool | None = None):
        self.isolate = isolated.isolating() if isolate is None else isolate

    def run_pairs(self, runner: RunnerAPI, pairs: Pairs, records: Records, task_params: TaskParams) -> None:
        for cells in pairs.values():
            runner.check_time()
            if self.isolate and isolated.is_round(cells):
                isolated.run_round(runner, cells, records, task_params)
            else:
                runner.run_pair(cells, records, task_params)

    def score(
        self, runner: RunnerAPI, model: ModelSpec, ref: Scheme, pairs: TextPairs, progress: Progress = None
    ) -> list[float] | None:
        """Mean NLL of each (prompt, text) under the model's reference; ``progress(done, total)`` per batch."""
        from harness_ext.run.reference import score_nll

        scorer = runner.load_lm(model, ref, scoring=True)
        try:
            return score_nll(scorer, pairs, batch_size=runner.spec.batch_size, progress=progress)
        finally:
            del scorer
