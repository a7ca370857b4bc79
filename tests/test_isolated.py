"""Rounds as independent replicates (issue 25): each (model, scheme, round) timed in a fresh process,
rounds added in later invocations (``--add-rounds``), rounds of another machine kept apart, and under
Ray one task per (model, round) on whole GPUs (faked resources)."""

from __future__ import annotations

import os
import types

import pytest

from harness_ext import fingerprint
from harness_ext.analysis import Study, speed_table
from harness_ext.run import Runner, isolated
from harness_ext.spec import expand, parse_spec
from harness_ext.store import RunStore

SPEC = """\
name: isolated-test
models:
  - {{name: a, pretrained: "{a}"}}
schemes: [fp32, nf4]
tasks: []
probe: {{enabled: false}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 3, repeats: 3, warmup: 0, rounds: {rounds}}}
threads: 1
"""


def _speed(out) -> list:
    return [r for r in RunStore(out).load_records().values() if r.kind == "speed"]


def test_each_round_is_timed_in_a_fresh_process(tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(isolated.IN_PROCESS_ENV)
    text = SPEC.format(a=tiny_model, rounds=2)
    runner = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")
    result = runner.run()
    assert result.failed == 0 and result.ok == 4 and len(runner.loads) == 4
    recs = _speed(tmp_path / "r")
    pids = [r.measurements["isolation"]["pid"] for r in recs]
    assert len(set(pids)) == 4 and os.getpid() not in pids  # one process per (scheme, round), none of them this one
    startups = sorted(r.measurements["isolation"]["startup_s"] for r in recs)
    print("round process start-up, s:", [round(s, 2) for s in startups])
    assert all(s >= 0 for s in startups)
    assert {r.measurements["fingerprint"] for r in recs} == {runner.machine}


def test_add_rounds_times_rounds_beyond_those_stored_and_the_tables_keep_them_all(tiny_model, tmp_path) -> None:
    text = SPEC.format(a=tiny_model, rounds=1)
    Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r").run()
    later = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r", add_rounds=2)
    result = later.run()
    assert result.skipped == 2 and result.ok == 4 and len(later.loads) == 4  # rounds 1 and 2, each scheme
    assert sorted(r.measurements["round"] for r in _speed(tmp_path / "r")) == [0, 0, 1, 1, 2, 2]
    again = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")  # the spec's rounds: 1
    assert again.run().ok == 0
    sp = speed_table(Study.load(tmp_path / "r"))
    assert sorted(sp["round"]) == [0, 0, 1, 1, 2, 2]  # the tables keep the added rounds


def test_rounds_timed_on_another_machine_are_other_cells_kept_beside_these(tiny_model, tmp_path, monkeypatch) -> None:
    text = SPEC.format(a=tiny_model, rounds=1)
    Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r").run()
    capture = fingerprint.capture

    def other_machine(device: str = "cpu", threads: int | None = None) -> dict:
        fp = capture(device, threads)
        fp["isa"] = "AVX2"  # a machine whose name reads the same, dispatching other kernels
        return fp | {"key": fingerprint.key(fp)}

    monkeypatch.setattr(fingerprint, "capture", other_machine)
    second = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")
    assert second.run().ok == 2 and len(second.loads) == 2  # nothing of the first machine counts as done
    sp = speed_table(Study.load(tmp_path / "r"))
    assert len(set(sp["fingerprint"])) == 2 and len(sp) == 4
    from harness_ext.report.page import input_tables

    assert input_tables(tmp_path / "r", print)["cells.csv"].decode().count(",decode_ms_per_token,") == 4


def test_ray_times_a_models_round_in_one_task_on_whole_gpus(tiny_model) -> None:
    from harness_ext.run.executors import RayExecutor
    from harness_ext.run.executors.ray import tasks
    from harness_ext.run.schedule import round_order, spec_pairs, work_units

    text = SPEC.format(a=tiny_model, rounds=2).replace("tasks: []", "tasks: []\nray: {num_gpus: 0.5}")
    spec = parse_spec(text.replace("name: a,", "name: a, num_gpus: 0.5,"))
    cells = expand(spec, "cuda", machine="k")
    units = work_units(cells, spec.name, spec_pairs(spec))
    grouped = tasks(units)
    assert list(grouped) == [("round", "a", 0), ("round", "a", 1)]  # each round's schemes in one task
    for key, group in grouped.items():
        assert [(u[0].model.label, u[0].scheme.name) for u in group] == round_order(spec.name, key[2], spec_pairs(spec))
    fake = types.SimpleNamespace(spec=spec, device="cuda")
    res = RayExecutor(isolate=True).task_resources(fake, grouped[("round", "a", 0)])
    assert res["num_gpus"] == 1.0  # fractional GPUs would put two timed rounds on one device


def test_a_round_whose_process_dies_fails_its_cells_with_the_reason(tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(isolated.IN_PROCESS_ENV)
    monkeypatch.setattr(isolated, "in_fresh_process", _die)
    text = SPEC.format(a=tiny_model, rounds=1)
    runner = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")
    assert runner.run().failed == 2
    assert {r.error for r in RunStore(tmp_path / "r").load_records().values()} == {
        "the round's process failed: BrokenProcessPool: killed"
    }


def _die(unit: dict) -> dict:
    from concurrent.futures.process import BrokenProcessPool

    raise BrokenProcessPool("killed")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_rounds_fork_from_the_preloaded_forkserver_on_the_cpu_and_spawn_on_cuda(device: str) -> None:
    """Libraries initialise CUDA at import (bitsandbytes; on an H200 a library not identified, in a
    forkserver without bitsandbytes), and a process forked after that cannot use CUDA: CUDA rounds
    start in a fresh interpreter."""
    assert isolated.context(device).get_start_method() == ("forkserver" if device == "cpu" else "spawn")
    assert "harness_ext.run.warm" in isolated.PRELOAD


def test_add_rounds_must_be_positive_and_is_refused_before_anything_is_written(tmp_path) -> None:
    from harness_ext.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(a=tmp_path, rounds=1))
    assert main(["run", str(spec), "--add-rounds", "0", "--output-dir", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()
