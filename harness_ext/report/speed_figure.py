"""The speed figure a reader decides by: every round as a dot, against the weight-streaming floor.

Speed verdicts rest on rounds (one load, warm-up, timed repeats each: :mod:`harness_ext.analysis.rounds`),
so the figure shows each round's median decode time per token, per model and scheme, eager and
compiled side by side, with the floor below which no decode step can go (weight bytes on the GPU
over its measured memory bandwidth). The spread of the dots is the spread that decides the verdict.
A last panel shows each scheme's weight memory per model.
Matplotlib only; the figure entry has the shape of the report's others (id, svg, caption).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Study
from harness_ext.report.plotting import pyplot, scheme_colors, svg

FIG_ID = "fig-speed-rounds"
DOTS_GID = f"{FIG_ID}-dots"  # one SVG group per (panel, scheme, mode): its markers are the rounds
FLOOR_GID = f"{FIG_ID}-floor"
WEIGHTS_GID = f"{FIG_ID}-weights"  # one SVG group per (scheme, model) bar of weight memory
MODE_MARKERS = {"eager": "o", "compiled": "^"}
FLOOR_STYLE = {"color": "#222222", "linestyle": "--", "linewidth": 1.2}


def fig_speed_rounds(study: Study, speed: pd.DataFrame | None = None) -> dict[str, str] | None:
    """One panel per (batch size, model), models by size; in each, per scheme a dot per round for each
    mode and the floor as a dashed line over the scheme; then a panel of weight memory per model and
    scheme. ``speed``: the rounds table (:func:`harness_ext.analysis.speed_table`), computed if not
    given. None when the run timed nothing."""
    speed = analysis.speed_table(study) if speed is None else speed
    if speed.empty or "decode_ms_per_token" not in speed:
        return None
    plt = pyplot()
    models = sorted(speed["model"].unique(), key=lambda m: study.parameters(m) or 0)
    batches = sorted(speed["batch_size"].unique())
    modes = sorted(speed["mode"].unique(), key=lambda m: (m != "eager", m))
    order = list(study.schemes()["scheme"])
    colors = scheme_colors(study)
    width = _width(speed, modes)
    fig, axes = plt.subplots(
        len(batches),
        len(models) + 1,
        figsize=(width * len(models) + 3.2, 2.7 * len(batches)),
        squeeze=False,
        gridspec_kw={"width_ratios": [width] * len(models) + [3.2]},
    )
    groups = iter(range(10**6))  # unique SVG ids across the figure's groups
    has_floor = False
    for row, bs in enumerate(batches):
        for col, model in enumerate(models):
            ax = axes[row][col]
            cell = speed[(speed["model"] == model) & (speed["batch_size"] == bs)]
            schemes = [s for s in order if s in set(cell["scheme"])] + sorted(set(cell["scheme"]) - set(order))
            for x, scheme in enumerate(schemes):
                for k, mode in enumerate(modes):
                    rounds = cell[(cell["scheme"] == scheme) & (cell["mode"] == mode)]
                    if rounds.empty:
                        continue
                    at = x + (k - (len(modes) - 1) / 2) * 0.36
                    _dots(ax, rounds, at, colors.get(scheme), MODE_MARKERS.get(mode, "s"), next(groups))
                    has_floor |= _floor(ax, rounds, at, next(groups))
            ax.set_xticks(range(len(schemes)), schemes)
            ax.set_xlim(-0.6, len(schemes) - 0.4)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{model}, batch {int(bs)}", fontsize=9)
            if col == 0:
                ax.set_ylabel("decode ms/token")
    _weights(axes[0][-1], speed, models, order, colors)
    for row in range(1, len(batches)):
        axes[row][-1].set_axis_off()
    _legend(fig, modes, has_floor, len(batches))
    fig.tight_layout()
    return {"id": FIG_ID, "svg": svg(fig), "caption": _caption(modes, has_floor)}


def _width(speed: pd.DataFrame, modes: list[str]) -> float:
    """Inches per panel: room for every scheme's modes, the whole row kept within a page (~15 in)."""
    per_panel = speed.groupby(["model", "batch_size"])["scheme"].nunique().max()
    return max(3.2, min(0.45 * per_panel * len(modes) + 1.4, 15 / speed["model"].nunique()))


def _dots(ax: Any, rounds: pd.DataFrame, at: float, color: str | None, marker: str, group: int) -> None:
    """One marker per round, spread a little sideways in round order; hollow where it ran contended."""
    rounds = rounds.sort_values(["round", "invocation"])
    y = rounds["decode_ms_per_token"].astype(float).to_numpy()
    n = len(y)
    xs = at + (np.arange(n) - (n - 1) / 2) * min(0.06, 0.28 / max(n, 1))
    contended = rounds["contended"].to_numpy(bool)
    face = np.array([(0, 0, 0, 0) if c else _rgba(color) for c in contended])
    dots = ax.scatter(xs, y, s=16, marker=marker, facecolors=face, edgecolors=color, linewidths=0.9, zorder=3)
    dots.set_gid(f"{DOTS_GID}-{group}")


def _rgba(color: str | None) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(color or "#555555")


def _floor(ax: Any, rounds: pd.DataFrame, at: float, group: int) -> bool:
    """The weight-streaming floor of this (scheme, mode) as a dashed line, where it was measured."""
    if "floor_ms_per_token" not in rounds:
        return False
    floor = rounds["floor_ms_per_token"].astype(float).median()
    if not math.isfinite(floor):
        return False
    line = ax.hlines(floor, at - 0.16, at + 0.16, zorder=2, **FLOOR_STYLE)
    line.set_gid(f"{FLOOR_GID}-{group}")
    return True


def _weights(ax: Any, speed: pd.DataFrame, models: list[str], order: list[str], colors: dict[str, str]) -> None:
    """Weight memory (MiB) per model, a bar per scheme: what each load holds, whatever the batch."""
    schemes = [s for s in order if s in set(speed["scheme"])]
    bar = 0.8 / max(len(schemes), 1)
    x = np.arange(len(models))
    for i, scheme in enumerate(schemes):
        mib = []
        for model in models:
            r = speed[(speed["model"] == model) & (speed["scheme"] == scheme)]
            wb = r["weight_bytes"].dropna() if "weight_bytes" in r else r.iloc[:0]
            mib.append(float(wb.iloc[0]) / 2**20 if len(wb) else math.nan)
        for j, rect in enumerate(ax.bar(x + i * bar, mib, bar, color=colors.get(scheme), label=scheme)):
            rect.set_gid(f"{WEIGHTS_GID}-{i}-{j}")
    ax.set_xticks(x + bar * (len(schemes) - 1) / 2, models)
    ax.set_title("weight memory, MiB", fontsize=9)
    ax.legend(fontsize=7, frameon=False)


def _legend(fig: Any, modes: list[str], has_floor: bool, rows: int) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="none", marker=MODE_MARKERS.get(m, "s"), color="#555555", label=f"{m}: a round")
        for m in modes
    ]
    handles.append(Line2D([], [], ls="none", marker="o", mfc="none", color="#555555", label="ran contended"))
    if has_floor:
        handles.append(Line2D([], [], **FLOOR_STYLE, label="weight-streaming floor"))
    fig.legend(
        handles=handles, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 1 + 0.06 / rows)
    )


def _caption(modes: list[str], has_floor: bool) -> str:
    side = " eager and compiled side by side," if len(modes) > 1 else ""
    floor = (
        " The dashed line is the weight-streaming floor (the weight bytes on the GPU over its measured memory "
        "bandwidth): no decode step can be faster."
        if has_floor
        else " No weight-streaming floor: it is measured on CUDA devices only."
    )
    return (
        "Decode time per token, one dot per round (the median of that round's timed repeats; a hollow dot: the "
        f"round ran contended and no verdict uses it), per model and batch size,{side} schemes in spec order."
        f"{floor} Speed verdicts are read at the smallest batch, over the uncontended rounds. Last panel: the "
        "weight memory of each scheme's load, per model."
    )
