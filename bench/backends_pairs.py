"""Paired differences between schemes of a probe study, prompt by prompt, with bootstrap intervals:
the figures of reports/backends_cpu/README.md, read from the report's own tables.

    python bench/backends_pairs.py reports/backends_cpu/data

Per pair (a, b) and temperature: mean over prompts of a − b for p_gold (probability of the gold next
token), tv (total variation to the reference's distribution) and top1_agree (same argmax as the
reference), with a 95 % percentile bootstrap over prompts (4,000 resamples, seed 0). Weight bytes come
from the probe cells' load records in run.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: (a, b, what differs): format pairs share the backend, backend pairs share bits and grouping
PAIRS = [
    ("fp4", "nf4", "format (bitsandbytes, g64 absmax: FP4 vs NF4 code)"),
    ("hqq4", "hqq4-g32", "format (HQQ: group 64 vs 32)"),
    ("hqq4", "hqq8", "format (HQQ g64: 4 vs 8 bits)"),
    ("intx4-torchao", "hqq4", "zero-point domain and quantizer (int4 g64: torchao int zero, min-max vs HQQ)"),
    ("intx4-torchao-g32", "hqq4-g32", "zero-point domain and quantizer, at Q4_1's group size"),
    ("nf4", "hqq4", "format and backend at group 64 (NF4 absmax vs int4 asym float zero)"),
    ("int8", "int8wo-torchao", "backend (int8 per-row weights: LLM.int8 vs weight-only)"),
    ("int8wo-torchao", "hqq8", "format (int8: per row sym vs g64 asym)"),
]
METRICS = ("p_gold", "tv", "top1_agree")


def paired(samples: pd.DataFrame, a: str, b: str, metric: str, t: float, rng: np.random.Generator) -> tuple:
    def get(s: str) -> pd.Series:
        sel = samples[(samples.scheme == s) & (samples.metric == metric) & (samples.temperature == t)]
        return sel.set_index("doc_id")["value"].sort_index()

    d = (get(a) - get(b)).dropna().to_numpy()
    boots = rng.choice(d, (4000, len(d))).mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return d.mean(), lo, hi, len(d)


def main(folder: Path) -> None:
    samples = pd.read_parquet(folder / "samples.parquet")
    samples = samples[samples["kind"] == "probe"]
    schemes = set(samples["scheme"])
    rng = np.random.default_rng(0)
    for t in (0.0, 0.7):
        print(f"\nT = {t}")
        for a, b, what in [(a, b, w) for a, b, w in PAIRS if {a, b} <= schemes] + [
            (s, "fp32", "against the reference") for s in sorted(schemes - {"fp32"})
        ]:
            cells = []
            for metric in METRICS if b != "fp32" else ("p_gold",):
                mean, lo, hi, n = paired(samples, a, b, metric, t, rng)
                cells.append(f"{metric} {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            print(f"  {a} − {b} ({what}; n={n}): " + "; ".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/backends_cpu/data"))
