"""The report's figures: matplotlib drawn to inline SVG, fonts as paths, deterministic bytes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from harness_ext.analysis import Study
from harness_ext.report.plotting import pyplot, scheme_colors, svg
from harness_ext.report.sections import QUALITY_METRICS, slice_rows
from harness_ext.report.speed_figure import fig_speed_rounds

FIGURE_METRICS = ["p_gold", "tv", "exact_match", "distinct_2", "rouge_l_ref", "nll_ref"]


def _line_with_band(ax: Any, g: pd.DataFrame, color: str | None, label: str) -> None:
    """A scheme's mean against temperature, with its 95% interval as a band."""
    ax.plot(g["temperature"], g["mean"], marker="o", ms=3, color=color, label=label)
    ax.fill_between(g["temperature"], g["lo"], g["hi"], color=color, alpha=0.15, lw=0)


def _figure(
    fig: Any, axes: Any, fig_id: str, caption: str, legend_y: float, ncol_max: int = 99, fontsize: float | None = None
) -> dict[str, str]:
    """One legend above the panels (from the first, where it has lines), then the figure as inline SVG
    with its caption."""
    handles, names = axes.flat[0].get_legend_handles_labels()
    if names:  # matplotlib refuses a legend of 0 columns
        fig.legend(
            handles,
            names,
            loc="upper center",
            ncol=min(len(names), ncol_max),
            frameon=False,
            bbox_to_anchor=(0.5, legend_y),
            fontsize=fontsize,
        )
    fig.tight_layout()
    return {"id": fig_id, "svg": svg(fig), "caption": caption}


#: The speed section's figures, drawn in order under its tables: each ``study -> figure or None``
#: (a figure: {"id", "svg", "caption"}, as :func:`_figure` returns).
SPEED_FIGURES: list[Callable[[Study], dict[str, str] | None]] = [fig_speed_rounds]


def speed_figures(study: Study) -> list[dict[str, str]]:
    """The speed section's figures (:data:`SPEED_FIGURES`), those that have something to draw."""
    return [f for draw in SPEED_FIGURES if (f := draw(study))]


def figures(study: Study, quality: pd.DataFrame) -> list[dict[str, str]]:
    """The figures section: quality figures of each model that has quality rows, then speed."""
    figs = []
    if not quality.empty:
        for model in models_with_quality(study, quality):
            f = fig_vs_temperature(study, quality, model)
            if f:
                figs.append(f)
            f = fig_top_k(study, quality, model)
            if f:
                figs.append(f)
            f = fig_max_new_tokens(study, quality, model)
            if f:
                figs.append(f)
    return figs


def models_with_quality(study: Study, quality: pd.DataFrame) -> list[str]:
    """The models with at least one quality row (a random-weight shape, or a model whose cells all
    failed, has none)."""
    present = set(quality["model"]) if not quality.empty else set()
    return [m for m in study.models() if m in present]


def figure_gaps(study: Study, quality: pd.DataFrame) -> list[str]:
    """One line per model without a quality figure, saying why, when other models have one (a study
    without any quality rows says so in its quality section)."""
    have = set(models_with_quality(study, quality))
    if not have:
        return []
    cells = study.cells[study.cells["kind"].isin(["eval", "probe"])]
    planned = set(cells["model"])
    return [
        f"{m}: no quality figure: "
        + (
            "none of its quality cells completed."
            if m in planned
            else "it has no quality cells (speed and memory only)."
        )
        for m in study.models()
        if m not in have
    ]


def fig_vs_temperature(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    plt = pyplot()
    labels = {m: (lab, kind) for m, kind, lab, *_ in QUALITY_METRICS}
    present = [m for m in FIGURE_METRICS if m in set(quality["metric"])]
    if not present:
        return None
    colors = scheme_colors(study)
    ncol = min(3, len(present))
    nrow = math.ceil(len(present) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, metric in zip(axes.flat, present, strict=False):
        lab, kind = labels[metric]
        sel = quality[(quality["metric"] == metric) & (quality["model"] == model)]
        sel = (
            sel[sel["task"].str.startswith("probe:")] if kind == "probe" else sel[~sel["task"].str.startswith("probe:")]
        )
        sel = slice_rows(sel)
        for scheme, g in sel.groupby("scheme", sort=False):
            g = g.sort_values("temperature")
            _line_with_band(ax, g, colors.get(scheme), scheme)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("temperature")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    return _figure(
        fig,
        axes,
        f"fig-temp-{model}",
        f"{model}: quality and divergence from the reference against temperature, one line per scheme; "
        "bands are 95% bootstrap intervals over prompts (least-truncated setting of the grid).",
        legend_y=1.04,
    )


def fig_top_k(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    sel = quality[
        (quality["metric"] == "p_gold") & (quality["model"] == model) & quality["task"].str.startswith("probe:")
    ]
    if sel.empty:
        sel = quality[(quality["metric"] == "exact_match") & (quality["model"] == model)]
    if sel.empty or sel["top_k"].nunique() < 2:
        return None
    sel = sel[(sel["top_p"] == sel["top_p"].max())]
    rp = sel["repetition_penalty"]
    sel = sel[rp == (1.0 if (rp == 1.0).any() else rp.min())]
    plt = pyplot()
    colors = scheme_colors(study)
    ks = sorted(sel["top_k"].unique(), key=lambda k: math.inf if k == -1 else k)
    fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 2.6), squeeze=False, sharey=True)
    for ax, k in zip(axes.flat, ks, strict=True):
        for scheme, g in sel[sel["top_k"] == k].groupby("scheme", sort=False):
            g = g.groupby("temperature", as_index=False)[["mean", "lo", "hi"]].mean().sort_values("temperature")
            _line_with_band(ax, g, colors.get(scheme), scheme)
        ax.set_title(f"top-k {'off' if k == -1 else int(k)}", fontsize=9)
        ax.set_xlabel("temperature")
    axes.flat[0].set_ylabel("P(gold next word)" if "p_gold" in set(sel["metric"]) else "exact match")
    return _figure(
        fig,
        axes,
        f"fig-topk-{model}",
        f"{model}: effect of top-k on next-word accuracy across temperatures (95% CIs over prompts).",
        legend_y=1.08,
    )


def fig_max_new_tokens(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    sel = quality[(quality["model"] == model) & quality["metric"].isin(["hit_cap", "distinct_2", "nll_ref"])]
    if sel.empty or sel["max_new_tokens"].nunique() < 2:
        return None
    k = sel["top_k"]
    sel = sel[(k == -1) if (k == -1).any() else (k == k.max())]
    plt = pyplot()
    colors = scheme_colors(study)
    metrics = [m for m in ["hit_cap", "distinct_2", "nll_ref"] if m in set(sel["metric"])]
    caps = sorted(sel["max_new_tokens"].unique())
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.6), squeeze=False)
    labels = {m: lab for m, _, lab, *_ in QUALITY_METRICS}
    for ax, metric in zip(axes.flat, metrics, strict=True):
        for scheme, g in sel[sel["metric"] == metric].groupby("scheme", sort=False):
            for i, cap in enumerate(caps):
                h = g[g["max_new_tokens"] == cap].sort_values("temperature")
                ax.plot(
                    h["temperature"],
                    h["mean"],
                    ls=styles[i % 4],
                    marker="o",
                    ms=2.5,
                    color=colors.get(scheme),
                    label=f"{scheme}, {int(cap)} tokens",
                )
        ax.set_title(labels[metric], fontsize=9)
        ax.set_xlabel("temperature")
    return _figure(
        fig,
        axes,
        f"fig-cap-{model}",
        f"{model}: effect of the max-new-tokens cap (line style) on open-ended continuation.",
        legend_y=1.12,
        ncol_max=5,
        fontsize=7,
    )
