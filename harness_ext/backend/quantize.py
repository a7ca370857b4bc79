"""A scheme's ``from_pretrained`` keyword arguments (torch dtypes; bitsandbytes and torchao configs), the
quantization that follows loading (HQQ), and whether a device can run it. The schemes themselves are
data: :mod:`harness_ext.spec.schemes`; which kernel runs where: :mod:`harness_ext.formats`.
"""

from __future__ import annotations

from typing import Any

import torch

from harness_ext.backend.libraries import TORCH_DTYPES, check_torchao_loaded, hqq_quantize, torchao_config
from harness_ext.errors import UnsupportedSchemeError
from harness_ext.spec.schemes import DEFAULT_INT8_THRESHOLD, Scheme
from harness_ext.spec.support import refusal

__all__ = ["TORCH_DTYPES", "check_supported", "from_pretrained_kwargs", "quantize_loaded"]

#: Kernels that need a CUDA device of compute capability 8.0 or more (tinygemm).
_SM80_KERNELS = ("tile_packed_to_4d", "torchao_int4")


def from_pretrained_kwargs(scheme: Scheme) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments (``dtype`` and ``quantization_config``) of a resolved scheme;
    an HQQ scheme loads unquantized here and is quantized by :func:`quantize_loaded`."""
    if scheme.dtype is None:
        raise ValueError(f"scheme {scheme.name!r} is not resolved: call Scheme.resolve first")
    kwargs: dict[str, Any] = {"dtype": TORCH_DTYPES[scheme.dtype]}
    if not scheme.quantized or scheme.library == "hqq":
        return kwargs
    if scheme.library == "torchao":
        kwargs["quantization_config"] = torchao_config(scheme)
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


def quantize_loaded(model: Any, scheme: Scheme, device: str) -> bool:
    """Quantize a model that loaded unquantized (HQQ schemes), or check that torchao quantized every
    layer it should have; True if it quantized anything here."""
    if scheme.library == "torchao":
        check_torchao_loaded(model, scheme)
    if scheme.library != "hqq":
        return False
    hqq_quantize(model, scheme, device)
    return True


def check_supported(scheme: Scheme, device: str) -> None:
    """Raise :class:`UnsupportedSchemeError` (one line: cause and fix) if ``device`` cannot run ``scheme``
    (resolved): the spec's torch-free rules (:func:`harness_ext.spec.support.refusal`), then what only
    torch can tell (a GPU present, bfloat16, compute capability, a CUDA build of bitsandbytes).

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
    why = refusal(scheme, kind)
    if why:
        raise UnsupportedSchemeError(why)
    if kind == "cuda" and scheme.kernel in _SM80_KERNELS and torch.cuda.get_device_capability(device)[0] < 8:
        raise UnsupportedSchemeError(
            f"scheme {scheme.name!r}: kernel {scheme.kernel} (tinygemm) needs compute capability 8.0+, "
            f"and {torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}"
        )
    if scheme.library == "bitsandbytes" and kind == "cuda":
        import bitsandbytes as bnb

        backends = getattr(bnb, "supported_torch_devices", ())
        if backends and "cuda" not in backends:
            raise UnsupportedSchemeError(
                f"scheme {scheme.name!r}: this bitsandbytes build has no CUDA library; "
                "reinstall bitsandbytes for your CUDA version"
            )
