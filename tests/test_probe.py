"""The exact next-token probe: limits that must hold exactly, and agreement with sampling."""

from __future__ import annotations

import math

import torch

from harness_ext.probes import ProbePoint, distribution, grid_points, next_token_logits, probe_metrics, seen_tokens
from harness_ext.sampling import draw, uniforms

GRID = {"temperature": [0.0, 1e-4, 0.7, 1.5], "top_k": [None, 1, 10], "top_p": [1.0, 0.9], "repetition_penalty": [1.0]}


def _logits(n: int = 40, v: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2


def test_temperature_to_zero_gives_the_greedy_hit() -> None:
    z = _logits()
    gold = torch.cat([z[:20].argmax(-1), (z[20:].argmax(-1) + 1) % z.shape[1]])  # 20 hits, 20 misses
    res = probe_metrics(z, gold, grid_points(GRID))
    greedy = res[ProbePoint(0.0, None, 1.0, 1.0)]["p_gold"]
    assert greedy == [1.0] * 20 + [0.0] * 20
    near = res[ProbePoint(1e-4, None, 1.0, 1.0)]["p_gold"]
    assert all(abs(a - b) < 1e-6 for a, b in zip(near, greedy, strict=True))


def test_top_k_one_is_one_hot_for_every_scheme() -> None:
    z, zr = _logits(seed=1), _logits(seed=2)
    res = probe_metrics(z, z.argmax(-1), grid_points(GRID), reference=zr)
    for p, metrics in res.items():
        if p.top_k == 1:
            assert metrics["entropy"] == [0.0] * z.shape[0]
            assert metrics["p_gold"] == [1.0] * z.shape[0]
            probs, _ = distribution(z, p, None)
            assert torch.equal(probs.sum(-1), torch.ones(z.shape[0])) and int((probs > 0).sum()) == z.shape[0]


def test_tv_zero_to_itself_and_symmetric() -> None:
    z, zr = _logits(seed=3), _logits(seed=4)
    gold = torch.zeros(z.shape[0], dtype=torch.long)
    pts = grid_points(GRID)
    self_res = probe_metrics(z, gold, pts, reference=z)
    ab, ba = probe_metrics(z, gold, pts, reference=zr), probe_metrics(zr, gold, pts, reference=z)
    for p in pts:
        assert max(self_res[p]["tv"]) < 1e-6 and self_res[p]["top1_agree"] == [1.0] * z.shape[0]
        assert all(abs(a - b) < 1e-6 for a, b in zip(ab[p]["tv"], ba[p]["tv"], strict=True))
        assert all(0 <= t <= 1 for t in ab[p]["tv"])
        if p.temperature > 0 and not p.truncated:
            assert max(self_res[p]["kl"]) < 1e-5 and min(ab[p]["kl"]) > 0
        else:
            assert all(math.isnan(k) for k in ab[p]["kl"])  # KL is infinite after truncation: not reported


def test_probe_matches_monte_carlo_sampling() -> None:
    z = _logits(n=1, v=30, seed=5)
    p = ProbePoint(0.8, 10, 0.95, 1.0)
    probs, _ = distribution(z, p, None)
    n = 40000
    from harness_ext.sampling import warp

    warped = warp(z.expand(n, -1), torch.full((n,), 0.8), torch.full((n,), 10), torch.full((n,), 0.95))
    idx = draw(warped, uniforms(torch.arange(n), 1))
    freq = torch.bincount(idx, minlength=30).float() / n
    assert torch.allclose(freq, probs[0], atol=0.01)


def test_repetition_penalty_changes_only_seen_tokens() -> None:
    z = _logits(n=2, v=20, seed=6)
    seen = seen_tokens([[1, 2], [3]], 20)
    a, _ = distribution(z, ProbePoint(1.0, None, 1.0, 1.0), seen)
    b, _ = distribution(z, ProbePoint(1.0, None, 1.0, 2.0), seen)
    ratio = b / a
    for row in range(2):
        unseen = ratio[row][~seen[row]]
        assert torch.allclose(unseen, unseen[0].expand_as(unseen), rtol=1e-5)  # only renormalised
        seen_ratio = ratio[row][seen[row]]
        assert not torch.allclose(seen_ratio, unseen[0].expand_as(seen_ratio), rtol=1e-3)  # penalised
    assert torch.allclose(b.sum(-1), torch.ones(2))


def test_padded_batch_equals_single_prompts(tiny_lm_factory) -> None:
    lm = tiny_lm_factory()
    prompts = [lm.tok_encode(t) for t in ["the capital of france is", "salt and", "once upon a time there was a"]]
    batched = next_token_logits(lm.model, prompts, lm.tokenizer.pad_token_id, "cpu", batch_size=3)
    for i, ids in enumerate(prompts):
        single = next_token_logits(lm.model, [ids], lm.tokenizer.pad_token_id, "cpu", batch_size=1)
        assert torch.allclose(batched[i], single[0], atol=1e-4)
