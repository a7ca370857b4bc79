"""What every figure of a report shares: pyplot set up for reproducible SVG, the SVG text, the colours."""

from __future__ import annotations

import io
import re
from typing import Any

from harness_ext.analysis import Study

PALETTE = ["#1b6ca8", "#d1495b", "#2e8b57", "#edae49", "#6c4f9c", "#00798c", "#8d6a4f", "#555555"]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, with the report's style (SVG text as paths, fixed hash salt:
    the same figure gives the same bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": "harness_ext",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )
    return plt


def svg(fig: Any) -> str:
    """A figure as an inline SVG element (no prolog, metadata or comments), closed after."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    pyplot().close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG lives inside HTML
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def scheme_colors(study: Study) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(study.schemes()["scheme"])}
