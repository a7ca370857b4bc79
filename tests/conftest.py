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
