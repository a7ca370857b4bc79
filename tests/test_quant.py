"""Quantization schemes: data -> BitsAndBytesConfig; real bitsandbytes layers on the CPU; footprints."""

from __future__ import annotations

import pytest
import torch

from harness_ext.backend import load_model, scheme_from_args
from harness_ext.backend.quantize import check_supported, from_pretrained_kwargs
from harness_ext.errors import SpecError, UnsupportedSchemeError
from harness_ext.spec.schemes import BUILTIN_SCHEMES, Scheme


def test_scheme_maps_to_bitsandbytes_config() -> None:
    kw = from_pretrained_kwargs(
        Scheme(name="x", quant="nf4", double_quant=True, compute_dtype="bfloat16").resolve("float32")
    )
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and kw["dtype"] == torch.float32
    kw8 = from_pretrained_kwargs(Scheme(name="y", quant="int8", int8_threshold=4.0).resolve("float16"))
    assert kw8["quantization_config"].load_in_8bit and kw8["quantization_config"].llm_int8_threshold == 4.0
    assert "quantization_config" not in from_pretrained_kwargs(BUILTIN_SCHEMES["bf16"])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"quant": "int8", "compute_dtype": "float16"}, "compute_dtype applies to 4-bit"),
        ({"quant": "fp32x"}, "Input should be"),
        ({"quant": "none"}, "must name its dtype"),
        ({"quant": "nf4", "int8_threshold": 3.0}, "int8_threshold applies"),
        ({"quant": "int8", "double_quant": True}, "double_quant applies"),
    ],
)
def test_invalid_scheme_fields(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scheme(name="bad", **fields)


def test_scheme_from_model_args() -> None:
    s = scheme_from_args("nf4", double_quant=True, compute_dtype="bfloat16")
    assert s.double_quant and s.compute_dtype == "bfloat16"
    with pytest.raises(SpecError, match="unknown quant"):
        scheme_from_args("nf5")
    with pytest.raises(SpecError, match="compute_dtype applies"):
        scheme_from_args("int8", compute_dtype="float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_scheme_on_cpu_machine_is_one_clear_error() -> None:
    with pytest.raises(UnsupportedSchemeError, match="no CUDA GPU"):
        check_supported(BUILTIN_SCHEMES["nf4"].resolve("float16"), "cuda")
    with pytest.raises(UnsupportedSchemeError, match="not supported"):
        check_supported(BUILTIN_SCHEMES["fp32"], "mps")


LAYER = {
    "int8": "Linear8bitLt",
    "nf4": "Linear4bit",
    "fp4": "Linear4bit",
    "nf4-dq": "Linear4bit",
    "fp4-dq": "Linear4bit",
}


def test_schemes_load_real_bitsandbytes_layers_and_shrink(tiny_model) -> None:
    footprint = {}
    for name in ["fp32", "fp16", "bf16", "int8", "nf4", "fp4", "nf4-dq", "fp4-dq"]:
        model, _, info = load_model(str(tiny_model), BUILTIN_SCHEMES[name], "cpu")
        footprint[name] = info.weight_bytes
        q_proj = type(model.model.layers[0].self_attn.q_proj).__name__
        assert q_proj == LAYER.get(name, "Linear"), (name, q_proj)
        if name == "fp32":
            blocks = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
            total = info.num_parameters
            assert (info.quantized_parameters, info.unquantized_parameters) == (0, total)
        if name in LAYER:
            assert info.layer_types[LAYER[name]] == 2 * 7  # every linear of both blocks; lm_head stays
            assert model.model.norm.weight.dtype == torch.float32  # unquantized layers in the stated dtype
            # counted as the unquantized model counts them (bnb packs two 4-bit weights per byte)
            assert (info.quantized_parameters, info.unquantized_parameters) == (blocks, total - blocks)
        assert info.load_s > 0 and info.num_parameters > 0
        assert info.scheme["dtype"] is not None
        del model
    assert footprint["nf4"] < footprint["int8"] < footprint["fp16"] < footprint["fp32"]
    assert footprint["nf4-dq"] <= footprint["nf4"]
    assert footprint["fp16"] == footprint["bf16"]


def test_pre_quantized_checkpoint_is_refused(tiny_model, tmp_path) -> None:
    from harness_ext.errors import ModelLoadError

    model, tok, _ = load_model(str(tiny_model), BUILTIN_SCHEMES["int8"], "cpu")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="already quantized"):
        load_model(str(tmp_path), BUILTIN_SCHEMES["nf4"], "cpu")


def test_bytes_per_param_come_from_the_scheme_catalog(monkeypatch) -> None:
    """How many GPUs a Ray pair asks for is read from the scheme itself, not from a second table."""
    from harness_ext.run.executors import ray
    from harness_ext.spec import ModelSpec

    per = {n: s.resolve("float16").bytes_per_param for n, s in BUILTIN_SCHEMES.items()}
    assert (per["fp32"], per["fp16"], per["bf16"], per["int8"]) == (4, 2, 2, 1)
    assert per["nf4"] == per["fp4"] == 0.5 + 4 / 64 and 0.5 < per["nf4-dq"] < per["nf4"]
    monkeypatch.setattr(ray, "count_parameters", lambda model: 70 * 10**9)
    model = ModelSpec(name="big", pretrained="org/big", dtype="float16")
    assert [ray.gpus_needed(model, BUILTIN_SCHEMES[s], 80) for s in ("fp16", "int8", "nf4")] == [3, 2, 1]
