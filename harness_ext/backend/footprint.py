"""What a loaded model keeps for its weights, in bytes, the same way for every backend.

``PreTrainedModel.get_memory_footprint`` counts ``nelement() * element_size()`` of parameters and
buffers. That misses what quantized layers keep beside them — bitsandbytes' ``quant_state`` (absmax per
block, nested for double quant) and ``SCB`` (int8 row scales), HQQ's ``meta`` (scale and zero per
group) — and counts a torchao weight (a tensor subclass) at the size of the float tensor it stands for.
So formats would not compare. Here every tensor is counted by its real storage.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch


def _tensor_bytes(t: Any, seen: set[int]) -> int:
    """Bytes of ``t``: a tensor subclass by its inner tensors (``__tensor_flatten__``), each once."""
    if not isinstance(t, torch.Tensor):
        return 0
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n), seen) for n in names)
    if id(t) in seen:
        return 0
    seen.add(id(t))
    return t.nelement() * t.element_size()


def _nested_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors inside a quantization state object or dict (bitsandbytes' ``QuantState``,
    HQQ's ``meta``), recursing into nested states (double quantization)."""
    if depth > 3 or obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        return _tensor_bytes(obj, seen)
    items = obj.values() if isinstance(obj, dict) else vars(obj).values() if hasattr(obj, "__dict__") else ()
    return sum(_nested_bytes(v, seen, depth + 1) for v in items if isinstance(v, (torch.Tensor, dict)) or _is_state(v))


def _is_state(obj: Any) -> bool:
    return type(obj).__name__ == "QuantState"


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model keeps for its weights: parameters and buffers (by real storage),
    bitsandbytes' quantization states and row scales, HQQ's scales and zeros (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        total += _tensor_bytes(t, seen)
        total += _nested_bytes(getattr(t, "quant_state", None), seen)  # bitsandbytes 4-bit
        total += _tensor_bytes(getattr(t, "SCB", None), seen)  # bitsandbytes int8 row scales
    for m in model.modules():
        # HQQLinear keeps scale and zero in its ``meta`` dict, and HQQ's tinygemm layer its packed weight
        # and scales as plain attributes: neither is a parameter or a buffer
        if "HQQ" in type(m).__name__:
            total += _nested_bytes(vars(m), seen)
    return total
