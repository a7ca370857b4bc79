"""The report: valid HTML, hostile strings stay text, opens cleanly in a real browser, renders
partial runs honestly, and is a deterministic function of the tables."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import browser
import html5lib
import pandas as pd
import pytest
from conftest import heavy_modules

from harness_ext.report import render
from harness_ext.run import Runner
from harness_ext.spec import parse_spec
from harness_ext.store import RunStore

HOSTILE = '<script>alert(1)</script>" onmouseover="alert(2)" </style><img src=x onerror=alert(3)>'
SPEC = """\
name: report-test
description: 'a study </style><script>alert(4)</script>'
models:
  - {{name: tiny, pretrained: "{model}"}}
schemes: [fp32, nf4, fp4]
sampling:
  temperature: [0, 1.2]
  top_k: [null, 5]
  max_new_tokens: [3, 6]
tasks: [quant_nextword, quant_continuation]
limit: 3
seeds: [0]
probe: {{limit: 6}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 4, repeats: 3, rounds: 1}}
threads: 1
report:
  title: 'Tiny " onmouseover="alert(5)'
"""


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-run") / "run"
    text = SPEC.format(model=tiny_model)
    Runner(parse_spec(text), text, progress=False, output_dir=out).run()
    store = RunStore(out)
    records = store.load_records()
    point = {"temperature": 0.0, "top_k": None, "max_new_tokens": 6}  # a cell the examples section shows
    rec = next(
        r
        for r in records.values()
        if r.kind == "eval"
        and r.definition["task"] == "quant_continuation"
        and r.definition["scheme"]["name"] == "nf4"
        and all(r.definition["point"][k] == v for k, v in point.items())
    )
    first = next(g for g in rec.generations if g["doc_id"] == 0 and g["sample"] == 0)
    first["text"] = HOSTILE  # a model output that tries to run code
    store.write(rec)
    store.export_tables(
        store.load_records().values(), text, extra=json.loads((out / "tables" / "run.json").read_text())
    )
    return out


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory) -> tuple[Path, str]:
    """The run's report, rendered with every network connection refused (a connection fails it)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the report tried to open a network connection")

    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", refuse)
        mp.setattr(socket, "create_connection", refuse)
        index = render(run_dir, out)
    return index, index.read_text(encoding="utf-8")


def test_page_is_valid_html_without_scripts(page) -> None:
    _, html = page
    doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)  # raises on any parse error
    assert doc.findall(".//script") == []
    assert all(not k.startswith("on") for el in doc.iter() for k in el.attrib)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the model output is shown, as text
    assert "&lt;/style&gt;&lt;script&gt;alert(4)" in html  # spec strings too
    styles = [el for el in doc.iter() if isinstance(el.tag, str) and el.tag.split("}")[-1] == "style"]
    assert styles and not any("alert" in (el.text or "") for el in styles)  # `</style>` in a spec stayed text


def test_page_has_every_section_and_numbers_from_the_run(page, run_dir) -> None:
    index, html = page
    for section in ("abstract", "setup", "claims", "speed", "quality", "figures", "examples", "missing", "appendix"):
        assert f'id="{section}"' in html
    assert html.count("<figure") >= 3 and html.count("<svg") >= 3
    for claim in ("a", "b", "b2", "c", "c2", "d", "d2"):
        assert f'id="claim-{claim}"' in html
    for name in ("quality.csv", "paired_differences.csv", "sensitivity.csv", "speed.csv", "claims.csv"):
        assert (index.parent / name).is_file()
    speed = pd.read_csv(index.parent / "speed.csv")
    assert set(speed["scheme"]) == {"fp32", "nf4", "fp4"}
    decode = speed.loc[speed["scheme"] == "nf4", "decode_ms_per_token"].iloc[0]
    assert f"{decode:.2f}" in html  # the table shows the measured number
    assert "Every cell of the spec completed." in html


@pytest.mark.skipif(browser.chromium() is None, reason="headless Chromium is not installed here (CI installs it)")
def test_opens_in_headless_chromium(page, tmp_path) -> None:
    pytest.importorskip("websocket", reason="websocket-client is part of the test extra")
    index, html = page
    expr = """Array.from(document.querySelectorAll('figure svg')).map(s => {
        const r = s.getBoundingClientRect(), st = getComputedStyle(s);
        return [r.width, r.height, st.display, st.visibility, s.querySelectorAll('path').length]; })"""
    result = browser.load(index.resolve().as_uri(), expr, tmp_path / "report.png")
    assert result["errors"] == [] and result["dialogs"] == []
    figures = result["value"]
    assert len(figures) == html.count("<figure")
    for width, height, display, visibility, paths in figures:
        assert width > 200 and height > 100 and display != "none" and visibility == "visible" and paths > 10
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_rendering_is_deterministic_and_reproducible_from_the_report_folder(page, tmp_path) -> None:
    index, html = page
    again = render(index.parent / "data", tmp_path / "again")
    assert again.read_text(encoding="utf-8") == html


def test_partial_run_says_what_is_missing_and_draws_no_verdict_from_it(run_dir, tmp_path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    store = RunStore(partial)
    records = store.load_records()
    # fp4 failed at load; one eval cell of nf4 was never run (interrupted)
    for rec in records.values():
        if rec.definition["scheme"]["name"] == "fp4":
            rec.status, rec.error = "failed", "load failed: CUDA out of memory (simulated)"
            rec.metrics, rec.points, rec.sample_metrics, rec.generations = {}, [], [], []
            store.write(rec)
    dropped = next(r for r in records.values() if r.kind == "eval" and r.definition["scheme"]["name"] == "nf4")
    (partial / "records" / f"{dropped.cell_id}.json").unlink()
    run = json.loads((partial / "tables" / "run.json").read_text())
    store.export_tables([r for k, r in store.load_records().items()], run["spec_text"], extra=run)
    html = render(partial, tmp_path / "out").read_text(encoding="utf-8")
    assert "load failed: CUDA out of memory (simulated)" in html
    assert "have no record yet" in html and dropped.label in html
    claims = pd.read_csv(tmp_path / "out" / "claims.csv").set_index("claim")
    # without fp4 there is no nf4/fp4 pair: (a) and (b) are not tested (never contradicted)
    assert claims.loc["a", "verdict"] == "not tested" and "no nf4 and fp4" in claims.loc["a", "reason"]
    assert claims.loc["b", "verdict"] == "not tested"
    assert "fp4" not in json.loads(claims.loc["c", "evidence"]).__repr__().replace("nf4", "")


def test_report_says_when_remote_code_ran(run_dir, page) -> None:
    from harness_ext.analysis import Study
    from harness_ext.report import build

    assert "trust_remote_code: true" not in page[1]
    study = Study.load(run_dir)
    study.run["trust_remote_code"] = {"tiny": True}
    html, _ = build(study, {})
    assert "<code>trust_remote_code: true</code>: code from the model repository ran" in html


def test_rendering_needs_no_network(page) -> None:
    """The page rendered with sockets refused (the ``page`` fixture) and fetches nothing when read."""
    _, html = page
    # nothing that a browser would fetch: no remote src/href, no CSS url() (xmlns identifiers are not fetched)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html) and "@import" not in html


def test_times_reference_divides_by_the_same_model_batch_mode_and_round() -> None:
    """The committed GPU report's 7B fp16 eager row read 4.25x against itself: the reference row was
    matched on model and batch only, and the compiled row sorted first."""
    from harness_ext.analysis import Study
    from harness_ext.report.sections import speed_rows

    rows = []
    for mode, ms in (("compiled", 5.0), ("eager", 21.25)):
        for scheme, factor in (("fp16", 1.0), ("nf4", 2.0)):
            for metric, v in (("decode_ms_per_token", ms * factor), ("round", 0.0)):
                rows.append(
                    {
                        "cell_id": f"{mode}-{scheme}",
                        "kind": "speed",
                        "status": "ok",
                        "model": "7b",
                        "scheme": scheme,
                        "quant": "none" if scheme == "fp16" else "nf4",
                        "bits": 16,
                        "double_quant": False,
                        "dtype": "float16",
                        "compute_dtype": None,
                        "batch_size": 1.0,
                        "mode": mode,
                        "invocation": "i",
                        "metric": metric,
                        "value": v,
                        "lo": None,
                        "hi": None,
                    }
                )
    study = Study(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), {"references": {"7b": "fp16"}})
    from harness_ext import analysis

    got = {(r["mode"], r["scheme"]): r["ratio"] for r in speed_rows(study, analysis.speed_table(study))}
    assert got == {
        ("compiled", "fp16"): "1.00×",
        ("compiled", "nf4"): "2.00×",
        ("eager", "fp16"): "1.00×",
        ("eager", "nf4"): "2.00×",
    }


def test_report_renders_without_torch_the_backend_or_the_runner(fresh_imports) -> None:
    """A report renders on any machine: importing it and rendering a run's tables loads neither torch,
    nor the model code, nor the runner (issue 18: environment → measure → torch did)."""
    rooms = ("harness_ext.backend", "harness_ext.run")
    assert heavy_modules(fresh_imports["modules"]["render_tables"], ours=rooms) == set()


def test_report_of_a_run_directory_renders_without_torch(fresh_imports) -> None:
    """The same from a run directory (the committed paper_speed run), whose records are re-read and
    their cell ids re-hashed through harness_ext.spec."""
    assert heavy_modules(fresh_imports["modules"]["render_run_dir"]) == set()


# -- issue 19: the report as a reader meets it -----------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
needs_chromium = pytest.mark.skipif(
    browser.chromium() is None, reason="headless Chromium is not installed here (CI installs it)"
)
#: per table: [section, table's scroll width, its container's width, container's left and right, window width]
TABLE_BOXES = """(() => { document.querySelectorAll('details').forEach(d => d.open = true);
  const page = document.documentElement.clientWidth;
  return Array.from(document.querySelectorAll('table')).map(t => { const c = t.parentElement.getBoundingClientRect();
    return [t.closest('section').id, t.scrollWidth, t.parentElement.clientWidth, c.left, c.right, page]; }); })()"""


@pytest.fixture(scope="module")
def demo(demo_report) -> tuple[Path, str]:
    """The committed demo report, rendered afresh from its tables (once per session, conftest)."""
    return demo_report


def _overflowing(boxes: list) -> list:
    return [b for b in boxes if b[1] > b[2] or b[3] < 0 or b[4] > b[5]]


@needs_chromium
def test_no_table_of_the_demo_overflows_at_1400_px(demo, tmp_path) -> None:
    """The speed (12 columns) and quality (13) tables were cut at 1400 px, their right-hand columns behind
    a scrollbar. Every table (folded ones opened) now fits its container, and no container leaves the window."""
    pytest.importorskip("websocket", reason="websocket-client is part of the test extra")
    index, html = demo
    result = browser.load(index.resolve().as_uri(), TABLE_BOXES, tmp_path / "demo.png", width=1400)
    boxes = result["value"]
    assert result["errors"] == [] and len(boxes) == html.count("<table") > 20
    assert {"glance", "speed", "quality", "examples"} <= {b[0] for b in boxes}
    assert _overflowing(boxes) == []


@needs_chromium
def test_screenshot_of_the_at_a_glance_table(demo, tmp_path) -> None:
    """The verdicts table sits under the abstract, on the first screen, and a screenshot of it holds its pixels."""
    pytest.importorskip("websocket", reason="websocket-client is part of the test extra")
    from PIL import Image

    index, _ = demo
    shot = tmp_path / "glance.png"
    result = browser.load(index.resolve().as_uri(), TABLE_BOXES, shot, width=1400, clip_selector="table.glance")
    box = result["clip"]
    assert box["width"] > 600 and box["height"] > 150  # seven claims, four columns
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1400 and box["y"] + box["height"] < 1600  # first screen
    image = Image.open(shot)
    assert image.size == (round(box["width"]), round(box["height"]))
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text and verdict badges, not a blank rectangle


@needs_chromium
def test_printed_page_keeps_every_table_on_the_paper(demo, tmp_path) -> None:
    """Under the print stylesheet at an A4 page's printable width no table is wider than the page, and
    ``chromium --print-to-pdf`` prints A4 pages."""
    pytest.importorskip("websocket", reason="websocket-client is part of the test extra")
    index, _ = demo
    result = browser.load(
        index.resolve().as_uri(), TABLE_BOXES, tmp_path / "print.png", width=browser.A4_PRINT_WIDTH, media="print"
    )
    assert result["errors"] == [] and len(result["value"]) > 20
    assert _overflowing(result["value"]) == []
    pdf = browser.print_to_pdf(index, tmp_path / "demo.pdf")
    assert pdf.startswith(b"%PDF") and len(pdf) > 100_000
    assert re.search(rb"/MediaBox \[0 0 59[45](\.\d+)? 84[12](\.\d+)?\]", pdf)  # A4 (595 x 842 pt), from @page


def test_verdicts_at_a_glance_come_right_under_the_abstract(demo, demo_study) -> None:
    """Right under the abstract: every claim with its verdict, scope, the figure that decided it and what
    the design could detect (the claims as decided from the committed tables)."""
    from markupsafe import escape

    from harness_ext.analysis import claims as decide

    _, html = demo
    assert html.index('id="abstract"') < html.index('id="glance"') < html.index('id="setup"')
    glance = html[html.index('id="glance"') : html.index('id="setup"')]
    decided = decide(demo_study)
    assert [c.key for c in decided] == ["a", "b", "b2", "c", "c2", "d", "d2"]
    for c in decided:
        assert f'<a href="#claim-{c.key}">' in glance
        assert str(escape(c.deciding or c.reason)) in glance
        assert not c.scope or c.verdict == "not tested" or str(escape(c.scope)) in glance
        assert str(escape(c.detectable)) in glance
    assert len(pd.read_csv(REPO / "reports" / "demo" / "claims.csv")) == 7


def test_abstract_states_the_caveats_that_bound_every_verdict(demo, tmp_path) -> None:
    _, html = demo
    abstract = html[html.index('id="abstract"') : html.index('id="glance"')]
    assert "dequantized from a Q4_1/Q8_0 GGUF" in abstract and "Speed was timed on the CPU" in abstract
    gpu = render(REPO / "reports" / "paper_speed" / "data", tmp_path / "gpu").read_text(encoding="utf-8")
    abstract = gpu[gpu.index('id="abstract"') : gpu.index('id="glance"')]
    assert "random weights of the real shapes" in abstract and "the GPU (NVIDIA H100 80GB HBM3)" in abstract


def test_labels_name_their_statistic_and_no_number_reads_minus_zero(demo) -> None:
    _, html = demo
    for label in (
        "p10–p90 of repeats",
        "95 % CI over rounds",
        "95 % bootstrap CI over prompts",
        "95 % t-interval over prompts",
        "95 % t-interval over rounds (log-ratio)",
    ):
        assert label in html, label
    assert "95% interval" not in html and "[95% interval" not in html  # one header for every statistic, gone
    assert not re.search(r"-0\.0+(?![0-9]*[1-9])\b", html)  # -0.000, -0.00: a sign on a zero


def test_fmt_number_drops_the_sign_of_a_rounded_zero() -> None:
    from harness_ext.analysis.stats import Estimate, fmt_number

    assert fmt_number(-0.0004) == "0.000" and fmt_number(-0.0004, "+.3f") == "+0.000"
    assert fmt_number(-0.001) == "-0.001" and fmt_number(-0.04, ".1f") == "0.0" and fmt_number(2.5, "g") == "2.5"
    assert Estimate(0.01, -0.0002, 0.02, 9).text() == "0.010 [0.000, 0.020]"


def test_every_evidence_row_says_what_it_shows_and_d_names_the_condition(demo_study) -> None:
    claims = pd.read_csv(REPO / "reports" / "demo" / "claims.csv").set_index("claim")
    from harness_ext.analysis import claims as decide

    by_key = {c.key: c for c in decide(demo_study)}
    profile = by_key["b"].evidence[0]["verdict"]  # what the per-temperature gaps show before any test
    assert re.fullmatch(r"(nf4|fp4) ahead at (every T|T=\S+; the lead changes at .+)|no gap at any T", profile)
    assert all(e.get("verdict") for c in by_key.values() for e in c.evidence)  # every row says what it shows
    comparisons = [e for k in ("d", "d2") for e in by_key[k].evidence if e["what"].endswith("decode time")]
    assert comparisons
    for e in comparisons:  # each comparison says whether it met its condition over the rounds
        assert e["verdict"].startswith(("meets", "shown short of", "undecided against", "not replicated")), e
    assert claims.loc["d", "reason"] == by_key["d"].reason  # the committed report says so too


def test_examples_say_their_settings_and_show_the_reference_beside_each_scheme(demo) -> None:
    _, html = demo
    examples = html[html.index('id="examples"') : html.index('id="missing"')]
    settings = "T = 0 (greedy), top-k off, top-p 1, repetition penalty 1, at most 32 new tokens, seed 0, sample 0"
    assert settings in examples
    assert "reference (fp32), same stream" in examples
    gens = pd.read_parquet(REPO / "reports" / "demo" / "data" / "generations.parquet")
    same = gens[
        (gens["task"] == "quant_continuation")
        & (gens["doc_id"] == 0)
        & (gens["temperature"] == 0.0)
        & (gens["top_k"].isna() | (gens["top_k"] == -1))
        & (gens["max_new_tokens"] == 32)
        & (gens["seed"] == 0)
        & (gens["sample"] == 0)
    ]
    ref = same[same["scheme"] == "fp32"]["text"].iloc[0]
    block = examples[: examples.index("T = 0.7")]
    cell = re.search(r'<td class="gen ref" rowspan="4">(.*?)<span class="finish">', block, re.S)
    assert cell and cell.group(1) == html_escape(ref)
    # on paper the spanning cell is hidden and the reference is the block's first row (rows can then break)
    assert f'<tr class="ref-row"><td>fp32 (reference)</td><td class="gen">{html_escape(ref)}</td>' in block
    for scheme in ("bf16", "int8", "nf4", "fp4"):  # each scheme's own output for the same prompt and stream
        text = same[same["scheme"] == scheme]["text"].iloc[0]
        assert f'<td>{scheme}</td><td class="gen">{html_escape(text)}</td>' in block


def html_escape(text: str) -> str:
    import markupsafe

    return str(markupsafe.escape(text))
