"""Shared fixtures: a tiny self-built Llama (random weights, own BPE tokenizer) and offline settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# speed rounds inside the test's process, where failures can be injected into a runner;
# tests/test_isolated.py times them in fresh processes
os.environ.setdefault("HARNESS_EXT_ROUNDS_IN_PROCESS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from tiny import build_tiny_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a saved 2-layer Llama and its tokenizer (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_nopad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with a tokenizer that has no pad token."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_nopad") / "model", pad=False)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_EXT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_lm_factory(tiny_model: Path):
    """Build (and cache) hf-quant LMs of the tiny model per scheme name."""
    from harness_ext.backend import HFQuantLM

    cache: dict[tuple, HFQuantLM] = {}

    def make(quant: str = "fp32", batch_size: int = 4, grid_batching: bool = True, **fields) -> HFQuantLM:
        key = (quant, batch_size, grid_batching, tuple(sorted(fields.items())))
        if key not in cache:
            cache[key] = HFQuantLM(
                pretrained=str(tiny_model),
                quant=quant,
                device="cpu",
                batch_size=batch_size,
                grid_batching=grid_batching,
                **fields,
            )
        return cache[key]

    return make


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


#: What a fresh interpreter does, step by step, for the "imports no torch" checks of several files: one
#: interpreter for all of them (each took seconds to start). Steps run in order and add up, so a heavy
#: import shows first at the step that made it. The last step resolves the lazy public names (torch).
FRESH_STEPS = {
    "package": "import harness_ext",
    "spec": "import harness_ext.spec, harness_ext.spec.schemes",
    "validate_cpu": "from harness_ext.cli import main\nassert main(['validate', 'cpu.yaml']) == 0",
    "validate_auto": "from harness_ext.cli import main\nassert main(['validate', 'auto.yaml']) == 0",
    "store_analysis": "import harness_ext.store, harness_ext.store.tables, harness_ext.analysis",
    "report_imports": "import harness_ext.report, harness_ext.analysis, harness_ext.store, harness_ext.spec",
    "render_tables": "from harness_ext.report import render\nassert render(REPO / 'reports/demo/data', 'demo')",
    "render_run_dir": "from harness_ext.report import render\nassert render(REPO / 'reports/paper_speed/run', 'r')",
    "surface": "import harness_ext\nMISSING = [n for n in harness_ext.__all__ if not getattr(harness_ext, n, None)]",
}
VALIDATE_SPEC = (
    "name: v\nmodels: [{pretrained: some/model}]\nschemes: [fp32, nf4, int8]\nsampling: {temperature: [0, 0.7]}\n"
    "tasks: [quant_nextword, quant_continuation]\n"
)


@pytest.fixture(scope="session")
def fresh_imports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"modules": {step: every module loaded after it}, "missing": public names that do not resolve,
    "folder": where it ran}: :data:`FRESH_STEPS` run in one fresh interpreter (nothing imported before;
    not this process, which has torch already), in a scratch folder."""
    import json
    import subprocess

    folder = tmp_path_factory.mktemp("fresh")
    for device in ("cpu", "auto"):
        (folder / f"{device}.yaml").write_text(VALIDATE_SPEC + f"device: {device}\n", encoding="utf-8")
    lines = ["import json, sys", "from pathlib import Path", f"REPO = Path({str(REPO)!r})", "MODULES = {}"]
    for step, code in FRESH_STEPS.items():
        lines += [code, f"MODULES[{step!r}] = sorted(sys.modules)"]
    lines.append("print(json.dumps({'modules': MODULES, 'missing': MISSING}))")
    p = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return {**json.loads(p.stdout.splitlines()[-1]), "folder": folder}


@pytest.fixture(scope="session")
def demo_study():
    """The committed demo's tables as the analysis reads them (loaded once per session; read-only use)."""
    from harness_ext.analysis import Study

    return Study.load(REPO / "reports" / "demo" / "data")


@pytest.fixture(scope="session")
def demo_report(fresh_imports: dict) -> tuple[Path, str]:
    """The committed demo report rendered afresh from its tables (by :func:`fresh_imports`, which
    renders it without torch): its ``index.html`` and text, shared by every test that reads it."""
    index = fresh_imports["folder"] / "demo" / "index.html"
    return index, index.read_text(encoding="utf-8")


def heavy_modules(modules: list[str], *, ours: tuple[str, ...] = ()) -> set[str]:
    """The torch-side libraries among ``modules``, and our modules of the packages ``ours`` names."""
    heavy = {"torch", "transformers", "bitsandbytes", "accelerate", "ray", "lm_eval", "datasets"}
    return {m for m in modules if m.split(".")[0] in heavy or any(m == o or m.startswith(o + ".") for o in ours)}
