"""The cell kinds and their handlers: how a loaded pair's cells of each kind are run.

Adding a kind is a module with a :class:`~harness_ext.run.api.CellHandler` and one line here. A
pair's cells run kind by kind in this order (eval before probe; speed cells are units of their own)."""

from __future__ import annotations

from collections.abc import Callable

from harness_ext.run.api import CellHandler
from harness_ext.run.eval import EvalHandler
from harness_ext.run.probe import ProbeHandler
from harness_ext.run.speed import SpeedHandler

#: kind -> a factory of its handler (one handler per runner: a handler may keep state for the run).
HANDLERS: dict[str, Callable[[], CellHandler]] = {
    "eval": EvalHandler,
    "probe": ProbeHandler,
    "speed": SpeedHandler,
}
