"""A shape too large for one GPU, spread over several (issue 20): the placement plan and the random
weights drawn on each planned device, checked on the CPU."""

from __future__ import annotations

import pytest
import torch

from harness_ext.backend import shapes as models
from harness_ext.errors import ModelLoadError

SHAPE = {
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


def _bytes(config) -> int:
    model, _ = models.plan_spread(config, torch.float16, {"cpu": 1 << 30})
    return sum(p.numel() * 2 for p in model.parameters())


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """accelerate checks that the devices it plans for exist: pretend two GPUs are visible."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_plan_spreads_whole_layers_over_two_devices(two_fake_gpus) -> None:
    config = models.shape_config(SHAPE)
    half = int(_bytes(config) * 0.8)  # neither device can hold the model alone
    _, plan = models.plan_spread(config, torch.float16, {0: half, 1: half})
    assert set(plan.values()) == {0, 1}
    layers = {k for k in plan if k.startswith("model.layers.")}
    assert layers and all(k.count(".") == 2 for k in layers), "a decoder layer is never split across devices"


def test_plan_refuses_to_spill_to_the_cpu(two_fake_gpus) -> None:
    config = models.shape_config(SHAPE)
    tiny = int(_bytes(config) * 0.3)
    with pytest.raises(ModelLoadError, match="does not fit"):
        models.plan_spread(config, torch.float16, {0: tiny, 1: tiny, "cpu": 1 << 30})


def test_spread_model_draws_every_weight_on_its_device_and_runs() -> None:
    config = models.shape_config(SHAPE)
    model = models.spread_random_model(config, "float32", max_memory={"cpu": 1 << 30})
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and not p.is_meta for p in params.values())
    assert torch.all(params["model.norm.weight"] == 1.0)
    assert params["model.layers.0.mlp.up_proj.weight"].std() > 0
    out = model(input_ids=torch.tensor([[1, 5, 9, 3]])).logits
    assert out.shape == (1, 4, 128) and torch.isfinite(out).all()


def test_placed_on_takes_the_longest_prefix() -> None:
    plan = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.10": 1, "lm_head": 1}
    assert models._placed_on("model.layers.1.mlp.up_proj.weight", plan) == "cuda:1"
    assert models._placed_on("model.layers.10.self_attn.q_proj.weight", plan) == "cuda:1"
    assert models._placed_on("model.layers.0.input_layernorm.weight", plan) == "cuda:0"
    with pytest.raises(ModelLoadError):
        models._placed_on("model.norm.weight", plan)
