"""What was timed (issue 25): the machine fingerprint — CPU identity and flags, the ISA level, threads,
GPUs (faked NVML and nvidia-smi), library versions, the kernel path bitsandbytes took — and its key,
which keeps speed cells of two kinds of machine apart."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from harness_ext import fingerprint
from harness_ext.spec import expand, parse_spec

CPUINFO = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
microcode	: 0xa0011d1
flags		: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512_bf16 bmi2 ht

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC
"""


def _fp(**change) -> dict:
    base = {
        "cpu": fingerprint.cpu_identity(CPUINFO),
        "isa": "AVX512",
        "cores": 2,
        "threads": 2,
        "governor": None,
        "gpus": [],
        "cuda": None,
        "packages": {"torch": "2.13.0", "bitsandbytes": "0.50.2"},
        "kernels": {"bitsandbytes": {"gemv_4bit": "hub", "why": ["x"]}},
        "platform": "Linux-6.1-fc-v782",
    }
    return {**base, **change}


def test_cpu_identity_reads_family_model_stepping_and_the_kernel_flags() -> None:
    cpu = fingerprint.cpu_identity(CPUINFO)
    assert (cpu["vendor"], cpu["model_name"], cpu["family"], cpu["model"], cpu["stepping"]) == (
        "AuthenticAMD",
        "AMD EPYC",
        "25",
        "17",
        "1",
    )
    assert cpu["flags"] == ["avx", "avx2", "avx512_bf16", "avx512f", "bmi2", "fma", "sse4_1", "sse4_2"]


def test_the_key_changes_with_what_changes_a_timing_and_only_with_that() -> None:
    k = fingerprint.key(_fp())
    flags = {**_fp()["cpu"], "flags": ["avx", "avx2"]}
    for changed in (
        {"isa": "AVX2"},
        {"threads": 1},
        {"cores": 4},
        {"cpu": flags},
        {"packages": {"torch": "2.11.0", "bitsandbytes": "0.50.2"}},
        {"kernels": {"bitsandbytes": {"gemv_4bit": "fallback", "why": ["x"]}}},
        {"gpus": [{"name": "NVIDIA H200", "memory_bytes": 1, "uuid": "GPU-a"}]},
    ):
        assert fingerprint.key(_fp(**changed)) != k, changed
    for same in (
        {"governor": "performance"},
        {"platform": "Linux-6.1-fc-v1252"},
        {"kernels": {"bitsandbytes": {"gemv_4bit": "hub", "why": ["worded otherwise"]}}},
    ):
        assert fingerprint.key(_fp(**same)) == k, same
    one = [{"name": "H100", "memory_bytes": 8, "uuid": "GPU-a", "sm_mhz": 1980}]
    two = [{"name": "H100", "memory_bytes": 8, "uuid": "GPU-b", "sm_mhz": 345}] * 2
    assert fingerprint.key(_fp(gpus=one)) == fingerprint.key(_fp(gpus=two))  # the kind of GPU, not which or how many
    assert fingerprint.key(_fp(gpus=one, threads=1)) == fingerprint.key(_fp(gpus=one, threads=32))  # GPU timings


def test_the_fingerprint_key_is_part_of_a_speed_cells_identity_only() -> None:
    text = (
        "name: x\nmodels: [{pretrained: m}]\nschemes: [fp32]\nsampling: {temperature: [0]}\ntasks: [quant_nextword]\n"
    )
    spec = parse_spec(text)
    a, b, none = expand(spec, "cpu", machine="aaa"), expand(spec, "cpu", machine="bbb"), expand(spec, "cpu")
    ids = {k: {c.kind: c.id for c in cells} for k, cells in (("a", a), ("b", b), ("none", none))}
    assert ids["a"]["speed"] != ids["b"]["speed"] != ids["none"]["speed"]
    assert ids["a"]["eval"] == ids["b"]["eval"] == ids["none"]["eval"]
    assert next(c for c in a if c.kind == "speed").params["machine"] == "aaa"


def _fake_bnb(monkeypatch, *, native: bool, bf16: bool, hub: object, avx512: bool, log: list[str]) -> None:
    lib_type = type("BNBNativeLibrary" if native else "ErrorHandlerMockBNBNativeLibrary", (), {})
    lib = lib_type()
    lib._lib = types.SimpleNamespace(_name="/x/libbitsandbytes_cpu.so")
    mods = {
        "bitsandbytes": types.SimpleNamespace(__version__="0.50.2"),
        "bitsandbytes.cextension": types.SimpleNamespace(lib=lib),
        "bitsandbytes.functional": types.SimpleNamespace(has_avx512bf16=lambda: bf16),
        "bitsandbytes.backends": types.SimpleNamespace(),
        "bitsandbytes.backends.cpu": types.SimpleNamespace(),
        "bitsandbytes.backends.cpu.ops": types.SimpleNamespace(gemm_4bit_forward_kernel=hub, _has_avx512=avx512),
    }
    mods["bitsandbytes.backends.cpu"].ops = mods["bitsandbytes.backends.cpu.ops"]
    mods["bitsandbytes"].cextension = mods["bitsandbytes.cextension"]
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(fingerprint, "_bnb_import_log", log)


def test_kernel_paths_say_which_4bit_and_int8_cpu_kernels_bitsandbytes_runs_and_why(monkeypatch) -> None:
    failed = "Failed to load CPU gemm_4bit_forward from kernels-community: offline."
    _fake_bnb(monkeypatch, native=True, bf16=True, hub=None, avx512=True, log=[failed])
    bnb = fingerprint.kernel_paths("cpu")["bitsandbytes"]
    assert bnb["gemv_4bit"].startswith("bitsandbytes gemv_4bit_inference_cpu (fallback")
    assert bnb["why"] == ["AVX512-BF16 present", failed] and bnb["int8_matmul"].startswith("torch._int_mm")
    assert bnb["native_library"] == "libbitsandbytes_cpu.so"
    _fake_bnb(monkeypatch, native=True, bf16=True, hub=object(), avx512=True, log=[])
    assert fingerprint.kernel_paths("cpu")["bitsandbytes"]["gemv_4bit"].startswith("kernels-community")
    _fake_bnb(monkeypatch, native=True, bf16=False, hub=None, avx512=False, log=[])
    bnb = fingerprint.kernel_paths("cpu")["bitsandbytes"]
    assert "needs AVX512-BF16" in bnb["gemv_4bit"] and bnb["int8_matmul"] == "bitsandbytes default (no AVX512)"
    _fake_bnb(monkeypatch, native=False, bf16=True, hub=None, avx512=True, log=[])
    assert fingerprint.kernel_paths("cpu")["bitsandbytes"]["gemv_4bit"].endswith("(no native library)")


def test_importing_bitsandbytes_keeps_its_hub_kernel_failure_out_of_the_terminal() -> None:
    """bitsandbytes logs the hub kernel's failure once, on import: the fingerprint keeps it instead."""
    code = (
        "from harness_ext import fingerprint; fingerprint.import_bitsandbytes(); "
        "import json; print(json.dumps(fingerprint.kernel_paths('cpu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert "Failed to load CPU gemm_4bit_forward" not in out.stderr
    bnb = __import__("json").loads(out.stdout.splitlines()[-1])["bitsandbytes"]
    if "fallback" in bnb["gemv_4bit"]:  # where the hub kernel failed, its reason is kept
        assert any("gemm_4bit_forward" in w for w in bnb["why"])


class FakeNVML:
    """pynvml with two GPUs: what NVML would report (clocks in MHz, power in mW)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.1"

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int):
        return types.SimpleNamespace(total=141 * 2**30)

    def nvmlDeviceGetEccMode(self, h: int):
        return (1, 1)

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980 if kind == 1 else 3201

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        return 1980 if kind == 1 else 3201


def test_gpu_identity_through_nvml_or_nvidia_smi(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    gpus = fingerprint.gpu_identity()
    assert [g["uuid"] for g in gpus] == ["GPU-0", "GPU-1"]
    assert gpus[0] | {"index": 0} == {
        "index": 0,
        "name": "NVIDIA H200",
        "uuid": "GPU-0",
        "memory_bytes": 141 * 2**30,
        "driver": "580.1",
        "sm_mhz": 1980,
        "max_sm_mhz": 1980,
        "mem_mhz": 3201,
        "max_mem_mhz": 3201,
        "ecc": True,
        "power_limit_w": 700.0,
    }
    smi = "0, NVIDIA H100 80GB HBM3, GPU-abc, 81559, 580.159.04, 1980, 1980, 2619, 2619, Enabled, 700.00\n"
    (g,) = fingerprint.parse_smi(smi)
    assert (g["name"], g["uuid"], g["ecc"], g["power_limit_w"], g["memory_bytes"]) == (
        "NVIDIA H100 80GB HBM3",
        "GPU-abc",
        True,
        700.0,
        81559 * 2**20,
    )


def test_capture_describes_this_machine_with_its_key() -> None:
    fp = fingerprint.capture("cpu", 1)
    assert fp["threads"] == 1 and fp["isa"] and fp["key"] == fingerprint.key(fp)
    line = fingerprint.describe(fp)
    assert fp["key"] in line and f"torch ISA {fp['isa']}" in line


@pytest.mark.parametrize("field", ["cpu", "isa", "kernels"])
def test_a_fingerprint_lacking_a_field_still_has_a_key(field: str) -> None:
    assert len(fingerprint.key({k: v for k, v in _fp().items() if k != field})) == 12
