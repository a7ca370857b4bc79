"""The Ray executor on a local 2-CPU cluster: same records as the local executor, and a killed
worker's task is retried without losing or duplicating a cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness_ext.run import Runner
from harness_ext.spec import parse_spec
from harness_ext.store import RunStore

ray = pytest.importorskip("ray", reason="Ray is part of the test extra (pip install -e '.[test]')")

SPEC = """\
name: ray-test
models:
  - {{name: tiny, pretrained: "{model}"}}
schemes: [fp32, nf4]
sampling:
  temperature: [0, 0.8]
  max_new_tokens: [4]
tasks: [quant_nextword, quant_continuation]
limit: 3
seeds: [0]
probe: {{limit: 8}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 4, repeats: 3, rounds: 1}}
threads: 1
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _run(text: str, out: Path, executor=None) -> tuple[Runner, object]:
    runner = Runner(parse_spec(text), text, progress=False, output_dir=out, executor=executor)
    return runner, runner.run()


def _generations(out: Path) -> dict[str, list[str]]:
    return {r.cell_id: [g["text"] for g in r.generations] for r in RunStore(out).load_records().values()}


def test_ray_executor_gives_the_same_records_as_local(tiny_model, tmp_path, cluster) -> None:
    """The same records as the local executor, each saying which worker computed it."""
    text = SPEC.format(model=tiny_model)
    local_runner, local = _run(text, tmp_path / "local")
    ray_text = text + "executor: ray\n"
    ray_runner, remote = _run(ray_text, tmp_path / "ray")
    assert local.failed == remote.failed == 0 and local.ok == remote.ok == local.cells
    assert sorted(ray_runner.loads) == sorted(local_runner.loads) == [("tiny", "fp32")] * 2 + [("tiny", "nf4")] * 2
    assert ray_runner.scoring_loads == [("tiny", "fp32")]
    a, b = RunStore(tmp_path / "local").load_records(), RunStore(tmp_path / "ray").load_records()
    assert a.keys() == b.keys()  # the executor is not part of a cell's identity
    assert _generations(tmp_path / "local") == _generations(tmp_path / "ray")  # same outputs, greedy and sampled
    for cell_id, rec in a.items():
        if rec.kind == "probe":
            for pa, pb in zip(rec.points, b[cell_id].points, strict=True):
                assert pa["metrics"]["p_gold"]["value"] == pytest.approx(pb["metrics"]["p_gold"]["value"], abs=1e-5)
        if rec.kind == "eval" and "nll_ref" in rec.metrics:
            assert rec.metrics["nll_ref"]["value"] == pytest.approx(b[cell_id].metrics["nll_ref"]["value"], rel=1e-4)
    placements = [r.measurements.get("placement") for r in b.values()]  # evidence that pairs ran where planned
    assert placements and all(p and p["pid"] > 0 and p["ray_gpu_ids"] == [] for p in placements)
    assert not any(r.measurements.get("placement") for r in a.values())  # the local run has none


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(tiny_model, tmp_path, cluster) -> None:
    from harness_ext.run.executors import RayExecutor

    marker = tmp_path / "killed-worker.pid"

    def die_after_first_cell(payload: dict) -> dict:
        """The real task, but the first time it runs, its worker is SIGKILLed after computing a cell."""
        import os
        import signal

        from harness_ext.run import runner as runner_module
        from harness_ext.run.executors import pair_task

        save = runner_module.Runner.save

        def save_then_die(self, rec, records):
            save(self, rec, records)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        runner_module.Runner.save = save_then_die
        try:
            return pair_task(payload)
        finally:
            runner_module.Runner.save = save

    small = (
        SPEC.format(model=tiny_model)
        .replace(", quant_continuation]", "]")
        .replace("probe: {limit: 8}", "probe: {enabled: false}")
    )
    text = small.replace("speed: {", "speed: {enabled: false, ") + "executor: ray\n"
    out = tmp_path / "run"
    runner, result = _run(text, out, executor=RayExecutor(task_fn=die_after_first_cell))
    assert marker.exists(), "no worker was killed"
    assert result.failed == 0 and result.ok == result.cells
    assert sorted(runner.loads) == [("tiny", "fp32"), ("tiny", "nf4")]  # the killed attempt returned nothing
    files = list((out / "records").glob("*.json"))
    assert len(files) == result.cells == len({json.loads(f.read_text())["cell_id"] for f in files})
    store = RunStore(out)
    assert len(store.load_records()) == result.cells and not store.problems


def test_a_pair_asking_for_more_gpus_than_the_cluster_has_fails_at_once(tiny_model, tmp_path, cluster) -> None:
    text = SPEC.format(model=tiny_model).replace('pretrained: "', 'num_gpus: 2, pretrained: "') + "executor: ray\n"
    runner, result = _run(text, tmp_path / "run")
    assert result.ok == 0 and result.failed == result.cells
    errors = {r.error for r in RunStore(tmp_path / "run").load_records().values()}
    assert errors == {
        "needs 2 GPUs, the Ray cluster has 0: set models[].num_gpus (or ray.num_gpus), or run it on a larger cluster"
    }
    assert runner.loads == []


def test_only_probing_reference_pairs_go_first(tiny_model) -> None:
    from harness_ext.run.executors import waves
    from harness_ext.spec import plan

    text = SPEC.format(model=tiny_model) + "executor: ray\n"
    runner = Runner(parse_spec(text), text, progress=False)
    cells = plan(runner.spec)
    pairs: dict = {}
    for c in cells:  # speed cells of each scheme as their own unit, as rounds are
        pairs.setdefault((*c.pair, c.kind == "speed"), []).append(c)
    first, then = waves(runner, pairs)
    assert list(first) == [("tiny", "fp32", False)]
    assert set(then) == {("tiny", "fp32", True), ("tiny", "nf4", False), ("tiny", "nf4", True)}
