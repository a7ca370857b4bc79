"""lm-eval, quieted while the runner works: its errors only, and the runner's own progress bar."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger("harness_ext")


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
def quiet_lm_eval() -> Iterator[None]:
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
