"""A scheme's ``from_pretrained`` keyword arguments (torch dtypes, bitsandbytes configs) and whether a
device can run it. The schemes themselves are data: :mod:`harness_ext.spec.schemes`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from harness_ext.errors import UnsupportedSchemeError
from harness_ext.spec.schemes import DEFAULT_INT8_THRESHOLD, Scheme

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
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
