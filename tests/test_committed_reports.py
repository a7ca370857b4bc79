"""The example reports committed under reports/ are what the code renders from their own tables:
no drift between the code and the examples in the repository."""

from __future__ import annotations

import io
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
def test_committed_report_rerenders_from_its_tables(name: str, tmp_path, request) -> None:
    folder = REPO / "reports" / name
    committed = (folder / "index.html").read_text(encoding="utf-8")
    # the demo is rendered once per session (conftest), as the report tests read it
    index = request.getfixturevalue("demo_report")[0] if name == "demo" else render(folder / "data", tmp_path / name)
    assert _without_figures(index.read_text(encoding="utf-8")) == _without_figures(committed)
    for table in ("claims.csv", "speed.csv", "quality.csv"):
        assert (index.parent / table).read_text() == (folder / table).read_text(), table


RECORDS = sorted(REPO.glob("reports/**/records/*.json"))
RUN_DIRS = sorted({p.parent.parent for p in RECORDS})


def test_every_committed_record_reads_and_writes_back_byte_identically() -> None:
    """The typed record parts write what the records hold: same keys, order and numbers."""
    from harness_ext.store import Record, dumps, record_dict

    assert len(RECORDS) >= 100 and len(RUN_DIRS) >= 6
    for path in RECORDS:
        text = path.read_text(encoding="utf-8")
        assert dumps(record_dict(Record.model_validate_json(text))) == text, path


@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda p: str(p.relative_to(REPO / "reports")))
def test_committed_run_directories_derive_their_tables(run_dir: Path) -> None:
    """The tables derived from the records through the one schema hold what the tables committed
    beside them hold (the report's derivation, as ``harness-ext report <run dir>`` does it). What
    changed on purpose: every parquet column has its schema type (enforced on write: a column without
    values is no longer ``null``, an integer column with gaps no longer ``double``), and a speed round's
    ``round``, ``round_position`` and ``contended`` are typed columns of the cells table, not metric rows."""
    import pyarrow.parquet as pq

    from harness_ext.report.page import input_tables
    from harness_ext.store.tables import SCHEMAS

    warnings: list[str] = []
    derived = input_tables(run_dir, warnings.append)
    assert not warnings and set(derived) == {p.name for p in (run_dir / "tables").iterdir()}
    report_data = run_dir.parent / "data"  # the report rendered from this run directory, if committed
    for name, data in derived.items():
        committed = [run_dir / "tables" / name] + ([report_data / name] if report_data.is_dir() else [])
        if name.endswith(".parquet"):
            assert pq.read_schema(io.BytesIO(data)).remove_metadata() == SCHEMAS[name.split(".")[0]], name
        for path in committed:
            assert _rows(data, name) == _rows(path.read_bytes(), name, typed=False), (name, path)


def _rows(data: bytes, name: str, typed: bool = True) -> object:
    """A table file's rows as plain values (run.json: its bytes); for the cells table as committed
    (``typed=False``), its rows with the round's fact metrics moved into their typed columns."""
    import pandas as pd

    from harness_ext.store.tables import FACT_METRICS, ROUND_COLUMNS, SCHEMAS

    if name == "run.json":
        return data
    frame = pd.read_parquet(io.BytesIO(data)) if name.endswith(".parquet") else pd.read_csv(io.BytesIO(data))
    if name.startswith("cells") and not typed:
        facts = frame[(frame["kind"] == "speed") & frame["metric"].isin(FACT_METRICS)]
        by_cell = facts.pivot_table(index="cell_id", columns="metric", values="value", aggfunc="first")
        frame = frame.drop(facts.index).reset_index(drop=True)
        at = frame.columns.get_loc("invocation") + 1
        for i, col in enumerate(ROUND_COLUMNS):
            values = frame["cell_id"].map(by_cell[col]) if col in by_cell else None
            frame.insert(at + i, col, values)
        frame["contended"] = frame["contended"].map(lambda v: bool(v) if pd.notna(v) else None)
    frame = frame.reindex(columns=SCHEMAS[name.split(".")[0]].names)
    return [[None if pd.isna(v) else (float(v) if isinstance(v, (int, float)) else v) for v in r] for r in frame.values]


@pytest.mark.parametrize("path", sorted(REPO.glob("reports/**/*.parquet")), ids=lambda p: str(p.relative_to(REPO)))
def test_committed_tables_conform_to_the_one_schema(path: Path) -> None:
    import pyarrow.parquet as pq

    from harness_ext.store.tables import SCHEMAS, mismatches

    assert mismatches(pq.read_schema(path), SCHEMAS[path.stem]) == []


def test_the_share_of_parameters_held_quantized_is_read_from_loads_old_and_new(demo_study) -> None:
    """The demo's records predate the recorded counts: bitsandbytes' storage dtypes give the share
    (int8 one weight per byte, 4-bit two per uint8 byte); a recorded count gives the same."""
    from harness_ext.report.sections import quantized_rows, quantized_share

    rows = {r["scheme"]: r["share"] for r in quantized_rows(demo_study)}
    unquantized = 49152 * 576 + 61 * 576  # SmolLM2-135M's tied embedding and its 61 norms stay float32
    assert set(rows) == {"int8", "nf4", "fp4"}
    assert all(share == 1 - unquantized / 134_515_008 for share in rows.values())
    recorded = {"quantized_parameters": 3, "unquantized_parameters": 1, "dtypes": {"uint8": 5}}
    assert quantized_share({**recorded, "scheme_fields": {"quant": "nf4"}}) == 0.75
