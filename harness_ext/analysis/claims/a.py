"""(a) nf4 and fp4 are alike in speed, memory and quality: equivalence by two one-sided tests."""

from __future__ import annotations

import math

import numpy as np

from harness_ext.analysis import rounds
from harness_ext.analysis.claims._common import (
    MIN_PROMPTS,
    equivalence_parts,
    equivalence_reading,
    four_bit_pair,
    matrix,
    temps,
)
from harness_ext.analysis.claims.base import (
    OVER_PROMPTS,
    OVER_ROUNDS,
    Claim,
    Options,
    PerModel,
    across_models,
    claim,
    decided_by,
)
from harness_ext.analysis.stats import Estimate, RoundRatio
from harness_ext.analysis.study import Study, primary_quality


@claim("a")
def claim_a(study: Study, o: Options) -> list[Claim]:
    lm = math.log(1 + o.speed_margin)
    c = Claim(
        "a",
        "nf4 and fp4 are alike",
        "nf4 and fp4 are alike in speed, memory and quality.",
        f"Per model, each part is an equivalence test (two one-sided t-tests at 5%): next-word accuracy "
        f"nf4 − fp4 (per prompt, mean over the temperatures) inside ±{o.margin:g}; decode time, per (batch, mode), "
        f"log(nf4/fp4) paired within each uncontended round, inside ±log({1 + o.speed_margin:g}) over ≥ "
        f"{rounds.MIN_ROUNDS} rounds. Weight memory is deterministic: a ratio inside [{1 / (1 + o.speed_margin):.2f}, "
        f"{1 + o.speed_margin:.2f}] is equivalent; bytes equal by construction are reported, not counted. Holds on a "
        "model if every part is equivalent (intersection-union); does not hold if Holm over the parts' tests of a "
        "difference beyond the margin rejects one; otherwise inconclusive.",
    )
    pair = four_bit_pair(study)
    if pair is None:
        return [c.decide("not tested", "the study has no nf4 and fp4 schemes that differ only in the 4-bit format")]
    nf4, fp4 = pair
    q, _ = primary_quality(study)
    sp = rounds.speed_table(study)
    per: dict[str, PerModel] = {}
    for model in study.models():
        parts: list[tuple[float, float]] = []
        unreplicated = False
        a, b = matrix(q, model, nf4), matrix(q, model, fp4)
        ts = temps(a, b) if not (a.empty or b.empty) else []
        if ts:
            d = (a[ts] - b[ts]).mean(axis=1).dropna().to_numpy()
            if d.size >= MIN_PROMPTS:
                parts.append(equivalence_parts(d, o.margin))
            else:
                unreplicated = True  # too few prompts: the quality part stays undecided
            c.evidence.append(
                {
                    "what": f"{model}: accuracy {nf4} − {fp4} (mean over T, {d.size} prompts)",
                    "value": Estimate.t(d).text(),
                    "interval": OVER_PROMPTS,
                    "verdict": _part(parts[-1]) if d.size >= MIN_PROMPTS else f"fewer than {MIN_PROMPTS} prompts",
                }
            )
        else:
            c.evidence.append(
                {"what": f"{model}: quality", "value": "not measured for this model", "verdict": "part not tested"}
            )
        for key, g in sp[sp["model"] == model].groupby(rounds.GROUP[1:]) if not sp.empty else []:
            if not {nf4, fp4} <= set(g["scheme"]):
                continue
            where = f"{model}, batch {int(key[0])}, {key[1]}"
            lr = rounds.paired_log_ratios(g, nf4, fp4)
            if lr.size < rounds.MIN_ROUNDS:
                unreplicated = True
                reading = f"inconclusive — not replicated ({lr.size} uncontended round{'s' * (lr.size != 1)})"
            else:
                parts.append(equivalence_parts(lr, lm))
                reading = _part(parts[-1])
            c.evidence.append(
                {
                    "what": f"{where}: decode time {nf4}/{fp4}",
                    "value": RoundRatio.of(lr).text(),
                    "verdict": reading,
                    "interval": OVER_ROUNDS,
                }
            )
            memory = _memory(g, nf4, fp4, o.speed_margin)
            if memory is not None and key == min(g.groupby(rounds.GROUP[1:]).groups):
                c.evidence.append({"what": f"{model}: weight memory {nf4}/{fp4}", **memory[0]})
                if memory[1] is not None:
                    parts.append(memory[1])
        reading = equivalence_reading(parts)
        if unreplicated and reading in ("holds", "not tested"):  # a part (too few rounds or prompts) is undecided
            reading = "inconclusive"
        per[model] = reading
    words = {
        "holds": "quality, speed and memory are equivalent within the margins",
        "does not hold": _parts(c, per, "does not hold", ("differs",))
        or "at least one of quality, speed or memory differs beyond its margin",
        "inconclusive": _undecided(c, per)
        or "the tests neither establish equivalence nor a difference beyond the margins",
        "not tested": "nothing measured for the nf4/fp4 pair",
    }
    across_models(study, c, per, words=words)
    deciding = {
        "holds": ("equivalent",),
        "does not hold": ("differs",),
        "inconclusive": ("undecided", "inconclusive", "fewer than", "differs"),
    }
    return [decided_by(c, deciding)]


def _undecided(c: Claim, per: dict[str, PerModel]) -> str:
    """The parts that left an inconclusive model undecided, each named with its figure."""
    parts = _parts(c, per, "inconclusive", ("undecided", "inconclusive", "fewer than"))
    alone = _parts(c, per, "inconclusive", ("differs",))
    if alone:  # a part that differs on its own, but not after Holm's correction over the model's parts
        parts = "; ".join(x for x in (parts, f"{alone}: not significant after Holm over the parts") if x)
    return "undecided: " + parts if parts else ""


def _parts(c: Claim, per: dict[str, PerModel], reading: str, verdicts: tuple[str, ...]) -> str:
    """The evidence parts whose verdict starts with one of ``verdicts``, of the models read ``reading``."""
    return "; ".join(
        f"{e['what']} {e['value']} ({e['verdict']})"
        for e in c.evidence
        if str(e.get("verdict", "")).startswith(verdicts)
        and any(e["what"].startswith(m) and v == reading for m, v in per.items())
    )


def _part(p: tuple[float, float]) -> str:
    return (
        f"equivalent (TOST p={p[0]:.3g})"
        if p[0] < 0.05
        else (f"differs (p={p[1]:.3g})" if p[1] < 0.05 else f"undecided (TOST p={p[0]:.3g})")
    )


def _memory(g, nf4: str, fp4: str, margin: float) -> tuple[dict[str, str], tuple[float, float] | None] | None:
    """Weight bytes are deterministic: equal bytes mean the same storage layout (by construction),
    which is no evidence about the formats; unequal bytes are compared with the margin directly."""
    if "weight_bytes" not in g.columns:
        return None
    wa = g[g["scheme"] == nf4]["weight_bytes"].dropna().astype(float)
    wb = g[g["scheme"] == fp4]["weight_bytes"].dropna().astype(float)
    if wa.empty or wb.empty:
        return None
    r = float(wa.iloc[0] / wb.iloc[0])
    if np.all(wa.to_numpy() == wb.iloc[0]) and np.all(wb.to_numpy() == wb.iloc[0]):
        return {
            "value": "1.000× (identical bytes)",
            "verdict": "equal by construction (same 4-bit storage): not counted",
        }, None
    inside = 1 / (1 + margin) <= r <= 1 + margin
    return {"value": f"{r:.3f}×", "verdict": "equivalent" if inside else "differs"}, (0.0, 1.0) if inside else (
        1.0,
        0.0,
    )
