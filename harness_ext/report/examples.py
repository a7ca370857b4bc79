"""Example generations: a few continuation prompts, every scheme's output beside the reference's
for the same prompt, settings and random stream, with the settings said."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness_ext.analysis import Study


def examples(study: Study, per_model: int) -> list[dict[str, Any]]:
    """Up to ``per_model`` prompts per model; for each, a block per temperature shown (greedy, and the
    sampled one nearest 0.7) with its settings, the reference scheme's output and each other scheme's."""
    g = _one_setting(study.generations)
    if g.empty or per_model <= 0:
        return []
    temps = sorted(g["temperature"].unique())
    chosen = [t for t in temps if t == 0.0][:1]
    sampled = [t for t in temps if t > 0]
    if sampled:
        chosen.append(min(sampled, key=lambda t: abs(t - 0.7)))
    order = list(study.schemes()["scheme"])
    out = []
    for model in study.models():
        m = g[g["model"] == model]
        for doc in sorted(m["doc_id"].unique())[:per_model]:
            d = m[m["doc_id"] == doc]
            blocks = [b for t in chosen if (b := _block(d[d["temperature"] == t], study.reference(model), order))]
            if blocks:
                out.append(
                    {"model": model, "doc_id": int(doc), "prompt": str(d.iloc[0]["prompt"] or ""), "blocks": blocks}
                )
    return out


def _one_setting(g: pd.DataFrame) -> pd.DataFrame:
    """The generations at one setting per temperature: continuation task, first seed, sample 0, the
    least-truncated top-k / top-p / repetition penalty and the largest token cap."""
    if g.empty:
        return g
    cont = g[g["task"].astype(str).str.contains("continuation")]
    g = cont if not cont.empty else g
    g = g[(g["seed"].fillna(0) == g["seed"].fillna(0).min()) & (g["sample"] == 0)]
    k = g["top_k"]
    g = g[k.isna() | (k == -1)] if (k.isna() | (k == -1)).any() else g[k == k.max()]
    g = g[g["top_p"] == g["top_p"].max()]
    rp = g["repetition_penalty"]
    g = g[rp == (1.0 if (rp == 1.0).any() else rp.min())]
    return g[g["max_new_tokens"] == g["max_new_tokens"].max()]


def _block(d: pd.DataFrame, reference: str | None, order: list[str]) -> dict[str, Any] | None:
    """One temperature of one prompt: the settings, the reference's output, every other scheme's."""
    if d.empty:
        return None
    first = d.iloc[0]
    ref = d[d["scheme"] == reference]
    rows = [
        {"scheme": s, "text": str(x.iloc[0]["text"]), "finish": x.iloc[0].get("finish") or ""}
        for s in order
        if s != reference and not (x := d[d["scheme"] == s]).empty
    ]
    if not rows and ref.empty:
        return None
    return {
        "temperature": first["temperature"],
        "settings": settings(first),
        "reference": reference or "none",
        "ref_text": str(ref.iloc[0]["text"]) if not ref.empty else None,
        "ref_finish": (ref.iloc[0].get("finish") or "") if not ref.empty else "",
        "rows": rows,
    }


def settings(r: pd.Series) -> str:
    """``T = 0.7, top-k 50, top-p 1, repetition penalty 1, at most 64 new tokens, seed 0, sample 0``."""
    t, k = r["temperature"], r.get("top_k")
    k_off = k is None or (isinstance(k, float) and math.isnan(k)) or k == -1
    parts = [
        "T = 0 (greedy)" if t == 0 else f"T = {t:g}",
        "top-k off" if k_off else f"top-k {int(k)}",
        f"top-p {r['top_p']:g}",
        f"repetition penalty {r['repetition_penalty']:g}",
        f"at most {int(r['max_new_tokens'])} new tokens",
        f"seed {int(r['seed'])}" if r.get("seed") == r.get("seed") else "no seed",
        f"sample {int(r['sample'])}",
    ]
    return ", ".join(parts)
