"""Measuring speed and memory: trackers as context managers and plain result dataclasses.

- Everything CUDA is measured on the *model's* devices (:func:`model_devices`), never on whatever
  device happens to be current: ``device: cuda:1`` is timed and measured on cuda:1, and a model
  spread by ``device_map="auto"`` over several GPUs is measured on each of them.
- On one CUDA device, times come from CUDA events on that device's stream, read after one
  synchronize; on several, from ``perf_counter`` after synchronizing every one of them (a step is
  done only when its last layer is); on the CPU from ``perf_counter``.
- Per-token decode time comes from a logits processor that stamps each generation step (the first
  stamp ends the prefill); its stamps are reset for every call.
- Peak memory: CUDA ``max_memory_allocated`` of each device after a reset, per device and summed
  (each device's own peak: the sum bounds the total from above); on the CPU the process's peak RSS
  (``VmHWM``) after resetting it through ``/proc/self/clear_refs`` — where that reset is not
  possible the figure is the process-lifetime peak and is labelled so.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor


# -- summaries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated measurements (the unit is the caller's)."""

    n: int
    median: float
    p10: float
    p90: float
    min: float
    max: float
    mean: float
    stdev: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """p10/p90 by linear interpolation between the closest ranks (numpy's default); median, mean
        and sample stdev exactly."""
        vals = np.sort(np.asarray(values, dtype=float))
        if not vals.size:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        p10, p90 = np.percentile(vals, [10, 90])
        return cls(
            n=int(vals.size),
            median=float(np.median(vals)),
            p10=float(p10),
            p90=float(p90),
            min=float(vals[0]),
            max=float(vals[-1]),
            mean=statistics.fmean(vals.tolist()),
            stdev=statistics.stdev(vals.tolist()) if vals.size > 1 else 0.0,
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# -- devices -------------------------------------------------------------------------------------
def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _concrete(device: torch.device | str) -> torch.device:
    """``cuda`` with its index made explicit (the current device's), so that devices compare equal."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return d


def model_devices(model: Any) -> list[torch.device]:
    """The devices holding the model's weights, in the order its modules first use them (the
    parameters' and buffers' own devices; weights offloaded to ``meta`` are skipped)."""
    seen: dict[torch.device, None] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type != "meta":
            seen.setdefault(_concrete(t.device), None)
    return list(seen)


def cuda_devices(devices: torch.device | str | Sequence[torch.device | str]) -> list[torch.device]:
    """The CUDA devices among ``devices`` (one device or several), indices explicit, in order."""
    many = [devices] if isinstance(devices, (str, torch.device)) else list(devices)
    return list(dict.fromkeys(_concrete(d) for d in many if is_cuda(d)))


def synchronize(devices: Sequence[torch.device]) -> None:
    """Wait for the queued work of every device in ``devices`` (``torch.cuda.synchronize()`` alone
    waits for the current device only)."""
    for d in devices:
        torch.cuda.synchronize(d)


def weight_bytes_by_device(model: Any) -> dict[str, int]:
    """Bytes of parameters and buffers per device (``get_memory_footprint``'s count, split by device)."""
    out: dict[str, int] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        key = str(_concrete(t.device))
        out[key] = out.get(key, 0) + t.nelement() * t.element_size()
    return out


def gpu_uuid(device: torch.device) -> str | None:
    """The CUDA device's UUID as NVML and ``nvidia-smi`` write it (``GPU-...``): which physical GPU
    timed a round, whatever ``CUDA_VISIBLE_DEVICES`` renumbered."""
    uuid = getattr(torch.cuda.get_device_properties(_concrete(device)), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else None


# -- clocks -------------------------------------------------------------------------------------
class Clock:
    """Marks on one timeline: CUDA events on the stream of the one CUDA device, ``perf_counter``
    after synchronizing all of them when there are several, ``perf_counter`` on the CPU.

    ``mark()`` is cheap with events or on the CPU (no synchronize); ``elapsed_ms()`` synchronizes.
    """

    def __init__(self, devices: torch.device | str | Sequence[torch.device | str]):
        self.devices = cuda_devices(devices)
        self.events = len(self.devices) == 1
        self.cuda = bool(self.devices)
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.devices[0]))
            self.marks.append(ev)
            return
        synchronize(self.devices)
        self.marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        """Milliseconds of every mark since the first one."""
        if not self.marks:
            return []
        if self.events:
            synchronize(self.devices)
            first = self.marks[0]
            return [first.elapsed_time(m) for m in self.marks]
        return [(m - self.marks[0]) * 1e3 for m in self.marks]


class StepTimer(LogitsProcessor):
    """Logits processor that marks the end of every forward pass of ``generate``.

    Put it first in the processor list. With a start mark taken just before ``generate``: the first
    step mark ends the prefill (time to first token) and consecutive marks are decode steps.
    """

    def __init__(self, clock: Clock):
        self.clock = clock

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.clock.mark()
        return scores


# -- memory -------------------------------------------------------------------------------------
def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryPeak:
    """Peak memory over a ``with`` block. ``kind``: cuda_allocated, cpu_rss or cpu_rss_lifetime.

    On CUDA ``bytes`` is the sum over the devices of each one's peak, ``by_device`` the peaks."""

    kind: str = ""
    bytes: int | None = None
    by_device: dict[str, int] | None = None


@contextlib.contextmanager
def track_peak_memory(devices: torch.device | str | Sequence[torch.device | str]) -> Iterator[MemoryPeak]:
    """Record the peak memory of the block on ``devices`` (the model's) into the yielded :class:`MemoryPeak`."""
    peak = MemoryPeak()
    gpus = cuda_devices(devices)
    if gpus:
        synchronize(gpus)
        for d in gpus:
            torch.cuda.reset_peak_memory_stats(d)
        yield peak
        synchronize(gpus)
        peak.by_device = {str(d): int(torch.cuda.max_memory_allocated(d)) for d in gpus}
        peak.kind, peak.bytes = "cuda_allocated", sum(peak.by_device.values())
        return
    reset = _reset_rss_peak()
    yield peak
    hwm = _read_status_kb("VmHWM") if reset else None
    if hwm is not None:
        peak.kind, peak.bytes = "cpu_rss", hwm * 1024
    else:
        peak.kind, peak.bytes = "cpu_rss_lifetime", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- one generate call ---------------------------------------------------------------------------
@dataclass
class GenerateStats:
    """What one ``generate`` call did and cost. Token counts exclude padding and post-stop tokens."""

    rows: int
    prompt_tokens: int  # real prompt tokens over all rows
    padded_prompt_len: int
    new_tokens: int  # real generated tokens over all rows
    steps: int  # forward passes after the prefill's
    wall_ms: float
    ttft_ms: float | None  # start of generate -> end of the first forward (prefill)
    decode_ms_per_step: float | None  # median of the step intervals
    decode_ms_per_step_mean: float | None
    peak_memory_bytes: int | None  # on CUDA: the sum over the model's devices
    peak_memory_kind: str
    device: str
    kv_cache: str | None = None  # the KV cache generation ran with: static or dynamic
    peak_memory_by_device: dict[str, int] | None = None  # CUDA: each of the model's devices' own peak
    step_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, with_steps: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_steps:
            d.pop("step_ms")
        return d


def summarize_marks(marks_ms: Sequence[float]) -> tuple[float | None, list[float]]:
    """From [start, step1, step2, ...] marks: (time to first token, decode step intervals)."""
    if len(marks_ms) < 2:
        return None, []
    ttft = marks_ms[1] - marks_ms[0]
    steps = [b - a for a, b in itertools.pairwise(marks_ms[1:])]
    return ttft, steps


# -- bandwidth floor ----------------------------------------------------------------------------
def measure_copy_bandwidth(device: torch.device | str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth of ``device`` in bytes/s (read + write counted), median of
    ``repeats`` after a warm-up. CUDA only: the denominator of the weight-streaming floor."""
    if not is_cuda(device):
        raise ValueError("copy bandwidth is measured on CUDA devices only")
    device = _concrete(device)
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    stream = torch.cuda.current_stream(device)
    times = []
    with torch.cuda.device(device):  # the copies and the events on the same device
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            dst.copy_(src)
            end.record(stream)
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times)


def floor_ms_per_step(weight_bytes: dict[str, int], bandwidth: dict[str, float]) -> dict[str, float]:
    """Per CUDA device, the time to stream its weights once at its bandwidth (ms). A decode step
    runs the layers one after another, so the step's floor is the sum of these."""
    return {d: b / bandwidth[d] * 1e3 for d, b in weight_bytes.items() if d in bandwidth}


# -- machine speed index --------------------------------------------------------------------------
#: The reference workload: a square fp32 matmul of this size and a copy of this many bytes (larger
#: than a server CPU's last-level cache, so it streams memory), each timed this many times.
INDEX_MATMUL_N = 384
INDEX_SWEEP_BYTES = 64 * 2**20
INDEX_REPEATS = 5


def speed_index() -> dict[str, float]:
    """A fixed reference workload timed now (about 0.1 s): a small fp32 matmul (GFLOP/s) and a memory
    sweep (GB/s read + written), each the median of :data:`INDEX_REPEATS` after a warm-up, on torch's
    threads. Taken before each speed round, it shows a machine that runs slow (a neighbour that
    competes for memory bandwidth or caches shows here and not in CPU counters) and tells apart
    machines whose names read the same."""
    n = INDEX_MATMUL_N
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    src = torch.ones(INDEX_SWEEP_BYTES // 4)
    dst = torch.empty_like(src)
    start = time.perf_counter()
    mm, sweep = [], []
    for i in range(INDEX_REPEATS + 1):
        t0 = time.perf_counter()
        torch.mm(a, b)
        t1 = time.perf_counter()
        dst.copy_(src)
        t2 = time.perf_counter()
        if i:  # the first of each is the warm-up
            mm.append(t1 - t0)
            sweep.append(t2 - t1)
    return {
        "matmul_gflops": 2 * n**3 / statistics.median(mm) / 1e9,
        "memory_gb_s": 2 * INDEX_SWEEP_BYTES / statistics.median(sweep) / 1e9,
        "threads": torch.get_num_threads(),
        "wall_ms": (time.perf_counter() - start) * 1e3,
    }
