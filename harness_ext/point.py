"""One sampling setting, typed: the vocabulary shared by the spec, the backend and the records.

A :class:`SamplingPoint` is built once — from a spec's grid, or from lm-eval's ``gen_kwargs`` at the
backend's door (:meth:`SamplingPoint.from_gen_kwargs`) — and travels unchanged to the sampler, the
probe and the record. It becomes a loose dict only at the lm-eval boundary (:meth:`~SamplingPoint.gen_kwargs`)
and in a probe record (:meth:`~SamplingPoint.probe_fields`).

Importing this module imports pydantic only (no torch), so that validating a spec stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from harness_ext.errors import SpecError

MAX_TEMPERATURE = 10.0

# The limits of each sampling axis, in one place: used by a point and by the grid's lists.
# Strict numbers: YAML's true/false and quoted strings are refused, not read as 1.0 / 0 / a number.
Temperature = Annotated[
    float, Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, strict=True, description="0 = greedy")
]
#: The largest top-k a spec may ask for: above every vocabulary (so no truncation), and small enough
#: for a table's 64-bit integer column (``top_k: [1e23]`` would break every later table export).
MAX_TOP_K = 2**24
TopK = Annotated[
    Annotated[int, Field(gt=0, le=MAX_TOP_K, strict=True)] | None,
    Field(description="keep the k most likely tokens; null = off"),
]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=True, description="nucleus mass; 1.0 = off")]
MaxNewTokens = Annotated[int, Field(ge=1, le=8192, strict=True)]
#: A count in a spec (batch sizes, ...): a whole number > 0, strictly (YAML's true/false are refused, not read as 1/0).
Count = Annotated[int, Field(gt=0, strict=True)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False, strict=True, description="1.0 = off")]


class SamplingError(SpecError):
    """A sampling setting outside its range (from a spec, ``--gen_kwargs`` or a task's ``generation_kwargs``)."""


def check_sampling(temperature: float, top_k: int | None, top_p: float, repetition_penalty: float) -> None:
    """Refuse settings that have no meaning, in one line, instead of quietly reading them as "off"."""
    if not temperature >= 0:
        raise SamplingError(f"temperature must be >= 0 (0 is greedy), not {temperature!r}")
    if top_k is not None and top_k < 0:
        raise SamplingError(f"top_k must be >= 0 (0 or null is off), not {top_k!r}")
    if not 0 < top_p <= 1:
        raise SamplingError(
            f"top_p must be in (0, 1] (1 is off), not {top_p!r}: top_p=0 would keep no token; "
            "for greedy decoding use temperature 0 or top_k 1"
        )
    if not repetition_penalty > 0:
        raise SamplingError(f"repetition_penalty must be > 0 (1 is off), not {repetition_penalty!r}")


class SamplingPoint(BaseModel):
    """One point of the sampling grid. ``temperature: 0`` means greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: Temperature = 0.0
    """Divides the logits before the draw; 0 is greedy (argmax), whatever the other settings."""
    top_k: TopK = None
    """Keep only the k most likely tokens (ties kept); None is off."""
    top_p: TopP = 1.0
    """Keep the smallest set of most likely tokens whose mass reaches top_p (one at least); 1.0 is off."""
    max_new_tokens: MaxNewTokens = 32
    """Length cap of a generation in tokens (lm-eval's ``max_gen_toks``); the probe ignores it."""
    repetition_penalty: RepetitionPenalty = 1.0
    """Hugging Face's penalty on tokens already in the row (prompt included); 1.0 is off."""

    @classmethod
    def from_gen_kwargs(cls, kw: Mapping[str, Any], default_max_new_tokens: int) -> SamplingPoint:
        """The point an lm-eval request's ``gen_kwargs`` ask for; an invalid value is refused in one
        line (:class:`SamplingError`), never replaced by a default (``top_p=0`` must not become "off").

        lm-eval's own conventions hold: ``do_sample=False`` is greedy whatever the temperature,
        ``top_k=0`` is off, the cap is ``max_gen_toks`` (or ``max_new_tokens``). A task may ask for
        more than the spec's limits (a temperature above 10, a cap above 8192) as it may in lm-eval:
        only settings without meaning are refused, so the point is built from the checked values.
        """
        temperature = _number(kw, "temperature", 0.0)
        top_k = int(_number(kw, "top_k", 0))
        top_p = _number(kw, "top_p", 1.0)
        penalty = _number(kw, "repetition_penalty", 1.0)
        check_sampling(temperature, top_k, top_p, penalty)
        if kw.get("do_sample") is False:
            temperature = 0.0  # do_sample=False is greedy whatever the temperature
        cap = int(kw.get("max_gen_toks", kw.get("max_new_tokens", default_max_new_tokens)))
        return cls.model_construct(
            temperature=temperature, top_k=top_k or None, top_p=top_p, max_new_tokens=cap, repetition_penalty=penalty
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def truncated(self) -> bool:
        """Top-k or top-p removes tokens (the distribution no longer covers the vocabulary)."""
        return self.top_k is not None or self.top_p < 1.0

    def effective(self) -> SamplingPoint:
        """The point as decoding sees it: greedy ignores top-k and top-p, so a greedy point drops them
        (two greedy requests that differ only there draw the same tokens and can share a row)."""
        return self.model_copy(update={"top_k": None, "top_p": 1.0}) if self.greedy else self

    def capped(self, max_new_tokens: int) -> SamplingPoint:
        """This point with another length cap."""
        return self.model_copy(update={"max_new_tokens": max_new_tokens})

    def label(self, cap: bool = True) -> str:
        """Short human label, e.g. ``T=0.7 k=50 p=1 n=64``; ``cap=False`` leaves out the length cap
        (a probe's point, which has none)."""
        k = "-" if self.top_k is None else str(self.top_k)
        s = f"T={self.temperature:g} k={k} p={self.top_p:g}" + (f" n={self.max_new_tokens}" if cap else "")
        return s + (f" rp={self.repetition_penalty:g}" if self.repetition_penalty != 1.0 else "")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SamplingPoint | None:
        """The point of a table row (its ``temperature``, ``top_k``, ... columns), or None where it
        has none (a speed cell, a loglikelihood task). A value is absent as None, NaN or the -1 that
        stands for NaN in merge keys (no axis allows -1); an absent cap is the default one."""
        given = {a: row[a] for a in cls.model_fields if _present(row.get(a))}
        if "temperature" not in given:
            return None
        ints = {"top_k", "max_new_tokens"}
        return cls(**{a: int(v) if a in ints else float(v) for a, v in given.items()})

    def probe_fields(self) -> dict[str, Any]:
        """The ``point`` of a probe record: every field but the length cap, in the model's order."""
        return self.model_dump(exclude={"max_new_tokens"})

    def gen_kwargs(self) -> dict[str, Any]:
        """lm-eval ``gen_kwargs`` for this point (where a point leaves for lm-eval as a loose dict)."""
        kw: dict[str, Any] = {
            "do_sample": not self.greedy,
            "temperature": self.temperature,
            "max_gen_toks": self.max_new_tokens,
        }
        if self.top_k is not None:
            kw["top_k"] = self.top_k
        if self.top_p < 1.0:
            kw["top_p"] = self.top_p
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw


def _number(kw: Mapping[str, Any], name: str, default: float) -> float:
    """``kw[name]`` as a float, ``default`` only where it is absent or None (never where it is 0)."""
    value = kw.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name} must be a number, not {value!r}") from None


def row_label(row: Mapping[str, Any]) -> str:
    """The label of a table row's sampling point (:meth:`SamplingPoint.label`); without a length cap
    where the row has none (a probe's), ``""`` where it has no point."""
    point = SamplingPoint.from_row(row)
    if point is None:
        return ""
    return point.label(cap=_present(row.get("max_new_tokens")))


def _present(value: Any) -> bool:
    """A table's value, not a stand-in for its absence (None, NaN, or -1 in merge keys)."""
    return value is not None and value == value and value != -1
