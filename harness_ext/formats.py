"""Quantization backends and weight formats as data: which library stores a scheme's weights, in what
format, through which kernel, on which devices it runs and compiles, and how to install it. Torch-free:
the spec validates against it, the store and the report read a record's scheme fields through it.

A *format* is what is stored (bits, grouping, data type, scale and zero point); a *backend* is the
library that stores it and the kernel that computes with it. "nf4 vs int4" is a difference of format,
"bitsandbytes vs torchao at 4 bits" one of backend (kernel, and the library's own way of choosing
scales).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The libraries a scheme's weights can be quantized by ("none": unquantized).
BACKENDS = ("none", "bitsandbytes", "torchao", "hqq")


@dataclass(frozen=True)
class Library:
    """A quantization library: its import name and distribution, the versions relied on, the install line."""

    module: str
    distribution: str
    requirement: str
    env: str = ""  # environment the install needs

    @property
    def install(self) -> str:
        return f"{self.env}pip install '{self.requirement}'"


LIBRARIES: dict[str, Library] = {
    "bitsandbytes": Library("bitsandbytes", "bitsandbytes", "bitsandbytes>=0.48"),
    "torchao": Library("torchao", "torchao", "torchao>=0.18,<0.19"),
    # hqq's sdist builds CUDA extensions on install unless DISABLE_CUDA=1; its pytorch backend needs none
    "hqq": Library("hqq", "hqq", "hqq>=0.2.8,<0.3", env="DISABLE_CUDA=1 "),
}


@dataclass(frozen=True)
class Kernel:
    """One way a backend computes with one of its formats: the devices it runs on and compiles on,
    the dtype it needs (of the unquantized layers and the matmul), what it is, and what else it needs."""

    devices: tuple[str, ...]
    compiles_on: tuple[str, ...]
    what: str
    dtype: str | None = None
    needs: str | None = None  # another distribution the kernel imports
    axis: int | None = None  # HQQ: the grouping axis the kernel requires
    instead: str = ""  # what to use on a device it does not run on
    no_compile: str = ""  # why it does not compile where it does not


_BNB_4BIT = Kernel(
    ("cpu", "cuda"),
    ("cuda",),
    "bitsandbytes 4-bit matmul (gemv at batch 1)",
    no_compile="compiled 4-bit runs on CUDA only (torch.compile fails on bitsandbytes' CPU 4-bit kernels); "
    "use mode eager on the CPU",
)
_TORCHAO_INT4_ON_CPU = (
    "torchao 0.18 packs int4 weight-only for CUDA only (tile_packed_to_4d, plain, preshuffled) or XPU/NPU "
    "(plain_int32); on the CPU use intx4-torchao (kernel: unpacked_to_int8) or hqq4"
)

#: Per (backend, quant): its kernels, the default first. bitsandbytes has one kernel per format.
KERNELS: dict[tuple[str, str], dict[str, Kernel]] = {
    ("bitsandbytes", "nf4"): {"bitsandbytes": _BNB_4BIT},
    ("bitsandbytes", "fp4"): {"bitsandbytes": _BNB_4BIT},
    ("bitsandbytes", "int8"): {
        "bitsandbytes": Kernel(
            ("cpu", "cuda"),
            (),
            "LLM.int8: int8 matmul of activations and weights, fp16 outliers",
            no_compile="int8 (LLM.int8) cannot run compiled: torch.compile had not finished compiling it after "
            "4.5 minutes on an H100 (bitsandbytes 0.50.2); use mode eager",
        )
    },
    ("torchao", "int4"): {
        "tile_packed_to_4d": Kernel(
            ("cuda",),
            ("cuda",),
            "tinygemm (aten._weight_int4pack_mm), compute capability 8.0+",
            dtype="bfloat16",
            instead=_TORCHAO_INT4_ON_CPU,
        ),
        "plain": Kernel(
            ("cuda",), ("cuda",), "mslk int4 kernels", dtype="bfloat16", needs="mslk", instead=_TORCHAO_INT4_ON_CPU
        ),
        "unpacked_to_int8": Kernel(
            ("cpu", "cuda"),
            ("cpu", "cuda"),
            "IntxWeightOnlyConfig: int4 values kept one per byte, dequantized for each matmul",
        ),
    },
    ("torchao", "int8"): {
        "plain": Kernel(("cpu", "cuda"), ("cpu", "cuda"), "Int8WeightOnlyConfig: weights dequantized for each matmul")
    },
    ("hqq", "int4"): {
        "pytorch": Kernel(("cpu", "cuda"), ("cpu", "cuda"), "HQQ pytorch backend: dequantize, then torch.matmul"),
        "torchao_int4": Kernel(
            ("cuda",),
            ("cuda",),
            "HQQ weights repacked for tinygemm (aten._weight_int4pack_mm)",
            dtype="bfloat16",
            axis=1,
            instead="on the CPU use kernel: pytorch",
        ),
    },
    ("hqq", "int8"): {
        "pytorch": Kernel(("cpu", "cuda"), ("cpu", "cuda"), "HQQ pytorch backend: dequantize, then torch.matmul")
    },
}

#: Group sizes a backend's 4-bit format accepts (None: any divisor of the layer's input size).
GROUP_SIZES: dict[tuple[str, str], tuple[int, ...] | None] = {
    ("torchao", "int4"): (32, 64, 128, 256),
    ("torchao", "int8"): None,
    ("hqq", "int4"): None,
    ("hqq", "int8"): None,
}

#: Defaults a scheme resolves to when it leaves a format field open.
DEFAULT_GROUP_SIZE = {("torchao", "int4"): 128, ("hqq", "int4"): 64, ("hqq", "int8"): 64}
DEFAULT_HQQ_AXIS = 1  # transformers' HqqConfig default: the axis the fast kernels need, and bnb's blocking
BNB_BLOCKSIZE = 64  # bitsandbytes' 4-bit block size (transformers does not expose it)


def backend_of(fields: dict[str, Any]) -> str:
    """The backend of a record's scheme fields; records without one are bitsandbytes' (or unquantized)."""
    return fields.get("backend") or ("none" if fields.get("quant", "none") == "none" else "bitsandbytes")


def bits_of(fields: dict[str, Any]) -> int:
    """Bits per weight of the linear layers as stored by the format (before scales)."""
    quant = fields.get("quant")
    if quant in ("nf4", "fp4", "int4"):
        return 4
    if quant == "int8":
        return 8
    return 32 if fields.get("dtype") == "float32" else 16


def default_kernel(backend: str, quant: str) -> str | None:
    """The kernel a scheme of ``backend``/``quant`` uses when it names none (None for unquantized)."""
    kernels = KERNELS.get((backend, quant))
    return next(iter(kernels)) if kernels else None


def format_of(fields: dict[str, Any]) -> str:
    """The stored format in a few words, the same for every backend that stores it: e.g.
    ``nf4 g64 absmax``, ``int4 g64 asym, float zero``, ``int8 row sym``, ``bf16``."""
    quant = fields.get("quant", "none")
    backend = backend_of(fields)
    if quant == "none":
        return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(fields.get("dtype") or "", "unquantized")
    if backend == "bitsandbytes":
        if quant == "int8":
            return "int8 row sym + fp16 outliers"
        return f"{quant} g{BNB_BLOCKSIZE} absmax" + (" (double quant)" if fields.get("double_quant") else "")
    group = fields.get("group_size")
    grouping = f"g{group}" if group else "row"
    if backend == "hqq":  # HQQ keeps its zero points as floats (its optimiser moves them off the integers)
        return f"{quant} {grouping} asym, float zero" + (" axis 0" if fields.get("axis") == 0 else "")
    if quant == "int8":
        return f"int8 {grouping} sym"
    # torchao's int4: tinygemm's and mslk's zero points are floats, IntxWeightOnlyConfig's are int8
    return f"int4 {grouping} asym, {'int' if fields.get('kernel') == 'unpacked_to_int8' else 'float'} zero"


def backend_label(fields: dict[str, Any]) -> str:
    """The backend and its kernel and version, e.g. ``torchao 0.18.0 (unpacked_to_int8)``, ``bitsandbytes``."""
    backend = backend_of(fields)
    if backend == "none":
        return "none"
    parts = [backend]
    if fields.get("backend_version"):
        parts.append(str(fields["backend_version"]))
    kernel = fields.get("kernel")
    return " ".join(parts) + (f" ({kernel})" if kernel else "")
