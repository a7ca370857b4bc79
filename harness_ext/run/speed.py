"""Speed cells: the generation benchmark at one batch size, in one round (see ``schedule``)."""

from __future__ import annotations

from typing import Any

from harness_ext import machine
from harness_ext.run import schedule
from harness_ext.run.api import PairWork, QuantLM, RunnerAPI
from harness_ext.run.results import point_metric
from harness_ext.spec import Cell


class SpeedHandler:
    """Runs a pair's speed cells one by one; every cell gets a record, ok or failed. Keeps the copy
    bandwidth of each GPU (the floor of the time per token), measured once per run."""

    def __init__(self) -> None:
        self.bandwidth: dict[str, float] = {}

    def __call__(self, runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None:
        for c in cells:
            runner.check_time()
            runner.run_cell(c, work, lambda c=c: self.measure(runner, work.lm, c))

    def measure(self, runner: RunnerAPI, lm: QuantLM, cell: Cell) -> dict[str, Any]:
        """One speed cell's record fields: the benchmark's metrics, its round and position in the
        round, and whether the machine was busy with other work meanwhile."""
        from harness_ext.backend import speed
        from harness_ext.backend.measure import cuda_devices, measure_copy_bandwidth, model_devices

        for d in cuda_devices(model_devices(lm.model)):  # the floor needs every GPU the model is on
            if str(d) not in self.bandwidth:
                self.bandwidth[str(d)] = measure_copy_bandwidth(d)
        p = cell.params
        before = machine.snapshot()
        result = speed.benchmark(
            lm,
            p["batch_size"],
            p["prompt_tokens"],
            p["new_tokens"],
            p["warmup"],
            p["repeats"],
            bandwidth=self.bandwidth,
            mode=p.get("mode", "eager"),
        )
        after = machine.snapshot()
        busy = machine.contention(before, after)
        order = {"round": p.get("round", 0), "round_position": schedule.position(runner.spec, cell)}
        metrics = {**speed.metrics_of(result), **{k: point_metric(v) for k, v in order.items()}}
        metrics["contended"] = point_metric(float(busy["contended"]))
        result = {**result, **order, "machine": {"before": before, "after": after, "contention": busy}}
        return {"metrics": metrics, "measurements": result}
