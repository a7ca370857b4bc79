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


@pytest.mark.parametrize("name", ["demo", "paper_speed", "paper_speed_single", "backends_cpu"])
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
    """The tables derived from the records through the one schema (the report's derivation, as
    ``harness-ext report <run dir>`` does it) are, byte for byte, the tables committed beside them and
    in the report rendered from them: the record format is the contract, the tables follow from it."""
    import pyarrow.parquet as pq

    from harness_ext.report.page import input_tables
    from harness_ext.store.tables import SCHEMAS

    warnings: list[str] = []
    derived = input_tables(run_dir, warnings.append)
    assert not warnings and set(derived) == {p.name for p in (run_dir / "tables").iterdir()}
    report_data = run_dir.parent / "data"  # the report rendered from this run directory, if committed
    for name, data in derived.items():
        if name.endswith(".parquet"):
            assert pq.read_schema(io.BytesIO(data)).remove_metadata() == SCHEMAS[name.split(".")[0]], name
        for path in [run_dir / "tables" / name] + ([report_data / name] if report_data.is_dir() else []):
            assert data == path.read_bytes(), (name, path)


@pytest.mark.parametrize("path", sorted(REPO.glob("reports/**/*.parquet")), ids=lambda p: str(p.relative_to(REPO)))
def test_committed_tables_conform_to_the_one_schema(path: Path) -> None:
    import pyarrow.parquet as pq

    from harness_ext.store.tables import SCHEMAS, mismatches

    assert mismatches(pq.read_schema(path), SCHEMAS[path.stem]) == []


def test_the_share_of_parameters_held_quantized_is_read_from_loads_old_and_new(demo_study) -> None:
    """The demo's records predate the recorded counts: bitsandbytes' storage dtypes give the share
    (int8 one weight per byte, 4-bit two per uint8 byte); a recorded count gives the same."""
    from harness_ext.report.setup import quantized_rows, quantized_share

    rows = {r["scheme"]: r["share"] for r in quantized_rows(demo_study)}
    unquantized = 49152 * 576 + 61 * 576  # SmolLM2-135M's tied embedding and its 61 norms stay float32
    assert set(rows) == {"int8", "nf4", "fp4"}
    assert all(share == 1 - unquantized / 134_515_008 for share in rows.values())
    recorded = {"quantized_parameters": 3, "unquantized_parameters": 1, "dtypes": {"uint8": 5}}
    assert quantized_share({**recorded, "scheme_fields": {"quant": "nf4"}}) == 0.75
