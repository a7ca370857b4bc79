"""(b) nf4 and fp4 behave differently across temperatures — an interaction, read as the range of
their gap over temperature; (b2) per model family, which 4-bit format is the more resilient at low
temperature."""

from __future__ import annotations

import numpy as np

from harness_ext.analysis.claims._common import (
    LOW_T_MAX,
    drops,
    fmt_t,
    four_bit_pair,
    matrix,
    signed,
    temps,
    yardstick,
)
from harness_ext.analysis.claims.base import (
    RANGE_BOUNDS,
    Claim,
    ModelReading,
    Options,
    across_models,
    claim,
    not_tested,
    quote,
)
from harness_ext.analysis.rules import MIN_PROMPTS, Part, range_bounds
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study, primary_quality

EXPECTED = {"llama-2": "nf4", "llama2": "nf4", "falcon": "fp4"}  # the revised abstract's (2')


@claim("b")
def claim_b(study: Study, o: Options) -> list[Claim]:
    c = Claim(
        "b",
        "nf4 and fp4 differ across temperatures",
        "nf4 and fp4 behave differently across temperatures.",
        "An interaction, not a gap: the quantity is the range over temperature of the mean nf4 − fp4 accuracy gap "
        "(a constant gap is claim (a) and cancels here). Per model, every pair of temperatures gives a per-prompt "
        "difference with its own standard error; the range's 95 % upper bound is the largest |mean| + t·se over the "
        "pairs (one-sided per pair, valid by intersection-union), its 95 % lower bound the largest |mean| − c·se "
        "with c "
        f"simultaneous over the pairs ({o.n_resamples} random sign flips of the prompts' residual profiles). Holds if "
        f"the lower bound exceeds {o.margin:g}; does not hold if the upper bound is below {o.margin:g}; otherwise "
        "inconclusive. One margin, one quantity, both directions.",
    )
    c2 = Claim(
        "b2",
        "Which 4-bit format resists low temperatures (per family)",
        "nf4 is the more temperature-resilient 4-bit scheme at low temperature for Llama-2 models, fp4 for "
        "Falcon models (the revised abstract).",
        f"Per model, the accuracy each format loses from greedy (T=0) to the temperatures 0 < T ≤ {LOW_T_MAX:g} (mean "
        "per prompt). The named format is meaningfully more resilient if its loss is smaller than the other's by more "
        f"than {o.sensitivity_margin:g} × the reference's own loss (report.sensitivity_margin, the yardstick of (c); "
        "the two formats' mean loss where the model has no reference): a one-sided t-test over prompts of "
        "(other's loss − named loss − yardstick) above 0 at 5% holds, below 0 does not hold. The claim names Llama-2 "
        "and Falcon: other families are reported, and the claim is not tested on them.",
    )
    pair = four_bit_pair(study)
    if pair is None:
        r = "the study has no nf4/fp4 pair"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    q, _ = primary_quality(study)
    if q.empty:
        r = "no next-word accuracy in the run (speed and memory only)"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    readings = {m: read_interaction(c, o, m, pair, q) for m in study.models()}
    across_models(
        study,
        c,
        readings,
        not_tested="no model has both formats at ≥ 2 temperatures on ≥ 10 prompts",
        what=f"{pair[0]} − {pair[1]}",
    )
    readings2 = {m: read_resilience(study, c2, o, m, pair, q) for m in study.models()}
    across_models(
        study,
        c2,
        readings2,
        not_tested="the study has no Llama-2 or Falcon-family model: the family-specific claim is not tested here "
        "(the measured resilience of the models present is listed)",
        what=f"{pair[0]} vs {pair[1]}",
    )
    return [c, c2]


def read_interaction(c: Claim, o: Options, model: str, pair: tuple[str, str], q) -> ModelReading:
    nf4, fp4 = pair
    a, b = matrix(q, model, nf4), matrix(q, model, fp4)
    ts = temps(a, b) if not (a.empty or b.empty) else []
    if len(ts) < 2:
        c.add(model, "needs ≥ 2 temperatures for both schemes", "not tested")
        return not_tested("no model has both formats at ≥ 2 temperatures")
    g = (a[ts] - b[ts]).dropna().to_numpy()
    profile = g.mean(axis=0)
    c.add(
        f"{model}: mean gap {nf4} − {fp4} at T={fmt_t(ts)} ({g.shape[0]} prompts)",
        ", ".join(signed(v) for v in profile),
        profile_reading(profile, ts, nf4, fp4),
    )
    if g.shape[0] < MIN_PROMPTS:
        c.add(f"{model}: interaction", f"{g.shape[0]} prompts", f"fewer than {MIN_PROMPTS} prompts")
        return ModelReading("inconclusive", f"only {g.shape[0]} prompts (≥ {MIN_PROMPTS} needed)")
    rb = range_bounds(g, o.n_resamples)
    reading = rb.reading(o.margin)
    hi, lo = int(np.argmax(profile)), int(np.argmin(profile))
    c.design(model, f"range of the gap (T={ts[lo]:g} vs T={ts[hi]:g})", g[:, hi] - g[:, lo], "prompts", o.margin)
    value = (
        f"{rb.estimate:.3f} [{rb.lower:.3f}, {rb.upper:.3f}] (T={ts[lo]:g} to T={ts[hi]:g}); "
        f"any variation p = {rb.p_any:.2g}"
    )
    row = c.add(f"{model}: range of the gap over T (margin {o.margin:g})", value, reading, RANGE_BOUNDS)
    present = "an interaction is present" if rb.p_any < 0.05 else "no interaction is shown at all"
    if reading == "holds":
        why = f"the gap changes with temperature by more than {o.margin:g}: its range's 95 % lower bound is " + (
            f"{rb.lower:.3f}"
        )
    elif reading == "does not hold":
        why = (
            f"the gap changes with temperature by less than {o.margin:g}: range {rb.estimate:.3f}, 95 % upper bound "
            f"{rb.upper:.3f} ({present}, p = {rb.p_any:.2g}, but smaller than the margin)"
        )
    else:
        why = (
            f"the gap's range over temperature, {rb.estimate:.3f} [{rb.lower:.3f}, {rb.upper:.3f}], is shown "
            f"neither above nor below {o.margin:g} ({present}, p = {rb.p_any:.2g})"
        )
    return ModelReading(reading, why, quote(row))


def profile_reading(profile: np.ndarray, ts: list[float], nf4: str, fp4: str) -> str:
    """What the per-temperature gaps show before any test: which format is ahead, and where that changes
    (the range row below decides whether the change exceeds the margin)."""
    ahead = [nf4 if v > 0 else fp4 if v < 0 else "neither" for v in np.round(profile, 3)]
    if len(set(ahead)) == 1:
        return f"{ahead[0]} ahead at every T" if ahead[0] != "neither" else "no gap at any T"
    changes = [f"T={ts[i]:g}" for i in range(1, len(ahead)) if ahead[i] != ahead[i - 1]]
    return f"{ahead[0]} ahead at T={ts[0]:g}; the lead changes at {', '.join(changes)}"


def read_resilience(study: Study, c2: Claim, o: Options, model: str, pair: tuple[str, str], q) -> ModelReading:
    nf4, fp4 = pair
    family = study.family(model)
    a, b = matrix(q, model, nf4), matrix(q, model, fp4)
    low = [t for t in temps(a, b) if 0 < t <= LOW_T_MAX] if not (a.empty or b.empty) else []
    da, db = drops(a, low), drops(b, low)
    if da is None or db is None:
        c2.add(f"{model} ({family})", "needs T=0 and a temperature in (0, 1]", "not tested")
        return not_tested("no model has T=0 and a temperature in (0, 1] for both formats")
    idx = da.dropna().index.intersection(db.dropna().index)
    ref = study.reference(model)
    dr = drops(matrix(q, model, ref), low) if ref else None
    if dr is not None:
        idx = idx.intersection(dr.dropna().index)
        yard = yardstick(dr.loc[idx].to_numpy(), o.sensitivity_margin, o.margin, ref)
    else:
        both = (da.loc[idx].to_numpy() + db.loc[idx].to_numpy()) / 2
        yard = yardstick(both, o.sensitivity_margin, o.margin, "the two formats' mean")
    gap = db.loc[idx].to_numpy() - da.loc[idx].to_numpy()  # > 0: nf4 loses less than fp4
    c2.add(
        f"{model} ({family}): loss {fp4} − loss {nf4}, T={fmt_t(low)} (> 0: {nf4} more resilient)",
        Estimate.t(gap),
        f"yardstick {yard.text}",
    )
    expected = next((EXPECTED[k] for k in EXPECTED if k in family.lower()), None)
    if expected is None:
        return not_tested(f"the claim names Llama-2 and Falcon models; {model} is of the {family} family")
    named, other, y = (nf4, fp4, gap) if expected == "nf4" else (fp4, nf4, -gap)
    part = Part(f"{named} more resilient than {other}", y - yard.per_prompt, MIN_PROMPTS)
    c2.design(model, f"{named}'s advantage over {other}", part.y, "prompts", yard.value)
    reading = part.reading()
    row = c2.add(
        f"{model} ({family}): {named}'s advantage beyond the yardstick",
        Estimate.t(part.y),
        reading,
    )
    adv = Estimate.t(y).text("+.3f")
    if reading == "holds":
        why = f"{named} loses less than {other} by more than the yardstick ({yard.text}): {adv}"
    elif reading == "does not hold":
        why = f"{named}'s advantage over {other} is shown below the yardstick ({yard.text}): {adv}"
    else:
        why = f"{named}'s advantage over {other}, {adv}, is shown neither above nor below the yardstick ({yard.text})"
    return ModelReading(reading, why, quote(row))
