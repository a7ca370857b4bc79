"""Bounds on a spec that its types alone do not give: the fields of a random-weight ``shape`` (whole
numbers in range, finite, plain values), and how many cells a spec may plan (:func:`check_size`,
counted from the grid's axes before anything is expanded). Imports nothing heavier than pydantic.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from harness_ext.errors import SpecError
from harness_ext.point import SamplingPoint

if TYPE_CHECKING:
    from harness_ext.spec.schema import SamplingGrid, StudySpec

#: Config fields of a shape that count something (sizes, layers, heads): whole numbers, at most
#: :data:`MAX_SHAPE_COUNT` (2**24, above every vocabulary and context length in use); those in
#: :data:`_SHAPE_POSITIVE` at least 1, the others (``num_nextn_predict_layers``, ...) at least 0.
_SHAPE_COUNT = re.compile(r"^(num_|n_)|(_size|_dim|_layers|_heads|_position_embeddings)$|^d_model$")
_SHAPE_POSITIVE = frozenset(
    {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim"}
    | {"n_embd", "n_layer", "n_head", "d_model", "max_position_embeddings"}
)
MAX_SHAPE_COUNT = 2**24


def check_shape(shape: dict[str, Any]) -> None:
    """Refuse a shape field that would break the cell's identity or reach the model builder as
    nonsense (a ``ValueError`` naming the field: the spec's validation turns it into one line)."""
    for key, value in shape.items():
        check_shape_field(key, value)


def check_shape_field(key: str, value: Any) -> None:
    """A shape's config field: a count is a whole number in range; any number is finite (NaN would
    make the cell's identity unequal to itself); a value is a plain value, a list of them, or one
    mapping of them (``rope_scaling``) — what a config.json holds."""
    if value is not None and _SHAPE_COUNT.search(key):
        low = 1 if key in _SHAPE_POSITIVE else 0
        if type(value) is not int or not low <= value <= MAX_SHAPE_COUNT:
            raise ValueError(f"shape.{key}: {value!r} is not a whole number from {low} to {MAX_SHAPE_COUNT:,}")
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict) or (isinstance(v, list) and not _plain_list(v)):
                raise ValueError(f"shape.{key}.{k}: a nested config field holds plain values or lists of them")
            for x in v if isinstance(v, list) else [v]:
                _check_shape_scalar(f"{key}.{k}", x)
    elif isinstance(value, list):
        if not _plain_list(value):
            raise ValueError(f"shape.{key}: a list in a shape holds plain values (numbers, strings, true/false)")
        for x in value:
            _check_shape_scalar(key, x)
    else:
        _check_shape_scalar(key, value)


def _plain_list(values: list[Any]) -> bool:
    return all(not isinstance(v, (dict, list)) for v in values)


def _check_shape_scalar(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"shape.{key}: {value!r} is not a finite number")


#: The most cells a spec may plan unless ``--max-cells`` raises it: a grid is a product, so a few
#: hundred numbers in YAML can ask for 10**8 cells, which no machine plans (the cells alone take
#: gigabytes) and no study needs. Planning 100,000 cells takes seconds; each becomes one record.
MAX_CELLS = 100_000


def grid_size(grid: SamplingGrid | None) -> int:
    """How many points ``grid.expand()`` gives at most, counted from its axes without expanding them."""
    if grid is None:
        return 0
    if grid.points is not None:
        return len(grid.points)
    return math.prod(len(getattr(grid, a) or [None]) for a in SamplingPoint.model_fields)


def axis_values(grid: SamplingGrid, axis: str) -> set[Any]:
    """The distinct values of one axis of ``grid`` (its default where the grid leaves it out)."""
    if grid.points is not None:
        return {getattr(p, axis) for p in grid.points}
    values = getattr(grid, axis)
    return set(values) if values else {SamplingPoint.model_fields[axis].default}


def cell_bound(spec: StudySpec) -> tuple[int, int]:
    """(cells, probe grid points) a spec can plan at most, counted from its axes without expanding
    them: models x schemes x (tasks x grid points x seeds + a probe) + speed cells, and the probe's
    temperature x top-k x top-p x repetition-penalty points. A task that pins ``max_new_tokens`` or
    is a loglikelihood task has fewer; the bound counts it in full."""
    grid = spec.sampling
    points = grid_size(grid)
    speed = len(spec.speed.modes) * len(spec.speed.batch_sizes) * spec.speed.rounds if spec.speed.enabled else 0
    probe = int(spec.probe.enabled and grid is not None)
    cells = 0
    for m in spec.models:
        per_scheme = speed + (0 if m.speed_only else len(spec.tasks) * points * len(spec.seeds) + probe)
        cells += len(spec.schemes) * per_scheme
    probe_points = 0
    if probe:
        temps = len(axis_values(grid, "temperature") | set(spec.probe.temperatures))
        ks = len(axis_values(grid, "top_k") | set(spec.probe.top_k))
        probe_points = temps * ks * math.prod(len(axis_values(grid, a)) for a in ("top_p", "repetition_penalty"))
    return cells, probe_points


def check_size(spec: StudySpec, max_cells: int = MAX_CELLS) -> None:
    """Refuse, in one line and before anything is expanded, a spec that plans more than ``max_cells``
    cells (or probe grid points): raise the limit with ``--max-cells`` if it is meant."""
    cells, probe_points = cell_bound(spec)
    if cells > max_cells:
        raise SpecError(
            f"the spec plans up to {cells:,} cells (models x schemes x (tasks x {grid_size(spec.sampling):,} grid "
            f"points x seeds + probe) + speed cells), more than the limit of {max_cells:,}: narrow the grid, "
            "or raise the limit with --max-cells"
        )
    if probe_points > max_cells:
        raise SpecError(
            f"the probe's grid has {probe_points:,} points (every temperature x top-k x top-p x repetition penalty "
            f"of the grid and probe.temperatures), more than the limit of {max_cells:,}: narrow the grid, "
            "or raise the limit with --max-cells"
        )
