"""Speed figures per round, and scheme ratios paired within a round.

A round (see :mod:`harness_ext.run.schedule`) is one load + warm-up + timed repeats of a (model,
scheme). Repeats inside one round share the load, the process and the machine's state; they are
not replicates, and their p10–p90 is a *within-round spread*, never a confidence interval. Two
schemes are compared within a round (paired: same round, same invocation) and the rounds are the
replicates: the interval of a ratio is a t-interval over rounds of the per-round log-ratio. Runs
recorded before rounds existed have no ``round`` figure: each invocation is then one round.

Rounds are grouped by the machine's **fingerprint** (:mod:`harness_ext.fingerprint`): rounds timed on
two kinds of machine are two groups, never one test (:data:`GROUP`); rounds recorded before
fingerprints form one group of their own (fingerprint ``""``, shown as unrecorded). A ratio pairs two
schemes timed in the same round, invocation, fingerprint and on the same GPUs. A round whose machine
speed index ran :data:`SLOW` below the median of its fingerprint's rounds counts as contended.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness_ext.analysis.stats import Estimate, log_ratio_rounds
from harness_ext.analysis.study import Study
from harness_ext.store.tables import FACT_METRICS, ROUND_COLUMNS

MIN_ROUNDS = 3  # fewer uncontended rounds than this: no speed verdict ("not replicated")
#: One test's rounds: a model at a batch size and mode, timed on one kind of machine.
GROUP = ["model", "batch_size", "mode", "fingerprint"]
#: What a ratio pairs within: the same round of one invocation, on one kind of machine and the same GPUs.
PAIRED_ON = ["round", "invocation", "fingerprint", "gpu"]
#: A round whose machine speed index (either rate) is this far below the median of its
#: fingerprint's rounds ran on a slow machine: counted as contended.
SLOW = 0.25
#: The speed index's metrics (``run/speed.py``), and how many indexed rounds a median needs.
INDEX_METRICS = ("index_matmul_gflops", "index_memory_gb_s")
MIN_INDEXED = 3


def speed_table(study: Study) -> pd.DataFrame:
    """One row per (model, scheme, batch size, mode, round, invocation, fingerprint, GPUs): the round's
    figures (median of its repeats with their p10/p90), its position in the round's order, its machine
    speed index, and whether it ran contended (``contended``, with ``contended_why``)."""
    sp = study.ok[study.ok["kind"] == "speed"].copy()
    if sp.empty:
        return pd.DataFrame()
    sp["mode"] = sp["mode"].fillna("eager")  # tables made before modes: every speed cell was eager
    sp["invocation"] = sp["invocation"].fillna("?").astype(str)
    keys = ["model", "scheme", "batch_size", "mode", "cell_id", "invocation"]
    facts = sp.groupby("cell_id")[list(ROUND_COLUMNS)].first()  # typed facts: one value per cell
    metrics = sp[~sp["metric"].isin(FACT_METRICS)] if facts["round"].notna().all() else sp
    wide = metrics.pivot_table(index=keys, columns="metric", values=["value", "lo", "hi"], aggfunc="first")
    wide.columns = [f"{m}" if stat == "value" else f"{m}_{stat}" for stat, m in wide.columns]
    wide = wide.reset_index().dropna(axis=1, how="all")
    old = wide[[c for c in FACT_METRICS if c in wide.columns]].rename(columns=lambda c: f"_{c}")
    wide = pd.concat([wide.drop(columns=[c for c in FACT_METRICS if c in wide.columns]), old], axis=1)
    wide = wide.join(facts, on="cell_id")
    for c in FACT_METRICS:  # records made before the typed facts hold them as metrics
        if f"_{c}" in wide.columns:
            wide[c] = wide[c].astype(object).where(wide[c].notna(), wide[f"_{c}"])
    wide["round"] = pd.to_numeric(wide["round"]).fillna(0).astype(int)  # no round: the invocation is the round
    wide["contended"] = wide["contended"].map(lambda v: bool(v) if pd.notna(v) else False).astype(bool)
    wide["contended_why"] = wide["contended_why"].astype(object).where(wide["contended_why"].notna(), "")
    wide["fingerprint"] = wide["fingerprint"].fillna("").astype(str)
    wide["gpu"] = wide["gpu"].fillna("").astype(str)
    wide = _flag_slow_machines(wide)
    order = {n: i for i, n in enumerate(study.schemes()["scheme"])}
    wide["_o"] = wide["scheme"].map(lambda s: order.get(s, len(order)))
    wide = wide.sort_values(["model", "batch_size", "mode", "fingerprint", "round", "invocation", "_o"])
    return wide.drop(columns=["_o", "cell_id", *(f"_{c}" for c in FACT_METRICS if f"_{c}" in wide)]).reset_index(
        drop=True
    )


def _flag_slow_machines(wide: pd.DataFrame) -> pd.DataFrame:
    """Mark as contended the rounds whose speed index is :data:`SLOW` below the median of their
    fingerprint's indexed rounds (at least :data:`MIN_INDEXED` of them), saying so in ``contended_why``."""
    present = [m for m in INDEX_METRICS if m in wide.columns]
    if not present:
        return wide
    wide = wide.copy()
    for _, g in wide.groupby("fingerprint"):
        for m in present:
            vals = g[m].astype(float)
            if vals.notna().sum() < MIN_INDEXED:
                continue
            median = float(vals.median())
            slow = vals < (1 - SLOW) * median
            for i in vals[slow].index:
                line = (
                    f"machine speed index {m.removeprefix('index_')} {vals[i]:.3g}, {1 - vals[i] / median:.0%} below "
                    f"the median {median:.3g} of this fingerprint's rounds"
                )
                wide.at[i, "contended"] = True
                wide.at[i, "contended_why"] = "; ".join(x for x in (wide.at[i, "contended_why"], line) if x)
    return wide


def _decode(g: pd.DataFrame, scheme: str, clean: bool) -> pd.Series:
    """Decode ms/token of ``scheme`` per (round, invocation, fingerprint, GPUs) in one group."""
    rows = g[(g["scheme"] == scheme) & (~g["contended"] if clean else True)]
    return rows.set_index([c for c in PAIRED_ON if c in rows.columns])["decode_ms_per_token"].astype(float)


def paired_log_ratios(g: pd.DataFrame, a: str, b: str, clean: bool = True) -> np.ndarray:
    """log(a / b) per round in which both were timed (same round, invocation, fingerprint and GPUs:
    :data:`PAIRED_ON`); ``clean``: only rounds in which neither ran contended. ``g`` must hold one
    fingerprint (group by :data:`GROUP`): rounds of two kinds of machine are never one test."""
    if "fingerprint" in g.columns and g["fingerprint"].nunique() > 1:
        raise ValueError(
            f"rounds of {g['fingerprint'].nunique()} machine fingerprints in one group: group by rounds.GROUP"
        )
    x, y = _decode(g, a, clean), _decode(g, b, clean)
    both = x.index.intersection(y.index)
    return log_ratio_rounds(x.loc[both].to_numpy(), y.loc[both].to_numpy())


def ratio(g: pd.DataFrame, a: str, b: str, clean: bool = True) -> Estimate:
    return Estimate.over_rounds(paired_log_ratios(g, a, b, clean))


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
