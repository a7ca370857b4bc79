"""The KV cache an eager ``generate`` starts from: each distinct prompt prefilled once, optionally
copied into a preallocated (static) cache; and what one token of cache costs in memory."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers import DynamicCache, StaticCache

# transformers renamed `past_key_values` to `cache` during 5.x (5.17 takes the old name, 5.24 warns on it)
CACHE_ARG = (
    "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters else "past_key_values"
)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes one token of one row takes: keys and values of every layer's KV heads."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize


def kv_bytes_by_device(model: Any, config: Any, dtype: torch.dtype, default: torch.device) -> dict[torch.device, int]:
    """KV-cache bytes one token of one row takes on each device: a layer's keys and values stay on
    its attention's GPU (``device_map`` spreads the layers over GPUs). A layer whose weights are on
    no GPU (offloaded to the CPU or to disk) is run, and keeps its cache, on ``default``; so is all
    of a model whose attention modules carry no ``layer_idx``."""
    per_layer = kv_bytes_per_token(config, dtype) // config.num_hidden_layers
    layers: dict[int, torch.device] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        weight = next(module.parameters(), None) if isinstance(idx, int) else None
        if weight is not None:
            layers.setdefault(idx, weight.device if weight.device.type == "cuda" else default)
    if not layers:
        return {default: kv_bytes_per_token(config, dtype)}
    out: dict[torch.device, int] = {}
    for device in layers.values():
        out[device] = out.get(device, 0) + per_layer
    return out


def prefill_cache(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_len: int,
    kv_cache: str,
    share_prefill: bool = True,
) -> Any:
    """The KV cache an eager ``generate`` starts from, or None to let it prefill a DynamicCache.

    Rows of different grid points share their prompt: each distinct prompt is prefilled once and
    every row gets a copy of its cache (without this a 20-point grid prefills every prompt 20
    times). The copy covers all but the last prompt token, which ``generate`` then feeds as its
    first step. With ``kv_cache="static"`` the cache is preallocated to ``max_len`` tokens, so
    decoding writes in place instead of re-allocating the whole cache every step.
    """
    shared = shared_prefill(model, input_ids, attention_mask) if share_prefill else None
    if kv_cache == "dynamic":
        if shared is None:
            return None
        cache, index = shared
        cache.reorder_cache(index)
        return cache
    static = StaticCache(config=model.config, max_cache_len=max_len)
    if shared is not None:
        cache, index = shared
        for i, layer in enumerate(cache.layers):
            static.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), i)
            layer.keys = layer.values = None  # free the distinct prompts' copy layer by layer
    return static


def shared_prefill(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor] | None:
    """Prefill each distinct prompt once (all but its last token): the cache of the distinct
    prompts and, per row, the index of its prompt; None when every row's prompt is different."""
    if input_ids.shape[1] < 2:
        return None
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(row), len(first)) for row in input_ids.tolist()]
    if len(first) == len(index):
        return None
    rows = torch.tensor([index.index(u) for u in range(len(first))], device=input_ids.device)
    ids, mask = input_ids[rows, :-1], attention_mask[rows, :-1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.cache if CACHE_ARG == "cache" else out.past_key_values
    return cache, torch.tensor(index, device=input_ids.device)
