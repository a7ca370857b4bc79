"""One cell's record (format version 1) and its JSON form: the unit the run directory stores.

The record's measured parts are typed (:mod:`harness_ext.store.parts`); the JSON they write is the
JSON their producers' dicts wrote, so every record ever written reads and re-writes byte-identically.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any, Literal

from pydantic import ConfigDict, Field, SerializeAsAny, model_validator

from harness_ext.store.parts import (
    MEASUREMENTS,
    Generation,
    GivenKeys,
    Load,
    Measurements,
    MetricValue,
    PointResult,
    SampleMetrics,
)

RECORD_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Record(GivenKeys):
    """One cell's outcome. ``metrics`` are aggregates (name -> :class:`MetricValue`);
    ``sample_metrics`` are per prompt (``doc_id`` plus metric values; probe rows also carry their
    grid point); ``measurements`` is the kind's :class:`Measurements` subclass."""

    model_config = ConfigDict(extra="forbid")

    record_version: int = RECORD_VERSION
    cell_id: str
    kind: Literal["eval", "probe", "speed"]
    label: str
    definition: dict[str, Any]  # what was hashed into cell_id: the spec's, kept as given
    status: Literal["ok", "failed"]
    error: str | None = None
    traceback: str | None = None  # failed on an unexpected error (a bug): the traceback, for the report
    started_at: str
    finished_at: str
    invocation: str
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    points: list[PointResult] = Field(default_factory=list)  # probe: per grid point {point, metrics}
    sample_metrics: list[SampleMetrics] = Field(default_factory=list)
    generations: list[Generation] = Field(default_factory=list)
    measurements: SerializeAsAny[Measurements] = Field(default_factory=Measurements)
    load: Load | None = None
    lm_eval: dict[str, Any] | None = None  # lm-eval's own results dict for this cell, as it is

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, data: Any) -> Any:
        """Every field of the record itself counts as given (its defaults are written: ``error:
        null``, ``points: []``), unlike a part's; ``measurements`` is read as the part of the
        record's kind (eval, probe or speed)."""
        if not isinstance(data, dict):
            return data
        data = {**_defaults(), "measurements": {}, **data}
        part = MEASUREMENTS.get(data.get("kind"))  # type: ignore[arg-type]
        if part is not None and isinstance(data["measurements"], dict):
            data["measurements"] = part.model_validate(data["measurements"])
        return data


def _defaults() -> dict[str, Any]:
    """The record's fields that have a default (``traceback`` aside: it is written only when set)."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in Record.model_fields.items()
        if not field.is_required() and name != "traceback"
    }


def record_dict(record: Record) -> dict[str, Any]:
    """A record as stored. ``traceback`` is left out when empty, so that records without one stay
    byte-identical to those written before the field existed. A part that a producer replaced by
    a plain dict after the record was built is written as that dict (no warning)."""
    exclude = {"traceback"} if record.traceback is None else None
    return record.model_dump(mode="python", exclude=exclude, exclude_unset=True, warnings=False)


def definition_hash(definition: dict[str, Any]) -> str:
    """The cell id a definition hashes to (:func:`harness_ext.spec.content_hash`)."""
    from harness_ext.spec import content_hash

    return content_hash(definition)


#: What a speed cell's definition holds that does not make it another measurement of the study: which
#: round it is and which machine timed it. Cells equal but for these are rounds of one speed cell.
ROUND_KEYS = ("round", "machine")


def timing_family(definition: dict[str, Any]) -> str | None:
    """The hash of a speed cell's definition less its round and machine: rounds added later (``run
    --add-rounds``, a raised ``speed.rounds``) and rounds timed on another kind of machine share it,
    so a run's tables keep them all. None for cells of other kinds."""
    if definition.get("kind") != "speed":
        return None
    params = {k: v for k, v in (definition.get("params") or {}).items() if k not in ROUND_KEYS}
    return definition_hash({**definition, "params": params})


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, str subclasses plain str, unknown objects their str()."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, bool) or o is None:
        return o
    if isinstance(o, str):
        return str(o)
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, int):
        return int(o)
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _clean(o.item())
    return _json_default(o)


def dumps(obj: Any) -> str:
    """The JSON text of a record (or any run-directory file): one-space indents, NaN as null."""
    return json.dumps(_clean(obj), indent=1, allow_nan=False)
