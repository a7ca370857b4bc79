"""The comparison of two runs as a page (``compare.html`` and its CSV tables) and as text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from harness_ext.report.compare import QUALITY_KEYS, SPEED_KEYS, Comparison, compare, label, load_study
from harness_ext.report.page import default_report_dir, template_source, templates, visible


def main(run_a: Path, run_b: Path, output_dir: str | Path | None, warn: Callable[[str], None]) -> int:
    """``harness-ext report RUN_A --compare RUN_B``: the summary on stdout, ``compare.html`` and its CSV
    tables in the folder A's report goes to (``output_dir``, else RUN_A/report: never a folder named
    inside the run directory, which may come from elsewhere)."""
    a = load_study(run_a, warn)
    c = compare(a, load_study(run_b, warn), str(run_a), str(run_b))
    out = Path(output_dir or default_report_dir(run_a, a.run))
    print(console_text(c))
    print(f"comparison: {write(c, out)}")
    return 0


# -- output ---------------------------------------------------------------------------------------------
def write(comparison: Comparison, out_dir: str | Path) -> Path:
    """``compare.html`` and its tables as CSV (``compare_*.csv``) in ``out_dir``; returns the page."""
    from harness_ext.errors import StoreError
    from harness_ext.store import atomic_write

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the report folder {out}: {e.strerror or e}") from None
    atomic_write(out / "compare_claims.csv", comparison.claims.to_csv(index=False))
    atomic_write(out / "compare_quality.csv", comparison.quality.to_csv(index=False))
    atomic_write(out / "compare_speed.csv", comparison.speed.to_csv(index=False))
    atomic_write(out / "compare.html", page(comparison))
    return out / "compare.html"


def page(c: Comparison) -> str:
    """The compare page (templates/compare.html.j2), with the report's stylesheet."""
    env = templates()
    env.filters["label"] = label
    return visible(
        env.get_template("compare.html.j2").render(
            c=c,
            claims=c.claims.to_dict("records"),
            quality=_rows(c.quality, QUALITY_KEYS),
            speed=_rows(c.speed, SPEED_KEYS),
            counts={
                "quality": _counts(c.quality),
                "speed": _counts(c.speed),
                "claims": int(c.claims["moved"].sum()) if not c.claims.empty else 0,
            },
            css=template_source("report.css"),
        )
    )


def _rows(t: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    """The moved cells, then those that could not be judged; each with its label."""
    if t.empty:
        return []
    shown = t[t["moved"] | ~t["judged"]]
    return [{**r, "label": label({k: r[k] for k in keys})} for r in shown.to_dict("records")]


def _counts(t: pd.DataFrame) -> dict[str, int]:
    if t.empty:
        return {"cells": 0, "moved": 0, "unjudged": 0}
    return {"cells": len(t), "moved": int(t["moved"].sum()), "unjudged": int((~t["judged"]).sum())}


def console_text(c: Comparison, limit: int = 20) -> str:
    """The comparison as plain text for the terminal: warnings, every claim, the moved figures."""
    lines = [f"compare: A = {c.a}", f"         B = {c.b}"]
    lines += [f"warning: {w}" for w in c.warnings]
    lines += [f"  {x}" for x in c.environment]
    lines.append("claims:")
    for r in c.claims.to_dict("records"):
        mark = "MOVED" if r["moved"] else "same "
        lines.append(f"  {mark} ({r['claim']}) {r['verdict_a']} → {r['verdict_b']}")
    for name, t, keys in (("quality", c.quality, QUALITY_KEYS), ("speed", c.speed, SPEED_KEYS)):
        n = _counts(t)
        lines.append(
            f"{name}: {n['moved']} of {n['cells']} cells moved beyond the runs' uncertainty"
            + (" or in weight memory" if name == "speed" else "")
            + (f" ({n['unjudged']} could not be judged)" if n["unjudged"] else "")
        )
        for r in t[t["moved"]].head(limit).to_dict("records") if not t.empty else []:
            what = f"{r['value_a']:.4g} → {r['value_b']:.4g}"
            if "ratio" in r:  # speed: medians, the geometric-mean ratio over rounds, and the weight bytes
                what = f"decode ms/token {what} (B/A {r['ratio']:.2f}× over rounds)"
                if "weight memory" in r["why"]:
                    what += f", weight {r['weight_mib_a']:.1f} → {r['weight_mib_b']:.1f} MiB"
            lines.append(f"  {label({k: r[k] for k in keys})}: {what} — moved: {r['why']}")
    for side in ("A", "B"):
        if c.only.get(side):
            lines.append(f"only in {side}: {len(c.only[side])} cell(s), e.g. {c.only[side][0]}")
    return "\n".join(lines)
