"""One spec's quality figures on two devices: the same study run on the CPU and on a GPU (issue 20).

Reads the cell tables of two runs of the same spec (only ``device`` differs) and prints, per scheme, the
figures that decide the report's quality claims, side by side: the probe's mean gold-token
probability, total variation to the reference and top-1 agreement at each temperature of the grid
(top-p off; each top-k of the grid), and each eval metric's mean over the grid's cells. Differences between the
two columns come from the devices' kernels (bitsandbytes' CUDA and CPU 4-bit/8-bit paths, cuBLAS
against the CPU's GEMMs) and, for sampled metrics, from the different random streams of the two
devices; the probe has no sampling noise, so its differences are the kernels' alone.

    python bench/compare_devices.py reports/demo/data reports/demo_gpu/data   # run directories work too
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PROBE_METRICS = ("p_gold", "tv", "top1_agree")


def _cells(run: Path) -> Any:
    """The run's cell table (``RUN/tables/cells.csv``, or ``cells.csv`` in a folder of tables)."""
    import pandas as pd

    path = run / "tables" / "cells.csv" if (run / "tables" / "cells.csv").is_file() else run / "cells.csv"
    return pd.read_csv(path)


def figures(run: Path, temperatures: list[float]) -> dict[tuple[str, str], float]:
    """(scheme, figure name) -> value, from the cells of ``run`` that are ok."""
    cells = _cells(run)
    cells = cells[(cells["status"] == "ok") & cells["value"].notna()]
    out: dict[tuple[str, str], float] = {}
    probe = cells[
        (cells["kind"] == "probe")
        & (cells["top_p"] == 1.0)
        & cells["temperature"].isin(temperatures)
        & cells["metric"].isin(PROBE_METRICS)
    ]
    for r in probe.itertuples():
        k = "-" if r.top_k != r.top_k else f"{r.top_k:g}"  # NaN: top-k off
        out[(r.scheme, f"probe {r.metric} T={r.temperature:g} k={k}")] = float(r.value)
    evals = cells[cells["kind"] == "eval"].groupby(["scheme", "task", "metric"])["value"].mean()
    for (scheme, task, metric), v in evals.items():
        out[(scheme, f"{task} {metric}")] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cpu", type=Path)
    ap.add_argument("gpu", type=Path)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.5, 0.7, 1.0])
    ap.add_argument("--metrics", nargs="*", help="eval metrics to show (default: every one both runs have)")
    args = ap.parse_args()
    a, b = figures(args.cpu, args.temperatures), figures(args.gpu, args.temperatures)
    keys = sorted(set(a) & set(b), key=lambda k: (k[1], k[0]))
    if args.metrics:
        keys = [k for k in keys if k[1].startswith("probe") or k[1].split(" ", 1)[1] in args.metrics]
    print(f"| figure | scheme | {args.cpu} | {args.gpu} | GPU − CPU |\n|---|---|---|---|---|")
    for k in keys:
        print(f"| {k[1]} | {k[0]} | {a[k]:.4f} | {b[k]:.4f} | {b[k] - a[k]:+.4f} |")
    only = sorted(set(a) ^ set(b))
    if only:
        print(f"\n{len(only)} figures are in one run only (cells missing or failed in the other)")


if __name__ == "__main__":
    main()
