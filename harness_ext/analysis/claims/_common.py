"""Helpers the claim modules share: the nf4/fp4 pair, the per-model quality matrices, the accuracy a
scheme loses when leaving greedy decoding, the yardstick of "meaningfully more sensitive", and the
speed groups a claim compares in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness_ext.analysis import rounds
from harness_ext.analysis.study import Study, _matrix

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


def signed(v: float, fmt: str = "+.3f") -> str:
    """``+0.076``; a value that rounds to zero reads ``0.000``, never ``-0.000``."""
    text = f"{v:{fmt}}"
    return text.lstrip("+-") if float(text) == 0 else text


def drops(m: pd.DataFrame, ts: list[float]) -> pd.Series | None:
    """Per prompt (index doc_id): accuracy at T=0 minus the mean accuracy over ``ts``."""
    ts = [t for t in ts if t in m.columns]
    if m.empty or 0.0 not in m.columns or not ts:
        return None
    return m[0.0] - m[ts].mean(axis=1)


@dataclass(frozen=True)
class Yardstick:
    """What counts as a meaningful difference in sensitivity: ``share`` times the reference's own
    loss, per prompt (so the reference loss's own noise is part of the test), or a fixed absolute
    margin where the reference loses nothing on average."""

    per_prompt: np.ndarray
    text: str

    @property
    def value(self) -> float:
        return float(np.nanmean(self.per_prompt))


def yardstick(ref_drop: np.ndarray, share: float, fallback: float, ref: str) -> Yardstick:
    """``share`` x the reference's per-prompt loss when it loses accuracy on average; else ``fallback``."""
    mean = float(np.nanmean(ref_drop)) if np.isfinite(ref_drop).any() else float("nan")
    if np.isfinite(mean) and mean > 0:
        return Yardstick(share * ref_drop, f"{share * mean:.3f} = {share:g} × {ref}'s own loss {mean:.3f}")
    return Yardstick(np.full(len(ref_drop), fallback), f"{fallback:g} absolute ({ref} loses nothing on average)")


def smallest_batch_groups(sp: pd.DataFrame, model: str) -> list[tuple[str, pd.DataFrame]]:
    """("eager, batch 1", rows) for one model's speed table at its smallest batch size, per mode
    (and per any further grouping key of :data:`rounds.GROUP`, named in the label): the batch every
    speed claim reads, so (a) and (d) compare the same rounds."""
    gm = sp[sp["model"] == model] if not sp.empty else sp
    if gm.empty:
        return []
    extra = [c for c in rounds.GROUP if c not in ("model", "batch_size", "mode") and c in gm.columns]
    out = []
    for mode, g in gm.groupby("mode", sort=True):
        g = g[g["batch_size"] == g["batch_size"].min()]
        for key, h in g.groupby(extra, sort=True) if extra else [((), g)]:
            label = f"{mode}, batch {int(h['batch_size'].iloc[0])}"
            key = key if isinstance(key, tuple) else (key,)
            label += "".join(
                f", machine {v}" if c == "fingerprint" else f", {c} {v}"
                for c, v in zip(extra, key, strict=True)
                if v not in ("", None)
            )
            out.append((label, h))
    return out
