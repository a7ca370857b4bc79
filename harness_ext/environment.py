"""What a run ran on: package versions, torch/CUDA, GPU, CPU, threads, git SHA, command line.

Torch-free at import: :func:`capture` (the runner's) imports torch when called; :func:`hardware_line`
(the report's) reads a captured mapping only."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "harness-ext",
    "torch",
    "transformers",
    "bitsandbytes",
    "lm-eval",
    "accelerate",
    "pydantic",
    "datasets",
    "numpy",
    "safetensors",
    "gguf",
    "ray",
)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> str | None:
    """The harness_ext source checkout's commit (with ``-dirty`` if it has changes), if it is one."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def capture(argv: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """The environment of this process, as stored with every invocation of a run, with the machine's
    ``fingerprint`` for timings on ``device`` (:mod:`harness_ext.fingerprint`)."""
    import torch

    from harness_ext import fingerprint

    env: dict[str, Any] = {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": [],
        "git_sha": git_sha(),
        "argv": argv if argv is not None else sys.argv,
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"})
        env["driver"] = _nvidia_driver()
    env["fingerprint"] = fingerprint.capture(device, torch.get_num_threads())
    return env


def _nvidia_driver() -> str | None:
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint_line(env: dict[str, Any]) -> str | None:
    """One line of an invocation's machine fingerprint (None for runs recorded before fingerprints)."""
    from harness_ext.fingerprint import describe

    fp = env.get("fingerprint")
    return describe(fp) if fp else None


def hardware_line(env: dict[str, Any]) -> str:
    """One line for a report: GPU(s) or CPU, with thread count."""
    if env.get("gpus"):
        g = env["gpus"][0]
        n = len(env["gpus"])
        return f"{n}x {g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB), CUDA {env.get('cuda')}"
    return f"{env.get('cpu')} ({env.get('cpu_count')} cores, torch threads {env.get('torch_threads')})"
