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


@pytest.mark.parametrize("name", ["demo", "paper_speed", "paper_speed_single", "backends_cpu"])
def test_committed_report_rerenders_from_its_tables(name: str, tmp_path) -> None:
    folder = REPO / "reports" / name
    committed = (folder / "index.html").read_text(encoding="utf-8")
    fresh = render(folder / "data", tmp_path / name).read_text(encoding="utf-8")
    assert _without_figures(fresh) == _without_figures(committed)
    for table in ("claims.csv", "speed.csv", "quality.csv"):
        assert (tmp_path / name / table).read_text() == (folder / table).read_text(), table


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
def test_committed_run_directories_derive_their_tables_byte_identically(run_dir: Path) -> None:
    """The tables derived from the records through the one schema are the tables committed beside
    them (the report's derivation, as ``harness-ext report <run dir>`` does it)."""
    from harness_ext.report.page import input_tables

    warnings: list[str] = []
    derived = input_tables(run_dir, warnings.append)
    assert not warnings and set(derived) == {p.name for p in (run_dir / "tables").iterdir()}
    report_data = run_dir.parent / "data"  # the report rendered from this run directory, if committed
    for name, data in derived.items():
        if report_data.is_dir():
            assert data == (report_data / name).read_bytes(), name
        assert _content(data, name) == _content((run_dir / "tables" / name).read_bytes(), name), name


def _content(data: bytes, name: str) -> object:
    """A table file's content: its bytes, or for parquet its schema, rows and pandas metadata less
    the versions of the libraries that wrote it (tables/ of older runs were written by older ones)."""
    if not name.endswith(".parquet"):
        return data
    import io
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = json.loads(table.schema.metadata[b"pandas"])
    versions = ("creator", "pandas_version")
    return table.replace_schema_metadata(None), {k: v for k, v in meta.items() if k not in versions}


@pytest.mark.parametrize("path", sorted(REPO.glob("reports/**/*.parquet")), ids=lambda p: str(p.relative_to(REPO)))
def test_committed_tables_conform_to_the_one_schema(path: Path) -> None:
    import pyarrow.parquet as pq

    from harness_ext.store.tables import SCHEMAS, mismatches

    assert mismatches(pq.read_schema(path), SCHEMAS[path.stem]) == []
