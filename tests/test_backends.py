"""torchao and HQQ schemes beside bitsandbytes': they quantize and generate on the tiny model, carry their
backend and version in the cell's identity, and what a device or an installation cannot run is refused
by ``validate`` in one line, before any weights load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_spec

from harness_ext.backend import load_model
from harness_ext.errors import UnsupportedSchemeError
from harness_ext.formats import backend_of, format_of
from harness_ext.spec import load_spec, plan
from harness_ext.spec.plan import Cell
from harness_ext.spec.schemes import BUILTIN_SCHEMES, Scheme

pytest.importorskip("torchao")
pytest.importorskip("hqq")

#: the layer class (or the torchao tensor inside a Linear) each backend leaves in the decoder
LAYER = {
    "intx4-torchao": "Linear(IntxUnpackedToInt8Tensor)",
    "int8wo-torchao": "Linear(Int8Tensor)",
    "hqq4": "HQQLinear",
    "hqq8": "HQQLinear",
}


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """Each scheme of these tests loaded once on the tiny model: name -> (model, tokenizer, load info)."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            cache[name] = load_model(str(tiny_model), BUILTIN_SCHEMES[name], "cpu")
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(LAYER))
def test_each_new_backend_quantizes_and_generates(loaded, name: str) -> None:
    model, tok, info = loaded(name)
    assert info.layer_types[LAYER[name]] == 2 * 7 and info.layer_types["Linear"] == 1  # lm_head stays
    assert model.model.norm.weight.dtype == torch.float32
    assert info.scheme["backend"] == name.split("-")[-1].removesuffix("4").removesuffix("8")
    assert info.scheme["backend_version"] and info.quantization
    ids = tok("the capital of france is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_weight_bytes_count_real_storage_for_every_backend(loaded) -> None:
    """get_memory_footprint counts a torchao weight at its float size and misses bitsandbytes' absmax and
    HQQ's scales: the record's weight bytes must not."""
    sizes, footprints = {}, {}
    for name in ("fp32", "nf4", "int8wo-torchao", "intx4-torchao", "hqq4"):
        model, _, info = loaded(name)
        sizes[name], footprints[name] = info.weight_bytes, model.get_memory_footprint()
    assert sizes["fp32"] == footprints["fp32"]
    assert footprints["int8wo-torchao"] == footprints["fp32"] > sizes["int8wo-torchao"]  # the subclass's float size
    assert sizes["nf4"] > footprints["nf4"] and sizes["hqq4"] > footprints["hqq4"]  # absmax; scale and zero
    assert sizes["nf4"] < sizes["hqq4"] < sizes["int8wo-torchao"] <= sizes["intx4-torchao"] < sizes["fp32"]


def test_identity_holds_backend_version_and_format_but_old_schemes_hash_as_before() -> None:
    """A torchao/HQQ cell's identity names its library and version; a bitsandbytes or unquantized
    scheme dumps exactly the fields it always had, so cells of earlier runs keep their hashes."""
    hqq = BUILTIN_SCHEMES["hqq4"].resolve("float32").model_dump(mode="json")
    assert hqq["backend"] == "hqq" and hqq["backend_version"] and (hqq["group_size"], hqq["axis"]) == (64, 1)
    assert hqq["kernel"] == "pytorch"
    ao = BUILTIN_SCHEMES["int8wo-torchao"].resolve("float32").model_dump(mode="json")
    assert ao["backend"] == "torchao" and ao["backend_version"] and ao["kernel"] == "plain"
    old = {"name", "quant", "dtype", "compute_dtype", "double_quant", "int8_threshold", "skip_modules"}
    for name in ("fp32", "int8", "nf4", "fp4-dq"):
        assert set(BUILTIN_SCHEMES[name].resolve("float32").model_dump(mode="json")) == old, name
    newer = (
        Scheme(name="hqq4", quant="int4", backend="hqq")
        .resolve("float32")
        .model_copy(update={"backend_version": "9.9"})
    )
    base = Scheme(name="hqq4", quant="int4", backend="hqq").resolve("float32")
    model = load_spec_text_model()
    assert Cell("probe", model, base, "cpu").id != Cell("probe", model, newer, "cpu").id


def load_spec_text_model():
    from harness_ext.spec import ModelSpec

    return ModelSpec(name="m", pretrained="some/model")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"quant": "int4"}, "bitsandbytes stores fp4, int8, nf4"),
        ({"quant": "nf4", "backend": "torchao"}, "torchao stores int4, int8"),
        ({"quant": "int4", "backend": "torchao", "group_size": 48}, "group_size must be one of 32, 64, 128, 256"),
        ({"quant": "int4", "backend": "hqq", "kernel": "marlin"}, "kernels are pytorch, torchao_int4"),
        ({"quant": "nf4", "group_size": 64}, "block size is fixed"),
        ({"quant": "int8", "backend": "torchao", "int8_threshold": 5.0}, "bitsandbytes schemes only"),
        ({"quant": "int4", "backend": "torchao", "axis": 0}, "axis applies to hqq"),
        ({"quant": "none", "backend": "hqq", "dtype": "float32"}, "has no backend"),
    ],
)
def test_invalid_backend_fields(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scheme(name="bad", **fields)


def test_format_and_backend_read_apart_from_old_and_new_records() -> None:
    assert backend_of({"quant": "nf4"}) == "bitsandbytes" and backend_of({"quant": "none"}) == "none"
    assert format_of({"quant": "nf4", "double_quant": True}) == "nf4 g64 absmax (double quant)"
    # the zero point's domain is part of what is stored: torchao's intx keeps int8 zeros, HQQ and tinygemm floats
    assert BUILTIN_SCHEMES["intx4-torchao"].resolve("float32").format == "int4 g64 asym, int zero"
    assert BUILTIN_SCHEMES["hqq4"].resolve("float32").format == "int4 g64 asym, float zero"
    assert BUILTIN_SCHEMES["int4-torchao"].resolve("float32").format == "int4 g128 asym, float zero"
    assert BUILTIN_SCHEMES["int8wo-torchao"].resolve("float32").format == "int8 row sym"


SPEC = """\
name: b
models: [{{name: tiny, pretrained: some/model}}]
schemes: [fp32, {scheme}]
sampling: {{temperature: [0]}}
tasks: [quant_nextword]
device: {device}
{extra}"""


def _spec(tmp_path, scheme: str, device: str = "cpu", extra: str = "") -> object:
    return load_spec(write_spec(tmp_path / "s.yaml", SPEC.format(scheme=scheme, device=device, extra=extra)))


@pytest.mark.parametrize(
    ("scheme", "device", "extra", "match"),
    [
        ("int4-torchao", "cpu", "", "runs on cuda only, not cpu; torchao 0.18 packs int4 weight-only for CUDA only"),
        ("{name: h, quant: int4, backend: hqq, kernel: torchao_int4}", "cpu", "", "runs on cuda only, not cpu"),
        ("{name: h, quant: int4, backend: hqq, kernel: torchao_int4}", "cuda", "", "computes in bfloat16, not float32"),
    ],
)
def test_what_the_device_cannot_run_is_refused_in_validate(
    tmp_path, scheme: str, device: str, extra: str, match: str
) -> None:
    spec = _spec(tmp_path, scheme, device=device, extra=extra)
    with pytest.raises(UnsupportedSchemeError, match=match):
        plan(spec)


def test_torchao_and_hqq_compile_on_the_cpu_and_auto_checks_no_device_in_validate(tmp_path) -> None:
    from harness_ext.backend import check_mode

    for name in ("hqq4", "intx4-torchao", "int8wo-torchao"):
        assert check_mode("compiled", BUILTIN_SCHEMES[name].resolve("float32").model_dump(), "cpu") == "compiled"
    with pytest.raises(UnsupportedSchemeError, match="compiled 4-bit runs on CUDA only"):
        check_mode("compiled", BUILTIN_SCHEMES["nf4"].resolve("float32").model_dump(), "cpu")
    assert plan(_spec(tmp_path, "hqq4", extra="mode: compiled"))
    # validate counts a `device: auto` spec as the CPU without refusing what a GPU would run
    assert plan(_spec(tmp_path, "int4-torchao", device="auto"), "cpu")


def test_a_missing_library_fails_in_validate_with_the_install_line(tmp_path, monkeypatch) -> None:
    import importlib.util

    from harness_ext.spec import support

    real = importlib.util.find_spec
    monkeypatch.setattr(support.importlib.util, "find_spec", lambda m, *a: None if m == "hqq" else real(m, *a))
    with pytest.raises(
        UnsupportedSchemeError, match=r"scheme 'hqq4' needs hqq: DISABLE_CUDA=1 pip install 'hqq>=0.2.8,<0.3'"
    ):
        plan(_spec(tmp_path, "hqq4", device="auto"), "cpu")


def test_validate_prints_the_refusal_in_one_line(tmp_path, capsys) -> None:
    from harness_ext.cli import main

    path = write_spec(tmp_path / "s.yaml", SPEC.format(scheme="int4-torchao", device="cpu", extra=""))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int4-torchao" in err and "intx4-torchao" in err


def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_quantizing(tiny_model) -> None:
    scheme = Scheme(name="g96", quant="int4", backend="hqq", group_size=96)
    with pytest.raises(UnsupportedSchemeError, match="group_size 96 does not divide the input size 256"):
        load_model(str(tiny_model), scheme, "cpu")


def test_the_report_lays_schemes_out_by_format_and_backend() -> None:
    from harness_ext.report.setup import format_matrix

    rows = [
        {"scheme": s, **{k: v for k, v in BUILTIN_SCHEMES[s].resolve("float32").model_dump().items()}}
        for s in ("fp32", "nf4", "intx4-torchao", "hqq4", "int8", "int8wo-torchao")
    ]
    for r in rows:
        r |= {"backend": backend_of(r), "format": format_of(r), "bits": 4 if r["quant"] in ("nf4", "int4") else 8}
    m = format_matrix(rows)
    assert m["backends"] == ["bitsandbytes", "torchao", "hqq"]
    by = {r["format"]: r["by"] for r in m["rows"]}
    assert by["int4 g64 asym, int zero"] == {"torchao": ["intx4-torchao"]}
    assert by["int4 g64 asym, float zero"] == {"hqq": ["hqq4"]}
    assert by["nf4 g64 absmax"] == {"bitsandbytes": ["nf4"]}
    assert list(by)[-1] in ("int8 row sym", "int8 row sym + fp16 outliers")
    assert format_matrix([r for r in rows if r["backend"] in ("none", "bitsandbytes")]) is None
    json.dumps(m)


def test_claim_d_reads_bitsandbytes_int8_not_a_weight_only_int8(monkeypatch) -> None:
    """The seed's int8 is LLM.int8: a faster weight-only int8 listed first must not stand in for it."""
    import test_analysis as ta

    schemes = {"int8wo": ("int8", 8, False, "float16", None), **ta.SCHEMES}
    monkeypatch.setattr(ta, "SCHEMES", schemes)
    study = ta.make_study(lambda s, t, d, r: ta.base(t), speed={**ta.SEED_LIKE, "int8wo": 13})
    study.cells["backend"] = study.cells["scheme"].map(lambda s: "torchao" if s == "int8wo" else None)
    study.run["schemes"] = dict.fromkeys(schemes, "")
    c = ta.claim(study, "d")
    assert c.verdict == "holds" and "int8wo" not in c.reason


def test_ray_sizes_int4_schemes_by_their_storage(monkeypatch) -> None:
    from harness_ext.run.executors import ray as ray_executor

    monkeypatch.setattr(ray_executor, "count_parameters", lambda model: 70 * 10**9)
    model = load_spec_text_model()
    packed = ray_executor.gpus_needed(model, BUILTIN_SCHEMES["hqq4"].resolve("float16"), 80)
    unpacked = ray_executor.gpus_needed(model, BUILTIN_SCHEMES["intx4-torchao"].resolve("float16"), 80)
    assert packed == 1 and unpacked == 2


def test_a_failing_tinygemm_repacking_of_hqq_is_a_refused_scheme_not_a_bug(tiny_model, monkeypatch) -> None:
    """Seen on an H200 (torch 2.11, hqq 0.2.8): HQQ's torchao_int4 repacking raised a bare RuntimeError
    from torch's int4 packing op; the cell must fail with the reason and the way out, as a scheme this
    environment cannot run (not as 'unexpected error, a bug')."""
    import hqq.utils.patching
    from transformers import AutoModelForCausalLM

    from harness_ext.backend.libraries import hqq_quantize
    from harness_ext.run.failures import expected_failure

    def repack(model, backend):
        raise RuntimeError("Expected in.dtype() == at::kByte to be true, but got false.")

    monkeypatch.setattr(hqq.utils.patching, "prepare_for_inference", repack)
    scheme = BUILTIN_SCHEMES["hqq4"].model_copy(update={"name": "h", "kernel": "torchao_int4", "dtype": "bfloat16"})
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    refused = r"int4 kernel failed on torch .*at::kByte.*leave `kernel` out"
    with pytest.raises(UnsupportedSchemeError, match=refused) as e:
        hqq_quantize(model, scheme, "cpu")  # the kernel runs on CUDA only: quantized here, repacking faked
    assert expected_failure(e.value)
