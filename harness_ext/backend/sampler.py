"""Per-row, batch-invariant sampling for Hugging Face ``generate``.

Every row of a batch carries its own temperature, top-k, top-p, repetition penalty and random
stream. The stream is counter-based: the uniform number that row ``r`` uses at step ``t`` is a hash
of (row key, t), where the row key comes from (seed, prompt, sample index). Nothing depends on the
other rows, the batch size or the padding, so a row draws the same tokens alone or in any batch —
as long as the model's logits for that row are the same (fp32 rounding can differ between batch
shapes; tests bound how often that flips a token).

The sampler is a ``LogitsProcessor`` that leaves exactly one finite logit per row; ``generate`` runs
greedy (``do_sample=False``) and so picks it. This keeps ``generate``'s KV cache, stopping criteria
and static-cache/compile paths, and never touches torch's global random state.

Order of operations is that of transformers' own processors: repetition penalty, then
temperature, top-k, top-p; the draw is an inverse-CDF draw over the vocabulary in token-id order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import LogitsProcessor

from harness_ext.point import SamplingPoint

_MASK32 = 0xFFFFFFFF


class Row(NamedTuple):
    """One generated row's sampling: its point and its random stream's key (:func:`row_key`).

    The sampler reads the point's temperature, top-k, top-p and repetition penalty; the length cap
    travels beside the row (rows that differ only in their cap share one generation). A greedy row
    (``temperature == 0``, for that row alone) never reads its stream.
    """

    point: SamplingPoint
    key: int = 0


def row_key(seed: int, prompt: str, sample_index: int) -> int:
    """Stable 32-bit stream key of (seed, prompt text, sample index) — same in every process."""
    h = hashlib.blake2b(f"{seed}\x1f{sample_index}\x1f{prompt}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` integer hash on int64 tensors holding 32-bit values (wrap-around products)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in (0, 1) per row for ``step``: a pure function of (key, step)."""
    step_hash = _hash32(torch.tensor(step * 0x9E3779B9 + 0x632BE5AB, dtype=torch.int64))
    bits = _hash32(_hash32(keys) ^ step_hash.to(keys.device))
    return ((bits >> 8).to(torch.float64) + 0.5) / float(1 << 24)


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF semantics per row: seen tokens' logits divided by the penalty if positive, else multiplied."""
    p = penalty[:, None]
    penalized = torch.where(scores > 0, scores / p, scores * p)
    return torch.where(seen & (p != 1.0), penalized, scores)


def warp(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Temperature, then top-k (ties kept, as in HF), then top-p (HF's rule, one token kept at
    least) per row; returns logits with removed tokens at ``-inf``, in fp32 — or in float64 when
    ``scores`` are float64 (the probe's exact distributions). Rows must have T > 0."""
    logits = scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature[:, None]
    k_max = int(top_k.max()) if top_k.numel() else 0
    if k_max > 0:
        v = logits.shape[-1]
        kth = torch.topk(logits, min(k_max, v), dim=-1).values
        idx = (top_k.clamp(min=1, max=v) - 1).clamp(max=kth.shape[-1] - 1)
        threshold = kth.gather(1, idx[:, None])
        drop = (logits < threshold) & (top_k > 0)[:, None]
        logits = logits.masked_fill(drop, -float("inf"))
    needs_p = top_p < 1.0
    if bool(needs_p.any()):
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1.0 - top_p)[:, None]
        remove_sorted[:, -1] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted) & needs_p[:, None]
        logits = logits.masked_fill(remove, -float("inf"))
    return logits


def draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row over token-id order: token i with CDF[i-1] <= u*total < CDF[i]."""
    probs = torch.softmax(logits.float(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1]
    # below the total, so that the chosen token always has positive probability
    target = torch.minimum(u.to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    idx = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    return idx.clamp(max=logits.shape[-1] - 1)


class RowSampler(LogitsProcessor):
    """Chooses each row's next token by its own settings and stream; leaves one finite logit per row.

    ``prompt_starts[r]`` is the index of row r's first real (non-pad) token in ``input_ids``, so that
    left padding never counts towards the repetition penalty.
    """

    def __init__(self, rows: Sequence[Row], prompt_len: int, prompt_starts: torch.Tensor, device: torch.device):
        self.prompt_len = prompt_len
        self.prompt_starts = prompt_starts.to(device)
        points = [r.point for r in rows]
        self.temperature = torch.tensor([p.temperature for p in points], dtype=torch.float32, device=device)
        self.top_k = torch.tensor([p.top_k or 0 for p in points], dtype=torch.int64, device=device)
        self.top_p = torch.tensor([p.top_p for p in points], dtype=torch.float32, device=device)
        self.penalty = torch.tensor([p.repetition_penalty for p in points], dtype=torch.float32, device=device)
        self.keys = torch.tensor([r.key for r in rows], dtype=torch.int64, device=device)
        self.greedy = self.temperature == 0
        self.any_sampled = not bool(self.greedy.all())
        self.any_penalty = bool((self.penalty != 1.0).any())

    def _seen(self, input_ids: torch.Tensor, vocab: int) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        valid = (positions[None, :] >= self.prompt_starts[:, None]).to(torch.int32)
        counts = torch.zeros(input_ids.shape[0], vocab, dtype=torch.int32, device=input_ids.device)
        counts.scatter_add_(1, input_ids, valid)
        return counts > 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.any_penalty:
            scores = apply_repetition_penalty(scores, self._seen(input_ids, scores.shape[-1]), self.penalty)
        chosen = scores.argmax(dim=-1)
        if self.any_sampled:
            rows = (~self.greedy).nonzero().squeeze(1)
            step = input_ids.shape[1] - self.prompt_len
            logits = warp(scores[rows], self.temperature[rows], self.top_k[rows], self.top_p[rows])
            chosen = chosen.clone()
            chosen[rows] = draw(logits, uniforms(self.keys[rows], step))
        out = torch.full_like(scores, -float("inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out
