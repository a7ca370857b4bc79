"""Quantization schemes as data: what a scheme says, checked, resolved and described, without torch.

A scheme names how the linear layers' weights are stored (``quant``) and the dtype of everything
that is not quantized (``dtype``: embeddings, norms, ``lm_head``, and all layers when unquantized).
bitsandbytes leaves those layers in whatever dtype the model is loaded with; if the dtype is left
open, transformers picks fp16 for int8 on some paths, which makes "int8 vs fp32" unlike for like.
So a resolved scheme always carries a concrete dtype, and the store records it. A scheme stays data
until a backend builds it (:func:`harness_ext.backend.quantize.from_pretrained_kwargs`).

``backend`` names the library that quantizes (bitsandbytes, torchao, hqq; see :mod:`harness_ext.formats`)
and, with ``group_size``, ``axis`` and ``kernel``, the stored format and the kernel that computes with
it. The fields a bitsandbytes scheme never sets are left out of its dump while unset, so that the
identity of a bitsandbytes or unquantized cell does not depend on fields it never had.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from harness_ext.formats import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_HQQ_AXIS,
    GROUP_SIZES,
    KERNELS,
    LIBRARIES,
    backend_label,
    backend_of,
    bits_of,
    default_kernel,
    format_of,
)

DType = Literal["float32", "float16", "bfloat16"]
QuantMethod = Literal["none", "int8", "nf4", "fp4", "int4"]
Backend = Literal["none", "bitsandbytes", "torchao", "hqq"]

DEFAULT_INT8_THRESHOLD = 6.0

#: Fields a bitsandbytes or unquantized scheme never sets: dropped from the dump while unset.
_FORMAT_FIELDS = ("backend", "group_size", "axis", "kernel", "backend_version")


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
    backend: Backend | None = Field(
        default=None,
        description="library that quantizes: bitsandbytes (default for int8/nf4/fp4), torchao or hqq "
        "(int4, int8); 'none' for unquantized",
    )
    group_size: int | None = Field(
        default=None,
        ge=8,
        le=4096,
        strict=True,
        description="torchao/hqq: weights per scale (torchao int4 32-256, default 128; hqq default 64; "
        "torchao int8 default: one scale per row)",
    )
    axis: Literal[0, 1] | None = Field(default=None, description="hqq: grouping axis (default 1, as bitsandbytes')")
    kernel: str | None = Field(
        default=None,
        description="torchao/hqq: which kernel computes (torchao int4: tile_packed_to_4d, plain, unpacked_to_int8; "
        "hqq: pytorch, torchao_int4); default: the first",
    )
    backend_version: str | None = Field(
        default=None, description="set on resolve: the installed version of a torchao/hqq scheme's library"
    )

    @model_serializer(mode="wrap")
    def _drop_unset_format_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in _FORMAT_FIELDS:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _fields_fit_the_method(self) -> Scheme:
        self._check_backend()
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

    def _check_backend(self) -> None:
        """The backend can store this quant, and the format fields are its own."""
        backend = self.library
        if self.quant == "none" or backend == "none":
            if self.quant != "none":
                raise ValueError(f"backend 'none' goes with quant 'none' (unquantized), not quant={self.quant!r}")
            if backend != "none":
                raise ValueError(f"an unquantized scheme (quant 'none') has no backend, not {backend!r}")
            if any(getattr(self, f) is not None for f in ("group_size", "axis", "kernel")):
                raise ValueError("group_size, axis and kernel apply to torchao/hqq schemes only")
            return
        if (backend, self.quant) not in KERNELS:
            formats = sorted(q for b, q in KERNELS if b == backend)
            raise ValueError(f"backend {backend} stores {', '.join(formats)}, not quant={self.quant!r}")
        if backend == "bitsandbytes":
            if any(getattr(self, f) is not None for f in ("group_size", "axis", "kernel")):
                raise ValueError(
                    "group_size, axis and kernel apply to torchao/hqq schemes; bitsandbytes' block size is fixed"
                )
            return
        for f in ("compute_dtype", "int8_threshold"):
            if getattr(self, f) is not None:
                raise ValueError(f"{f} applies to bitsandbytes schemes only, not backend {backend}")
        if self.double_quant:
            raise ValueError(f"double_quant applies to bitsandbytes schemes only, not backend {backend}")
        kernels = KERNELS[(backend, self.quant)]
        if self.kernel is not None and self.kernel not in kernels:
            raise ValueError(f"{backend} {self.quant} kernels are {', '.join(kernels)}, not {self.kernel!r}")
        if self.axis is not None and backend != "hqq":
            raise ValueError(f"axis applies to hqq schemes only, not backend {backend}")
        allowed = GROUP_SIZES.get((backend, self.quant))
        if self.group_size is not None and allowed is not None and self.group_size not in allowed:
            sizes = ", ".join(map(str, allowed))
            raise ValueError(f"{backend} {self.quant} group_size must be one of {sizes}, not {self.group_size}")

    @property
    def library(self) -> str:
        """The backend that quantizes (``backend``, or bitsandbytes for a quantized scheme that names none)."""
        return backend_of({"backend": self.backend, "quant": self.quant})

    @property
    def format(self) -> str:
        """The stored format in a few words (:func:`harness_ext.formats.format_of`)."""
        return format_of(self.model_dump())

    @property
    def quantized(self) -> bool:
        return self.quant != "none"

    @property
    def bits(self) -> int:
        """Bits per weight of the linear layers (storage, before scales)."""
        return bits_of({"quant": self.quant, "dtype": self.dtype})

    @property
    def bytes_per_param(self) -> float:
        """Bytes a linear layer's weight takes per parameter, scales included: 4-bit weights carry one
        fp32 scale per block of 64 (bitsandbytes' layout; double quant stores them in 8 bits).
        An unquantized scheme's needs its dtype (:meth:`resolve` first)."""
        if self.quant in ("nf4", "fp4"):
            return 0.5 + (1 + 4 / 256 if self.double_quant else 4) / 64
        if self.kernel == "unpacked_to_int8":  # torchao's intx int4 keeps one value per byte, scales beside
            return 1.1
        if self.quant == "int4":  # packed, with a scale and a zero point per group
            return 0.5 + 4 / (self.group_size or 64)
        if not self.quantized and self.dtype is None:
            raise ValueError(f"scheme {self.name!r} is not resolved: call Scheme.resolve first")
        return self.bits / 8

    def resolve(self, model_dtype: str) -> Scheme:
        """Return a copy with every open field made concrete for a model loaded in ``model_dtype``."""
        dtype = self.dtype or model_dtype
        update: dict[str, Any] = {"dtype": dtype}
        backend = self.library
        if backend == "bitsandbytes" and self.quant in ("nf4", "fp4"):
            update["compute_dtype"] = self.compute_dtype or dtype
        if backend == "bitsandbytes" and self.quant == "int8":
            update["int8_threshold"] = (
                self.int8_threshold if self.int8_threshold is not None else DEFAULT_INT8_THRESHOLD
            )
        if backend in ("torchao", "hqq"):
            update["kernel"] = self.kernel or default_kernel(backend, self.quant)
            update["group_size"] = self.group_size or DEFAULT_GROUP_SIZE.get((backend, self.quant))
            update["backend_version"] = installed_version(backend)
            if backend == "hqq":
                update["axis"] = DEFAULT_HQQ_AXIS if self.axis is None else self.axis
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
        if self.library != "bitsandbytes":
            return f"{self.format} by {backend_label(self.model_dump())}" + (f"; {', '.join(parts)}" if parts else "")
        return f"{self.quant} ({', '.join(parts)})" if parts else self.quant


def installed_version(backend: str) -> str | None:
    """The installed version of a backend's library (read from its metadata, not imported), or None."""
    library = LIBRARIES.get(backend)
    if library is None:
        return None
    try:
        return importlib.metadata.version(library.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


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
        # tinygemm int4 needs bfloat16 (and CUDA): the scheme says so rather than failing on an fp32 model
        Scheme(name="int4-torchao", quant="int4", backend="torchao", group_size=128, dtype="bfloat16"),
        Scheme(name="intx4-torchao", quant="int4", backend="torchao", group_size=64, kernel="unpacked_to_int8"),
        Scheme(name="int8wo-torchao", quant="int8", backend="torchao"),
        Scheme(name="hqq4", quant="int4", backend="hqq", group_size=64, axis=1),
        Scheme(name="hqq8", quant="int8", backend="hqq", group_size=64, axis=1),
    )
}
