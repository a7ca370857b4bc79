"""What the machine was doing around a timed round: a best-effort snapshot that never fails.

Read before and after each speed round: the 1-minute load average, the machine's CPU time by state
from ``/proc/stat`` (steal = time the hypervisor gave to other guests), this process's own CPU time,
and, on CUDA, the GPU's clocks and utilisation (``nvidia-smi`` where present). :func:`contention`
turns two snapshots into the shares of the machine used by others and flags the round as contended;
docs/VERDICTS.md gives the rule and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


def _gpu() -> list[dict[str, float]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "clocks.sm,clocks.max.sm,clocks.mem,utilization.gpu,temperature.gpu,power.draw"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
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


def contention(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Between two snapshots: the cores used by this process and by others, the share stolen, the
    lowest clock share of a busy GPU, and whether the round ran contended (with the reasons)."""
    out: dict[str, Any] = {"contended": False, "why": []}
    try:
        wall = float(after.get("time") or 0) - float(before.get("time") or 0)
        a, b = before.get("proc_stat"), after.get("proc_stat")
        tick = os.sysconf("SC_CLK_TCK")
        cpus = int(after.get("cpus") or 1)
        if a and b and wall > 0:
            delta = {k: b[k] - a[k] for k in a if k in b}
            total = sum(delta.values()) or 1
            busy_s = (total - delta.get("idle", 0) - delta.get("iowait", 0)) / tick
            self_s = float(after["self_cpu_s"]) - float(before["self_cpu_s"])
            out["self_cores"] = self_s / wall
            out["other_cores"] = max(0.0, busy_s - self_s) / wall
            out["steal_share"] = delta.get("steal", 0) / total
            saturated = out["self_cores"] + out["other_cores"] >= SATURATED * cpus
            if saturated and out["other_cores"] > OTHERS * max(out["self_cores"], 1e-9):
                out["contended"] = True
                out["why"].append(
                    f"the {cpus} cores were saturated and other processes used {out['other_cores']:.2f} of them "
                    f"beside this one's {out['self_cores']:.2f}"
                )
            if out["steal_share"] > STEAL:
                out["contended"] = True
                out["why"].append(f"{out['steal_share']:.0%} of CPU time stolen by the hypervisor")
        out["load_1m"] = after.get("load_1m")
        clocks = [
            g["sm_mhz"] / g["max_sm_mhz"]
            for g in (before.get("gpus") or []) + (after.get("gpus") or [])
            if g.get("max_sm_mhz") and (g.get("util_pct") or 0) >= BUSY_GPU
        ]
        if clocks:
            out["gpu_clock_share"] = min(clocks)
            if out["gpu_clock_share"] < THROTTLED:
                out["contended"] = True
                out["why"].append(f"GPU SM clock at {out['gpu_clock_share']:.0%} of its maximum")
    except Exception as e:  # a snapshot is evidence, never a reason to lose a timing
        out["error"] = f"{type(e).__name__}: {e}"
    return out
