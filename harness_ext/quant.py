"""Quantization schemes as data, and their mapping to ``from_pretrained`` keyword arguments.

A scheme names how the linear layers' weights are stored (``quant``) and the dtype of everything
that is not quantized (``dtype``: embeddings, norms, ``lm_head``, and all layers when unquantized).
bitsandbytes leaves those layers in whatever dtype the model is loaded with; if the dtype is left
open, transformers picks fp16 for int8 on some paths, which makes "int8 vs fp32" unlike for like.
So a resolved scheme always carries a concrete dtype, and the store records it.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness_ext.errors import UnsupportedSchemeError

DType = Literal["float32", "float16", "bfloat16"]
QuantMethod = Literal["none", "int8", "nf4", "fp4"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
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


def from_pretrained_kwargs(scheme: Scheme) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments (``dtype`` and ``quantization_config``) of a resolved scheme."""
    if scheme.dtype is None:
        raise ValueError(f"scheme {scheme.name!r} is not resolved: call Scheme.resolve first")
    kwargs: dict[str, Any] = {"dtype": TORCH_DTYPES[scheme.dtype]}
    if not scheme.quantized:
        return kwargs
    from transformers import BitsAndBytesConfig

    skip = list(scheme.skip_modules) if scheme.skip_modules is not None else None
    if scheme.quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=scheme.int8_threshold or DEFAULT_INT8_THRESHOLD,
            llm_int8_skip_modules=skip,
        )
    else:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=scheme.quant,
            bnb_4bit_use_double_quant=scheme.double_quant,
            bnb_4bit_compute_dtype=TORCH_DTYPES[scheme.compute_dtype or scheme.dtype],
            llm_int8_skip_modules=skip,
        )
    return kwargs


def check_supported(scheme: Scheme, device: str) -> None:
    """Raise :class:`UnsupportedSchemeError` (one line: cause and fix) if ``device`` cannot run ``scheme``.

    Called before any weights load, so a bad combination costs nothing.
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise UnsupportedSchemeError(f"scheme {scheme.name!r}: device {device!r} is not supported; use 'cpu' or 'cuda'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UnsupportedSchemeError(
            f"scheme {scheme.name!r}: device {device!r} asked for but torch sees no CUDA GPU; "
            "set device: cpu (or auto) in the spec"
        )
    dtypes = {scheme.dtype, scheme.compute_dtype} - {None}
    if kind == "cuda" and "bfloat16" in dtypes and not torch.cuda.is_bf16_supported():
        raise UnsupportedSchemeError(
            f"scheme {scheme.name!r} uses bfloat16, which this GPU "
            f"({torch.cuda.get_device_name()}) does not support; use float16"
        )
    if scheme.quantized:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UnsupportedSchemeError(f"scheme {scheme.name!r} needs bitsandbytes: pip install 'bitsandbytes>=0.48'")
        if kind == "cuda":
            import bitsandbytes as bnb

            backends = getattr(bnb, "supported_torch_devices", ())
            if backends and "cuda" not in backends:
                raise UnsupportedSchemeError(
                    f"scheme {scheme.name!r}: this bitsandbytes build has no CUDA library; "
                    "reinstall bitsandbytes for your CUDA version"
                )
