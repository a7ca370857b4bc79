"""(b) nf4 and fp4 behave differently across temperatures — an interaction, tested per prompt;
(b2) per model family, which 4-bit format is the more resilient at low temperature."""

from __future__ import annotations

import numpy as np

from harness_ext.analysis.claims._common import LOW_T_MAX, MIN_PROMPTS, fmt_t, four_bit_pair, matrix, temps
from harness_ext.analysis.claims.base import (
    OVER_PROMPTS,
    Claim,
    Options,
    PerModel,
    across_models,
    claim,
    decided_by,
    scope_of,
)
from harness_ext.analysis.stats import ALPHA, Estimate, holm, interaction_p, p_greater, p_less, tost
from harness_ext.analysis.study import Study, primary_quality

EXPECTED = {"llama-2": "nf4", "llama2": "nf4", "falcon": "fp4"}  # the revised abstract's (2')


def interaction_reading(gaps: np.ndarray, margin: float, p: float, reject: bool, alpha: float = ALPHA) -> PerModel:
    """``gaps``: prompts x temperatures of nf4 − fp4. Holds if the interaction test rejects (Holm
    across models) and the mean gap's range over temperatures exceeds the margin; does not hold if
    at every temperature the gap's deviation from its own per-prompt mean lies inside ±margin (TOST,
    intersection-union); otherwise inconclusive (the interaction is not shown)."""
    centered = gaps - gaps.mean(axis=1, keepdims=True)
    profile = gaps.mean(axis=0)
    if reject and profile.max() - profile.min() > margin:
        return "holds"
    if all(tost(centered[:, j], margin) < alpha for j in range(gaps.shape[1])):
        return "does not hold"
    return "inconclusive"


@claim("b")
def claim_b(study: Study, o: Options) -> list[Claim]:
    c = Claim(
        "b",
        "nf4 and fp4 differ across temperatures",
        "nf4 and fp4 behave differently across temperatures.",
        "An interaction, not a gap: per prompt, the nf4 − fp4 accuracy gap at every temperature, centered on the "
        "prompt's own mean gap (a constant offset is claim (a), not (b)). A sign-flip permutation test "
        f"({o.n_resamples} resamples) of the mean centered profile's variation, Holm across models. Holds on a "
        f"model if it rejects at 5% and the mean gap's range over temperatures exceeds {o.margin:g}; does not hold "
        f"if at every temperature the centered gap is inside ±{o.margin:g} (two one-sided t-tests); otherwise "
        "inconclusive: the interaction is not shown.",
    )
    c2 = Claim(
        "b2",
        "Which 4-bit format resists low temperatures (per family)",
        "nf4 is the more temperature-resilient 4-bit scheme at low temperature for Llama-2 models, fp4 for "
        "Falcon models (the revised abstract).",
        f"Per model, the accuracy lost from greedy (T=0) to the temperatures 0 < T ≤ {LOW_T_MAX:g} (mean per prompt), "
        "nf4's loss minus fp4's: nf4 is more resilient if a one-sided t-test puts it below 0 at 2.5%, fp4 if above. "
        "The claim names Llama-2 and Falcon: it holds on a model of those families if the named format is the more "
        "resilient, does not hold if the other one is; other families are reported, and the claim is not tested "
        "on them.",
    )
    pair = four_bit_pair(study)
    if pair is None:
        r = "the study has no nf4/fp4 pair"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    nf4, fp4 = pair
    q, _ = primary_quality(study)
    if q.empty:
        r = "no next-word accuracy in the run (speed and memory only)"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    gaps: dict[str, np.ndarray] = {}
    per2: dict[str, PerModel] = {}
    for model in study.models():
        a, b = matrix(q, model, nf4), matrix(q, model, fp4)
        ts = temps(a, b) if not (a.empty or b.empty) else []
        if len(ts) < 2:
            c.evidence.append(
                {"what": model, "value": "needs ≥ 2 temperatures for both schemes", "verdict": "not tested"}
            )
            continue
        g = (a[ts] - b[ts]).dropna().to_numpy()
        if g.shape[0] >= MIN_PROMPTS:
            gaps[model] = g
        profile = g.mean(axis=0)
        c.evidence.append(
            {
                "what": f"{model}: mean gap {nf4} − {fp4} at T={fmt_t(ts)} ({g.shape[0]} prompts)",
                "value": ", ".join(signed(v) for v in profile),
                "verdict": profile_reading(profile, ts, nf4, fp4),
            }
        )
        per2[model] = _resilience(study, c2, model, a, b, nf4, fp4)
    per: dict[str, PerModel] = {m: "not tested" for m in study.models()}
    per.update({m: "inconclusive" for m in per2 if m not in gaps})  # measured, but on too few prompts
    ps = {m: interaction_p(g, o.n_resamples) for m, g in gaps.items()}
    rejected = dict(zip(ps, holm(list(ps.values())), strict=True))
    for m, g in gaps.items():
        per[m] = interaction_reading(g, o.margin, ps[m], rejected[m])
        prof = g.mean(axis=0)
        c.evidence.append(
            {
                "what": f"{m}: interaction (range of the mean gap over T; sign-flip p)",
                "value": f"range {prof.max() - prof.min():.3f}; p = {ps[m]:.3g}",
                "verdict": per[m] if per[m] != "inconclusive" else "not shown",
            }
        )
    words = {
        "holds": "the nf4 − fp4 gap changes with temperature beyond the margin",
        "does not hold": "the nf4 − fp4 gap is constant across temperatures within the margin (a constant offset "
        "is a difference in level — claim (a) — not in temperature response)",
        "inconclusive": "the interaction is not shown",
        "not tested": "no model has both formats at ≥ 2 temperatures on ≥ 10 prompts",
    }
    across_models(study, c, per, words=words)
    decided_by(c, {"holds": ("holds",), "does not hold": ("does not hold",), "inconclusive": ("not shown",)})
    _family_verdict(study, c2, per2)
    decided_by(c2, {v: ("more resilient",) for v in ("holds", "does not hold", "inconclusive")})
    return [c, c2]


def signed(v: float) -> str:
    """``+0.076``; a mean that rounds to zero reads ``0.000``, never ``-0.000``."""
    text = f"{v:+.3f}"
    return "0.000" if float(text) == 0 else text


def profile_reading(profile: np.ndarray, ts: list[float], nf4: str, fp4: str) -> str:
    """What the per-temperature gaps show before any test: which format is ahead, and where that changes
    (the interaction row below tests whether the change exceeds the margin)."""
    ahead = [nf4 if v > 0 else fp4 if v < 0 else "neither" for v in np.round(profile, 3)]
    if len(set(ahead)) == 1:
        return f"{ahead[0]} ahead at every T" if ahead[0] != "neither" else "no gap at any T"
    changes = [f"T={ts[i]:g}" for i in range(1, len(ahead)) if ahead[i] != ahead[i - 1]]
    return f"{ahead[0]} ahead at T={ts[0]:g}; the lead changes at {', '.join(changes)}"


def _resilience(study: Study, c2: Claim, model: str, a, b, nf4: str, fp4: str) -> PerModel:
    family = study.family(model)
    low = [t for t in temps(a, b) if 0 < t <= LOW_T_MAX]
    if 0.0 not in a.columns or 0.0 not in b.columns or not low:
        c2.evidence.append(
            {"what": f"{model} ({family})", "value": "needs T=0 and a temperature in (0, 1]", "verdict": "not tested"}
        )
        return "not tested"
    drop_a = (a[[0.0]].to_numpy() - a[low].to_numpy()).mean(axis=1)
    drop_b = (b[[0.0]].to_numpy() - b[low].to_numpy()).mean(axis=1)
    d = drop_a - drop_b
    d = d[np.isfinite(d)]
    winner = nf4 if p_less(d, 0) < ALPHA / 2 else fp4 if p_greater(d, 0) < ALPHA / 2 else None
    c2.evidence.append(
        {
            "what": f"{model} ({family}): drop {nf4} − drop {fp4}, T={fmt_t(low)}",
            "value": Estimate.t(d).text(),
            "interval": OVER_PROMPTS,
            "verdict": f"more resilient: {winner or 'neither (not significant)'}",
        }
    )
    fam = family.lower()
    expected = next((EXPECTED[k] for k in EXPECTED if k in fam), None)
    if expected is None or d.size < MIN_PROMPTS:
        return "not tested"
    if winner is None:
        return "inconclusive"
    got = "nf4" if winner == nf4 else "fp4"
    return "holds" if got == expected else "does not hold"


def _family_verdict(study: Study, c2: Claim, per2: dict[str, PerModel]) -> None:
    tested = {m: v for m, v in per2.items() if v != "not tested"}
    if not tested:
        c2.scope = scope_of(study, list(per2))
        c2.per_model = dict(per2)
        c2.decide(
            "not tested",
            "the study has no Llama-2 or Falcon-family model: the family-specific claim is not tested here "
            "(the measured resilience of the models present is listed)",
        )
        return
    across_models(
        study,
        c2,
        per2,
        words={
            "holds": "the format the claim names is the more resilient in the tested families",
            "does not hold": "the other format is the more resilient",
            "inconclusive": "the resilience difference is not clear, or the models disagree",
        },
    )
