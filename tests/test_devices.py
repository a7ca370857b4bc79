"""Measurements read the model's device(s), not the current one: faked CUDA on the CPU.

``torch.cuda``'s synchronize, peak-memory and event functions are replaced by fakes that record the
device they were asked about, so the tests show which GPU each measurement reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from harness_ext.backend import measure, speed
from harness_ext.backend.sampler import Row
from harness_ext.point import SamplingPoint

CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


@dataclass
class FakeTensor:
    device: torch.device
    n: int
    size: int = 4

    def nelement(self) -> int:
        return self.n

    def element_size(self) -> int:
        return self.size


class FakeModel:
    """Parameters spread like ``device_map="auto"`` would: a few layers per GPU, one offloaded to meta."""

    def __init__(self, tensors: list[FakeTensor]):
        self.tensors = tensors

    def parameters(self):
        return iter(self.tensors[:-1])

    def buffers(self):
        return iter(self.tensors[-1:])


@pytest.fixture
def fake_cuda(monkeypatch) -> dict[str, list[Any]]:
    """Every call to the faked ``torch.cuda`` functions, with the device it named (None: current device)."""
    calls: dict[str, list[Any]] = {"synchronize": [], "reset": [], "max": [], "stream": []}
    peaks = {CUDA0: 300, CUDA1: 5_000}

    def dev(d: Any) -> torch.device | None:
        return None if d is None else torch.device(d)

    class Event:
        clock = 0.0

        def __init__(self, enable_timing: bool = False):
            self.t = None

        def record(self, stream: Any = None) -> None:
            calls["stream"].append(stream)
            Event.clock += 2.5
            self.t = Event.clock

        def elapsed_time(self, other: Event) -> float:
            return other.t - self.t

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls["synchronize"].append(dev(device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls["reset"].append(dev(device)))
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda device=None: calls["max"].append(dev(device)) or peaks[dev(device)]
    )
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", dev(device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    calls["peaks"] = [peaks]
    return calls


def _spread_model() -> FakeModel:
    return FakeModel(
        [
            FakeTensor(CUDA1, 1000),  # embeddings first: the first device the forward pass uses
            FakeTensor(CUDA1, 500, 2),
            FakeTensor(CUDA0, 3000),
            FakeTensor(torch.device("meta"), 10**9),  # offloaded: holds no memory anywhere
            FakeTensor(CUDA0, 8, 1),  # a buffer
        ]
    )


def test_model_devices_in_order_of_use_without_meta() -> None:
    assert measure.model_devices(_spread_model()) == [CUDA1, CUDA0]
    assert measure.weight_bytes_by_device(_spread_model()) == {
        "cuda:1": 1000 * 4 + 500 * 2,
        "cuda:0": 3000 * 4 + 8,
        "meta": 10**9 * 4,
    }


def test_peak_memory_of_cuda_1_is_read_on_cuda_1(fake_cuda) -> None:
    with measure.track_peak_memory("cuda:1") as peak:
        pass
    assert fake_cuda["reset"] == [CUDA1] and fake_cuda["max"] == [CUDA1]
    assert set(fake_cuda["synchronize"]) == {CUDA1}
    assert peak.kind == "cuda_allocated" and peak.bytes == fake_cuda["peaks"][0][CUDA1]


def test_peak_memory_over_several_devices_is_per_device_and_summed(fake_cuda) -> None:
    with measure.track_peak_memory(measure.model_devices(_spread_model())) as peak:
        pass
    peaks = fake_cuda["peaks"][0]
    assert set(fake_cuda["reset"]) == set(fake_cuda["max"]) == {CUDA0, CUDA1}
    assert peak.by_device == {"cuda:1": peaks[CUDA1], "cuda:0": peaks[CUDA0]}
    assert peak.bytes == peaks[CUDA0] + peaks[CUDA1]


def test_clock_on_cuda_1_records_and_synchronizes_cuda_1(fake_cuda) -> None:
    clock = measure.Clock("cuda:1")
    for _ in range(3):
        clock.mark()
    assert clock.elapsed_ms() == [0.0, 2.5, 5.0]
    assert fake_cuda["stream"] == [("stream of", CUDA1)] * 3
    assert fake_cuda["synchronize"] == [CUDA1]


def test_clock_over_several_devices_synchronizes_all_of_them(fake_cuda) -> None:
    clock = measure.Clock([CUDA1, CUDA0])
    clock.mark()
    clock.mark()
    assert fake_cuda["stream"] == []  # no events: one device's stream does not see the other's work
    assert fake_cuda["synchronize"] == [CUDA1, CUDA0] * 2
    ms = clock.elapsed_ms()
    assert ms[0] == 0.0 and ms[1] >= 0.0


def test_floor_sums_the_per_device_streaming_times(fake_cuda) -> None:
    model = _spread_model()
    split = measure.weight_bytes_by_device(model)
    footprint = split["cuda:0"] + split["cuda:1"]
    bw = {"cuda:0": 2.0e12, "cuda:1": 0.5e12}
    out = speed.weight_streaming_floor(model, footprint, bw, decode_ms=1.0)
    total = sum(split.values())  # the meta share scales the GPU shares of the footprint down
    want = {d: footprint * split[d] / total / bw[d] * 1e3 for d in ("cuda:0", "cuda:1")}
    assert out["floor_ms_by_device"] == pytest.approx(want)
    assert out["floor_ms_per_token"] == pytest.approx(want["cuda:0"] + want["cuda:1"])
    assert out["decode_over_floor"] == pytest.approx(1.0 / out["floor_ms_per_token"])
    with pytest.raises(ValueError, match="cuda:1"):
        speed.weight_streaming_floor(model, footprint, {"cuda:0": 1e12}, decode_ms=1.0)


def test_generate_call_measures_the_models_device(fake_cuda, tiny_lm_factory, monkeypatch) -> None:
    """An LM whose weights are on cuda:1 (faked; the tensors stay on the CPU) times and measures cuda:1."""
    lm = tiny_lm_factory("fp32")
    monkeypatch.setattr(lm, "model_devices", [CUDA1])
    ids = torch.tensor([[5, 6, 7, 8]])
    lm.pop_calls()
    lm.generate_rows(ids, torch.ones_like(ids), [Row(SamplingPoint())], [3], min_new_tokens=3)
    (call,) = lm.pop_calls()
    assert call.peak_memory_kind == "cuda_allocated"
    assert call.peak_memory_by_device == {"cuda:1": fake_cuda["peaks"][0][CUDA1]}
    assert call.peak_memory_bytes == fake_cuda["peaks"][0][CUDA1]
    assert set(fake_cuda["synchronize"]) == {CUDA1} and set(fake_cuda["reset"]) == {CUDA1}
    assert fake_cuda["stream"] and set(fake_cuda["stream"]) == {("stream of", CUDA1)}


class _Layer:
    """An attention module on one device (``layer_idx`` as Hugging Face's attention modules have it)."""

    def __init__(self, idx: int | None, device: torch.device):
        self.layer_idx, self.weight = idx, FakeTensor(device, 1)

    def parameters(self):
        return iter([self.weight])


def test_rows_per_call_fits_every_gpu_the_model_is_split_over(monkeypatch) -> None:
    """A model split over two GPUs: the second holds half the layers' KV cache and the logits, and
    has little free memory; the rows that fit are decided there, not on the first GPU."""
    from types import SimpleNamespace

    from harness_ext.backend.generation import RowGeneration

    free = {CUDA0: 80 * 2**30, CUDA1: 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free[torch.device(d)], 0))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 0)
    config = SimpleNamespace(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, head_dim=128)
    config.vocab_size, config.get_text_config = 32000, lambda decoder=True: config
    layers = [_Layer(i, CUDA0 if i < 2 else CUDA1) for i in range(4)]
    head = _Layer(None, CUDA1)
    model = SimpleNamespace(
        config=config, dtype=torch.float16, modules=lambda: iter([*layers, head]), get_output_embeddings=lambda: head
    )
    lm = SimpleNamespace(model=model, device=CUDA0, batch_size=4096, max_rows=None)
    tokens = 1000
    kv_per_row = {d: 2 * 2 * 8 * 128 * 2 * tokens for d in (CUDA0, CUDA1)}  # 2 layers each, fp16
    want = int(0.9 * free[CUDA1] // (kv_per_row[CUDA1] + 6 * 4 * 32000))
    assert RowGeneration.rows_per_call(lm, tokens) == want
    assert want < int(0.9 * free[CUDA0] // kv_per_row[CUDA0])  # the first GPU alone would allow more
