"""What the machine was doing around and during a timed round: best-effort readings that never fail.

Two kinds of reading. A :func:`snapshot` before and after each speed cell: the 1-minute load
average, the machine's CPU time by state from ``/proc/stat`` (steal = time the hypervisor gave to
other guests), this process's own CPU time and, on CUDA, the GPUs' clocks (``nvidia-smi``).
A :class:`Window` sampled *during* the timed repeats (a thread, every :data:`INTERVAL_S`): the
process's CPU time against wall × threads, other processes' cores and the steal over the window,
and NVML samples of the model's own GPUs. :func:`judge` turns a window's figures into the round's
``contended`` flag and its reasons; docs/VERDICTS.md gives the rules and why.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
from typing import Any

#: The machine counts as saturated when this share of its cores was busy; a saturated machine on
#: which other processes used more than OTHERS x this process's cores ran the round contended:
#: runnable threads then wait for a core (see docs/VERDICTS.md).
SATURATED = 0.9
OTHERS = 0.25
#: Share of the machine's CPU time stolen by the hypervisor from which a round counts as contended.
STEAL = 0.05
#: SM clock below this share of its maximum: the GPU was throttled (power, heat) during the round.
THROTTLED = 0.85
#: Only a busy GPU's clock says anything: an idle GPU drops its clocks on purpose.
BUSY_GPU = 50.0
#: During a timed window, this process's CPU time below this share of wall x its threads (at most one
#: per core) on a saturated machine: its threads waited for a core.
STARVED = 0.9


def _proc_stat() -> dict[str, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    if not first or first[0] != "cpu":
        return None
    return {n: int(v) for n, v in zip(names, first[1:], strict=False)}


def smi_query(fields: str, timeout: float = 5) -> str | None:
    """``nvidia-smi --query-gpu=<fields>`` as CSV without header or units; None where it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def nvml() -> Any:
    """pynvml (nvidia-ml-py), initialised; None where it or the driver is absent."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _gpu() -> list[dict[str, float]] | None:
    out = smi_query("clocks.sm,clocks.max.sm,clocks.mem,utilization.gpu,temperature.gpu,power.draw")
    if out is None:
        return None
    gpus = []
    for line in out.strip().splitlines():
        values = []
        for v in line.split(","):
            try:
                values.append(float(v))
            except ValueError:
                values.append(float("nan"))
        gpus.append(
            dict(zip(("sm_mhz", "max_sm_mhz", "mem_mhz", "util_pct", "temp_c", "power_w"), values, strict=False))
        )
    return gpus


def snapshot() -> dict[str, Any]:
    """The machine now (every field None where unreadable)."""
    snap: dict[str, Any] = {"time": time.time(), "cpus": os.cpu_count()}
    try:
        snap["load_1m"] = os.getloadavg()[0]
    except OSError:
        snap["load_1m"] = None
    snap["proc_stat"] = _proc_stat()
    t = os.times()
    snap["self_cpu_s"] = t.user + t.system
    snap["gpus"] = _gpu()
    return snap


# -- during the timed window ------------------------------------------------------------------------
#: Seconds between two samples of a window: a few samples per timed repeat, at no measurable cost.
INTERVAL_S = 0.05
#: NVML throttle reasons that mean the clocks were held down (power cap, thermal, hardware slowdown),
#: as opposed to an idle GPU or clocks an administrator set.
THROTTLE_REASONS = {0x4: "software power cap", 0x8: "hardware slowdown", 0x20: "software thermal slowdown",
                    0x40: "hardware thermal slowdown", 0x80: "power brake"}  # fmt: skip


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """Samples the machine while a block runs (``with Window(threads, gpus): ...``), in a daemon
    thread: this process's CPU time and ``/proc/stat`` every :data:`INTERVAL_S`, and NVML readings of
    the GPUs whose UUIDs are given (the model's own; none on the CPU). :meth:`result` gives the
    window's figures and :func:`judge`'s verdict on them."""

    def __init__(self, threads: int, gpus: list[str] | None = None, interval: float = INTERVAL_S, nvml: Any = None):
        self.threads = max(1, int(threads))
        self.gpu_uuids = list(gpus or [])
        self.interval = interval
        self.nvml = nvml
        self.cpu: list[tuple[float, float, dict[str, int] | None]] = []  # (time, own CPU s, /proc/stat)
        self.gpu: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list[tuple[str, Any]] = []

    def __enter__(self) -> Window:
        if self.gpu_uuids:
            self._open_nvml()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="harness-ext-window", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.cpu.append((time.perf_counter(), _self_cpu_s(), _proc_stat()))
            for uuid, h in self._handles:
                self.gpu.append({"uuid": uuid, **gpu_sample(self.nvml, h)})
        except Exception:  # a reading is evidence, never a reason to lose a timing
            pass

    def _open_nvml(self) -> None:
        self.nvml = self.nvml or nvml()
        if self.nvml is None:
            return
        for uuid in self.gpu_uuids:
            try:
                self._handles.append((uuid, self.nvml.nvmlDeviceGetHandleByUUID(uuid.encode())))
            except Exception:
                continue

    def result(self) -> dict[str, Any]:
        """The window's figures (CPU: wall, own CPU time and its share of wall × threads, other
        processes' cores, steal; GPU: per GPU the lowest busy clock share, throttle reasons and other
        processes seen) with ``contended`` and ``why`` from :func:`judge`."""
        out: dict[str, Any] = {"samples": len(self.cpu), "threads": self.threads, **cpu_figures(self.cpu)}
        if out.get("self_cores") is not None:
            out["self_share"] = out["self_cores"] / min(self.threads, os.cpu_count() or 1)
        if self.gpu_uuids:
            out["gpus"] = gpu_figures(self.gpu, self.gpu_uuids, os.getpid())
            if not self._handles:
                out["gpu_note"] = "NVML unavailable (pip install nvidia-ml-py): GPU contention not sampled"
        return {**out, **judge(out, cpus=os.cpu_count() or 1)}


def cpu_figures(samples: list[tuple[float, float, dict[str, int] | None]]) -> dict[str, Any]:
    """From (time, own CPU s, /proc/stat) samples: the window's wall time, own CPU time and cores,
    other processes' cores and the steal share over the whole window, and the most cores others
    used in any one interval."""
    if len(samples) < 2:
        return {}
    (t0, c0, s0), (t1, c1, s1) = samples[0], samples[-1]
    wall = t1 - t0
    out: dict[str, Any] = {"wall_s": wall, "self_cpu_s": c1 - c0}
    if wall <= 0:
        return out
    out["self_cores"] = (c1 - c0) / wall
    if s0 and s1:
        busy, total, steal = _busy(s0, s1)
        out["other_cores"] = max(0.0, busy - (c1 - c0)) / wall
        out["steal_share"] = steal / total if total else 0.0
        worst = 0.0
        for (ta, ca, sa), (tb, cb, sb) in itertools.pairwise(samples):
            if sa and sb and tb > ta:
                worst = max(worst, max(0.0, _busy(sa, sb)[0] - (cb - ca)) / (tb - ta))
        out["max_other_cores"] = worst
    return out


def _busy(a: dict[str, int], b: dict[str, int]) -> tuple[float, int, int]:
    """Busy seconds, total ticks and stolen ticks between two ``/proc/stat`` readings."""
    delta = {k: b[k] - a[k] for k in a if k in b}
    total = sum(delta.values())
    busy = (total - delta.get("idle", 0) - delta.get("iowait", 0)) / os.sysconf("SC_CLK_TCK")
    return busy, total, delta.get("steal", 0)


def gpu_sample(nvml: Any, handle: Any) -> dict[str, Any]:
    """One NVML reading of a GPU: SM clock and its maximum, utilisation, throttle reasons, and the
    compute processes on it with their SM utilisation where the driver reports it."""
    out: dict[str, Any] = {}
    for name, f, args in (
        ("sm_mhz", "nvmlDeviceGetClockInfo", (nvml.NVML_CLOCK_SM,)),
        ("max_sm_mhz", "nvmlDeviceGetMaxClockInfo", (nvml.NVML_CLOCK_SM,)),
        ("throttle", "nvmlDeviceGetCurrentClocksThrottleReasons", ()),
    ):
        try:
            out[name] = getattr(nvml, f)(handle, *args)
        except Exception:
            out[name] = None
    try:
        out["util_pct"] = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
    except Exception:
        out["util_pct"] = None
    pids: dict[int, float] = {}
    try:
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            pids[int(p.pid)] = 0.0
    except Exception:
        pass
    try:
        for p in nvml.nvmlDeviceGetProcessUtilization(handle, 0):
            pids[int(p.pid)] = max(pids.get(int(p.pid), 0.0), float(p.smUtil))
    except Exception:
        pass
    out["processes"] = pids
    return out


def gpu_figures(samples: list[dict[str, Any]], uuids: list[str], own_pid: int) -> list[dict[str, Any]]:
    """Per GPU over a window: the lowest SM clock share while busy, the throttle reasons seen, and
    the other processes that ran on it (pid -> highest SM utilisation). NVML's pids are the host's:
    in a container our own pid is not among them, so a GPU with one process only counts it as ours."""
    out = []
    for uuid in uuids:
        mine = [s for s in samples if s.get("uuid") == uuid]
        busy = [
            s["sm_mhz"] / s["max_sm_mhz"]
            for s in mine
            if s.get("sm_mhz") and s.get("max_sm_mhz") and (s.get("util_pct") or 0) >= BUSY_GPU
        ]
        reasons = 0
        for s in mine:
            reasons |= int(s.get("throttle") or 0)
        procs: dict[int, float] = {}
        for s in mine:
            for pid, util in (s.get("processes") or {}).items():
                procs[pid] = max(procs.get(pid, 0.0), util)
        others = {p: u for p, u in procs.items() if p != own_pid}
        if own_pid not in procs and len(procs) == 1:
            others = {}
        out.append(
            {
                "uuid": uuid,
                "samples": len(mine),
                "clock_share": min(busy) if busy else None,
                "throttle": [why for bit, why in THROTTLE_REASONS.items() if reasons & bit],
                "other_processes": {str(p): u for p, u in others.items()},
            }
        )
    return out


def judge(fig: dict[str, Any], cpus: int) -> dict[str, Any]:
    """Whether a window ran contended, with the reasons (docs/VERDICTS.md, "Rounds and contention"):
    the machine's cores saturated while other processes used more than :data:`OTHERS` of what this
    one used and this one got less than :data:`STARVED` of wall x its threads; more than
    :data:`STEAL` of CPU time stolen; on one of the model's GPUs another process computing, clocks
    held down by power or heat, or the SM clock below :data:`THROTTLED` of its maximum while busy."""
    why: list[str] = []
    mine, others, share = fig.get("self_cores"), fig.get("other_cores"), fig.get("self_share")
    if mine is not None and others is not None:
        saturated = mine + others >= SATURATED * cpus and others > OTHERS * max(mine, 1e-9)
        if saturated and (share is None or share < STARVED):
            why.append(
                f"the {cpus} cores were saturated during the timed repeats: other processes used {others:.2f} "
                f"of them beside this one's {mine:.2f}"
                + (f" ({share:.0%} of its {fig.get('threads')} threads' time)" if share is not None else "")
            )
    if (fig.get("steal_share") or 0) > STEAL:
        why.append(f"{fig['steal_share']:.0%} of CPU time stolen by the hypervisor during the timed repeats")
    for g in fig.get("gpus") or []:
        name = f"GPU {str(g['uuid'])[:12]}"
        if g.get("other_processes"):
            pids = ", ".join(f"{p} ({u:.0f}% SM)" for p, u in g["other_processes"].items())
            why.append(f"{name}: other processes computed on it during the timed repeats: {pids}")
        if g.get("throttle"):
            why.append(f"{name}: clocks held down ({', '.join(g['throttle'])})")
        if g.get("clock_share") is not None and g["clock_share"] < THROTTLED:
            why.append(f"{name}: SM clock at {g['clock_share']:.0%} of its maximum while busy")
    return {"contended": bool(why), "why": why}
