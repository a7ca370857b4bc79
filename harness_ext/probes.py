"""The exact next-token probe: sensitivity to sampling settings without sampling noise.

For each prompt, one forward pass gives the next-token logits ``z``. Every sampling setting is a
deterministic transform of ``z``: the repetition penalty rescales the logits of tokens seen in the
prompt, temperature divides all logits by T, top-k and top-p remove tokens — and the token is then
drawn from ``softmax`` of what is left. So the *whole* next-token sampling distribution at every
grid point follows exactly from the same ``z``: the probability that one sample is the gold token
(the expected accuracy of one draw), the entropy, and the distance to the reference scheme's
distribution at the same settings are computed in closed form, with no Monte-Carlo error. T = 0 is
greedy: a one-hot distribution on the argmax, so the gold probability is the greedy hit (0 or 1).

The transforms are the ones generation uses (:func:`harness_ext.sampling.warp`), in fp32.
KL divergence is reported only where both distributions keep the full vocabulary (T > 0, no top-k,
no top-p); after truncation the supports differ and KL is infinite, so total variation (always
finite, symmetric, in [0, 1]) is the distance used everywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness_ext.sampling import apply_repetition_penalty, warp

METRICS = ("p_gold", "entropy", "top1_agree", "tv", "kl")


@dataclass(frozen=True)
class ProbePoint:
    temperature: float
    top_k: int | None
    top_p: float
    repetition_penalty: float

    def label(self) -> str:
        k = "-" if self.top_k is None else str(self.top_k)
        return f"T={self.temperature:g} k={k} p={self.top_p:g} rp={self.repetition_penalty:g}"

    @property
    def truncated(self) -> bool:
        return self.top_k is not None or self.top_p < 1.0


def grid_points(grid: dict[str, Sequence[Any]]) -> list[ProbePoint]:
    """All combinations of the probe's axes."""
    return [
        ProbePoint(*combo)
        for combo in itertools.product(grid["temperature"], grid["top_k"], grid["top_p"], grid["repetition_penalty"])
    ]


@torch.no_grad()
def next_token_logits(
    model: Any, input_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, batch_size: int = 16
) -> torch.Tensor:
    """fp32 logits of the token after each prompt, ``[n_prompts, vocab]``, on the CPU.

    Prompts are right-padded and each row's logits read at its last real token, so padding never
    enters a row's attention (causal mask) and the result is the unpadded forward pass.
    """
    out = []
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(input_ids[i])] = torch.tensor(input_ids[i])
            mask[r, : len(input_ids[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = (mask.sum(1) - 1).to(logits.device)
        out.append((idx, logits[torch.arange(len(idx), device=logits.device), last].float().cpu()))
    result = torch.empty(len(input_ids), out[0][1].shape[-1], dtype=torch.float32)
    for idx, block in out:
        result[idx] = block
    return result


def distribution(
    logits: torch.Tensor, point: ProbePoint, seen: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, log-probabilities) of the next token at ``point``; one-hot when greedy."""
    z = logits.float()
    if point.repetition_penalty != 1.0 and seen is not None:
        z = apply_repetition_penalty(z, seen, torch.full((z.shape[0],), point.repetition_penalty))
    if point.temperature == 0.0:
        probs = torch.zeros_like(z).scatter_(1, z.argmax(dim=-1, keepdim=True), 1.0)
        return probs, torch.log(probs)
    n = z.shape[0]
    warped = warp(
        z,
        torch.full((n,), point.temperature),
        torch.full((n,), point.top_k or 0, dtype=torch.long),
        torch.full((n,), point.top_p),
    )
    logp = torch.log_softmax(warped, dim=-1)
    return logp.exp(), logp


def probe_metrics(
    logits: torch.Tensor,
    gold: torch.Tensor,
    points: Sequence[ProbePoint],
    reference: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    chunk: int = 64,
) -> dict[ProbePoint, dict[str, list[float]]]:
    """Per point, per prompt: p_gold, entropy (nats), top1_agree, tv and kl against ``reference``
    logits (same prompts) at the same settings. Without a reference the last three are NaN."""
    results: dict[ProbePoint, dict[str, list[float]]] = {p: {m: [] for m in METRICS} for p in points}
    for start in range(0, logits.shape[0], chunk):
        sl = slice(start, start + chunk)
        z, g = logits[sl], gold[sl]
        zr = reference[sl] if reference is not None else None
        s = seen[sl] if seen is not None else None
        for p in points:
            probs, logp = distribution(z, p, s)
            m = results[p]
            m["p_gold"] += probs.gather(1, g[:, None]).squeeze(1).tolist()
            plogp = torch.where(probs > 0, probs * logp, torch.zeros_like(probs))
            m["entropy"] += (-plogp.sum(-1)).tolist()
            if zr is None:
                nan = [math.nan] * z.shape[0]
                m["top1_agree"] += nan
                m["tv"] += nan
                m["kl"] += nan
                continue
            rprobs, rlogp = distribution(zr, p, s)
            m["top1_agree"] += (probs.argmax(-1) == rprobs.argmax(-1)).float().tolist()
            m["tv"] += (0.5 * (probs - rprobs).abs().sum(-1)).clamp(0.0, 1.0).tolist()
            if p.temperature > 0 and not p.truncated:
                kl = torch.where(rprobs > 0, rprobs * (rlogp - logp), torch.zeros_like(rprobs)).sum(-1).clamp(min=0.0)
                m["kl"] += kl.tolist()
            else:
                m["kl"] += [math.nan] * z.shape[0]
    return results


def seen_tokens(input_ids: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """Boolean ``[n, vocab]``: which tokens each prompt contains (for the repetition penalty)."""
    seen = torch.zeros(len(input_ids), vocab, dtype=torch.bool)
    for i, ids in enumerate(input_ids):
        seen[i, torch.tensor(ids, dtype=torch.long)] = True
    return seen
