"""Helpers the claim modules share: the nf4/fp4 pair, the per-model quality matrix, and the pure
decision rules (arrays in, a reading out) that the calibration tests simulate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness_ext.analysis.claims.base import PerModel
from harness_ext.analysis.stats import ALPHA, holm, p_greater, p_less, p_outside, tost
from harness_ext.analysis.study import Study, _matrix

MIN_PROMPTS = 10  # fewer prompts than this: no quality reading
LOW_T_MAX = 1.0  # "low temperatures": 0 < T <= 1
BAND = (0.5, 0.8)  # the sharpened claim (3'): the 4-bit models' extra sensitivity sits here


def four_bit_pair(study: Study) -> tuple[str, str] | None:
    """(nf4 scheme, fp4 scheme) alike in every other field: plain first, then double-quant."""
    sch = study.schemes(measured=True)
    for dq in (False, True):
        nf4 = sch[(sch["quant"] == "nf4") & (sch["double_quant"] == dq)]
        fp4 = sch[(sch["quant"] == "fp4") & (sch["double_quant"] == dq)]
        for _, a in nf4.iterrows():
            for _, b in fp4.iterrows():
                if a["compute_dtype"] == b["compute_dtype"] and a["dtype"] == b["dtype"]:
                    return a["scheme"], b["scheme"]
    return None


def matrix(q: pd.DataFrame, model: str, scheme: str) -> pd.DataFrame:
    """doc_id x temperature of one (model, scheme) on the primary quality measure."""
    return _matrix(q, model, scheme)


def temps(*mats: pd.DataFrame) -> list[float]:
    """Temperatures every matrix has."""
    common = set(mats[0].columns)
    for m in mats[1:]:
        common &= set(m.columns)
    return sorted(common)


def fmt_t(ts: list[float]) -> str:
    return "{" + ", ".join(f"{t:g}" for t in ts) + "}"


# -- pure rules ------------------------------------------------------------------------------------
def equivalence_reading(parts: list[tuple[float, float]], alpha: float = ALPHA) -> PerModel:
    """Parts given as (TOST p, p of a difference beyond the margin). Holds if every part is
    equivalent (intersection-union test: each at ``alpha``, no correction needed); does not hold if
    Holm over the parts' difference tests rejects any; otherwise inconclusive."""
    if not parts:
        return "not tested"
    if all(pt < alpha for pt, _ in parts):
        return "holds"
    if any(holm([po for _, po in parts], alpha)):
        return "does not hold"
    return "inconclusive"


def equivalence_parts(diffs: np.ndarray, margin: float) -> tuple[float, float]:
    """(TOST p, p beyond margin) of a mean difference over prompts or rounds."""
    return tost(diffs, margin), p_outside(diffs, margin)


def excess_reading(excess: np.ndarray, margin: float, alpha: float = ALPHA) -> PerModel:
    """One scheme's excess drop per prompt: holds if it is above 0 (one-sided t-test), does not hold
    if it is below the margin (one-sided t-test), otherwise inconclusive."""
    if np.isfinite(excess).sum() < MIN_PROMPTS:
        return "inconclusive"
    if p_greater(excess, 0.0) < alpha:
        return "holds"
    if p_less(excess, margin) < alpha:
        return "does not hold"
    return "inconclusive"


def band_reading(in_band: np.ndarray, outside: np.ndarray, margin: float, alpha: float = ALPHA) -> PerModel:
    """Holds if the in-band excess is above 0 and above the out-of-band excess (both one-sided,
    intersection-union); does not hold if Holm over (in-band excess below margin, in-band minus
    out-of-band below margin) rejects either; otherwise inconclusive."""
    conc = in_band - outside
    if np.isfinite(conc).sum() < MIN_PROMPTS:
        return "inconclusive"
    if p_greater(in_band, 0.0) < alpha and p_greater(conc, 0.0) < alpha:
        return "holds"
    if any(holm([p_less(in_band, margin), p_less(conc, margin)], alpha)):
        return "does not hold"
    return "inconclusive"


def combine_all(readings: list[PerModel]) -> PerModel:
    """Every part the same reading -> that reading; otherwise inconclusive (or not tested if none)."""
    tested = [r for r in readings if r != "not tested"]
    if not tested:
        return "not tested"
    return tested[0] if all(r == tested[0] for r in tested) else "inconclusive"


def absolute_margin(ref_drop: np.ndarray, relative: float, fallback: float) -> float:
    """The excess counted as meaningful: ``relative`` times the reference's own mean drop; where the
    reference loses nothing (mean drop <= 0) the relative scale is undefined and ``fallback`` is used."""
    d = float(np.nanmean(ref_drop)) if np.isfinite(ref_drop).any() else math.nan
    return relative * d if math.isfinite(d) and d > 0 else fallback
