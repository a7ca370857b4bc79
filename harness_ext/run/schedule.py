"""In which order, and under which loads, the cells of a run are worked through.

A *work unit* is a list of cells that share one load of a (model, scheme). Quality cells (eval and
probe) of a pair share one load. Speed cells are replicated in *rounds*: a round is the
model loaded, warmed up and timed afresh, so each (model, scheme, round) is its own unit. Within a
round every (model, scheme) is timed in an order shuffled per round with a seeded RNG (seed derived
from the study name and the round), so a drift of the machine (another job starting, clocks
throttling) falls on the schemes in a different order each round instead of always on the last one.
The order depends only on the spec, so a worker on another machine (Ray) records the same planned
position, and a later invocation that adds rounds keeps the order of the earlier ones. The local
executor times the units in this order; the Ray executor submits them in it but runs as many at once
as there are GPUs, so there ``round_position`` is the planned place, not the order they were timed in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness_ext.spec import Cell, StudySpec

#: A unit's key: (model, scheme) for the quality cells, (model, scheme, round) for a speed round.
UnitKey = tuple[str, str] | tuple[str, str, int]


def round_seed(study: str, round_: int) -> int:
    """The seed of one round's order: stable across processes and Python versions (not ``hash``)."""
    digest = hashlib.sha256(f"{study}/speed-round/{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def round_order(study: str, round_: int, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (model, scheme) pairs in the order they are timed in ``round_``."""
    order = list(dict.fromkeys(pairs))
    random.Random(round_seed(study, round_)).shuffle(order)
    return order


def spec_pairs(spec: StudySpec) -> list[tuple[str, str]]:
    """Every (model, scheme) of a spec, in plan order: the population each round's order shuffles."""
    from harness_ext.spec import ordered_schemes

    return [(m.label, s.name) for m in spec.models for s in ordered_schemes(spec, m)]


def position(spec: StudySpec, cell: Cell) -> int:
    """The cell's (model, scheme) position in its round's order (0 = timed first)."""
    return round_order(spec.name, int(cell.params.get("round", 0)), spec_pairs(spec)).index(cell.pair)


def work_units(
    cells: Iterable[Cell], study: str, pairs: Iterable[tuple[str, str]] | None = None
) -> dict[UnitKey, list[Cell]]:
    """The cells to run, grouped into loads and ordered: every pair's quality cells first (plan
    order: references first), then round 0's speed units in round 0's shuffled order, round 1's, ...

    ``pairs``: the population of (model, scheme) whose order is shuffled (default: the pairs of
    ``cells``); pass the spec's full list so that a partial re-run keeps each pair's position."""
    cells = list(cells)
    population = list(pairs) if pairs is not None else [c.pair for c in cells]
    quality: dict[UnitKey, list[Cell]] = {}
    speed: dict[int, dict[tuple[str, str], list[Cell]]] = {}
    for c in cells:
        if c.kind == "speed":
            speed.setdefault(int(c.params.get("round", 0)), {}).setdefault(c.pair, []).append(c)
        else:
            quality.setdefault(c.pair, []).append(c)
    units: dict[UnitKey, list[Cell]] = dict(quality)
    for r in sorted(speed):
        by_pair = speed[r]
        order = round_order(study, r, [*population, *by_pair])
        for pair in order:
            if pair in by_pair:
                units[(*pair, r)] = by_pair[pair]
    return units
