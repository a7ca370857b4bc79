"""(a) nf4 and fp4 are alike in speed, memory and quality: equivalence by two one-sided tests."""

from __future__ import annotations

import math

import numpy as np

from harness_ext.analysis import rounds
from harness_ext.analysis.claims._common import four_bit_pair, matrix, smallest_batch_groups, temps
from harness_ext.analysis.claims.base import (
    Claim,
    ModelReading,
    Options,
    across_models,
    claim,
    not_tested,
    quote,
)
from harness_ext.analysis.rules import MIN_PROMPTS, MIN_ROUNDS, EquivalencePart, equivalence
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study, primary_quality


@claim("a")
def claim_a(study: Study, o: Options) -> list[Claim]:
    c = Claim(
        "a",
        "nf4 and fp4 are alike",
        "nf4 and fp4 are alike in speed, memory and quality.",
        f"Per model, three parts, each an equivalence test (two one-sided t-tests at 5%): next-word accuracy "
        f"nf4 − fp4 (per prompt, mean over the temperatures) inside ±{o.margin:g}; decode time at the smallest batch, "
        f"per mode, log(nf4/fp4) paired within each uncontended round, inside ±log({1 + o.speed_margin:g}) over ≥ "
        f"{MIN_ROUNDS} rounds; weight memory (deterministic: a ratio inside [{1 / (1 + o.speed_margin):.2f}, "
        f"{1 + o.speed_margin:.2f}], identical bytes being alike by construction). Holds on a model if every part "
        "was measured and is shown equivalent (intersection-union); does not hold if Holm's correction over the "
        "tested parts' one-sided tests of a difference beyond the margin rejects one (or the bytes differ beyond "
        "it); otherwise inconclusive.",
    )
    pair = four_bit_pair(study)
    if pair is None:
        return [c.decide("not tested", "the study has no nf4 and fp4 schemes that differ only in the 4-bit format")]
    q, _ = primary_quality(study)
    sp = rounds.speed_table(study)
    readings = {m: read_model(study, c, o, m, pair, q, sp) for m in study.models()}
    timed = sorted({w for m in study.models() for w, _ in smallest_batch_groups(sp, m)})
    what = f"{pair[0]} vs {pair[1]}" + (f"; speed: {', '.join(timed)}" if timed else "; speed not timed")
    return [across_models(study, c, readings, not_tested="nothing measured for the nf4/fp4 pair", what=what)]


def read_model(study: Study, c: Claim, o: Options, model: str, pair: tuple[str, str], q, sp) -> ModelReading:
    """One model's parts (quality, speed per mode, memory), their evidence rows and the reading."""
    nf4, fp4 = pair
    parts: list[EquivalencePart] = []
    rows: list[dict[str, str]] = []
    a, b = matrix(q, model, nf4), matrix(q, model, fp4)
    ts = temps(a, b) if not (a.empty or b.empty) else []
    d = (a[ts] - b[ts]).mean(axis=1).dropna().to_numpy() if ts else np.array([])
    parts.append(EquivalencePart(f"accuracy {nf4} − {fp4}", d, o.margin, MIN_PROMPTS))
    if d.size:
        c.design(model, f"accuracy {nf4} − {fp4}", d, "prompts", o.margin)
    what = f"{model}: accuracy {nf4} − {fp4} (mean over T, {d.size} prompts)"
    rows.append(c.add(what, Estimate.t(d) if d.size else "not measured", _reading(parts[-1])))
    lm = math.log(1 + o.speed_margin)
    timed = False
    for where, g in smallest_batch_groups(sp, model):
        if not {nf4, fp4} <= set(g["scheme"]):
            continue
        timed = True
        lr = rounds.paired_log_ratios(g, nf4, fp4)
        parts.append(EquivalencePart(f"decode time {nf4}/{fp4} ({where})", lr, lm, MIN_ROUNDS))
        c.design(model, f"decode time {nf4}/{fp4} ({where})", lr, "rounds", lm, log=True)
        rows.append(c.add(f"{model}, {where}: decode time {nf4}/{fp4}", Estimate.over_rounds(lr), _reading(parts[-1])))
    if not timed:
        parts.append(EquivalencePart(f"decode time {nf4}/{fp4}", np.array([]), lm, MIN_ROUNDS))
        rows.append(c.add(f"{model}: decode time {nf4}/{fp4}", "not measured (no speed rounds)", "not measured"))
    memory = _memory(study, sp, model, nf4, fp4, o.speed_margin)
    parts.append(memory[0])
    rows.append(c.add(f"{model}: weight memory {nf4}/{fp4}", memory[1], _reading(parts[-1])))
    if all(p.fixed is None and p.n == 0 for p in parts[:-1]) and memory[0].fixed is None:
        return not_tested("nothing measured for the nf4/fp4 pair")
    dec = equivalence(parts)
    p, row = (parts[dec.part], rows[dec.part]) if dec.part is not None else (None, None)
    return ModelReading(dec.reading, _why(dec.reading, dec.why, parts, p, row, o), quote(row))


def _reading(p: EquivalencePart) -> str:
    """A part's reading with the p-value behind it."""
    r = p.reading()
    if r == "equivalent":
        return "equivalent" + (f" (TOST p = {p.p_equivalent:.2g})" if p.fixed is None else " (deterministic)")
    if r == "differs":
        return "differs" + (f" (p = {p.p_differs:.2g}, one-sided, beyond the margin)" if p.fixed is None else "")
    if r == "undecided":
        return f"undecided (TOST p = {p.p_equivalent:.2g}; beyond the margin p = {p.p_differs:.2g})"
    return r


def _why(
    reading: str, why: str, parts: list[EquivalencePart], p: EquivalencePart | None, row: dict | None, o: Options
) -> str:
    if reading == "holds":
        return "every part is shown equivalent within its margin; the closest: " + quote(row)
    if p is None or row is None:
        return why
    margin = f"±{p.margin:g}" if "accuracy" in p.label else f"±{o.speed_margin:.0%}"
    if reading == "does not hold":
        return f"{p.label} differs beyond {margin}: {row['value']}"
    if why == "not measured":
        measured = "; ".join(f"{x.label}: {x.reading()}" for x in parts if x is not p and x.reading() != "not measured")
        return f"{p.label} was not measured, so the pair cannot be shown alike in every respect" + (
            f" (measured: {measured})" if measured else ""
        )
    if why == "too few units":
        need = "rounds" if p.min_units == MIN_ROUNDS else "prompts"
        return f"{p.label}: only {p.n} {need} (≥ {p.min_units} needed)"
    tested = sum(x.fixed is None and x.decidable for x in parts)
    holm = (
        f", not significant after Holm's correction over the {tested} tested parts"
        if p.p_differs < 0.05 and tested > 1
        else ""
    )
    return (
        f"{p.label} is neither shown inside {margin} nor beyond it: {row['value']} "
        f"(TOST p = {p.p_equivalent:.2g}, beyond p = {p.p_differs:.2g}{holm})"
    )


def _weight_bytes(study: Study, sp, model: str, scheme: str) -> float | None:
    """The load's weight bytes (run.json), else those its speed rounds recorded."""
    w = (study.loads().get((model, scheme)) or {}).get("weight_bytes")
    if w:
        return float(w)
    if not sp.empty and "weight_bytes" in sp.columns:
        v = sp[(sp["model"] == model) & (sp["scheme"] == scheme)]["weight_bytes"].dropna()
        return float(v.iloc[0]) if len(v) else None
    return None


def _memory(study: Study, sp, model: str, nf4: str, fp4: str, margin: float) -> tuple[EquivalencePart, str]:
    """Weight bytes of the two loads: deterministic, so read without a test. Identical bytes are the
    same storage layout (both formats store 4-bit codes and the same scales): alike by construction."""
    wa, wb = _weight_bytes(study, sp, model, nf4), _weight_bytes(study, sp, model, fp4)
    label = f"weight memory {nf4}/{fp4}"
    if not wa or not wb:
        return EquivalencePart(label, np.array([]), margin, 1), "not measured"
    r = float(wa) / float(wb)
    if wa == wb:
        return EquivalencePart(label, np.array([0.0]), margin, 1, fixed=True), "1.000× (identical bytes)"
    inside = 1 / (1 + margin) <= r <= 1 + margin
    return EquivalencePart(label, np.array([math.log(r)]), margin, 1, fixed=inside), f"{r:.3f}×"
