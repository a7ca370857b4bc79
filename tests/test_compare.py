"""`harness-ext report A --compare B`: a moved verdict and moved figures are reported, figures that
stay within the runs' own uncertainty are not, both runs are only read, and a changed spec or
environment is said. Run B (and C) are copies of a tiny run A with figures edited in their records."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import html5lib
import numpy as np
import pandas as pd
import pytest

from harness_ext.cli import main
from harness_ext.report import compare
from harness_ext.run import Runner
from harness_ext.spec import parse_spec

SPEC = """\
name: compare-test
models:
  - {{name: tiny, pretrained: "{model}"}}
schemes: [bf16, fp32, int8]
sampling: {{temperature: [0.7], max_new_tokens: [2]}}
tasks: [quant_nextword]
limit: 8
seeds: [0]
probe: {{enabled: false}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 2, warmup: 0, repeats: 3, rounds: 3}}
threads: 1
"""
# decode ms/token per round: in A bf16 is the fastest (claim (d2) holds; (d) names fp16, absent here); in B
# the two swap (it does not); fp32 moves within its own round-to-round spread (not a moved figure)
DECODE = {
    "A": {"bf16": [10.0, 10.5, 9.8], "int8": [30.0, 31.0, 29.5], "fp32": [20.0, 22.0, 18.0]},
    "B": {"bf16": [30.0, 31.0, 29.5], "int8": [10.0, 10.5, 9.8], "fp32": [20.5, 21.0, 19.0]},
}
EDITED = ("int8", 0.7)  # the quality cell whose exact match B changes
EXACT = {"A": [0, 0, 0, 0, 0, 0, 0, 1], "B": [1, 1, 1, 0, 1, 1, 1, 1]}


def _edit(run: Path, side: str) -> None:
    """Set the speed figures and one quality cell of ``run`` to ``side``'s values (records only)."""
    for path in sorted((run / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        d, m = rec["definition"], rec["metrics"]
        if rec["kind"] == "speed":
            m["decode_ms_per_token"]["value"] = DECODE[side][d["scheme"]["name"]][d["params"]["round"]]
            rec["measurements"]["contended"] = False  # the figures are set, not measured on this busy machine
            for name in ("index_matmul_gflops", "index_memory_gb_s"):
                m[name]["value"] = 10.0
        elif (d["scheme"]["name"], d["point"]["temperature"]) == EDITED:
            for s in rec["sample_metrics"]:
                s["exact_match"] = float(EXACT[side][s["doc_id"]])
        path.write_text(json.dumps(rec))


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    text = SPEC.format(model=tiny_model)
    Runner(parse_spec(text), text, progress=False, output_dir=root / "A").run()
    shutil.copytree(root / "A", root / "B")
    shutil.copytree(root / "A", root / "C")
    _edit(root / "A", "A")
    _edit(root / "B", "B")
    _edit(root / "C", "A")
    run_json = root / "C" / "tables" / "run.json"  # C: A's figures under another spec and torch
    run = json.loads(run_json.read_text())
    run["spec_text"] = run["spec_text"].replace("limit: 8", "limit: 9")
    run_json.write_text(json.dumps(run))
    for inv in (root / "C" / "invocations").glob("*.json"):
        data = json.loads(inv.read_text())
        data["packages"]["torch"] = "0.0-other"
        inv.write_text(json.dumps(data))
    return {k: root / k for k in "ABC"}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes() if p.is_file() else b"dir")
    return h.hexdigest()


def test_compare_reports_the_moved_verdict_and_figures_and_reads_only(runs, tmp_path, capsys) -> None:
    before = {k: _digest(runs[k]) for k in "AB"}
    out = tmp_path / "out"
    assert main(["report", str(runs["A"]), "--compare", str(runs["B"]), "--output-dir", str(out)]) == 0
    assert {k: _digest(runs[k]) for k in "AB"} == before  # neither run directory was written
    text = capsys.readouterr().out
    assert "MOVED (d2) holds → does not hold" in text and "warning" not in text

    claims = pd.read_csv(out / "compare_claims.csv").set_index("claim")
    assert claims.loc["d2", "verdict_a"] == "holds" and claims.loc["d2", "verdict_b"] == "does not hold"
    # (d) without fp16: not tested, unless its present part fails (in B int8 is the fastest)
    assert claims.loc["d", "verdict_a"] == "not tested" and claims.loc["d", "verdict_b"] == "does not hold"
    assert claims["moved"].tolist() == (claims["verdict_a"] != claims["verdict_b"]).tolist()

    speed = pd.read_csv(out / "compare_speed.csv").set_index("scheme")
    assert speed.loc["bf16", "moved"] and speed.loc["int8", "moved"]
    assert not speed.loc["fp32", "moved"] and speed.loc["fp32", "judged"]  # within its round-to-round spread
    assert speed.loc["int8", "value_a"] == 30.0 and speed.loc["int8", "value_b"] == 10.0

    quality = pd.read_csv(out / "compare_quality.csv")
    hit = quality[quality["moved"]]
    assert len(hit) == 1  # the edited cell, and nothing that is unchanged
    row = hit.iloc[0]
    assert (row["scheme"], row["temperature"], row["metric"]) == (*EDITED, "exact_match")
    assert (row["value_a"], row["value_b"]) == (0.125, 0.875)
    assert quality["judged"].all() and len(quality) >= 4  # the unchanged cells were compared, not skipped

    html = (out / "compare.html").read_text()
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)
    assert "<strong>does not hold</strong>" in html and "0.875" in html


def test_compare_warns_when_the_spec_or_environment_differs(runs) -> None:
    c = compare.compare(compare.load_study(runs["A"], print), compare.load_study(runs["C"], print))
    spec = [w for w in c.warnings if "different specs" in w]
    assert spec and "differ in: limit" in spec[0]
    env = [w for w in c.warnings if "environments differ" in w]
    assert env and "torch" in env[0]
    assert next(x for x in c.environment if x.startswith("torch: ")).endswith("→ 0.0-other")
    same = compare.compare(compare.load_study(runs["A"], print), compare.load_study(runs["A"], print))
    assert same.warnings == [] and not same.claims["moved"].any()
    assert not same.quality["moved"].any() and not same.speed["moved"].any()


def test_a_moved_speed_figure_says_whether_its_time_or_its_weight_bytes_moved() -> None:
    """The H100 → H200 comparison showed cells 'moved' at 1.00× because the weight count changed
    (4-bit absmax now counted): each moved row says which of the two moved."""
    from harness_ext.report.compare import SPEED_KEYS, moved

    def side(ms: list[float], mib: list[float]) -> pd.DataFrame:
        rows = []
        for scheme, m, w in zip(("fp16", "nf4", "int8"), ms, mib, strict=True):
            logs = np.log([m * 0.99, m, m * 1.01])
            key = dict(zip(SPEED_KEYS, ("m", scheme, 1, "eager"), strict=True))
            rows.append(
                {**key, "value": m, "log_mean": logs.mean(), "se": logs.std(ddof=1) / 3**0.5, "n": 3, "weight_mib": w}
            )
        return pd.DataFrame(rows)

    j = moved(side([20, 26, 70], [100, 50, 60]), side([20, 26, 35], [100, 55, 60]), SPEED_KEYS).set_index("scheme")
    assert j.loc["nf4", "moved"] and j.loc["nf4", "why"] == "weight memory"
    assert j.loc["int8", "moved"] and j.loc["int8", "why"] == "decode time"
    assert not j.loc["fp16", "moved"] and j.loc["fp16", "why"] == ""
