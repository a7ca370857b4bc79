"""One sampling setting, typed: the vocabulary shared by the spec, the backend and the records.

Importing this module imports pydantic only (no torch), so that validating a spec stays fast.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TEMPERATURE = 10.0

# The limits of each sampling axis, in one place: used by a point and by the grid's lists.
# Strict numbers: YAML's true/false and quoted strings are refused, not read as 1.0 / 0 / a number.
Temperature = Annotated[
    float, Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, strict=True, description="0 = greedy")
]
TopK = Annotated[
    Annotated[int, Field(gt=0, strict=True)] | None, Field(description="keep the k most likely tokens; null = off")
]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=True, description="nucleus mass; 1.0 = off")]
MaxNewTokens = Annotated[int, Field(ge=1, le=8192, strict=True)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False, strict=True, description="1.0 = off")]


class SamplingPoint(BaseModel):
    """One point of the sampling grid. ``temperature: 0`` means greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: Temperature = 0.0
    top_k: TopK = None
    top_p: TopP = 1.0
    max_new_tokens: MaxNewTokens = 32
    repetition_penalty: RepetitionPenalty = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def label(self) -> str:
        """Short human label, e.g. ``T=0.7 k=50 p=1 n=64``."""
        k = "-" if self.top_k is None else str(self.top_k)
        s = f"T={self.temperature:g} k={k} p={self.top_p:g} n={self.max_new_tokens}"
        return s + (f" rp={self.repetition_penalty:g}" if self.repetition_penalty != 1.0 else "")

    def gen_kwargs(self) -> dict[str, Any]:
        """lm-eval ``gen_kwargs`` for this point (the only place a point becomes a loose dict)."""
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
