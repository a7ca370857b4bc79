"""Quantization schemes as data: what a scheme says, checked, resolved and described, without torch.

A scheme names how the linear layers' weights are stored (``quant``) and the dtype of everything
that is not quantized (``dtype``: embeddings, norms, ``lm_head``, and all layers when unquantized).
bitsandbytes leaves those layers in whatever dtype the model is loaded with; if the dtype is left
open, transformers picks fp16 for int8 on some paths, which makes "int8 vs fp32" unlike for like.
So a resolved scheme always carries a concrete dtype, and the store records it. A scheme stays data
until a backend builds it (:func:`harness_ext.backend.quantize.from_pretrained_kwargs`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DType = Literal["float32", "float16", "bfloat16"]
QuantMethod = Literal["none", "int8", "nf4", "fp4"]

DEFAULT_INT8_THRESHOLD = 6.0


class Scheme(BaseModel):
    """A named quantization scheme. Fields left ``None`` are filled from the model by :meth:`resolve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    quant: QuantMethod = Field(description="weight format of the linear layers; 'none' = unquantized")
    dtype: DType | None = Field(
        default=None,
        description="dtype of the layers that are not quantized (all layers when quant is 'none'); "
        "default: the model's dtype",
    )
    compute_dtype: DType | None = Field(default=None, description="4-bit only: dtype of the matmul; default: dtype")
    double_quant: bool = Field(default=False, description="4-bit only: quantize the scales too")
    int8_threshold: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="int8 only: LLM.int8 outlier threshold (default 6.0)"
    )
    skip_modules: tuple[str, ...] | None = Field(
        default=None, description="quantized schemes: module names to leave unquantized"
    )

    @model_validator(mode="after")
    def _fields_fit_the_method(self) -> Scheme:
        four_bit = self.quant in ("nf4", "fp4")
        if self.compute_dtype is not None and not four_bit:
            raise ValueError(f"compute_dtype applies to 4-bit schemes (nf4, fp4) only, not quant={self.quant!r}")
        if self.double_quant and not four_bit:
            raise ValueError(f"double_quant applies to 4-bit schemes (nf4, fp4) only, not quant={self.quant!r}")
        if self.int8_threshold is not None and self.quant != "int8":
            raise ValueError(f"int8_threshold applies to quant='int8' only, not {self.quant!r}")
        if self.skip_modules is not None and self.quant == "none":
            raise ValueError("skip_modules applies to quantized schemes only")
        if self.quant == "none" and self.dtype is None:
            raise ValueError("an unquantized scheme must name its dtype (float32, float16, bfloat16)")
        return self

    @property
    def quantized(self) -> bool:
        return self.quant != "none"

    @property
    def bits(self) -> int:
        """Bits per weight of the linear layers (storage, before scales)."""
        if self.quant in ("nf4", "fp4"):
            return 4
        if self.quant == "int8":
            return 8
        return 32 if self.dtype == "float32" else 16

    @property
    def bytes_per_param(self) -> float:
        """Bytes a linear layer's weight takes per parameter, scales included: 4-bit weights carry one
        fp32 scale per block of 64 (bitsandbytes' layout; double quant stores them in 8 bits).
        An unquantized scheme's needs its dtype (:meth:`resolve` first)."""
        if self.quant in ("nf4", "fp4"):
            return 0.5 + (1 + 4 / 256 if self.double_quant else 4) / 64
        if not self.quantized and self.dtype is None:
            raise ValueError(f"scheme {self.name!r} is not resolved: call Scheme.resolve first")
        return self.bits / 8

    def resolve(self, model_dtype: str) -> Scheme:
        """Return a copy with every open field made concrete for a model loaded in ``model_dtype``."""
        dtype = self.dtype or model_dtype
        update: dict[str, Any] = {"dtype": dtype}
        if self.quant in ("nf4", "fp4"):
            update["compute_dtype"] = self.compute_dtype or dtype
        if self.quant == "int8":
            update["int8_threshold"] = (
                self.int8_threshold if self.int8_threshold is not None else DEFAULT_INT8_THRESHOLD
            )
        return self.model_copy(update=update)

    def describe(self) -> str:
        """One line a reader understands, e.g. ``nf4 (double quant, compute bfloat16, rest bfloat16)``."""
        if not self.quantized:
            return f"unquantized {self.dtype}"
        parts = []
        if self.double_quant:
            parts.append("double quant")
        if self.compute_dtype:
            parts.append(f"compute {self.compute_dtype}")
        if self.int8_threshold is not None:
            parts.append(f"outlier threshold {self.int8_threshold:g}")
        if self.quant == "int8":  # bitsandbytes 0.50 warns of it: "inputs will be cast ... to float16"
            parts.append("matmul inputs in float16: LLM.int8 casts them")
        if self.dtype:
            parts.append(f"other layers {self.dtype}")
        return f"{self.quant} ({', '.join(parts)})" if parts else self.quant


BUILTIN_SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(name="fp32", quant="none", dtype="float32"),
        Scheme(name="fp16", quant="none", dtype="float16"),
        Scheme(name="bf16", quant="none", dtype="bfloat16"),
        Scheme(name="int8", quant="int8"),
        Scheme(name="nf4", quant="nf4"),
        Scheme(name="fp4", quant="fp4"),
        Scheme(name="nf4-dq", quant="nf4", double_quant=True),
        Scheme(name="fp4-dq", quant="fp4", double_quant=True),
    )
}
