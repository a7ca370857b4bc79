"""Render a run's tables into a static, self-contained, paper-style HTML page.

Everything comes from the tables (:mod:`harness_ext.analysis`); nothing in the templates is a
number. Figures are SVG embedded in the page (matplotlib, fonts as paths), so the page is one file
that works offline; rendering is deterministic, so the same tables give the same bytes.
Autoescaping is on: model output, prompts and spec strings are text, never markup.

This module reads the run and writes the page (read-only on the run, atomic on the output);
:mod:`.sections` turns the tables into the page's rows and :mod:`.figures` draws the figures.
Nothing here imports torch, the backend or the runner: a report renders on any machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study
from harness_ext.analysis.stats import fmt_number
from harness_ext.errors import StoreError
from harness_ext.report import examples as ex
from harness_ext.report import figures as figs
from harness_ext.report import sections as sec
from harness_ext.report.setup import setup as setup_section
from harness_ext.store import atomic_write
from harness_ext.store.tables import DERIVED_KEYS, TABLE_FILES  # a report keeps these input tables in data/

log = logging.getLogger(__name__)


def render(
    run_dir: str | Path, output_dir: str | Path | None = None, warn: Callable[[str], None] | None = None
) -> Path:
    """Render ``index.html`` (plus CSV tables and a copy of the input tables in ``data/``) and
    return its path. ``run_dir`` is a run directory or a folder holding its tables.

    Reading only: nothing in ``run_dir`` is written (it may be read-only, or another process's).
    A run directory's tables are re-derived from its records in memory; ``warn`` receives one line
    per record that cannot be read (default: the log). Every output file is written atomically,
    ``index.html`` last; a failure is one :class:`StoreError` line and leaves earlier files whole.
    """
    run_dir = Path(run_dir)
    warn = warn or log.warning
    files = input_tables(run_dir, warn)
    study = study_from_tables(files, run_dir)
    opts = study.run.get("report") or {}
    out = Path(output_dir) if output_dir else _default_out(run_dir, study.run)
    page, tables = _build_page(study, opts, run_dir)
    outputs = {fname: frame.to_csv(index=False).encode() for fname, frame in tables.items()}
    src = run_dir / "tables" if (run_dir / "tables").is_dir() else run_dir
    if _resolved(out / "data") != _resolved(src):
        outputs |= {f"data/{fname}": data for fname, data in files.items()}
    outputs["index.html"] = page.encode()  # last: a complete page means complete inputs beside it
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the report folder {out}: {e.strerror or e}") from None
    for fname, data in outputs.items():
        atomic_write(out / fname, data)
    return out / "index.html"


def _default_out(run_dir: Path, run: dict[str, Any]) -> Path:
    """The default report folder (never the run's own ``report.output_dir``), refused in one line if a
    link inside the run directory would take the report's files elsewhere."""
    out = default_report_dir(run_dir, run)
    for folder in (out, out / "data"):
        if folder.is_symlink():
            raise StoreError(
                f"{folder} is a link (to {os.readlink(folder)}): the run directory would choose where the "
                "report is written; pass --output-dir"
            )
    return out


def default_report_dir(run_dir: Path, run: dict[str, Any]) -> Path:
    """``RUN/report`` for a run directory; ``runs/<study>/report`` for a folder of tables alone
    (e.g. a committed report's ``data/``, which must not be written over)."""
    if (run_dir / "records").is_dir() or (run_dir / "tables").is_dir():
        return run_dir / "report"
    name = (run.get("study") or {}).get("name") or run_dir.name
    return Path("runs") / str(name) / "report"


def input_tables(run_dir: Path, warn: Callable[[str], None]) -> dict[str, bytes]:
    """The report's input tables as file contents, without writing anything.

    A run directory with records: derived from them (the contract), keeping the spec-derived facts
    of its ``tables/run.json`` (expected cells, references, report options); unreadable records are
    left out and each is passed to ``warn``. A folder of tables alone (a report's ``data/``), or a
    run directory whose records are gone: its tables as they are."""
    from harness_ext.store import RunStore, timing_family

    records_dir = run_dir / "records"
    tables = run_dir / "tables" if (run_dir / "tables").is_dir() or records_dir.is_dir() else run_dir
    run = read_run_json(tables)
    if not (records_dir.is_dir() and any(records_dir.glob("*.json"))):
        return {f: _read_bytes(tables / f) for f in TABLE_FILES if (tables / f).is_file()}
    store = RunStore(run_dir)
    records = store.load_records()
    listed = [c for c in run.get("expected_cells") or [] if isinstance(c, dict)]
    expected = {c["cell_id"] for c in listed}
    families = {c["family"] for c in listed if c.get("family")}  # a speed cell's rounds on any machine
    kept = [
        r for r in records.values() if not expected or r.cell_id in expected or timing_family(r.definition) in families
    ]
    files = derived_tables(store, kept, run)
    for problem in store.problems:  # records, then invocations (read while deriving the tables)
        warn(f"{run_dir if problem.startswith('invocations/') else records_dir}: {problem}")
    return files


def derived_tables(store: Any, records: list[Any], run: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of ``tables/*`` as :meth:`RunStore.export_tables` would write them from ``records``."""
    from harness_ext.store import tables

    extra = {k: v for k, v in run.items() if k not in DERIVED_KEYS}
    return tables.table_files(records, run.get("spec_text"), store.invocations(), store.problems, extra)


def read_run_json(tables: Path) -> dict[str, Any]:
    """``tables/run.json`` as a mapping of the types a report reads (:class:`~harness_ext.store.run_info.RunInfo`),
    or one :class:`StoreError` line saying what is wrong with it (or that a run is still writing it)."""
    from harness_ext.store import RunStore, read_json, run_info

    path = tables / "run.json"
    if not path.exists() and not path.is_symlink():
        holder = RunStore(tables.parent).writer() if tables.name == "tables" else None
        if holder is not None:
            raise StoreError(
                f"{path} is not written yet: a run holds this run directory's lock ({holder}); "
                "report once it finishes (or stops)"
            )
        raise StoreError(f"{path} is missing: the run never finished writing its tables; run the study again")
    try:
        run = read_json(path)
    except (OSError, ValueError) as e:  # not a regular file, too large or deep, not UTF-8, not JSON
        raise StoreError(f"{path} cannot be read ({type(e).__name__}: {e}); run the study again") from None
    if not isinstance(run, dict):
        raise StoreError(f"{path} is not a JSON object; run the study again")
    if (wrong := run_info.problem(run, run_info.RunInfo)) is not None:
        raise StoreError(f"{path} is malformed: {wrong}; run the study again")
    return run


def study_from_tables(files: dict[str, bytes], run_dir: Path) -> Study:
    """The study of a run's tables given as bytes (:func:`input_tables`), loaded through a private
    temporary folder as the run wrote them; ``run_dir`` names the run in errors."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="harness-ext-report-") as tmp:
        for fname, data in files.items():
            Path(tmp, fname).write_bytes(data)
        try:
            return Study.load(tmp)
        except StoreError:
            raise StoreError(f"{run_dir} holds no run tables (tables/cells.parquet); run the study first") from None
        except (OSError, ValueError, ImportError) as e:  # a truncated parquet file: pyarrow's errors are ValueErrors
            raise StoreError(f"the tables of {run_dir} cannot be read ({type(e).__name__}: {e})") from None


def _build_page(study: Study, opts: dict[str, Any], run_dir: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    try:
        return build(study, opts)
    except jinja2.UndefinedError as e:  # run.json lacks what the page needs
        raise StoreError(f"{run_dir}: tables/run.json lacks what the report needs ({e}); run the study again") from None


def _planned(study: Study, kinds: tuple[str, ...]) -> bool:
    """Whether the study has cells of these kinds (run or not): "none completed" vs "none planned"."""
    expected = {c.get("kind") for c in study.run.get("expected_cells") or []}
    return bool(expected & set(kinds)) or bool(study.cells["kind"].isin(kinds).any())


#: The largest table file a report reads (a study's generations of 100,000 cells fit many times).
MAX_TABLE_BYTES = 4 * 2**30


def _read_bytes(path: Path) -> bytes:
    from harness_ext.store import read_regular

    try:
        return read_regular(path, MAX_TABLE_BYTES)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None


def _resolved(p: Path) -> Path:
    return p.resolve() if p.exists() else p.absolute()


# -- page ----------------------------------------------------------------------------------------
def build(study: Study, opts: dict[str, Any]) -> tuple[str, dict[str, pd.DataFrame]]:
    """The page's HTML and its CSV tables."""
    margins = analysis.Options.of_report(opts)
    claims = analysis.claims(study, margins)
    quality = analysis.quality_table(study)
    paired = analysis.paired_differences(study)
    sens = analysis.temperature_sensitivity(study)
    speed = analysis.speed_table(study)
    q_primary, q_desc = analysis.primary_quality(study)
    ctx = {
        "title": opts.get("title")
        or f"Quantization and sampling: {(study.run.get('study') or {}).get('name', 'study')}",
        "study": study.run.get("study") or {},
        "abstract": sec.abstract(study, q_desc),
        "caveats": sec.caveats(study),
        "glance": sec.glance(claims),
        "setup": setup_section(study),
        "claims": claims,
        "margin": margins.margin,
        "speed_margin": margins.speed_margin,
        "quality_desc": q_desc,
        "slice": analysis.describe_slice(analysis.per_prompt(study, "p_gold", kind="probe"))
        or analysis.describe_slice(analysis.per_prompt(study, "exact_match")),
        "speed_rows": sec.speed_rows(study, speed),
        "speed_summary": (summ := analysis.speed_summary(study, speed)).to_dict("records") if not speed.empty else [],
        "speed_figures": figs.speed_figures(study),
        "min_rounds": analysis.MIN_ROUNDS,
        "sensitivity_margin": margins.sensitivity_margin,
        "has_floor": bool(not speed.empty and "floor_ms_per_token" in speed.columns),
        "quality_tables": sec.quality_tables(study, quality),
        "quality_planned": _planned(study, ("eval", "probe")),
        "paired_tables": sec.paired_tables(study, paired),
        "sens_rows": sens.to_dict("records") if not sens.empty else [],
        "figures": figs.figures(study, quality),
        "figure_gaps": figs.figure_gaps(study, quality),
        "examples": ex.examples(study, int(opts.get("examples", 3))),
        "failed": sec.failed_rows(study),
        "missing": sec.missing_cells(study),
        "spec_text": study.run.get("spec_text") or "",
        "environments": study.run.get("invocations") or [],
        "notes": study.run.get("model_notes") or {},
        "problems": study.run.get("problems") or [],
        "primary_n": int(q_primary["doc_id"].nunique()) if not q_primary.empty else 0,
    }
    env = templates()
    env.filters["est"] = lambda e, fmt=".3f": e.text(fmt) if isinstance(e, Estimate) else "n/a"
    env.filters["mb"] = lambda b: (
        "n/a" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 2**20:,.1f}"
    )
    page = visible(env.get_template("report.html.j2").render(**ctx, css=template_source("report.css")))
    tables = {
        "quality.csv": quality,
        "paired_differences.csv": paired,
        "sensitivity.csv": sens,
        "speed.csv": speed,
        "speed_rounds_summary.csv": summ if not speed.empty else pd.DataFrame(),
        "claims.csv": pd.DataFrame(
            [
                {
                    "claim": c.key,
                    "verdict": c.verdict,
                    "scope": c.scope,
                    "per_model": json.dumps(c.per_model),
                    "reason": c.reason,
                    "deciding": c.deciding,
                    "detectable": c.detectable,
                    "rule": c.rule,
                    "evidence": json.dumps(c.evidence),
                }
                for c in claims
            ]
        ),
    }
    return page, tables


_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    # bidirectional controls and invisible characters: text that displays as something else
    # (``user\u202egnp.exe`` shows as ``userexe.png``) or hides characters: soft hyphen, combining
    # grapheme joiner, Hangul and Khmer fillers, Mongolian vowel separator and variation selectors,
    # line and paragraph separators, Unicode tags (U+E0000-E007F: invisible ASCII)
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\u3164\ufeff\uffa0\U000e0000-\U000e007f"
    # lone surrogates (from JSON such as "\\ud800"): not encodable, shown as their code
    "\ud800-\udfff]"
)


def visible(text: str) -> str:
    """Control characters (which model output can contain) are not allowed in HTML, and bidi controls
    and invisible characters would make text read as other text: show each as ``\\xNN`` or ``\\uNNNN``
    text instead. Our own markup contains none, so the whole page can pass through."""
    return _INVISIBLE.sub(_escape_char, text)


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def templates() -> jinja2.Environment:
    """The Jinja2 environment of every page of a report (templates/, autoescaped, strict, ``num`` filter)."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def template_source(name: str) -> str:
    """The text of a packaged template or stylesheet (``templates/``), e.g. ``report.css``."""
    return resources.files("harness_ext.templates").joinpath(name).read_text(encoding="utf-8")


def _num(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return fmt_number(v, fmt)
