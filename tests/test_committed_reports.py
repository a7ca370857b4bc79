"""The example reports committed under reports/ are what the code renders from their own tables:
no drift between the code and the examples in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness_ext.report import render

REPO = Path(__file__).resolve().parent.parent
_SVG = re.compile(r"<svg.*?</svg>", re.S)


def _without_figures(html: str) -> tuple[str, int]:
    """The page with each inline SVG body replaced by a marker (figure bytes depend on the exact
    matplotlib release), and the number of figures."""
    return _SVG.sub("<svg/>", html), len(_SVG.findall(html))


@pytest.mark.parametrize("name", ["demo", "paper_speed", "paper_speed_single"])
def test_committed_report_rerenders_from_its_tables(name: str, tmp_path) -> None:
    folder = REPO / "reports" / name
    committed = (folder / "index.html").read_text(encoding="utf-8")
    fresh = render(folder / "data", tmp_path / name).read_text(encoding="utf-8")
    assert _without_figures(fresh) == _without_figures(committed)
    for table in ("claims.csv", "speed.csv", "quality.csv"):
        assert (tmp_path / name / table).read_text() == (folder / table).read_text(), table
