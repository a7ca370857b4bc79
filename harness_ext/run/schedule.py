"""In which order, and under which loads, the cells of a run are worked through.

A *work unit* is a list of cells that share one load of a (model, scheme). Quality cells (eval and
probe) of a pair share one load. Speed cells are replicated in *rounds*: a round is the model loaded,
warmed up and timed afresh (in a process of its own: :mod:`harness_ext.run.isolated`), so each
(model, scheme, round) is its own unit.

Within a round a model's schemes are timed in the order of one row of a **Williams design** (row
``round mod rows``): over a full cycle of rounds (n rows for n schemes, 2n when n is odd) every
scheme is timed in every position equally often and every ordered pair of neighbours occurs equally
often, so a drift of the machine (another job starting, clocks throttling) or a carry-over from the
scheme timed before falls on every scheme alike, instead of always on the last one. Which scheme
plays which part of the design is shuffled once per study (seeded by its name). The order depends
only on the spec, so a worker on another machine (Ray) recomputes the same position, and a later
invocation that adds rounds continues the cycle.
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
    """A seed from the study's name (and a round): stable across processes and Python versions (not ``hash``)."""
    digest = hashlib.sha256(f"{study}/speed-round/{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def williams(n: int) -> list[list[int]]:
    """The rows of a Williams design for ``n`` treatments: each a permutation of ``range(n)``; over
    all rows every treatment takes every position equally often and follows every other treatment
    equally often (n rows for even n; for odd n, the n rows and their mirror images)."""
    if n <= 1:
        return [list(range(n))]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    return rows if n % 2 == 0 else rows + [r[::-1] for r in rows]


def round_order(study: str, round_: int, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (model, scheme) pairs in the order they are timed in ``round_``: model by model (in the
    order given), each model's schemes in row ``round_`` of their Williams design."""
    by_model: dict[str, list[str]] = {}
    for model, scheme in dict.fromkeys(pairs):
        by_model.setdefault(model, []).append(scheme)
    out: list[tuple[str, str]] = []
    for model, schemes in by_model.items():
        roles = list(schemes)
        random.Random(round_seed(study, -1)).shuffle(roles)  # which scheme is which treatment: once per study
        rows = williams(len(roles))
        out.extend((model, roles[i]) for i in rows[round_ % len(rows)])
    return out


def spec_pairs(spec: StudySpec) -> list[tuple[str, str]]:
    """Every (model, scheme) of a spec, in plan order: the population each round's order shuffles."""
    from harness_ext.spec import ordered_schemes

    return [(m.label, s.name) for m in spec.models for s in ordered_schemes(spec, m)]


def position(spec: StudySpec, cell: Cell) -> int:
    """The cell's scheme's position among its model's schemes in its round's order (0 = timed first)."""
    order = round_order(spec.name, int(cell.params.get("round", 0)), spec_pairs(spec))
    return [p for p in order if p[0] == cell.pair[0]].index(cell.pair)


def work_units(
    cells: Iterable[Cell], study: str, pairs: Iterable[tuple[str, str]] | None = None
) -> dict[UnitKey, list[Cell]]:
    """The cells to run, grouped into loads and ordered: every pair's quality cells first (plan
    order: references first), then round 0's speed units in round 0's order, round 1's, ...

    ``pairs``: the population of (model, scheme) the design orders (default: the pairs of ``cells``);
    pass the spec's full list so that a partial re-run keeps each pair's position."""
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
