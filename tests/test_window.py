"""Contention seen while it happens (issue 25): the sampler of a round's timed window, the rule that
flags a round contended (on synthetic samples, and once beside real CPU hogs), NVML samples of the
model's own GPUs (faked), and the machine speed index."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import pytest

from harness_ext import machine

TICK = os.sysconf("SC_CLK_TCK")


def _stat(user_s: float = 0.0, idle_s: float = 0.0, steal_s: float = 0.0) -> dict[str, int]:
    z = dict.fromkeys(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 0)
    return {**z, "user": int(user_s * TICK), "idle": int(idle_s * TICK), "steal": int(steal_s * TICK)}


def _window(own_s: float, busy_s: float, idle_s: float = 0.0, steal_s: float = 0.0, wall: float = 10.0) -> dict:
    """The figures of a ``wall``-second window on which this process used ``own_s`` CPU seconds and
    the machine ``busy_s``."""
    samples = [(0.0, 0.0, _stat()), (wall, own_s, _stat(busy_s, idle_s, steal_s))]
    return machine.cpu_figures(samples)


@pytest.mark.parametrize(
    ("own", "busy", "idle", "steal", "threads", "contended"),
    [
        (20.0, 20.0, 0.0, 0.0, 2, False),  # 2 threads on 2 cores, alone: saturated by itself
        (13.3, 20.0, 0.0, 0.0, 2, True),  # beside one busy loop: 2/3 of its threads' time (issue 25: 4x slower)
        (5.0, 20.0, 0.0, 0.0, 1, True),  # 1 thread at half a core beside 1.5 cores of others
        (10.0, 20.0, 0.0, 0.0, 1, False),  # 1 thread with a core of its own, a neighbour on the other
        (10.0, 10.0, 10.0, 0.0, 1, False),  # 1 thread, the other core idle
        (10.0, 12.0, 6.0, 2.0, 1, True),  # 10 % of the machine's time stolen
    ],
)
def test_judge_flags_what_slows_a_round_and_nothing_else(own, busy, idle, steal, threads, contended) -> None:
    fig = {**_window(own, busy, idle, steal), "threads": threads}
    fig["self_share"] = fig["self_cores"] / min(threads, 2)
    verdict = machine.judge(fig, cpus=2)
    assert verdict["contended"] is contended and bool(verdict["why"]) is contended


def test_window_figures_keep_the_worst_interval_and_survive_unreadable_sources() -> None:
    samples = [(0.0, 0.0, _stat()), (1.0, 1.0, _stat(1.0, 1.0)), (2.0, 2.0, _stat(3.0, 1.0))]
    fig = machine.cpu_figures(samples)
    assert fig["other_cores"] == pytest.approx(0.5) and fig["max_other_cores"] == pytest.approx(1.0)
    assert machine.cpu_figures([]) == {} and machine.cpu_figures([(0.0, 0.0, None), (1.0, 0.5, None)]) == {
        "wall_s": 1.0,
        "self_cpu_s": 0.5,
        "self_cores": 0.5,
    }
    assert machine.judge({}, cpus=2) == {"contended": False, "why": []}


class FakeNVML:
    """One busy GPU "GPU-a" (ours, pid = this process) with a neighbour on it, and "GPU-b" idle."""

    NVML_CLOCK_SM = 0

    def __init__(self, neighbour_util: float, throttle: int = 0, sm: int = 1980):
        self.neighbour_util, self.throttle, self.sm = neighbour_util, throttle, sm

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> str:
        return uuid.decode()

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> int:
        return self.sm if h == "GPU-a" else 345

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: str) -> int:
        return self.throttle if h == "GPU-a" else 0x1

    def nvmlDeviceGetUtilizationRates(self, h: str):
        return types.SimpleNamespace(gpu=95 if h == "GPU-a" else 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: str):
        return [types.SimpleNamespace(pid=os.getpid())] if h == "GPU-a" else []

    def nvmlDeviceGetProcessUtilization(self, h: str, since: int):
        if h != "GPU-a" or not self.neighbour_util:
            return []
        return [types.SimpleNamespace(pid=4242, smUtil=self.neighbour_util)]


@pytest.mark.parametrize(
    ("nvml", "why"),
    [
        (FakeNVML(0), None),
        (FakeNVML(30), "other processes computed on it"),
        (FakeNVML(0, throttle=0x4), "software power cap"),
        (FakeNVML(0, sm=1200), "SM clock at 61%"),
    ],
)
def test_the_window_samples_the_models_own_gpus_through_nvml(nvml, why) -> None:
    with machine.Window(1, ["GPU-a"], interval=0.01, nvml=nvml) as w:
        time.sleep(0.05)
    out = w.result()
    (gpu,) = out["gpus"]  # GPU-b is not the model's: never read
    assert gpu["uuid"] == "GPU-a" and gpu["samples"] >= 2
    gpu_why = [x for x in out["why"] if x.startswith("GPU")]
    assert (gpu_why == []) if why is None else (why in gpu_why[0])


def test_a_gpu_that_nvml_cannot_read_is_said_not_flagged(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    with machine.Window(1, ["GPU-x"], interval=0.01) as w:
        time.sleep(0.02)
    out = w.result()
    assert "nvidia-ml-py" in out["gpu_note"] and not any(x.startswith("GPU") for x in out["why"])


def test_a_round_timed_beside_cpu_hogs_is_flagged(tiny_lm_factory) -> None:
    """One busy loop per core beside a real benchmark: flagged, whatever else the machine runs
    (other load only adds to the others' share)."""
    from harness_ext.backend import speed

    lm = tiny_lm_factory("fp32")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        time.sleep(0.5)  # the hogs are running
        window = machine.Window(1, interval=0.02)
        speed.benchmark(lm, 1, 8, 24, warmup=1, repeats=5, window=window)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    out = window.result()
    assert out["samples"] >= 3 and out["contended"], out
    assert "saturated" in out["why"][0]


def test_the_speed_index_is_fast_and_positive() -> None:
    from harness_ext.backend.measure import speed_index

    t0 = time.perf_counter()
    index = speed_index()
    assert time.perf_counter() - t0 < 5.0  # well under a second on an idle machine; generous when shared
    assert index["matmul_gflops"] > 0 and index["memory_gb_s"] > 0 and index["wall_ms"] > 0
