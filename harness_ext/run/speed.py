"""Speed cells: the generation benchmark at one batch size, in one round (see ``schedule``).

Around each cell: the machine speed index (a fixed reference workload) before it, a
:class:`~harness_ext.machine.Window` sampling the machine during the timed repeats, and the check
that this process's machine fingerprint is the one the cell was planned for (a Ray node or a
process of another machine kind must not time cells that carry another machine's key)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness_ext import fingerprint, machine
from harness_ext.errors import HarnessExtError
from harness_ext.run import schedule
from harness_ext.run.api import PairWork, QuantLM, RunnerAPI
from harness_ext.run.results import point_metric
from harness_ext.spec import Cell

#: Metrics of the speed index stored with a round (the rest of the index is in its measurements).
INDEX_METRICS = ("matmul_gflops", "memory_gb_s")


def host_lock() -> FileLock:
    """The lock that keeps timed windows from overlapping on one host: every harness_ext process that
    times a round (a Ray worker's on another GPU, another study's run) holds it while it times, and
    only then. It lives in the host's temporary folder; ``flock`` frees it when its holder dies."""
    return FileLock(str(Path(tempfile.gettempdir()) / "harness-ext-timing.lock"))


class SpeedHandler:
    """Runs a pair's speed cells one by one; every cell gets a record, ok or failed. Keeps the copy
    bandwidth of each GPU (the floor of the time per token), measured once per process, and this
    process's fingerprint."""

    def __init__(self) -> None:
        self.bandwidth: dict[str, float] = {}
        self.fingerprints: dict[str, dict[str, Any]] = {}

    def __call__(self, runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None:
        for c in cells:
            runner.check_time()
            runner.run_cell(c, work, lambda c=c: self.measure(runner, work.lm, c))

    def fingerprint(self, device: str) -> dict[str, Any]:
        """This process's machine fingerprint for ``device`` timings (captured once)."""
        import torch

        if device not in self.fingerprints:
            self.fingerprints[device] = fingerprint.capture(device, torch.get_num_threads())
        return self.fingerprints[device]

    def measure(self, runner: RunnerAPI, lm: QuantLM, cell: Cell) -> dict[str, Any]:
        """One speed cell's record fields: the benchmark's metrics, its round and position, the speed
        index, what the machine did during the timed repeats and whether that was contention."""
        import torch

        from harness_ext.backend import speed
        from harness_ext.backend.measure import (
            cuda_devices,
            gpu_uuid,
            measure_copy_bandwidth,
            model_devices,
            speed_index,
        )

        p = cell.params
        planned = p.get("machine")
        mine = self.fingerprint(cell.device)
        if planned is not None and planned != mine["key"]:
            raise HarnessExtError(
                f"this process's machine fingerprint {mine['key']} is not {planned}, the one the cell was planned "
                f"for ({fingerprint.describe(mine)}): time a study's speed cells on one kind of machine per "
                "invocation, with the spec's `threads:` set (a Ray worker runs with its task's num_cpus threads)"
            )
        gpus = cuda_devices(model_devices(lm.model))
        uuids = [u for u in (gpu_uuid(d) for d in gpus) if u]
        waited = time.perf_counter()
        with host_lock():  # from the speed index to the last timed repeat, no other round times on this host
            waited = time.perf_counter() - waited
            for d in gpus:  # the floor needs every GPU the model is on
                if str(d) not in self.bandwidth:
                    self.bandwidth[str(d)] = measure_copy_bandwidth(d)
            index = speed_index()
            before = machine.snapshot()
            window = machine.Window(torch.get_num_threads(), uuids)
            result = speed.benchmark(
                lm,
                p["batch_size"],
                p["prompt_tokens"],
                p["new_tokens"],
                p["warmup"],
                p["repeats"],
                bandwidth=self.bandwidth,
                mode=p.get("mode", "eager"),
                window=window,
            )
        seen = window.result()
        result |= {
            "round": p.get("round", 0),
            "round_position": schedule.position(runner.spec, cell),
            "contended": seen["contended"],
            "contention_why": seen["why"],
            "fingerprint": mine["key"],
            "gpus": uuids,
            "speed_index": index,
            "host_lock_wait_s": waited,
            "window": seen,
            "machine": {"before": before, "after": machine.snapshot()},
        }
        metrics = speed.metrics_of(result)
        for name in INDEX_METRICS:
            metrics[f"index_{name}"] = point_metric(index[name])
        return {"metrics": metrics, "measurements": result}
