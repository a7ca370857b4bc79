"""The exact next-token probe: limits that must hold exactly, and agreement with sampling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness_ext.backend.probe import distribution, grid_points, next_token_logits, probe_metrics, seen_tokens
from harness_ext.backend.sampler import draw, uniforms
from harness_ext.point import SamplingPoint
from harness_ext.run import probe
from harness_ext.run.runner import Runner
from harness_ext.spec import parse_spec, plan

GRID = {"temperature": [0.0, 1e-4, 0.7, 1.5], "top_k": [None, 1, 10], "top_p": [1.0, 0.9], "repetition_penalty": [1.0]}


def _point(temperature: float, top_k: int | None, top_p: float, repetition_penalty: float) -> SamplingPoint:
    return SamplingPoint(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)


def _logits(n: int = 40, v: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2


def test_temperature_to_zero_gives_the_greedy_hit() -> None:
    z = _logits()
    gold = torch.cat([z[:20].argmax(-1), (z[20:].argmax(-1) + 1) % z.shape[1]])  # 20 hits, 20 misses
    res = probe_metrics(z, gold, grid_points(GRID))
    greedy = res[_point(0.0, None, 1.0, 1.0)]["p_gold"]
    assert greedy == [1.0] * 20 + [0.0] * 20
    near = res[_point(1e-4, None, 1.0, 1.0)]["p_gold"]
    assert all(abs(a - b) < 1e-6 for a, b in zip(near, greedy, strict=True))


def test_top_k_one_is_one_hot_for_every_scheme() -> None:
    z, zr = _logits(seed=1), _logits(seed=2)
    res = probe_metrics(z, z.argmax(-1), grid_points(GRID), reference=zr)
    for p, metrics in res.items():
        if p.top_k == 1:
            assert metrics["entropy"] == [0.0] * z.shape[0]
            assert metrics["p_gold"] == [1.0] * z.shape[0]
            probs, _ = distribution(z, p, None)
            assert (
                torch.equal(probs.sum(-1), torch.ones(z.shape[0], dtype=probs.dtype))
                and int((probs > 0).sum()) == z.shape[0]
            )


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
    p = _point(0.8, 10, 0.95, 1.0)
    probs, _ = distribution(z, p, None)
    n = 40000
    from harness_ext.backend.sampler import warp

    warped = warp(z.expand(n, -1), torch.full((n,), 0.8), torch.full((n,), 10), torch.full((n,), 0.95))
    idx = draw(warped, uniforms(torch.arange(n), 1))
    freq = torch.bincount(idx, minlength=30).double() / n
    assert torch.allclose(freq, probs[0], atol=0.01)


def test_repetition_penalty_changes_only_seen_tokens() -> None:
    z = _logits(n=2, v=20, seed=6)
    seen = seen_tokens([[1, 2], [3]], 20)
    a, _ = distribution(z, _point(1.0, None, 1.0, 1.0), seen)
    b, _ = distribution(z, _point(1.0, None, 1.0, 2.0), seen)
    ratio = b / a
    for row in range(2):
        unseen = ratio[row][~seen[row]]
        assert torch.allclose(unseen, unseen[0].expand_as(unseen), rtol=1e-5)  # only renormalised
        seen_ratio = ratio[row][seen[row]]
        assert not torch.allclose(seen_ratio, unseen[0].expand_as(seen_ratio), rtol=1e-3)  # penalised
    assert b.dtype == torch.float64 and torch.allclose(b.sum(-1), torch.ones(2, dtype=torch.float64))


PROBE_SPEC = """\
name: probe-batching
models:
  - {{name: a, pretrained: "{model}"}}
schemes: [fp32, {scheme}]
sampling:
  temperature: [0, 0.7, 1.3]
  top_k: [null, 5]
  top_p: [1.0, 0.9]
  repetition_penalty: [1.0, 1.3]
  max_new_tokens: [4]
tasks: []
probe: {{limit: 12}}
speed: {{enabled: false}}
batch_size: {batch_size}
threads: 1
"""


def _probe_records(model: Path, scheme: str, batch_size: int, lms: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The runner's probe cells (reference first, then ``scheme``) at spec batch size ``batch_size``."""
    text = PROBE_SPEC.format(model=model, scheme=scheme, batch_size=batch_size)
    runner = Runner(parse_spec(text), text, progress=False, output_dir=out)
    cells = sorted((c for c in plan(runner.spec, "cpu") if c.kind == "probe"), key=lambda c: c.scheme.name != "fp32")
    return [probe.measure(runner, lms[c.scheme.name], c) for c in cells]


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_probe_does_not_depend_on_the_spec_batch_size(scheme, tiny_model, tiny_lm_factory, tmp_path) -> None:
    """Quantized kernels give a row other logits in another batch (LLM.int8 picks outlier columns
    from the whole batch): the probe runs each prompt alone, so its figures are identical whatever
    the spec's batch size."""
    lms = {"fp32": tiny_lm_factory("fp32"), scheme: tiny_lm_factory(scheme)}
    runs = {bs: _probe_records(tiny_model, scheme, bs, lms, tmp_path / str(bs)) for bs in (1, 3, 8)}
    for bs in (3, 8):
        for got, want in zip(runs[bs], runs[1], strict=True):
            assert got["points"] == want["points"]
            assert got["sample_metrics"] == want["sample_metrics"]
    measured = runs[1][1]["measurements"]
    assert measured["forward"] == "one prompt per pass, unpadded" and measured["dtype"] == "float64"


def _numpy_metrics(z: np.ndarray, zr: np.ndarray, gold: int, seen: np.ndarray, p: SamplingPoint) -> dict[str, float]:
    """p_gold, entropy, tv and kl of one prompt at ``p``, recomputed in numpy float64 from the logits."""

    def dist(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if p.repetition_penalty != 1.0:
            x = np.where(seen, np.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty), x)
        if p.temperature == 0:
            out = np.zeros_like(x)
            out[np.argmax(x)] = 1.0
            return out
        x = x / p.temperature
        keep = np.ones_like(x, dtype=bool)
        if p.top_k is not None:
            keep &= x >= np.sort(x)[-p.top_k]
        if p.top_p < 1.0:
            x_k = np.where(keep, x, -np.inf)
            order = np.argsort(x_k, kind="stable")  # ascending, as HF's top-p
            probs = np.exp(x_k[order] - x_k.max())
            cum = np.cumsum(probs / probs.sum())
            drop = cum <= 1.0 - p.top_p
            drop[-1] = False
            keep[order[drop]] = False
        x = np.where(keep, x, -np.inf)
        e = np.exp(x - x.max())
        return e / e.sum()

    q, r = dist(z), dist(zr)
    nz = q > 0
    out = {
        "p_gold": q[gold],
        "entropy": -np.sum(q[nz] * np.log(q[nz])),
        "tv": 0.5 * np.abs(q - r).sum(),
        "kl": math.nan,
    }
    if p.temperature > 0 and not p.truncated:
        rz = r > 0
        out["kl"] = np.sum(r[rz] * (np.log(r[rz]) - np.log(q[rz])))
    return out


def test_probe_metrics_match_an_independent_float64_recomputation() -> None:
    z, zr = _logits(n=12, v=50, seed=7), _logits(n=12, v=50, seed=8)
    gold = torch.arange(12) % 50
    ids = [[i, (3 * i) % 50, 7] for i in range(12)]
    seen = seen_tokens(ids, 50)
    grid = {
        "temperature": [0.0, 0.3, 1.0, 2.0],
        "top_k": [None, 4],
        "top_p": [1.0, 0.8],
        "repetition_penalty": [1.0, 1.5],
    }
    res = probe_metrics(z, gold, grid_points(grid), reference=zr, seen=seen)
    for p, metrics in res.items():
        for i in range(12):
            want = _numpy_metrics(z[i].numpy(), zr[i].numpy(), int(gold[i]), seen[i].numpy(), p)
            for name, value in want.items():
                got = metrics[name][i]
                assert (math.isnan(got) and math.isnan(value)) or abs(got - value) < 1e-9, (p, i, name, got, value)


def test_probe_logits_are_each_prompts_unpadded_forward(tiny_lm_factory) -> None:
    lm = tiny_lm_factory()
    prompts = [lm.tok_encode(t) for t in ["the capital of france is", "salt and", "once upon a time there was a"]]
    seen: list[tuple[int, int]] = []
    logits = next_token_logits(lm.model, prompts, "cpu", progress=lambda *done: seen.append(done))
    assert seen == [(i + 1, len(prompts)) for i in range(len(prompts))]  # the run's bar shows prompts done
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            alone = lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
            every = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        assert torch.equal(logits[i], alone)
        # only the last position's output layer is computed: the same logits to rounding
        assert torch.allclose(logits[i], every, rtol=0, atol=1e-5)
