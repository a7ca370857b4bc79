"""(d) int8 is much slower, fp16 the fastest, at every size; (d2) bf16 is the fastest at every size.
Decided from speed rounds: ratios paired within a round, intervals over rounds."""

from __future__ import annotations

import math

from harness_ext.analysis import rounds
from harness_ext.analysis.claims.base import OVER_ROUNDS, Claim, Options, PerModel, across_models, claim, decided_by
from harness_ext.analysis.stats import ALPHA, RoundRatio, holm, p_greater, p_less
from harness_ext.analysis.study import Study


def speed_reading(
    slower: list, faster: list, *, margin_log: float, min_rounds: int = rounds.MIN_ROUNDS, alpha: float = ALPHA
) -> tuple[PerModel, str]:
    """``slower``: per-round log-ratios that must be above ``margin_log`` (the scheme much slower
    than each other); ``faster``: log-ratios that must be below 0 (the scheme faster than each
    other); each an array, or a (label, array) pair that the reason names. Holds if every one-sided
    t-test over rounds rejects (intersection-union); does not hold if Holm over the opposite tests
    (slower one faster; faster one slower) rejects one; fewer than ``min_rounds`` rounds in any
    comparison: inconclusive — not replicated. The reason names the comparisons that decided it."""
    comparisons = [(*_labelled(x), margin_log, True) for x in slower] + [(*_labelled(x), 0.0, False) for x in faster]
    if not comparisons:
        return "not tested", "nothing to compare"
    short = [(label, lr) for label, lr, _, _ in comparisons if len(lr) < min_rounds]
    if short:
        label, lr = min(short, key=lambda x: len(x[1]))
        n = len(lr)
        return (
            "inconclusive",
            f"not replicated: {label} was timed in {n} uncontended round{'s' * (n != 1)} in common (≥ {min_rounds} "
            "needed)",
        )
    ps = [p_greater(lr, m) if up else p_less(lr, m) for _, lr, m, up in comparisons]
    if all(p < alpha for p in ps):
        closest = max(range(len(ps)), key=ps.__getitem__)
        label, lr, m, up = comparisons[closest]
        return "holds", (
            f"every comparison is significant over rounds, the closest {label} {RoundRatio.of(lr).text()} "
            f"({_condition(m, up)}, p = {ps[closest]:.2g})"
        )
    against = [p_less(lr, 0.0) if up else p_greater(lr, 0.0) for _, lr, _, up in comparisons]
    reverse = holm(against, alpha)
    if any(reverse):
        named = [
            f"{label} {RoundRatio.of(lr).text()}"
            for (label, lr, _, _), r in zip(comparisons, reverse, strict=True)
            if r
        ]
        return "does not hold", "goes the other way (Holm over the comparisons): " + "; ".join(named)
    undecided = [
        f"{label} {RoundRatio.of(lr).text()} — not shown {_condition(m, up)} (p = {p:.2g})"
        for (label, lr, m, up), p in zip(comparisons, ps, strict=True)
        if p >= alpha
    ]
    return "inconclusive", "not separated over rounds: " + "; ".join(undecided)


def comparison_reading(lr, margin_log: float, up: bool, min_rounds: int = rounds.MIN_ROUNDS) -> str:
    """One comparison's own reading: whether its one-sided test over rounds meets the condition
    (the claim needs every one of them), or too few rounds to tell."""
    if len(lr) < min_rounds:
        return f"not replicated ({len(lr)} round{'s' * (len(lr) != 1)})"
    p = p_greater(lr, margin_log) if up else p_less(lr, margin_log)
    return f"{'meets' if p < ALPHA else 'not shown'} {_condition(margin_log, up)} (p = {p:.2g})"


def _condition(margin_log: float, up: bool) -> str:
    """The condition a comparison must meet, in words: above the 'much slower' margin, or below 1x."""
    return f"above {math.exp(margin_log):.2f}× ('much slower')" if up else "below 1× (faster)"


def _labelled(x: object) -> tuple[str, object]:
    return x if isinstance(x, tuple) else ("a comparison", x)


@claim("d")
def claim_d(study: Study, o: Options) -> list[Claim]:
    ml = math.log(1 + o.speed_margin)
    rule_tail = (
        f"Per model, at the smallest batch, in every mode: decode time per token, per round (one load, warm-up, "
        f"timed repeats), ratios paired within the round; uncontended rounds only, ≥ {rounds.MIN_ROUNDS} of them. "
        "One-sided t-tests over rounds of the log-ratio at 5%; "
    )
    c = Claim(
        "d",
        "int8 is much slower, fp16 the fastest",
        "int8 is much slower than the other schemes, and fp16 is the fastest at every model size.",
        rule_tail + f"int8 'much slower' = above {1 + o.speed_margin:.2f}× every other scheme; 'fastest' = the "
        "unquantized 16-bit scheme (fp16, else bf16) below 1× every other. Holds if all tests reject "
        "(intersection-union); does not hold if Holm over the opposite tests rejects one. 'Every size' needs ≥ 2 "
        "sizes; a missing scheme leaves its part not tested.",
    )
    c2 = Claim(
        "d2",
        "bf16 is the fastest at every size",
        "Unquantized bf16 is the fastest at every model size (the revised abstract).",
        rule_tail + "bf16 below 1× every other scheme; as in (d) otherwise.",
    )
    sp = rounds.speed_table(study)
    if sp.empty:
        r = "no speed cells in the run"
        return [c.decide("not tested", r), c2.decide("not tested", r)]
    sch = study.schemes(measured=True)
    # the seed's int8 is bitsandbytes' LLM.int8; torchao's and HQQ's int8 are weight-only, another scheme
    int8 = sch[(sch["quant"] == "int8") & (sch["backend"].fillna("bitsandbytes") == "bitsandbytes")]["scheme"]
    int8 = int8.tolist()[:1]
    unq16 = sch[(sch["quant"] == "none") & (sch["dtype"].isin(["float16", "bfloat16"]))]
    fast = (unq16[unq16["dtype"] == "float16"]["scheme"].tolist() or unq16["scheme"].tolist())[:1]
    bf16 = unq16[unq16["dtype"] == "bfloat16"]["scheme"].tolist()[:1]
    per: dict[str, PerModel] = {}
    per2: dict[str, PerModel] = {}
    for model, gm in sp.groupby("model", sort=False):
        g_bs = gm[gm["batch_size"] == gm["batch_size"].min()]
        slower, faster, faster2 = [], [], []
        for (mode, machine), g in g_bs.groupby(["mode", "fingerprint"]):  # two machines: two tests, never one
            label = f"{model} / {mode} / batch {int(g['batch_size'].iloc[0])}" + (
                f" / machine {machine}" if machine else ""
            )
            present = list(dict.fromkeys(g["scheme"]))
            for subject, out, evid, up in (
                (int8, slower, c, True),
                (fast, faster, c, False),
                (bf16, faster2, c2, False),
            ):
                for s in subject:
                    if s not in present:
                        continue
                    for other in present:
                        if other == s:
                            continue
                        lr = rounds.paired_log_ratios(g, s, other)
                        out.append((f"{s}/{other} ({mode}, batch {int(g['batch_size'].iloc[0])})", lr))
                        evid.evidence.append(
                            {
                                "what": f"{label}: {s}/{other} decode time",
                                "value": RoundRatio.of(lr).text(),
                                "interval": OVER_ROUNDS,
                                "verdict": comparison_reading(lr, ml if up else 0.0, up),
                            }
                        )
            for s in present:
                sd = rounds.spread(g, s)
                c.evidence.append(
                    {
                        "what": f"{label}: {s} spread",
                        "value": f"between rounds CV {_pct(sd['between'])} over {sd['rounds']} uncontended round(s); "
                        f"within a round (p90−p10)/median {_pct(sd['within'])}",
                        "verdict": "context: the spread behind the intervals (no test)",
                    }
                )
            flagged = g[g["contended"]]
            for _, r in flagged.iterrows():
                c.evidence.append(
                    {
                        "what": f"{label}: {r['scheme']} round {int(r['round'])}",
                        "value": "ran contended",
                        "verdict": "excluded from every test",
                    }
                )
        v, why = speed_reading(slower, faster, margin_log=ml)
        if v == "holds" and (not int8 or not fast):  # a conjunction with a missing part is not shown to hold
            v, why = "not tested", "a scheme the claim names is missing"
        per[model] = v if (int8 or fast) else "not tested"
        c.evidence.append({"what": f"{model}: reading", "value": why, "verdict": per[model]})
        if bf16:
            v2, why2 = speed_reading([], faster2, margin_log=ml)
            per2[model] = v2
            c2.evidence.append({"what": f"{model}: reading", "value": why2, "verdict": v2})
        else:
            per2[model] = "not tested"
    missing = [n for n, x in (("int8", int8), ("fp16/bf16", fast)) if not x]
    words = {
        "holds": "int8 is the slowest by the margin and the 16-bit scheme the fastest",
        "does not hold": "int8 is not the slowest, or the 16-bit scheme is beaten",
        "inconclusive": "the rounds do not decide (too few, or the schemes not separated)",
        "not tested": f"the study has no {' or '.join(missing) or 'comparable'} scheme",
    }
    words["inconclusive"] = _why(c, words["inconclusive"])
    across_models(study, c, per, needs_sizes=True, words=words)
    if missing and c.verdict != "not tested":
        c.reason += f"; the study has no {' or '.join(missing)} scheme, so that part is not tested"
    across_models(
        study,
        c2,
        per2,
        needs_sizes=True,
        words={
            "holds": "bf16 is the fastest",
            "does not hold": "bf16 is beaten",
            "inconclusive": _why(c2, "the rounds do not separate the schemes"),
            "not tested": "the study has no bf16 scheme",
        },
    )
    every = {v: (v,) for v in ("holds", "does not hold", "inconclusive")}
    decided_by(c, every, first_part=True)
    decided_by(c2, every, first_part=True)
    return [c, c2]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "n/a"


def _why(c: Claim, default: str) -> str:
    """Each inconclusive model's own reason, named by model (the reason says which comparison failed)."""
    whys = [
        f"{e['what'].removesuffix(': reading')}: {e['value']}"
        for e in c.evidence
        if e["what"].endswith(": reading") and e.get("verdict") == "inconclusive"
    ]
    return "; ".join(whys) if whys else default
