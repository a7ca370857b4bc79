"""Runner and store: one load per pair, resume after SIGKILL, failure isolation, spec changes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness_ext.run import Runner
from harness_ext.spec import parse_spec
from harness_ext.store import RunStore

SPEC = """\
name: runner-test
models:
  - {{name: a, pretrained: "{a}"}}
schemes: [fp32, nf4]
sampling:
  temperature: [0, 1.2]
  top_k: [null, 5]
  max_new_tokens: [4]
tasks: [quant_nextword, quant_continuation]
limit: 3
seeds: [0]
speed: {{batch_sizes: [2], prompt_tokens: 8, new_tokens: 4, repeats: 3, rounds: 1}}
batch_size: 8
threads: 1
"""
CELLS_PER_PAIR = 2 * 2 * 2 + 1 + 1  # eval (temperatures x top_k x tasks) + probe + speed


def one_model(path: Path, schemes: str = "[fp32, nf4]", temperatures: str = "[0, 1.2]") -> str:
    """SPEC with the given schemes and temperatures."""
    return (
        SPEC.format(a=path)
        .replace("[fp32, nf4]", schemes)
        .replace("temperature: [0, 1.2]", f"temperature: {temperatures}")
    )


def _runner(text: str, out: Path) -> Runner:
    return Runner(parse_spec(text), text, progress=False, output_dir=out)


@pytest.fixture(scope="module")
def full_run(tiny_model_nopad, tmp_path_factory):
    """A whole run of one model (its tokenizer without a pad token: generation, the probe and the
    reference's scoring pad by themselves) in its reference and a 4-bit scheme."""
    text = SPEC.format(a=tiny_model_nopad)
    out = tmp_path_factory.mktemp("run") / "r"
    runner = _runner(text, out)
    result = runner.run()
    return text, out, runner, result


def test_a_whole_run_loads_each_pair_once_and_stores_every_cell(full_run) -> None:
    _, out, runner, result = full_run
    assert result.failed == 0 and result.ok == result.cells
    assert result.cells == 2 * CELLS_PER_PAIR
    # quality: reference first; then one load per (scheme, round), in the round's Williams order
    assert runner.loads[:2] == [("a", "fp32"), ("a", "nf4")]
    assert sorted(runner.loads[2:]) == [("a", "fp32"), ("a", "nf4")]
    assert runner.scoring_loads == [("a", "fp32")]
    cells = pd.read_parquet(out / "tables" / "cells.parquet")
    assert set(cells["model"]) == {"a"} and set(cells["scheme"]) == {"fp32", "nf4"}
    ev = cells[(cells.kind == "eval") & (cells.metric == "exact_match")]
    assert len(ev) == 2 * 4
    quant = cells[(cells.metric == "rouge_l_ref") & (cells.scheme != "fp32")]
    assert len(quant) == 4 and quant["value"].between(0, 1).all()
    nll = cells[cells.metric == "nll_ref"]["value"]
    assert len(nll) == 2 * 4 and (nll > 0).all()  # every continuation cell, the reference's own included
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert set(samples["doc_id"]) == {0, 1, 2}
    gens = pd.read_parquet(out / "tables" / "generations.parquet")
    assert len(gens) == 2 * 8 * 3  # schemes x eval cells x prompts
    run = json.loads((out / "tables" / "run.json").read_text())
    assert {(x["model"], x["scheme"]) for x in run["loads"]} == {("a", "fp32"), ("a", "nf4")}


def test_records_are_complete_and_versioned(full_run) -> None:
    _, out, _, _ = full_run
    store = RunStore(out)
    records = store.load_records()
    assert not store.problems
    rec = next(r for r in records.values() if r.kind == "eval" and r.definition["task"] == "quant_continuation")
    assert rec.record_version == 1 and rec.lm_eval["results"] and rec.lm_eval["samples"]
    assert rec.load["weight_bytes"] > 0 and rec.measurements["evaluation"]["generate_calls"] >= 1
    speed = next(r for r in records.values() if r.kind == "speed")
    assert speed.metrics["decode_ms_per_token"]["value"] > 0
    assert speed.measurements["repeats"] == 3 and len(speed.measurements["calls"]) == 3
    env = store.invocations()[0]
    assert env["packages"]["lm-eval"] and env["packages"]["torch"] and env["argv"] is not None


def test_rerun_skips_everything(full_run) -> None:
    text, out, _, first = full_run
    before = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    runner = _runner(text, out)
    result = runner.run()
    assert result.skipped == first.cells and runner.loads == [] and runner.scoring_loads == []
    after = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert before == after


def test_changed_spec_gets_new_cells_only(full_run, tmp_path) -> None:
    text, out, _, _ = full_run
    changed = text.replace("temperature: [0, 1.2]", "temperature: [0, 1.3]")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    runner = _runner(changed, copy)
    result = runner.run()
    new = 2 * 2 * 2  # temperature 1.3 x two top_k x two tasks, per pair
    # the probe's grid is unchanged: its default dense temperatures (0, 0.1, ..., 1.5) hold 1.2 and 1.3 already
    assert result.cells - result.skipped == new
    assert runner.loads == [("a", "fp32"), ("a", "nf4")]


def test_a_failing_pair_is_recorded_and_the_study_goes_on(tiny_model, tmp_path, monkeypatch) -> None:
    text = one_model(tiny_model, "[fp32, int8, nf4]", "[0]").replace(", quant_continuation]", "]")
    runner = _runner(text, tmp_path / "r")
    original = runner.load_lm

    def load(model, scheme, scoring=False):
        if scheme.name == "int8" and not scoring:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return original(model, scheme, scoring=scoring)

    monkeypatch.setattr(runner, "load_lm", load)
    result = runner.run()
    records = RunStore(tmp_path / "r").load_records().values()
    failed = [r for r in records if r.status == "failed"]
    assert failed and all(r.definition["scheme"]["name"] == "int8" for r in failed)
    assert all("CUDA out of memory" in r.error for r in failed)
    assert any(r.status == "ok" and r.definition["scheme"]["name"] == "nf4" for r in records)  # the next pair ran
    assert result.failed == len(failed)
    # a re-run redoes only the failed cells
    again = _runner(text, tmp_path / "r")
    res2 = again.run()
    # its quality load and its speed round
    assert again.loads == [("a", "int8")] * 2 and res2.failed == 0 and res2.skipped == result.ok


def test_a_failing_cell_does_not_stop_its_pair(tiny_model, tmp_path, monkeypatch) -> None:
    text = one_model(tiny_model, "[fp32]", "[0]")
    runner = _runner(text, tmp_path / "r")
    from harness_ext.backend import speed

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(speed, "benchmark", boom)
    result = runner.run()
    records = list(RunStore(tmp_path / "r").load_records().values())
    assert [r.kind for r in records if r.status == "failed"] == ["speed"]
    assert result.failed == 1 and result.ok == len(records) - 1


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.json")}


@pytest.mark.slow
def test_sigkill_then_resume(tiny_model, tmp_path) -> None:
    text = one_model(tiny_model)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness_ext.cli", "run", str(spec), "--output-dir", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = _digest(out / "records")
    cells = 2 * CELLS_PER_PAIR
    assert 5 <= len(survivors) < cells, "kill landed outside the run"
    runner = _runner(text, out)
    result = runner.run()
    assert result.failed == 0 and result.ok + result.skipped == result.cells == cells and result.missing == 0
    assert result.ok == cells - len(survivors)  # what ran in this invocation, not what the directory holds
    final = _digest(out / "records")
    assert len(final) == result.cells  # no cell twice
    changed = {k for k in survivors if final[k] != survivors[k]}
    # finished cells are not recomputed; only the reference metrics may be added to eval records
    for name in changed:
        rec = json.loads((out / "records" / name).read_text())
        assert rec["measurements"].get("reference_metrics"), name
    assert RunStore(out).load_records() and not RunStore(out).problems


def test_score_nll_dedupes_without_changing_values(tiny_lm_factory) -> None:
    from harness_ext.run.reference import score_nll

    lm = tiny_lm_factory()
    pairs = [
        ("the capital of", " france is paris and the capital"),
        ("the capital of", " france is paris"),
        ("the capital of", " france is paris and the capital"),
        ("salt and", " pepper, bread"),
        ("salt and", ""),
    ]
    together = score_nll(lm, pairs, batch_size=2)
    alone = [score_nll(lm, [p], batch_size=1)[0] for p in pairs]
    for a, b in zip(together, alone, strict=True):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-4
    assert together[0] == together[2] and math.isnan(together[4]) and together[0] > 0


def test_grid_batched_cells_have_the_metrics_of_unbatched_ones(tiny_model, tmp_path) -> None:
    """Every grid point keeps its own records and metrics; batching changes calls, not results."""
    text = one_model(tiny_model, "[fp32]", "[0, 0.8]").replace("speed: {", "speed: {enabled: false, ")
    runs = {}
    for batched in (True, False):
        out = tmp_path / str(batched)
        _runner(text + f"grid_batching: {str(batched).lower()}\n", out).run()
        runs[batched] = {r.label: r for r in RunStore(out).load_records().values() if r.kind == "eval"}
    assert set(runs[True]) == set(runs[False]) and len(runs[True]) == 2 * 2 * 2  # temperatures x top_k x tasks
    for label, a in runs[True].items():
        b = runs[False][label]
        assert a.status == b.status == "ok"
        assert (a.measurements["grid_batched"], b.measurements["grid_batched"]) == (True, False)
        assert a.measurements["kv_cache"] == b.measurements["kv_cache"] == "dynamic"  # the CPU default
        assert [g["text"] for g in a.generations] == [g["text"] for g in b.generations], label
        assert a.sample_metrics == b.sample_metrics and a.metrics.keys() == b.metrics.keys(), label
        for name, m in a.metrics.items():
            assert m == pytest.approx(b.metrics[name], nan_ok=True), (label, name)
    # one evaluation per task served all four grid points; unbatched, one per cell
    assert {r.measurements["evaluation"]["cells"] for r in runs[True].values()} == {4}
    assert {r.measurements["evaluation"]["cells"] for r in runs[False].values()} == {1}


def test_every_cell_kind_has_a_handler() -> None:
    """The kind -> handler registry covers every kind a cell can have, and nothing else."""
    from typing import get_args, get_type_hints

    from harness_ext.run import HANDLERS
    from harness_ext.spec import Cell

    assert set(HANDLERS) == set(get_args(get_type_hints(Cell)["kind"]))
    assert all(callable(make()) for make in HANDLERS.values())


def test_executors_and_handlers_use_the_runner_only_through_its_public_api() -> None:
    """No import cycle: what the runner imports (executors, handlers, reference scoring, ...) never
    imports the runner module, and calls no private method of the runner it is handed."""
    import ast

    run_dir = Path(__file__).resolve().parent.parent / "harness_ext" / "run"
    checked = [p for p in run_dir.rglob("*.py") if p not in (run_dir / "runner.py", run_dir / "__init__.py")]
    assert {"local.py", "ray.py", "eval.py", "probe.py", "speed.py", "reference.py", "api.py"} <= {
        p.name for p in checked
    }
    for path in checked:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                assert "harness_ext.run.runner" not in imported, path
                assert not (node.module == "harness_ext.run" and {a.name for a in node.names} & {"Runner"}), path
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("harness_ext.run.runner") for a in node.names), path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "runner":
                assert not node.attr.startswith("_"), f"{path.name}: runner.{node.attr}"
