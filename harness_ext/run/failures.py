"""How a cell's failure is told: one line for a failure a run may meet, a traceback for a bug."""

from __future__ import annotations

import logging
import sys
import traceback

import torch
from tqdm import tqdm

from harness_ext.errors import HarnessExtError

log = logging.getLogger("harness_ext")


def expected_failure(e: BaseException) -> bool:
    """Failures a cell may meet without a bug: out of memory, our own errors (unsupported scheme, a
    task's data, a model that cannot load), a task's data error, the file system or the network."""
    from harness_ext.tasks.loaders import TaskDataError

    return isinstance(e, (torch.OutOfMemoryError, MemoryError, HarnessExtError, TaskDataError, OSError))


def failure_fields(e: BaseException) -> dict[str, str | None]:
    """A failed record's ``error`` (one line) and, for an unexpected error (a bug), its ``traceback``."""
    tb = None if expected_failure(e) else "".join(traceback.format_exception(e))
    if tb is None:
        log.debug("cell failed\n%s", "".join(traceback.format_exception(e)))
    return {"error": reason(e), "traceback": tb}


def reason(e: BaseException) -> str:
    """One line that says why: our own errors as they are, others as ``Type: first line``."""
    if isinstance(e, torch.OutOfMemoryError):
        return "CUDA out of memory: " + str(e).splitlines()[0][:200]
    if isinstance(e, HarnessExtError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def write_stderr(text: str) -> None:
    """A message on stderr that does not break the progress bar."""
    tqdm.write(text, file=sys.stderr)
