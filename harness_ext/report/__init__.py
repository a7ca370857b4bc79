"""The HTML report of a run: read-only on the run, no torch, no backend, no runner.

:mod:`.page` reads the run's tables and writes the page, :mod:`.sections` turns tables into the
page's rows, :mod:`.examples` picks the example generations, :mod:`.figures` draws the figures
(:data:`.figures.SPEED_FIGURES`: the speed section's figure hook)."""

from harness_ext.report.page import build, render

__all__ = ["build", "render"]
