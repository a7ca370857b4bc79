"""(c) 4-bit models are more sensitive to low temperatures than the unquantized model; (c2) the
extra sensitivity sits in 0.5–0.8. One yardstick of "meaningfully more sensitive" serves both
directions: a share of the reference's own loss."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness_ext.analysis.claims._common import BAND, LOW_T_MAX, drops, fmt_t, matrix, yardstick
from harness_ext.analysis.claims.base import (
    PAIRED_BOOTSTRAP,
    Claim,
    ModelReading,
    Options,
    across_models,
    claim,
    not_tested,
    quote,
)
from harness_ext.analysis.rules import MIN_PROMPTS, Part, agree, all_parts
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study, primary_quality

MIN_BAND = 2  # (c2): temperatures needed inside the band; at least one on each side of it


def relative(drop_s: np.ndarray, drop_r: np.ndarray) -> tuple[float, float, float]:
    """mean loss of the scheme / mean loss of the reference, with a paired percentile bootstrap
    interval over prompts (scipy.stats.bootstrap)."""
    ratio = float(drop_s.mean() / drop_r.mean()) if drop_r.mean() else math.nan
    if not math.isfinite(ratio) or drop_s.size < 3:
        return (ratio, math.nan, math.nan)
    res = sps.bootstrap(
        (drop_s, drop_r),
        lambda x, y, axis=-1: x.mean(axis=axis) / y.mean(axis=axis),
        paired=True,
        n_resamples=2000,
        method="percentile",
        random_state=0,
    )
    return (ratio, float(res.confidence_interval.low), float(res.confidence_interval.high))


@claim("c")
def claim_c(study: Study, o: Options) -> list[Claim]:
    c = Claim(
        "c",
        "4-bit is more sensitive to low temperatures",
        "4-bit models are more sensitive to low temperatures than the unquantized model.",
        f"Per prompt, the accuracy a scheme loses from greedy (T=0) to the temperatures 0 < T ≤ {LOW_T_MAX:g} (mean "
        "over them); the excess = the 4-bit scheme's loss minus the reference's. 'Meaningfully more sensitive' = an "
        f"excess above {o.sensitivity_margin:g} × the reference's own loss (report.sensitivity_margin; {o.margin:g} "
        "absolute where the reference loses nothing), tested per prompt as excess − that share of the reference's "
        "loss, so the reference's own noise is in the test. Holds for a scheme if a one-sided t-test puts it above 0 "
        "at 5%, does not hold if one puts it below 0: the same yardstick in both directions. On a model, every 4-bit "
        "scheme must agree (intersection-union). The relative scale (4-bit loss / reference loss, paired bootstrap) "
        "is shown beside it.",
    )
    c2 = Claim(
        "c2",
        "…and the extra sensitivity sits in 0.5–0.8",
        "The 4-bit models' extra sensitivity sits in the temperature range 0.5–0.8 (the revised abstract).",
        f"The excess at a temperature T = the 4-bit scheme's loss from T=0 to T minus the reference's. Needs ≥ "
        f"{MIN_BAND} temperatures inside [{BAND[0]}, {BAND[1]}] and ≥ 1 below and ≥ 1 above it in (0, {LOW_T_MAX:g}] "
        "(the probe's dense list has them). Per scheme, three parts, each against the yardstick of (c): the in-band "
        "excess above it; the in-band excess above the excess below the band by more than it; and above the excess "
        "above the band by more than it (never a pooled outside: an excess that merely rises with T is largest "
        "above the band). Holds if all three are shown (one-sided t-tests at 5%, intersection-union); does not hold "
        "if Holm's correction over their opposite tests rejects one; every 4-bit scheme must agree.",
    )
    q, _ = primary_quality(study)
    if q.empty:
        r = "no next-word accuracy in the run"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    four_bit = study.schemes(measured=True).query("bits == 4")["scheme"].tolist()
    if not four_bit:
        r = "the study has no 4-bit scheme"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    all_t = sorted(q["temperature"].unique())
    low = [t for t in all_t if 0 < t <= LOW_T_MAX]
    sets = {
        "below": [t for t in low if t < BAND[0]],
        "band": [t for t in low if BAND[0] <= t <= BAND[1]],
        "above": [t for t in low if t > BAND[1]],
    }
    readings, readings2 = {}, {}
    for model in study.models():
        readings[model], readings2[model] = read_model(study, c, c2, o, model, four_bit, q, low, sets)
    what = f"{', '.join(four_bit)} vs the reference"
    across_models(study, c, readings, what=what)
    if len(sets["band"]) < MIN_BAND or not sets["below"] or not sets["above"]:
        c2.decide(
            "inconclusive",
            f"the grid cannot locate the band: {len(sets['band'])} temperature(s) inside [{BAND[0]}, {BAND[1]}], "
            f"{len(sets['below'])} below and {len(sets['above'])} above it in (0, {LOW_T_MAX:g}]; ≥ {MIN_BAND} inside "
            "and ≥ 1 on each side are needed",
            f"temperatures inside [{BAND[0]}, {BAND[1]}]: {len(sets['band'])}; below: {len(sets['below'])}; "
            f"above: {len(sets['above'])}",
        )
        c2.scope = c.scope
    else:
        across_models(study, c2, readings2, what=what)
    return [c, c2]


def read_model(study, c, c2, o, model, four_bit, q, low, sets) -> tuple[ModelReading, ModelReading]:
    """One model's (c) and (c2) readings over its 4-bit schemes."""
    ref = study.reference(model)
    if ref is None or model not in set(q["model"]):
        r = not_tested(f"{model} has no reference scheme with next-word accuracy")
        return r, r
    mr = matrix(q, model, ref)
    dr = drops(mr, low)
    if dr is None:
        c.add(model, "needs T=0 and a temperature in (0, 1]", "not tested")
        r = not_tested("no model has T=0 and a temperature in (0, 1]")
        return r, r
    per_c: dict[str, tuple[Part, str]] = {}
    per_c2: dict[str, tuple[str, str, str]] = {}
    for s in four_bit:
        ms = matrix(q, model, s)
        ds = drops(ms, low)
        if ds is None:
            continue
        idx = ds.dropna().index.intersection(dr.dropna().index)
        yard = yardstick(dr.loc[idx].to_numpy(), o.sensitivity_margin, o.margin, ref)
        excess = ds.loc[idx].to_numpy() - dr.loc[idx].to_numpy()
        part = Part(f"{s} more sensitive than {ref}", excess - yard.per_prompt, MIN_PROMPTS)
        c.design(model, f"{s}'s excess loss", part.y, "prompts", yard.value)
        where = f"{model}: {s} vs {ref}, T={fmt_t(low)}"
        c.add(f"{where}: excess loss (absolute)", Estimate.t(excess), f"yardstick {yard.text}")
        row = c.add(f"{where}: excess beyond the yardstick", Estimate.t(part.y), part.reading())
        rel = relative(ds.loc[idx].to_numpy(), dr.loc[idx].to_numpy())
        c.add(
            f"{model}: {s} loss / {ref} loss (relative; meaningful above {1 + o.sensitivity_margin:.2f}×)",
            f"{rel[0]:.2f}× [{rel[1]:.2f}, {rel[2]:.2f}]"
            if math.isfinite(rel[0])
            else "n/a (the reference loses nothing)",
            "shown beside the absolute scale; not tested",
            PAIRED_BOOTSTRAP,
        )
        per_c[s] = (part, row, Estimate.t(excess).text("+.3f"), yard.text)
        if len(sets["band"]) >= MIN_BAND and sets["below"] and sets["above"]:
            per_c2[s] = _band(c2, o, model, s, ref, ms.loc[idx], mr.loc[idx], yard, sets)
    return _combine_c(per_c), _combine_c2(per_c2)


def _combine_c(per: dict) -> ModelReading:
    if not per:
        return not_tested("no 4-bit scheme has T=0 and a temperature in (0, 1]")
    reading = agree([p.reading() for p, *_ in per.values()])
    words = {
        "holds": "above the yardstick",
        "does not hold": "shown below the yardstick",
        "inconclusive": "neither shown above nor below the yardstick",
    }
    parts = "; ".join(f"{s}: excess loss {ex}, {words[p.reading()]} ({yard})" for s, (p, _, ex, yard) in per.items())
    lead = {
        "holds": "every 4-bit scheme is meaningfully more sensitive than the reference",
        "does not hold": "no 4-bit scheme is meaningfully more sensitive than the reference",
    }.get(reading, "the 4-bit schemes do not decide together")
    if reading == "holds":  # the scheme closest to failing decided it
        pick = max(per, key=lambda s: per[s][0].p_holds)
    elif reading == "does not hold":
        pick = max(per, key=lambda s: per[s][0].p_fails)
    else:
        pick = next((s for s in per if per[s][0].reading() == "inconclusive"), next(iter(per)))
    return ModelReading(reading, f"{lead} — {parts}", quote(per[pick][1]))


def _band(c2, o, model, s, ref, ms: pd.DataFrame, mr: pd.DataFrame, yard, sets) -> tuple[str, str, str]:
    """(reading, deciding row, why) of one scheme's band test."""

    def excess(ts):  # per prompt: the scheme's loss from T=0 to ts minus the reference's
        return (ms[0.0] - ms[ts].mean(axis=1)).to_numpy() - (mr[0.0] - mr[ts].mean(axis=1)).to_numpy()

    e = {k: excess(v) for k, v in sets.items()}
    where = {"below": "below the band", "band": "in the band", "above": "above the band"}
    for k in ("below", "band", "above"):
        c2.add(
            f"{model}: {s} excess loss {where[k]}, T={fmt_t(sets[k])}",
            Estimate.t(e[k]),
            "context for the three parts below",
        )
    parts = [
        Part("the excess in the band", e["band"] - yard.per_prompt, MIN_PROMPTS),
        Part("the excess in the band minus that below it", e["band"] - e["below"] - yard.per_prompt, MIN_PROMPTS),
        Part("the excess in the band minus that above it", e["band"] - e["above"] - yard.per_prompt, MIN_PROMPTS),
    ]
    for p in parts:
        c2.design(model, f"{s}: {p.label}", p.y, "prompts", yard.value)
    rows = [c2.add(f"{model}: {s}, {p.label}, less the yardstick", Estimate.t(p.y), p.reading()) for p in parts]
    dec = all_parts(parts)
    row = rows[dec.part] if dec.part is not None else None
    p = parts[dec.part] if dec.part is not None else None
    if dec.reading == "holds":
        why = (
            f"{s}: the excess in the band is meaningful and exceeds that on each side of the band by more than the "
            f"yardstick ({yard.text})"
        )
    elif dec.reading == "does not hold" and p is not None:
        why = f"{s}: {p.label} is shown below the yardstick ({yard.text}): {row['value']} after subtracting it"
    else:
        why = (
            f"{s}: {p.label if p else 'a part'} is shown neither above nor below the yardstick ({yard.text}): "
            f"{row['value'] if row else 'no data'} after subtracting it"
        )
    return dec.reading, quote(row), why


def _combine_c2(per: dict[str, tuple[str, str, str]]) -> ModelReading:
    if not per:
        return not_tested("no 4-bit scheme has the temperatures needed")
    reading = agree([r for r, _, _ in per.values()])
    first = next((v for v in per.values() if v[0] == reading), next(iter(per.values())))
    return ModelReading(reading, "; ".join(why for _, _, why in per.values()), first[1])
