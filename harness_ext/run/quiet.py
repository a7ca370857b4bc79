"""Libraries, quieted while the runner works: lm-eval's errors only and the runner's own progress bar;
bitsandbytes' warnings one line each under the bar, in full in the log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

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


#: Loggers of libraries that warn from inside a run (bitsandbytes: its optional CPU kernel is missing,
#: LLM.int8 casts its inputs to float16), printing into the middle of the progress bar.
LIBRARY_LOGGERS = ("bitsandbytes",)


class _OneLinePerWarning(logging.Handler):
    """A library's warning: in full to harness_ext's log (``-v`` shows it), and the first time a
    message is seen, its first line through ``note`` (under the progress bar, not across it)."""

    def __init__(self, note: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.note = note
        self.seen: set[tuple[str, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's malformed message must not break the run
            text = str(record.msg)
        log.info("%s: %s", record.name, text)
        key = (record.name, str(record.msg))
        if key not in self.seen:
            self.seen.add(key)
            first = text.strip().splitlines()[0] if text.strip() else ""
            library = record.name.split(".")[0]
            self.note(f"{library} warns: {first[:160]}{'…' if len(first) > 160 else ''} (in full with -v)")


@contextlib.contextmanager
def library_warnings(note: Callable[[str], None]) -> Iterator[None]:
    """Route the warnings of :data:`LIBRARY_LOGGERS` through :class:`_OneLinePerWarning` while the run works."""
    handler = _OneLinePerWarning(note)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False  # not also printed by the root handler, across the bar
    try:
        yield
    finally:
        for lg, propagate in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.propagate = propagate
