"""What was timed: the machine and the kernels a speed figure depends on, and the key that keeps
figures of different machines apart.

Two machines whose descriptions read alike ("AMD EPYC", 2 cores, the same versions) timed the same
demo 5x apart: one dispatched AVX512 kernels, bitsandbytes' 4-bit CPU path chose between a hub
kernel and its own fallback at run time, and nothing recorded said which. :func:`capture` records
the CPU's identity (vendor, family/model/stepping, the instruction-set flags kernels dispatch on),
the ISA level torch dispatches to, cores, threads, the frequency governor, the GPUs (name, UUID,
driver, CUDA, clocks, ECC, power limit), library versions and the path each quantization kernel
took (:func:`kernel_paths`). :func:`key` hashes the fields that change results; the runner puts
it into every speed cell's identity, so rounds timed on two machines never pool into one test.

Torch-free at import; :func:`capture` imports torch and bitsandbytes when called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
from typing import Any

from harness_ext import machine

#: CPU flags that decide which kernels run (torch's and bitsandbytes' dispatch read these).
FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "bmi", "vnni", "neon", "sve", "asimd")
#: Libraries whose kernels are timed; their versions are part of the key.
TIMED_PACKAGES = ("torch", "transformers", "bitsandbytes", "accelerate")
#: The fields of a fingerprint that change a timing: hashed into :func:`key`.
KEY_FIELDS = ("cpu", "isa", "cores", "threads", "gpus", "cuda", "packages", "kernels")
_GPU_KEY_FIELDS = ("name", "memory_bytes")
_CPU_KEY_FIELDS = ("vendor", "model_name", "family", "model", "stepping", "flags")

#: bitsandbytes' CPU backend logs here, once, when it is first imported (the hub kernel's failure).
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_bnb_import_log: list[str] | None = None  # what bitsandbytes logged on its first import, once captured


# -- CPU -----------------------------------------------------------------------------------------
def cpu_identity(cpuinfo: str | None = None) -> dict[str, Any]:
    """Vendor, model name, family/model/stepping and the kernel-relevant flags of the first CPU in
    ``/proc/cpuinfo`` (or the text given); what :mod:`platform` says where there is no such file."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: a VM's CPUs are alike
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features") or ""
    return {
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or platform.machine(),
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "family": fields.get("cpu family"),
        "model": fields.get("model") or fields.get("CPU part"),
        "stepping": fields.get("stepping") or fields.get("CPU revision"),
        "microcode": fields.get("microcode"),
        "flags": sorted({f for f in flags.split() if f.startswith(FLAG_PREFIXES)}),
    }


def governor() -> str | None:
    """The CPU frequency governor (``performance``, ``powersave``, ...), where the kernel exposes it
    (most VMs do not)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def cores() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- kernels -------------------------------------------------------------------------------------
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def import_bitsandbytes() -> Any:
    """Import bitsandbytes with what its CPU backend logs on first import (a hub kernel that failed
    to load) kept for :func:`kernel_paths` instead of printed into the progress bar. None if it is
    not installed."""
    global _bnb_import_log
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    logger = logging.getLogger(BNB_CPU_LOGGER)
    capture, propagate = _Capture(), logger.propagate
    logger.addHandler(capture)
    logger.propagate = False
    try:
        import bitsandbytes
    except Exception:  # not installed, or its native library broke: the kernel paths say so
        return None
    finally:
        logger.removeHandler(capture)
        logger.propagate = propagate
        _bnb_import_log = capture.lines
    return bitsandbytes


def kernel_paths(device: str = "cpu") -> dict[str, Any]:
    """Which kernels bitsandbytes runs here, and why (0.50: on the CPU, its fused 4-bit kernel is
    registered only with AVX512-BF16, and then runs the ``kernels``-hub ``gemm_4bit_forward`` if that
    loaded, else its own library's; int8 matmuls use ``torch._int_mm`` only when torch dispatches
    AVX512). On CUDA: the native library it loaded."""
    bnb = import_bitsandbytes()
    if bnb is None:
        return {"bitsandbytes": None}
    out: dict[str, Any] = {"version": getattr(bnb, "__version__", None)}
    try:
        from bitsandbytes import cextension

        native = type(cextension.lib).__name__ != "ErrorHandlerMockBNBNativeLibrary"
        out["native_library"] = os.path.basename(str(getattr(getattr(cextension.lib, "_lib", None), "_name", "")))
        out["native_library"] = out["native_library"] if native else None
    except Exception as e:  # a broken install is a fact to record, not a reason to stop
        native = False
        out["native_library"] = f"unavailable: {type(e).__name__}: {e}"
    if device.startswith("cuda"):
        return {"bitsandbytes": out}
    why: list[str] = []
    try:
        from bitsandbytes.backends.cpu import ops
        from bitsandbytes.functional import has_avx512bf16

        bf16 = bool(has_avx512bf16())
        why.append(f"AVX512-BF16 {'present' if bf16 else 'absent'}")
        if not native:
            out["gemv_4bit"] = "dequantize + torch matmul (no native library)"
        elif not bf16:
            out["gemv_4bit"] = "dequantize + torch matmul (the fused CPU kernel needs AVX512-BF16)"
        elif getattr(ops, "gemm_4bit_forward_kernel", None) is not None:
            out["gemv_4bit"] = "kernels-community gemm_4bit_forward (hub kernel)"
        else:
            out["gemv_4bit"] = "bitsandbytes gemv_4bit_inference_cpu (fallback: the hub kernel did not load)"
            logged = [x for x in _bnb_import_log or [] if "gemm_4bit_forward" in x]
            why.append(
                logged[0]
                if logged
                else "the hub kernel's error was logged when bitsandbytes was first imported, before it could be kept"
            )
        avx512 = bool(getattr(ops, "_has_avx512", False))
        out["int8_matmul"] = "torch._int_mm (torch dispatches AVX512)" if avx512 else "bitsandbytes default (no AVX512)"
    except Exception as e:
        why.append(f"bitsandbytes' CPU backend could not be read: {type(e).__name__}: {e}")
    out["why"] = why
    return {"bitsandbytes": out}


# -- GPU -----------------------------------------------------------------------------------------
def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def gpu_identity(indices: list[int] | None = None) -> list[dict[str, Any]]:
    """Per GPU: name, UUID, memory, driver, SM/memory clocks (now and maximum), ECC mode and power
    limit, through NVML (``pynvml``) where importable, else ``nvidia-smi``; [] without either."""
    nvml = machine.nvml()
    if nvml is not None:
        return _gpus_nvml(nvml, indices)
    return _gpus_smi(indices)


def _try(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Exception:
        return None


def _gpus_nvml(nvml: Any, indices: list[int] | None) -> list[dict[str, Any]]:
    out = []
    count = nvml.nvmlDeviceGetCount()
    driver = _try(nvml.nvmlSystemGetDriverVersion)
    for i in indices if indices is not None else range(count):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        mem = _try(nvml.nvmlDeviceGetMemoryInfo, h)
        ecc = _try(nvml.nvmlDeviceGetEccMode, h)
        power = _try(nvml.nvmlDeviceGetPowerManagementLimit, h)
        out.append(
            {
                "index": i,
                "name": _text(nvml.nvmlDeviceGetName(h)),
                "uuid": _text(_try(nvml.nvmlDeviceGetUUID, h)),
                "memory_bytes": getattr(mem, "total", None),
                "driver": _text(driver) if driver is not None else None,
                "sm_mhz": _try(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
                "max_sm_mhz": _try(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM),
                "mem_mhz": _try(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
                "max_mem_mhz": _try(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_MEM),
                "ecc": bool(ecc[0]) if ecc else None,
                "power_limit_w": power / 1000 if power is not None else None,
            }
        )
    return out


SMI_FIELDS = (
    ("index", "index"),
    ("name", "name"),
    ("uuid", "uuid"),
    ("memory_bytes", "memory.total"),
    ("driver", "driver_version"),
    ("sm_mhz", "clocks.sm"),
    ("max_sm_mhz", "clocks.max.sm"),
    ("mem_mhz", "clocks.mem"),
    ("max_mem_mhz", "clocks.max.mem"),
    ("ecc", "ecc.mode.current"),
    ("power_limit_w", "power.limit"),
)


def _gpus_smi(indices: list[int] | None) -> list[dict[str, Any]]:
    text = machine.smi_query(",".join(q for _, q in SMI_FIELDS), timeout=10)
    if text is None:
        return []
    return [g for g in parse_smi(text) if indices is None or g["index"] in indices]


def parse_smi(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu`` CSV rows (in :data:`SMI_FIELDS` order) as GPU identities."""
    out = []
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        g: dict[str, Any] = {}
        for (name, _), v in zip(SMI_FIELDS, values, strict=False):
            if name in ("name", "uuid", "driver"):
                g[name] = v
            elif name == "ecc":
                g[name] = {"Enabled": True, "Disabled": False}.get(v)
            else:
                try:
                    g[name] = float(v)
                except ValueError:
                    g[name] = None
        g["index"] = int(g["index"]) if g.get("index") is not None else None
        if g.get("memory_bytes") is not None:
            g["memory_bytes"] = int(g["memory_bytes"] * 2**20)  # nvidia-smi counts MiB
        out.append(g)
    return out


# -- the fingerprint -----------------------------------------------------------------------------
def capture(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """The fingerprint of this process's machine for timings on ``device`` (``threads``: the torch
    threads the run sets, else torch's current count), with its :func:`key`."""
    import importlib.metadata as md

    import torch

    packages = {}
    for name in TIMED_PACKAGES:
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = None
    fp: dict[str, Any] = {
        "cpu": cpu_identity(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cores": cores(),
        "threads": threads or torch.get_num_threads(),
        "governor": governor(),
        "gpus": gpu_identity() if device.startswith("cuda") else [],
        "cuda": torch.version.cuda if device.startswith("cuda") else None,
        "packages": packages,
        "kernels": kernel_paths(device),
        "platform": platform.platform(),
    }
    fp["key"] = key(fp)
    return fp


def key(fp: dict[str, Any]) -> str:
    """12 hex digits over the fields that change a timing: CPU identity and flags, ISA level, cores,
    threads (CPU timings only), GPU models, CUDA, library versions and kernel paths (not clocks, UUIDs
    or hostnames)."""
    cpu = {k: (fp.get("cpu") or {}).get(k) for k in _CPU_KEY_FIELDS}
    # the kinds of GPU, not how many of them a process happens to see (a Ray worker sees its own)
    gpus = sorted({json.dumps({k: g.get(k) for k in _GPU_KEY_FIELDS}, sort_keys=True) for g in fp.get("gpus") or []})
    kernels = json.loads(json.dumps(fp.get("kernels") or {}))
    for lib in kernels.values():
        if isinstance(lib, dict):
            lib.pop("why", None)  # the path is the fact; its explanation may be worded differently
    subset = {**{k: fp.get(k) for k in KEY_FIELDS}, "cpu": cpu, "gpus": gpus, "kernels": kernels}
    if gpus:  # GPU timings do not move with torch's CPU threads (a Ray worker gets 1, its driver all cores)
        subset["threads"] = None
    blob = json.dumps(subset, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def describe(fp: dict[str, Any]) -> str:
    """One line: CPU identity and ISA level, cores/threads, GPUs, the 4-bit kernel path and the key."""
    cpu = fp.get("cpu") or {}
    ident = "/".join(str(cpu.get(k)) for k in ("family", "model", "stepping") if cpu.get(k) is not None)
    gpus = ", ".join(f"{g.get('name')} {str(g.get('uuid') or '')[:12]}".strip() for g in fp.get("gpus") or [])
    bnb = (fp.get("kernels") or {}).get("bitsandbytes") or {}
    parts = [
        f"{cpu.get('vendor')} {cpu.get('model_name')}" + (f" (family/model/stepping {ident})" if ident else ""),
        f"torch ISA {fp.get('isa')}",
        f"{fp.get('cores')} cores, {fp.get('threads')} threads",
    ]
    if gpus:
        parts.append(f"{gpus}, CUDA {fp.get('cuda')}")
    if bnb.get("gemv_4bit"):
        parts.append(f"bnb 4-bit: {bnb['gemv_4bit']}")
    return "; ".join(parts) + f" [fingerprint {fp.get('key')}]"
