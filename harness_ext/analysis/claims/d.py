"""(d) int8 is much slower, fp16 the fastest, at every size; (d2) bf16 is the fastest at every size.
Decided from speed rounds: ratios paired within a round, one-sided t-tests over rounds, one speed
margin for "much slower" and "fastest" alike."""

from __future__ import annotations

import math

import numpy as np

from harness_ext.analysis import rounds
from harness_ext.analysis.claims._common import smallest_batch_groups
from harness_ext.analysis.claims.base import (
    Claim,
    ModelReading,
    Options,
    across_models,
    claim,
    not_tested,
    quote,
)
from harness_ext.analysis.rules import MIN_ROUNDS, Part, all_parts
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study


@claim("d")
def claim_d(study: Study, o: Options) -> list[Claim]:
    m = 1 + o.speed_margin
    rule = (
        f"Per model, at its smallest batch, in every mode: decode time per token, per round (one load, warm-up, timed "
        f"repeats), ratios paired within the round; uncontended rounds only, ≥ {MIN_ROUNDS} of them; one-sided t-tests "
        f"over rounds of the log-ratio at 5%. One speed margin, {m:.2f}× (report.speed_margin: the smallest speed "
        "difference a user choosing a format would act on, and (a)'s margin of 'alike'), serves both words: 'much "
        f"slower' = more than {m:.2f}× slower than every other scheme; 'the fastest' = more than {m:.2f}× faster than "
        "every other scheme (a tie with another scheme is not 'the fastest'). Holds if every comparison is shown "
        "(intersection-union); does not hold if Holm's correction over the opposite tests rejects one (a comparison "
        "shown short of the margin or going the other way). A scheme the claim names and the study lacks leaves that "
        "part not tested: no other scheme stands in for it. 'Every size' needs ≥ 2 sizes for supported/contradicted."
    )
    c = Claim(
        "d",
        "int8 is much slower, fp16 the fastest",
        "int8 is much slower than the other schemes, and fp16 is the fastest at every model size.",
        rule,
    )
    c2 = Claim(
        "d2",
        "bf16 is the fastest at every size",
        "Unquantized bf16 is the fastest at every model size (the revised abstract).",
        rule,
    )
    sp = rounds.speed_table(study)
    if sp.empty:
        r = "no speed cells in the run"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    sch = study.schemes(measured=True)
    # the seed's int8 is bitsandbytes' LLM.int8; torchao's and HQQ's int8 are weight-only, another scheme
    bnb_int8 = sch[(sch["quant"] == "int8") & (sch["backend"].fillna("bitsandbytes") == "bitsandbytes")]
    int8 = next(iter(bnb_int8["scheme"]), None)
    unq = sch[sch["quant"] == "none"]
    fp16 = next(iter(unq[unq["dtype"] == "float16"]["scheme"]), None)
    bf16 = next(iter(unq[unq["dtype"] == "bfloat16"]["scheme"]), None)
    readings, readings2 = {}, {}
    for model in dict.fromkeys(sp["model"]):
        groups = smallest_batch_groups(sp, model)
        _context(c, model, groups)
        readings[model] = read_model(
            c,
            o,
            model,
            groups,
            {"much slower": int8, "fastest": fp16},
            names={"much slower": "int8", "fastest": "fp16"},
        )
        readings2[model] = read_model(c2, o, model, groups, {"fastest": bf16}, names={"fastest": "bf16"})
    timed = ", ".join(sorted({w for m in dict.fromkeys(sp["model"]) for w, _ in smallest_batch_groups(sp, m)}))
    named = " and ".join(x for x in (int8, fp16) if x) or "neither int8 nor fp16"
    across_models(study, c, readings, needs_sizes=True, what=f"{named} against every other scheme; {timed}")
    across_models(
        study, c2, readings2, needs_sizes=True, what=f"{bf16 or 'no bf16'} against every other scheme; {timed}"
    )
    return [c, c2]


def read_model(
    c: Claim, o: Options, model: str, groups, subjects: dict[str, str | None], names: dict[str, str]
) -> ModelReading:
    """One model's reading: every comparison of each named subject, in every mode (smallest batch)."""
    ml = math.log(1 + o.speed_margin)
    parts: list[Part] = []
    rows: list[dict[str, str]] = []
    words: list[str] = []
    absent = [names[k] for k, s in subjects.items() if s is None]
    for where, g in groups:
        present = list(dict.fromkeys(g["scheme"]))
        for word, s in subjects.items():
            if s is None or s not in present:
                continue
            for other in (x for x in present if x != s):
                lr = rounds.paired_log_ratios(g, s, other)
                y = lr - ml if word == "much slower" else -lr - ml
                part = Part(f"{s}/{other} ({where})", y, MIN_ROUNDS)
                c.design(model, f"{s}/{other} ({where})", lr, "rounds", ml, log=True)
                parts.append(part)
                words.append(word)
                rows.append(
                    c.add(
                        f"{model}, {where}: {s}/{other} decode time",
                        Estimate.over_rounds(lr),
                        _comparison(part, lr, word, o.speed_margin),
                    )
                )
    if not parts:
        named = " or ".join(names[k] for k in subjects)
        return not_tested(f"the study has no {named} scheme" if absent else f"{model} has no comparable rounds")
    dec = all_parts(parts)
    p, row, word = parts[dec.part], rows[dec.part], words[dec.part]
    if dec.reading == "holds":
        why = f"every comparison meets its condition over rounds; the closest: {quote(row)} ({_sense(p, word, o)})"
    elif dec.reading == "does not hold":
        why = _direction(p, word, row, o)
    elif dec.why == "too few units":
        why = (
            f"not replicated: {p.label} was timed in {p.n} uncontended round{'s' * (p.n != 1)} (≥ {MIN_ROUNDS} needed)"
        )
    else:
        why = (
            f"not separated over rounds: {row['value']} for {p.label}, short of {_condition(word, o)} "
            f"(p = {p.p_holds:.2g}) and not shown against it (p = {p.p_fails:.2g})"
        )
    if absent and dec.reading != "does not hold":
        missing = " and ".join(absent)
        return ModelReading(
            "not tested",
            f"the claim names {missing} and the study has none (no other scheme stands "
            f"in for it); what was measured: {dec.reading} — {why}",
            quote(row),
        )
    return ModelReading(dec.reading, why, quote(row))


def _condition(word: str, o: Options) -> str:
    m = 1 + o.speed_margin
    return (
        f"'much slower' (> {m:.2f}×)" if word == "much slower" else f"'the fastest' (< {1 / m:.2f}×, {m:.2f}× faster)"
    )


def _comparison(part: Part, lr: np.ndarray, word: str, margin: float) -> str:
    """One comparison's own reading, in words: which way it went against the condition."""
    if not part.decidable:
        return f"not replicated ({part.n} round{'s' * (part.n != 1)})"
    cond = f"> {1 + margin:.2f}×" if word == "much slower" else f"< {1 / (1 + margin):.2f}×"
    if part.p_holds < 0.05:
        return f"meets {cond} (p = {part.p_holds:.2g})"
    if part.p_fails < 0.05:
        return f"shown short of {cond} (p = {part.p_fails:.2g})"
    return f"undecided against {cond} (p = {part.p_holds:.2g} / {part.p_fails:.2g})"


def _sense(p: Part, word: str, o: Options) -> str:
    return f"{_condition(word, o)} shown, p = {p.p_holds:.2g}"


def _direction(p: Part, word: str, row: dict[str, str], o: Options) -> str:
    """Why a refuted comparison refutes the claim, saying which way the ratio was measured."""
    s, rest = p.label.split("/", 1)
    other = rest.split(" (", 1)[0]
    ml = math.log(1 + o.speed_margin)
    r = Estimate.over_rounds(np.asarray(p.y) + ml if word == "much slower" else -(np.asarray(p.y) + ml))
    pct = f"{o.speed_margin:.0%}"
    if r.lo > 1:
        way = f"{s} was measured slower than {other}" + ("" if word == "fastest" else f", by less than {pct}")
    elif r.hi < 1:
        way = f"{s} was measured faster than {other}" + ("" if word == "much slower" else f", by less than {pct}")
    else:
        way = f"{s} and {other} are not separated (a tie within the rounds' noise)"
    return f"{way}: {s}/{other} {row['value']} — short of {_condition(word, o)}"


def _context(c: Claim, model: str, groups) -> None:
    """Rows that say what stands behind the intervals: each scheme's spread, and excluded rounds."""
    for where, g in groups:
        for s in dict.fromkeys(g["scheme"]):
            sd = rounds.spread(g, s)
            c.add(
                f"{model}, {where}: {s} spread",
                f"between rounds CV {_pct(sd['between'])} over {sd['rounds']} uncontended round(s); within a round "
                f"(p90−p10)/median {_pct(sd['within'])}",
                "context: the spread behind the intervals (no test)",
            )
        for _, r in g[g["contended"]].iterrows():
            c.add(
                f"{model}, {where}: {r['scheme']} round {int(r['round'])}", "ran contended", "excluded from every test"
            )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "n/a"
