"""Reading a run directory's files, bounded: only regular files (no links followed), at most so many
bytes, JSON at most so deep. A run directory may have been copied from elsewhere: a FIFO would make a
reader wait forever, a link to /dev/zero fill the memory, a 200,000-deep array overflow a recursive
reader.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

#: The most bytes a run directory's JSON file (a record, run.json, an invocation) is read to; a
#: record holds one cell's outputs, a few MB for thousands of prompts.
MAX_JSON_BYTES = 256 * 2**20
#: The deepest nesting a run directory's JSON may have (records are about 8 levels deep); deeper
#: files are refused before a recursive reader meets them.
MAX_JSON_DEPTH = 100


class UnreadableFile(OSError):
    """A run directory's file that is not read: not a regular file, too large, or nested too deeply."""


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes``.

    A symbolic link is not followed: a link planted in a received run directory could point at
    /dev/zero, or at a private file that a report would copy into its ``data/``. The file is opened
    without blocking, so that a FIFO does not wait for a writer, and checked on the open file (no
    race): a link, a FIFO, a device, a socket or a folder raises :class:`UnreadableFile`, as does a
    file larger than ``max_bytes``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise UnreadableFile("a symbolic link, not followed") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise UnreadableFile(f"larger than {max_bytes // 2**20} MiB")
        raw = f.read(max_bytes + 1)  # the file may have grown since
    if len(raw) > max_bytes:
        raise UnreadableFile(f"larger than {max_bytes // 2**20} MiB")
    return raw


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A run directory's JSON file, parsed: a regular file of bounded size (:func:`read_regular`),
    UTF-8, nested at most :data:`MAX_JSON_DEPTH` deep. Raises :class:`UnreadableFile` (an OSError),
    ``UnicodeDecodeError`` or ``json.JSONDecodeError`` (both ValueErrors)."""
    text = read_regular(path, max_bytes).decode("utf-8")
    try:
        data = json.loads(text)
    except RecursionError:
        raise UnreadableFile(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise UnreadableFile(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def _depth(data: Any) -> int:
    """How deep ``data`` nests, without recursion (each container visited once)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                todo.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words (``a FIFO``, ``a device``, ...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def why_unreadable(e: BaseException) -> str:
    """A short reason for a file that could not be read: ours in words, others by their type."""
    return str(e) if isinstance(e, UnreadableFile) else type(e).__name__
