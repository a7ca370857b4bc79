"""Speed figures per round, and scheme ratios paired within a round.

A round (see :mod:`harness_ext.run.schedule`) is one load + warm-up + timed repeats of a (model,
scheme). Repeats inside one round share the load, the process and the machine's state; they are
not replicates, and their p10–p90 is a *within-round spread*, never a confidence interval. Two
schemes are compared within a round (paired: same round, same invocation) and the rounds are the
replicates: the interval of a ratio is a t-interval over rounds of the per-round log-ratio. Runs
recorded before rounds existed have no ``round`` figure: each invocation is then one round.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness_ext.analysis.stats import RoundRatio, log_ratio_rounds
from harness_ext.analysis.study import Study

MIN_ROUNDS = 3  # fewer uncontended rounds than this: no speed verdict ("not replicated")
GROUP = ["model", "batch_size", "mode"]


def speed_table(study: Study) -> pd.DataFrame:
    """One row per (model, scheme, batch size, mode, round, invocation): the round's figures (median
    of its repeats with their p10/p90), its position in the round's order, and its contended flag."""
    sp = study.ok[study.ok["kind"] == "speed"].copy()
    if sp.empty:
        return pd.DataFrame()
    sp["mode"] = sp["mode"].fillna("eager")  # tables made before modes: every speed cell was eager
    sp["invocation"] = sp["invocation"].fillna("?").astype(str)
    keys = ["model", "scheme", "batch_size", "mode", "cell_id", "invocation"]
    wide = sp.pivot_table(index=keys, columns="metric", values=["value", "lo", "hi"], aggfunc="first")
    wide.columns = [f"{m}" if stat == "value" else f"{m}_{stat}" for stat, m in wide.columns]
    wide = wide.reset_index().dropna(axis=1, how="all")
    if "round" not in wide.columns:
        wide["round"] = 0.0  # recorded before rounds: the invocation is the round
    wide["round"] = wide["round"].fillna(0).astype(int)
    if "contended" not in wide.columns:
        wide["contended"] = 0.0
    wide["contended"] = wide["contended"].fillna(0).astype(bool)
    order = {n: i for i, n in enumerate(study.schemes()["scheme"])}
    wide["_o"] = wide["scheme"].map(lambda s: order.get(s, len(order)))
    wide = wide.sort_values(["model", "batch_size", "mode", "round", "invocation", "_o"]).drop(
        columns=["_o", "cell_id"]
    )
    return wide.reset_index(drop=True)


def _decode(g: pd.DataFrame, scheme: str, clean: bool) -> pd.Series:
    """Decode ms/token of ``scheme`` per (round, invocation) in one (model, batch, mode) group."""
    rows = g[(g["scheme"] == scheme) & (~g["contended"] if clean else True)]
    return rows.set_index(["round", "invocation"])["decode_ms_per_token"].astype(float)


def paired_log_ratios(g: pd.DataFrame, a: str, b: str, clean: bool = True) -> np.ndarray:
    """log(a / b) per round in which both were timed (same round and invocation); ``clean``: only
    rounds in which neither ran contended."""
    x, y = _decode(g, a, clean), _decode(g, b, clean)
    both = x.index.intersection(y.index)
    return log_ratio_rounds(x.loc[both].to_numpy(), y.loc[both].to_numpy())


def ratio(g: pd.DataFrame, a: str, b: str, clean: bool = True) -> RoundRatio:
    return RoundRatio.of(paired_log_ratios(g, a, b, clean))


def spread(g: pd.DataFrame, scheme: str) -> dict[str, float]:
    """Between-round spread (coefficient of variation of the round medians, uncontended rounds) next
    to the within-round spread (median over rounds of (p90 − p10) / median of the repeats)."""
    rows = g[(g["scheme"] == scheme) & ~g["contended"]]
    med = rows["decode_ms_per_token"].astype(float)
    between = float(med.std(ddof=1) / med.mean()) if len(med) >= 2 and med.mean() else math.nan
    within = math.nan
    if {"decode_ms_per_token_lo", "decode_ms_per_token_hi"} <= set(rows.columns) and len(rows):
        w = (rows["decode_ms_per_token_hi"].astype(float) - rows["decode_ms_per_token_lo"].astype(float)) / med
        within = float(w.median())
    return {"between": between, "within": within, "rounds": len(med)}


def speed_summary(study: Study, speed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, batch, mode, scheme): rounds (uncontended / all), the median over rounds, the ratio
    to the model's reference paired within rounds with its interval over rounds, and both spreads."""
    speed = speed_table(study) if speed is None else speed
    if speed.empty:
        return pd.DataFrame()
    rows: list[dict[str, Any]] = []
    for key, g in speed.groupby(GROUP, sort=False):
        ref = study.reference(key[0])
        for scheme in dict.fromkeys(g["scheme"]):
            s = spread(g, scheme)
            r = ratio(g, scheme, ref) if ref in set(g["scheme"]) else None
            clean = g[(g["scheme"] == scheme) & ~g["contended"]]["decode_ms_per_token"].astype(float)
            rows.append(
                {
                    **dict(zip(GROUP, key, strict=True)),
                    "scheme": scheme,
                    "rounds": s["rounds"],
                    "contended_rounds": int(g[(g["scheme"] == scheme) & g["contended"]].shape[0]),
                    "decode_ms_per_token": float(clean.median()) if len(clean) else math.nan,
                    "between_round_cv": s["between"],
                    "within_round_spread": s["within"],
                    "vs_reference": r.value if r else math.nan,
                    "vs_reference_lo": r.lo if r else math.nan,
                    "vs_reference_hi": r.hi if r else math.nan,
                    "vs_reference_text": r.text() if r else "n/a",
                }
            )
    return pd.DataFrame(rows)
