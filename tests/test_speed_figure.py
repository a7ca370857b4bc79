"""The per-round speed figure: one marker per round, the weight-streaming floor where it was measured,
nothing where the run timed nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness_ext import analysis
from harness_ext.report.compare import load_study
from harness_ext.report.speed_figure import DOTS_GID, FLOOR_GID, WEIGHTS_GID, fig_speed_rounds

REPO = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def _groups(svg: str, prefix: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("id"): g for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith(prefix + "-")}


def _markers(group: ET.Element) -> int:
    return len(list(group.iter(f"{SVG}use")))


@pytest.fixture(scope="module")
def paper_speed() -> analysis.Study:
    return load_study(REPO / "reports" / "paper_speed" / "run", print)


@pytest.fixture(scope="module")
def demo(demo_study) -> analysis.Study:
    return demo_study


def test_one_marker_per_round_and_the_floor_on_the_gpu_run(paper_speed) -> None:
    speed = analysis.speed_table(paper_speed)
    fig = fig_speed_rounds(paper_speed, speed)
    assert fig is not None and set(fig) == {"id", "svg", "caption"}
    dots = _groups(fig["svg"], DOTS_GID)
    per_cell = speed.groupby(["model", "batch_size", "scheme", "mode"]).size()
    assert len(dots) == len(per_cell) == 10  # 2 models x 5 schemes, eager only
    assert sorted(_markers(g) for g in dots.values()) == sorted(per_cell.tolist()) == [3] * 10  # 3 rounds each
    assert sum(_markers(g) for g in dots.values()) == len(speed) == 30
    floors = _groups(fig["svg"], FLOOR_GID)
    assert (
        len(floors)
        == speed.groupby(["model", "batch_size", "scheme", "mode"])["floor_ms_per_token"].count().gt(0).sum()
    )
    assert len(floors) == 10 and "weight-streaming floor" in fig["caption"]
    assert len(_groups(fig["svg"], WEIGHTS_GID)) == 10  # the weight-memory panel: a bar per model and scheme


def test_the_report_draws_one_speed_figure(demo_report) -> None:
    """The per-round dots are drawn once, in the speed section, not again among the quality figures
    (the committed demo, rendered once per session by the conftest)."""
    _, html = demo_report
    speed = html[html.index('<section id="speed">') : html.index('<section id="quality">')]
    assert html.count('id="fig-speed-rounds"') == speed.count('id="fig-speed-rounds"') == 1
    assert 'id="fig-speed"' not in html


def test_eager_and_compiled_side_by_side() -> None:
    study = load_study(REPO / "reports" / "paper_speed_single" / "run", print)
    speed = analysis.speed_table(study)
    assert set(speed["mode"]) == {"eager", "compiled"}
    fig = fig_speed_rounds(study, speed)
    dots = _groups(fig["svg"], DOTS_GID)
    assert len(dots) == len(speed.groupby(["model", "batch_size", "scheme", "mode"]))  # a group per mode
    assert sum(_markers(g) for g in dots.values()) == len(speed)
    assert "eager and compiled side by side" in fig["caption"]


def test_cpu_run_has_rounds_but_no_floor_and_a_run_without_speed_has_no_figure(demo) -> None:
    speed = analysis.speed_table(demo)
    fig = fig_speed_rounds(demo)
    assert fig is not None
    dots = _groups(fig["svg"], DOTS_GID)
    assert sum(_markers(g) for g in dots.values()) == len(speed) > 0
    assert _groups(fig["svg"], FLOOR_GID) == {}
    assert "No weight-streaming floor" in fig["caption"]
    no_speed = analysis.Study(demo.cells[demo.cells["kind"] != "speed"], demo.samples, demo.generations, demo.run)
    assert fig_speed_rounds(no_speed) is None


def test_a_speed_only_report_draws_its_speed_figure_once_and_says_where(fresh_imports) -> None:
    """The committed paper_speed run, rendered (by the conftest's fresh interpreter): one speed figure
    in the speed section, and a figures section that says where it is rather than "no cell completed"."""
    html = (fresh_imports["folder"] / "r" / "index.html").read_text(encoding="utf-8")
    assert html.count("<figure") == 1 and 'id="fig-speed-rounds"' in html
    assert "No quality figures: the study measured speed and memory only" in html
    assert "no cell completed" not in html
