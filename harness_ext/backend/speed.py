"""Fixed-length generation benchmark of a loaded (model, scheme).

Greedy decoding with ``min_new_tokens = max_new_tokens`` so every row generates exactly the same
number of tokens, on random prompt tokens from a fixed seed (speed does not depend on the text);
warm-up calls first, then at least three timed repeats; medians with spread.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from harness_ext.backend.measure import Summary, cuda_devices, floor_ms_per_step, model_devices, weight_bytes_by_device
from harness_ext.backend.sampler import Row
from harness_ext.point import SamplingPoint


def special_token_ids(tokenizer: Any) -> set[int]:
    """Every id that is not an ordinary token: the tokenizer's special ids and every added token
    marked special (Gemma 3 has 6,249 of them — control and unused tokens — beyond bos/eos/pad/unk)."""
    special = {i for i in tokenizer.all_special_ids if i is not None}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return special | {i for i, token in added.items() if getattr(token, "special", False)}


def synthetic_prompts(
    vocab: int, batch_size: int, prompt_tokens: int, special_ids: set[int], seed: int = 0
) -> torch.Tensor:
    """``[batch, prompt_tokens]`` random token ids below ``vocab``, none in ``special_ids``, reproducible
    from ``seed``."""
    allowed = torch.tensor([i for i in range(vocab) if i not in special_ids])
    g = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(0, len(allowed), (batch_size, prompt_tokens), generator=g)]


def benchmark(
    lm: Any,
    batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    warmup: int = 1,
    repeats: int = 3,
    bandwidth: dict[str, float] | float | None = None,
    mode: str = "eager",
    window: contextlib.AbstractContextManager[Any] | None = None,
) -> dict[str, Any]:
    """Time ``repeats`` fixed-length generations after ``warmup`` ones; return medians and spread.

    ``window`` is entered around the timed repeats alone (not the warm-up): the sampler that watches
    the machine while it times (:class:`harness_ext.machine.Window`).

    ``bandwidth`` (bytes/s per CUDA device, or one figure for all of them) adds the weight-streaming
    floor of a decode step — the sum over the model's devices of the weight bytes on that device over
    its bandwidth (the layers run one after another) — and the measured decode step over it.
    """
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    ids = synthetic_prompts(vocab, batch_size, prompt_tokens, special_token_ids(lm.tokenizer))
    mask = torch.ones_like(ids)
    rows = [Row(SamplingPoint())] * batch_size  # greedy; caps and min_new_tokens fix the length
    caps = [new_tokens] * batch_size
    kv_cache = "dynamic"  # eager: transformers' default generate path (compiled mode always uses a static one)
    lm.pop_calls()
    for _ in range(warmup):  # compiled mode compiles here: its cost is the warm-up's excess over a timed call
        lm.generate_rows(ids, mask, rows, caps, (), min_new_tokens=new_tokens, mode=mode, kv_cache=kv_cache)
    warm = lm.pop_calls()
    with window if window is not None else contextlib.nullcontext():
        for _ in range(repeats):
            lm.generate_rows(ids, mask, rows, caps, (), min_new_tokens=new_tokens, mode=mode, kv_cache=kv_cache)
    calls = lm.pop_calls()
    for c in calls:
        if c.new_tokens != batch_size * new_tokens:
            raise RuntimeError(
                f"fixed-length benchmark generated {c.new_tokens} tokens, expected {batch_size * new_tokens}"
            )
    decode = Summary.of([c.decode_ms_per_step for c in calls if c.decode_ms_per_step is not None])
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "warmup": warmup,
        "repeats": repeats,
        "decoding": "greedy, fixed length",
        "mode": mode,
        "kv_cache": calls[0].kv_cache if calls else None,
        "compiled_how": lm.compiled.get("how") if mode == "compiled" else None,
        "warmup_wall_ms": [c.wall_ms for c in warm],
        "ttft_ms": Summary.of([c.ttft_ms for c in calls if c.ttft_ms is not None]).to_dict(),
        "decode_ms_per_token": decode.to_dict(),
        "tokens_per_s": Summary.of([c.new_tokens / (c.wall_ms / 1e3) for c in calls]).to_dict(),
        "decode_tokens_per_s": Summary.of(
            [batch_size * 1e3 / c.decode_ms_per_step for c in calls if c.decode_ms_per_step]
        ).to_dict(),
        "wall_ms": Summary.of([c.wall_ms for c in calls]).to_dict(),
        "peak_memory_bytes": max((c.peak_memory_bytes or 0) for c in calls) or None,
        "peak_memory_by_device": _peak_by_device(calls),
        "peak_memory_kind": calls[0].peak_memory_kind if calls else "",
        "threads": torch.get_num_threads(),
        "calls": [c.to_dict(with_steps=False) for c in calls],
    }
    info = lm.load_info
    if info is not None:
        out["weight_bytes"] = info.weight_bytes
        out["load_s"] = info.load_s
        out["load_peak_bytes"] = info.load_peak_bytes
        out["load_peak_kind"] = info.load_peak_kind
    if bandwidth and info is not None:
        out |= weight_streaming_floor(lm.model, info.weight_bytes, bandwidth, decode.median)
    return out


def _peak_by_device(calls: list[Any]) -> dict[str, int] | None:
    """Per device, its highest peak over the timed calls (CUDA only)."""
    out: dict[str, int] = {}
    for c in calls:
        for d, b in (c.peak_memory_by_device or {}).items():
            out[d] = max(out.get(d, 0), b)
    return out or None


def weight_streaming_floor(
    model: Any, weight_bytes: int, bandwidth: dict[str, float] | float, decode_ms: float
) -> dict[str, Any]:
    """The decode step's floor on the model's CUDA devices: each device streams its share of the
    weights at its own bandwidth, one device after another. Empty without CUDA devices."""
    gpus = [str(d) for d in cuda_devices(model_devices(model))]
    if not gpus:
        return {}
    bw = bandwidth if isinstance(bandwidth, dict) else dict.fromkeys(gpus, float(bandwidth))
    missing = [d for d in gpus if d not in bw]
    if missing:
        raise ValueError(f"no copy bandwidth measured for {', '.join(missing)}")
    split = weight_bytes_by_device(model)
    counted = sum(split.values())
    # shares of the load's weight footprint (the figure the record reports), split as the tensors are
    on_gpu = {d: weight_bytes * split.get(d, 0) / counted for d in gpus} if counted else {}
    per_device = floor_ms_per_step(on_gpu, bw)
    floor_ms = sum(per_device.values())
    return {
        "bandwidth_bytes_per_s": sum(on_gpu.values()) / floor_ms * 1e3 if floor_ms else None,
        "bandwidth_bytes_per_s_by_device": {d: bw[d] for d in gpus},
        "weight_bytes_by_device": {d: int(b) for d, b in on_gpu.items()},
        "floor_ms_by_device": per_device,
        "floor_ms_per_token": floor_ms,
        "decode_over_floor": decode_ms / floor_ms if floor_ms else None,
    }


def metrics_of(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The benchmark's figures as store metrics: value = median, lo/hi = p10/p90."""

    def summary(name: str) -> dict[str, float | None]:
        s = result[name]
        return {"value": s["median"], "lo": s["p10"], "hi": s["p90"], "n": s["n"], "stderr": None}

    out = {
        name: summary(name)
        for name in ("ttft_ms", "decode_ms_per_token", "tokens_per_s", "decode_tokens_per_s", "wall_ms")
    }
    for name in (
        "peak_memory_bytes",
        "weight_bytes",
        "load_s",
        "load_peak_bytes",
        "floor_ms_per_token",
        "decode_over_floor",
    ):
        if result.get(name) is not None:
            out[name] = {"value": float(result[name]), "lo": None, "hi": None, "n": 1, "stderr": None}
    return out
