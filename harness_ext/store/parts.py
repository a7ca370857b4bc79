"""The typed parts of a record: what a cell measured, as pydantic models inside :class:`Record`.

Each part is validated where it is built (producers may pass plain dicts: pydantic coerces them)
and where it is read back from disk. A part serializes to exactly the JSON its producer's dict did:
the keys it was given (a field left out stays out; one given as null stays null), in the order
given (a part's fields are declared in its producer's order; an :class:`OrderedPart`, whose
producers differ in order, remembers the order it was given), and numbers as they were (an ``int``
stays an int where the field is a :data:`Number`). So records written before the parts were typed
re-serialize byte-identically (tests/test_committed_reports.py, tests/test_store.py).

A part also reads like the mapping it replaces (``g["text"]``, ``m.get("value")``, ``row[m] = v``),
so code written against the dicts keeps working while it moves to attributes (``g.text``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_serializer, model_validator

#: A number kept as given: an int stays an int, a float a float (no silent 3 -> 3.0 on a re-write).
Number = int | float


class GivenKeys(BaseModel):
    """A model that dumps only the keys it was given (or set since), unless told otherwise: a record
    and its parts write back exactly what their producer wrote."""

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("exclude_unset", True)
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("exclude_unset", True)
        return super().model_dump_json(**kwargs)


class Part(GivenKeys, MutableMapping):  # type: ignore[misc]
    """Base of the record parts: typed fields, dumped as given (only the keys set), readable as a
    mapping. Its fields are declared in the order its producer writes them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def _keys(self) -> list[str]:
        """The keys this part holds: the fields given (or set later) and the extra keys."""
        held = self.model_fields_set
        return [*(k for k in type(self).model_fields if k in held), *(self.__pydantic_extra__ or {})]

    # -- the mapping view -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        extra = self.__pydantic_extra__
        if key in self.model_fields_set or (extra is not None and key in extra):
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        extra = self.__pydantic_extra__ or {}
        if key in extra:
            del extra[key]
        elif key in self.model_fields_set:
            self.model_fields_set.discard(key)
            object.__setattr__(self, key, type(self).model_fields[key].get_default(call_default_factory=True))
        else:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self.model_fields_set or key in (self.__pydantic_extra__ or {})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class OrderedPart(Part):
    """A part whose producers write its keys in different orders (a metric value of lm-eval's and
    one of the speed benchmark's): it remembers the order given and dumps its keys in that order."""

    _order: list[str] = PrivateAttr(default_factory=list)  # keys in the order the producer gave them

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Any:
        part = handler(data)
        if isinstance(data, Mapping) and not isinstance(data, Part):
            part._order = [str(k) for k in data]
        return part

    @model_serializer(mode="wrap")
    def _as_given(self, handler: Any) -> Any:
        out = handler(self)
        if not isinstance(self, OrderedPart):  # a plain dict put into a typed slot after validation
            return out
        return {k: out[k] for k in self._keys() if k in out}

    def _keys(self) -> list[str]:
        held = super()._keys()
        ordered = [k for k in self._order if k in held]
        return ordered + [k for k in held if k not in ordered]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_") and name not in self._order:
            self._order.append(name)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        if key in self._order:
            self._order.remove(key)


class Open(OrderedPart):
    """A part with documented fields and room for more (measurements and load information grow)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


# -- what every kind records ---------------------------------------------------------------------
class MetricValue(OrderedPart):
    """An aggregate metric: lm-eval's value and stderr (eval), the median with p10/p90 as lo/hi
    (speed), the mean and its standard error (probe, metrics against the reference)."""

    value: float | None = None
    stderr: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: float | None = None


class GridPoint(Part):
    """A probe grid point (the sampling point without max_new_tokens: the probe reads one token)."""

    temperature: Number
    top_k: int | None = None
    top_p: Number
    repetition_penalty: Number


class PointMetricValue(MetricValue):
    """A probe metric at one grid point: the mean over prompts and its standard error; its numbers
    are kept as computed (``n`` is the int count of prompts), as the probe has always written them."""

    value: Number | None = None
    stderr: Number | None = None
    lo: Number | None = None
    hi: Number | None = None
    n: Number | None = None


class PointResult(Part):
    """The probe's aggregate metrics at one grid point (one entry of ``points``)."""

    point: GridPoint
    metrics: dict[str, PointMetricValue]


class SampleMetrics(Part):
    """One prompt's metrics: ``doc_id``, then one value per metric name (extra keys); probe rows
    also carry their grid ``point``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    __pydantic_extra__: dict[str, float | None]  # type: ignore[assignment]

    doc_id: int
    point: GridPoint | None = None


class Generation(Part):
    """One generated text of an eval cell: prompt, text, its real new tokens and how it ended."""

    doc_id: int
    sample: int
    prompt: str | None = None
    text: str
    new_tokens: int | None = None
    finish: Literal["eos", "stop", "cap"] | None = None


# -- measurements, per kind -----------------------------------------------------------------------
class EvaluationCall(Open):
    """The ``simple_evaluate`` call an eval cell shared with the other cells of its grid batch."""

    cells: int | None = None
    wall_s: Number | None = None
    generate_calls: int | None = None
    rows: int | None = None
    new_tokens: int | None = None
    generate_wall_s: Number | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None


class ReferenceMetrics(Open):
    """Which reference record the ``*_ref`` metrics of an eval cell were computed against."""

    reference_cell: str | None = None
    reference_record: str | None = None
    metrics: list[str] | None = None
    at: str | None = None


class Measurements(Open):
    """How a cell was measured. The kind's subclass holds its documented fields (docs/RECORDS.md)."""

    placement: dict[str, Any] | None = None  # with Ray: the worker that computed the cell


class EvalMeasurements(Measurements):
    grid_batched: bool | None = None
    kv_cache: str | None = None
    evaluation: EvaluationCall | None = None
    new_tokens: int | None = None
    reference_metrics: ReferenceMetrics | None = None


class ProbeMeasurements(Measurements):
    prompts: int | None = None
    wall_s: Number | None = None
    reference: str | None = None
    forward: str | None = None
    dtype: str | None = None
    single_token_targets: int | None = None


class SpeedSummary(Open):
    """Median and spread of one figure over a speed cell's timed repeats (null: nothing timed)."""

    n: int | None = None
    median: Number | None = None
    p10: Number | None = None
    p90: Number | None = None
    min: Number | None = None
    max: Number | None = None
    mean: Number | None = None
    stdev: Number | None = None


class SpeedIndex(Open):
    """The machine speed index taken before a round: a fixed reference workload's rates."""

    matmul_gflops: Number | None = None
    memory_gb_s: Number | None = None
    threads: int | None = None
    wall_ms: Number | None = None


class TimedWindow(Open):
    """What the machine did during a round's timed repeats (:class:`harness_ext.machine.Window`)."""

    samples: int | None = None
    threads: int | None = None
    wall_s: Number | None = None
    self_cpu_s: Number | None = None
    self_cores: Number | None = None
    other_cores: Number | None = None
    steal_share: Number | None = None
    max_other_cores: Number | None = None
    self_share: Number | None = None
    gpus: list[dict[str, Any]] | None = None
    gpu_note: str | None = None
    contended: bool | None = None
    why: list[str] | None = None


class SpeedMeasurements(Measurements):
    """The speed benchmark's result: settings, per-figure summaries, every timed call, the load, the
    weight-streaming floor (CUDA), the round and the machine's state around it: facts about the round
    (``round``, ``round_position``, ``contended`` and why, the machine's ``fingerprint`` key, the
    ``gpus`` that timed it) are typed fields here, not metrics (records made before them hold
    ``contended`` as a metric and in ``machine.contention``; :func:`contended_of` reads both)."""

    batch_size: int | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    decoding: str | None = None
    mode: str | None = None
    kv_cache: str | None = None
    compiled_how: str | None = None
    warmup_wall_ms: list[Number] | None = None
    ttft_ms: SpeedSummary | None = None
    decode_ms_per_token: SpeedSummary | None = None
    tokens_per_s: SpeedSummary | None = None
    decode_tokens_per_s: SpeedSummary | None = None
    wall_ms: SpeedSummary | None = None
    peak_memory_bytes: int | None = None
    peak_memory_by_device: dict[str, int] | None = None
    peak_memory_kind: str | None = None
    threads: int | None = None
    calls: list[dict[str, Any]] | None = None
    weight_bytes: int | None = None
    load_s: Number | None = None
    load_peak_bytes: int | None = None
    load_peak_kind: str | None = None
    bandwidth_bytes_per_s: Number | None = None
    bandwidth_bytes_per_s_by_device: dict[str, Number] | None = None
    weight_bytes_by_device: dict[str, int] | None = None
    floor_ms_by_device: dict[str, Number] | None = None
    floor_ms_per_token: Number | None = None
    decode_over_floor: Number | None = None
    round: int | None = None
    round_position: int | None = None
    machine: dict[str, Any] | None = None
    contended: bool | None = None
    contention_why: list[str] | None = None
    fingerprint: str | None = None
    gpus: list[str] | None = None
    speed_index: SpeedIndex | None = None
    window: TimedWindow | None = None
    isolation: dict[str, Any] | None = None
    host_lock_wait_s: Number | None = None


def contended_of(measurements: Measurements, metrics: Mapping[str, Any]) -> tuple[bool | None, list[str]]:
    """A speed record's contended flag and its reasons: the typed fields, else (records made before
    them) the ``contended`` metric or ``machine.contention``; None where nothing says."""
    m = measurements
    if m.get("contended") is not None:
        return bool(m["contended"]), list(m.get("contention_why") or [])
    old = (m.get("machine") or {}).get("contention") or {}
    if "contended" in metrics and metrics["contended"].get("value") is not None:
        return bool(metrics["contended"]["value"]), list(old.get("why") or [])
    if "contended" in old:
        return bool(old["contended"]), list(old.get("why") or [])
    return None, []


#: The measurements part of each cell kind.
MEASUREMENTS: dict[str, type[Measurements]] = {
    "eval": EvalMeasurements,
    "probe": ProbeMeasurements,
    "speed": SpeedMeasurements,
}


class Load(Open):
    """How the cell's (model, scheme) was loaded: time, memory, and what the layers became."""

    load_s: Number | None = None
    weight_bytes: int | None = None
    load_peak_bytes: int | None = None
    load_peak_kind: str | None = None
    num_parameters: int | None = None
    layer_types: dict[str, int] | None = None
    dtypes: dict[str, int] | None = None
    device: str | None = None
    source: dict[str, Any] | None = None
    note: str | None = None
    scheme: dict[str, Any] | None = None
    model_type: str | None = None
    original_generation_config: dict[str, Any] | None = None
    devices: list[str] | None = None
    weight_bytes_by_device: dict[str, int] | None = None
    load_peak_by_device: dict[str, int] | None = None
    quantized_parameters: int | None = None
    unquantized_parameters: int | None = None
