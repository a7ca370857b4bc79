"""The exact next-token probe: sensitivity to sampling settings without sampling noise.

For each prompt, one forward pass gives the next-token logits ``z``. Every sampling setting is a
deterministic transform of ``z``: the repetition penalty rescales the logits of tokens seen in the
prompt, temperature divides all logits by T, top-k and top-p remove tokens — and the token is then
drawn from ``softmax`` of what is left. So the *whole* next-token sampling distribution at every
grid point follows exactly from the same ``z``: the probability that one sample is the gold token
(the expected accuracy of one draw), the entropy, and the distance to the reference scheme's
distribution at the same settings are computed in closed form, with no Monte-Carlo error. T = 0 is
greedy: a one-hot distribution on the argmax, so the gold probability is the greedy hit (0 or 1).

Each prompt runs alone through the model (one unpadded forward pass, so no other prompt and no
padding can move its logits: quantized kernels are not batch-invariant), and the logits are kept in
fp32. The transforms are the ones generation uses (:func:`harness_ext.backend.sampler.warp`), applied in
float64: probabilities, entropy, total variation and KL are float64 sums over the vocabulary.
KL divergence is reported only where both distributions keep the full vocabulary (T > 0, no top-k,
no top-p); after truncation the supports differ and KL is infinite, so total variation (always
finite, symmetric, in [0, 1]) is the distance used everywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness_ext.backend.sampler import apply_repetition_penalty, warp
from harness_ext.point import SamplingPoint

METRICS = ("p_gold", "entropy", "top1_agree", "tv", "kl")


def grid_points(grid: dict[str, Sequence[Any]]) -> list[SamplingPoint]:
    """All combinations of the probe's axes (each point keeps the default length cap: the probe ignores it)."""
    return [
        SamplingPoint(temperature=t, top_k=k, top_p=p, repetition_penalty=rp)
        for t, k, p, rp in itertools.product(
            grid["temperature"], grid["top_k"], grid["top_p"], grid["repetition_penalty"]
        )
    ]


#: How the probe's forward passes run and in what precision its distributions are computed (for the record).
FORWARD = "one prompt per pass, unpadded"
DTYPE = "float64"


@torch.inference_mode()
def next_token_logits(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    device: torch.device | str,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Logits of the token after each prompt, ``[n_prompts, vocab]``, as fp32 on the CPU;
    ``progress(done, total)`` after each prompt.

    Each prompt runs alone, one forward pass of exactly its own tokens: no padding, no other rows.
    Batching would move a row's logits: int8 (LLM.int8) picks its outlier columns from the whole
    batch and 4-bit kernels round differently for other batch shapes, so a batched probe would
    depend on the spec's batch size. The upcast to fp32 is exact for fp32, fp16 and bf16 outputs.
    Only the last position's logits are computed (``logits_to_keep=1``): the output layer over a
    large vocabulary at every prompt position was a fifth of a small model's forward pass.
    """
    rows = []
    keep: dict[str, int] = {"logits_to_keep": 1}
    for ids in input_ids:
        x = torch.tensor([list(ids)], dtype=torch.long, device=device)
        try:
            logits = model(input_ids=x, **keep).logits
        except TypeError:  # a model class without the argument computes every position
            keep = {}
            logits = model(input_ids=x).logits
        rows.append(logits[0, -1].float().cpu())
        if progress is not None:
            progress(len(rows), len(input_ids))
    return torch.stack(rows)


def distribution(
    logits: torch.Tensor, point: SamplingPoint, seen: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (probabilities, log-probabilities) of the next token at ``point``; one-hot when greedy.

    The transforms are generation's own (:func:`~harness_ext.backend.sampler.warp`), applied to the logits
    upcast to float64, so that sums over a vocabulary of tens of thousands of tokens keep ~1e-15
    relative precision.
    """
    z = logits.double()
    if point.repetition_penalty != 1.0 and seen is not None:
        z = apply_repetition_penalty(z, seen, torch.full((z.shape[0],), point.repetition_penalty, dtype=z.dtype))
    if point.temperature == 0.0:
        probs = torch.zeros_like(z).scatter_(1, z.argmax(dim=-1, keepdim=True), 1.0)
        return probs, torch.log(probs)
    n = z.shape[0]
    warped = warp(
        z,
        torch.full((n,), point.temperature, dtype=z.dtype),
        torch.full((n,), point.top_k or 0, dtype=torch.long),
        torch.full((n,), point.top_p, dtype=z.dtype),
    )
    logp = torch.log_softmax(warped, dim=-1)
    return logp.exp(), logp


def probe_metrics(
    logits: torch.Tensor,
    gold: torch.Tensor,
    points: Sequence[SamplingPoint],
    reference: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    chunk: int = 64,
) -> dict[SamplingPoint, dict[str, list[float]]]:
    """Per point, per prompt, from the float64 distributions of :func:`distribution`: ``p_gold`` (the
    probability that one sample is ``gold``), ``entropy`` (nats), and against the ``reference``
    logits (same prompts) at the same settings ``top1_agree`` (same argmax), ``tv`` (total
    variation) and ``kl`` (KL(reference ‖ this), only where neither distribution is truncated or
    greedy; NaN elsewhere). Without a reference the last three are NaN.

    What does not depend on the point is computed once per chunk: the float64 logits, the
    repetition penalty's transform and the argmax (temperature and truncation keep the largest logit,
    so every point's top token is the penalized logits' argmax). Greedy points are one-hot: their
    metrics follow from the argmax alone. The reference's own probe (``reference is logits``) agrees
    with itself exactly, so its distances are 0 without being computed."""
    results: dict[SamplingPoint, dict[str, list[float]]] = {p: {m: [] for m in METRICS} for p in points}
    itself = reference is logits
    for start in range(0, logits.shape[0], chunk):
        sl = slice(start, start + chunk)
        z64, g = logits[sl].double(), gold[sl]
        zr64 = reference[sl].double() if reference is not None and not itself else None
        s = seen[sl] if seen is not None else None
        n = z64.shape[0]
        nan = [math.nan] * n
        penalized: dict[float, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]] = {}
        for p in points:
            rp = p.repetition_penalty
            if rp not in penalized:
                z, zr = _penalized(z64, rp, s), (_penalized(zr64, rp, s) if zr64 is not None else None)
                penalized[rp] = (z, zr, z.argmax(-1), zr.argmax(-1) if zr is not None else None)
            z, zr, top, rtop = penalized[rp]
            m = results[p]
            if reference is None:
                m["top1_agree"] += nan
                m["tv"] += nan
                m["kl"] += nan
            elif itself:
                m["top1_agree"] += [1.0] * n
                m["tv"] += [0.0] * n
                m["kl"] += [0.0] * n if p.temperature > 0 and not p.truncated else nan
            else:
                agree = (top == rtop).double()
                m["top1_agree"] += agree.tolist()
            if p.temperature == 0.0:  # one-hot on the argmax: hit or miss, no entropy, same argmax or apart
                m["p_gold"] += (top == g).double().tolist()
                m["entropy"] += [0.0] * n
                if zr is not None:
                    m["tv"] += (1.0 - agree).tolist()
                    m["kl"] += nan
                continue
            probs, logp = _warped(z, p)
            m["p_gold"] += probs.gather(1, g[:, None]).squeeze(1).tolist()
            m["entropy"] += (-torch.nansum(probs * logp, dim=-1)).tolist()  # 0 * -inf (removed tokens) -> 0
            if zr is None:
                continue
            rprobs, rlogp = _warped(zr, p)
            m["tv"] += (0.5 * (probs - rprobs).abs().sum(-1)).clamp(0.0, 1.0).tolist()
            if not p.truncated:
                m["kl"] += torch.nansum(rprobs * (rlogp - logp), dim=-1).clamp(min=0.0).tolist()
            else:
                m["kl"] += nan
    return results


def _penalized(z64: torch.Tensor, penalty: float, seen: torch.Tensor | None) -> torch.Tensor:
    if penalty == 1.0 or seen is None:
        return z64
    return apply_repetition_penalty(z64, seen, torch.full((z64.shape[0],), penalty, dtype=z64.dtype))


def _warped(z64: torch.Tensor, point: SamplingPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (probabilities, log-probabilities) at a point with T > 0, from penalized float64 logits."""
    n = z64.shape[0]
    warped = warp(
        z64,
        torch.full((n,), point.temperature, dtype=z64.dtype),
        torch.full((n,), point.top_k or 0, dtype=torch.long),
        torch.full((n,), point.top_p, dtype=z64.dtype),
    )
    logp = torch.log_softmax(warped, dim=-1)
    return logp.exp(), logp


def seen_tokens(input_ids: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """Boolean ``[n, vocab]``: which tokens each prompt contains (for the repetition penalty)."""
    seen = torch.zeros(len(input_ids), vocab, dtype=torch.bool)
    for i, ids in enumerate(input_ids):
        seen[i, torch.tensor(ids, dtype=torch.long)] = True
    return seen
