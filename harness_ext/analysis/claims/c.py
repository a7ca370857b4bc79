"""(c) 4-bit models are more sensitive to low temperatures than the unquantized model, on an
absolute and a relative scale; (c2) the extra sensitivity sits in 0.5–0.8."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from harness_ext.analysis.claims._common import (
    BAND,
    LOW_T_MAX,
    absolute_margin,
    band_reading,
    combine_all,
    excess_reading,
    fmt_t,
    matrix,
)
from harness_ext.analysis.claims.base import (
    BOOTSTRAP_OVER_PROMPTS,
    OVER_PROMPTS,
    Claim,
    Options,
    PerModel,
    across_models,
    claim,
    decided_by,
)
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study, primary_quality

MIN_TEMPS = 2  # (c2): temperatures needed inside the band and outside it


def drops(q, model: str, scheme: str, ts: list[float]):
    """Per prompt (index doc_id): accuracy at T=0 minus the mean accuracy over ``ts``."""
    m = matrix(q, model, scheme)
    ts = [t for t in ts if t in m.columns]
    if m.empty or 0.0 not in m.columns or not ts:
        return None
    return m[0.0] - m[ts].mean(axis=1)


def relative(drop_s: np.ndarray, drop_r: np.ndarray) -> tuple[float, float, float]:
    """mean drop of the scheme / mean drop of the reference, with a paired percentile bootstrap
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
        f"Per prompt, the accuracy a scheme loses from greedy (T=0) to the temperatures 0 < T ≤ {LOW_T_MAX:g} "
        "(mean over them); the excess = the 4-bit scheme's loss minus the reference's. Margin: "
        f"{o.sensitivity_margin:g} × the reference's own mean loss (report.sensitivity_margin; {o.margin:g} where the "
        "reference loses nothing). Holds for a scheme if a one-sided t-test puts the excess above 0 at 5%; does not "
        "hold if one puts it below the margin; on a model, every 4-bit scheme must agree (intersection-union). The "
        "relative scale (4-bit loss / reference loss, paired bootstrap) is shown beside it.",
    )
    c2 = Claim(
        "c2",
        "…and the extra sensitivity sits in 0.5–0.8",
        "The 4-bit models' extra sensitivity sits in the temperature range 0.5–0.8 (the revised abstract).",
        f"Needs ≥ {MIN_TEMPS} temperatures inside [{BAND[0]}, {BAND[1]}] and ≥ {MIN_TEMPS} in (0, {LOW_T_MAX:g}]"
        " outside "
        "it (the probe computes a dense temperature list). Per scheme: the excess over the in-band temperatures, and "
        "the in-band minus the out-of-band excess. Holds if both are above 0 (one-sided t-tests at 5%, "
        "intersection-union); does not hold if Holm over (in-band excess below the margin, in-band minus out-of-band "
        "below the margin) rejects either; every 4-bit scheme must agree.",
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
    band = [t for t in low if BAND[0] <= t <= BAND[1]]
    other = [t for t in low if t not in band]
    per: dict[str, PerModel] = {}
    per2: dict[str, PerModel] = {}
    for model in study.models():
        ref = study.reference(model)
        if ref is None or model not in set(q["model"]):
            per[model] = per2[model] = "not tested"
            continue
        dr = drops(q, model, ref, low)
        if dr is None:
            c.evidence.append(
                {"what": model, "value": "needs T=0 and a temperature in (0, 1]", "verdict": "not tested"}
            )
            per[model] = per2[model] = "not tested"
            continue
        readings, readings2 = [], []
        for s in four_bit:
            ds = drops(q, model, s, low)
            if ds is None:
                continue
            both = ds.index.intersection(dr.index)
            e = (ds.loc[both] - dr.loc[both]).to_numpy()
            m_abs = absolute_margin(dr.loc[both].to_numpy(), o.sensitivity_margin, o.margin)
            r = excess_reading(e, m_abs)
            readings.append(r)
            rel = relative(ds.loc[both].to_numpy(), dr.loc[both].to_numpy())
            c.evidence.append(
                {
                    "what": f"{model}: {s} vs {ref}, T={fmt_t(low)}: excess loss (absolute; margin {m_abs:.3f})",
                    "value": Estimate.t(e).text(),
                    "interval": OVER_PROMPTS,
                    "verdict": r,
                }
            )
            c.evidence.append(
                {
                    "what": f"{model}: {s} loss / {ref} loss (relative; margin {1 + o.sensitivity_margin:.2f}×)",
                    "value": f"{rel[0]:.2f}× [{rel[1]:.2f}, {rel[2]:.2f}]"
                    if math.isfinite(rel[0])
                    else "n/a (the reference loses nothing)",
                    "interval": BOOTSTRAP_OVER_PROMPTS,
                    "verdict": "shown beside the absolute scale; not tested",
                }
            )
            if len(band) >= MIN_TEMPS and len(other) >= MIN_TEMPS:
                eb = _excess(q, model, s, ref, band)
                eo = _excess(q, model, s, ref, other)
                if eb is None or eo is None:
                    continue
                idx = eb.index.intersection(eo.index)
                r2 = band_reading(eb.loc[idx].to_numpy(), eo.loc[idx].to_numpy(), m_abs)
                readings2.append(r2)
                c2.evidence.append(
                    {
                        "what": f"{model}: {s} excess in band T={fmt_t(band)}",
                        "value": Estimate.t(eb).text(),
                        "interval": OVER_PROMPTS,
                        "verdict": "one side of the in-band minus out-of-band test below",
                    }
                )
                c2.evidence.append(
                    {
                        "what": f"{model}: {s} excess outside, T={fmt_t(other)}",
                        "value": Estimate.t(eo).text(),
                        "interval": OVER_PROMPTS,
                        "verdict": "one side of the in-band minus out-of-band test below",
                    }
                )
                c2.evidence.append(
                    {
                        "what": f"{model}: {s} in-band minus out-of-band",
                        "value": Estimate.t((eb.loc[idx] - eo.loc[idx]).to_numpy()).text(),
                        "interval": OVER_PROMPTS,
                        "verdict": r2,
                    }
                )
        per[model] = combine_all(readings)
        per2[model] = combine_all(readings2)
    words = {
        "holds": "every 4-bit scheme loses more accuracy than the reference when leaving greedy decoding",
        "does not hold": "no 4-bit scheme loses more than the margin beyond the reference",
        "inconclusive": _per_scheme(c, "excess loss") or "the schemes disagree or the tests do not decide",
    }
    across_models(study, c, per, words=words)
    if len(band) < MIN_TEMPS or len(other) < MIN_TEMPS:
        c2.scope = c.scope
        c2.decide(
            "inconclusive",
            f"the grid cannot locate the band: {len(band)} temperature(s) inside [{BAND[0]}, {BAND[1]}] and "
            f"{len(other)} outside in (0, {LOW_T_MAX:g}]; ≥ {MIN_TEMPS} of each are needed",
        )
        c2.deciding = f"temperatures in [{BAND[0]}, {BAND[1]}]: {len(band)}; outside: {len(other)} (≥ {MIN_TEMPS} each)"
    else:
        across_models(
            study,
            c2,
            per2,
            words={
                "holds": "the excess is positive in the band and larger there than outside",
                "does not hold": "the band holds no meaningful excess beyond the rest",
                "inconclusive": _per_scheme(c2, "in-band minus")
                or "the in-band excess is not clearly positive and concentrated",
                "not tested": "no model has the temperatures needed",
            },
        )
    every = {"holds": ("holds",), "does not hold": ("does not hold",), "inconclusive": ("inconclusive",)}
    decided_by(c, every)
    if not c2.deciding:
        decided_by(c2, every)
    return [c, c2]


def _per_scheme(c: Claim, what: str) -> str:
    """Each scheme's own reading with its figure (why the model's reading is what it is)."""
    rows = [f"{e['what'].split(' (')[0]}: {e['verdict']} ({e['value']})" for e in c.evidence if what in e["what"]]
    return "per scheme — " + "; ".join(rows) if rows else ""


def _excess(q, model: str, s: str, ref: str, ts: list[float]):
    ds, dr = drops(q, model, s, ts), drops(q, model, ref, ts)
    if ds is None or dr is None:
        return None
    return (ds - dr).dropna()
