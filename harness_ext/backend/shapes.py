"""Shape-only models: random weights built from an architecture's config, for speed and memory.

A shape (``model_type`` plus the architecture's fields) needs no checkpoint: the model is built with
random weights on one device (quantized through ``from_pretrained`` as a checkpoint would be) or
spread over every visible GPU, with a placeholder tokenizer whose words carry token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness_ext.errors import ModelLoadError


def shape_config(shape: dict[str, Any]) -> Any:
    """A transformers config from ``shape``'s fields (``model_type`` plus the architecture's fields)."""
    from transformers import AutoConfig

    fields = dict(shape)
    try:
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"shape {shape}: {type(e).__name__}: {e}") from None


def random_model(config: Any, from_pretrained_kwargs: dict[str, Any], device: str, seed: int = 0) -> Any:
    """Build ``config`` with random weights on ``device``; quantize it through ``from_pretrained``
    (as a checkpoint would be) when the kwargs carry a ``quantization_config``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = from_pretrained_kwargs["dtype"]
    quant = from_pretrained_kwargs.get("quantization_config")
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if quant is None:
        return base
    state = base.state_dict()
    cls = type(base)
    del base
    return cls.from_pretrained(None, config=config, state_dict=state, device_map={"": device}, **from_pretrained_kwargs)


def spread_random_model(config: Any, dtype: str, max_memory: dict[Any, Any] | None = None, seed: int = 0) -> Any:
    """Build ``config`` with random weights spread over every visible GPU, as ``device_map="auto"``
    spreads a checkpoint: for shapes too large for one GPU (a 70B model in fp16 over two H100s).

    The skeleton is built on the meta device, accelerate plans the placement (balanced over the
    GPUs, whole decoder layers per device), each weight is drawn directly on its device (no copy of
    the full model ever exists on the host), and ``dispatch_model`` adds the hooks that move
    activations between devices. Unquantized only: bitsandbytes quantizes while a checkpoint
    loads, and a random checkpoint of this size would have to exist first.
    """
    import torch
    from accelerate import dispatch_model
    from accelerate.utils import set_module_tensor_to_device

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model, device_map = plan_spread(config, torch_dtype, max_memory)
    std = float(getattr(config, "initializer_range", 0.02) or 0.02)
    torch.manual_seed(seed)
    for name, param in list(model.named_parameters()):
        device = _placed_on(name, device_map)
        value = torch.empty(param.shape, dtype=torch_dtype, device=device)
        if value.dim() == 1:
            value.fill_(1.0)  # norm weights: ones, as a fresh model has them
        else:
            value.normal_(0.0, std)
        set_module_tensor_to_device(model, name, device, value=value)
    model.tie_weights()
    return dispatch_model(model, device_map=device_map)


def plan_spread(config: Any, dtype: Any, max_memory: dict[Any, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """An empty (meta-device) model of ``config`` and accelerate's placement of it over ``max_memory``'s
    devices (default: balanced over the visible GPUs); refuses a plan that spills to the CPU or disk."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if max_memory is None:
        max_memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    gpus = any(isinstance(d, int) for d in max_memory)
    spilled = sorted({str(d) for d in device_map.values() if d in ("cpu", "disk")})
    if gpus and spilled:  # offloaded layers would time the host, not the GPUs
        raise ModelLoadError(f"the shape does not fit the visible GPUs (it would spill to {', '.join(spilled)})")
    return model, device_map


def _placed_on(name: str, device_map: dict[str, Any]) -> Any:
    """The device ``device_map`` gives parameter ``name`` (its longest matching module prefix)."""
    best, where = -1, None
    for prefix, device in device_map.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, where = len(prefix), device
    if where is None:
        raise ModelLoadError(f"no device planned for {name}")
    return f"cuda:{where}" if isinstance(where, int) else where


def placeholder_tokenizer(vocab_size: int = 4) -> Any:
    """A tokenizer for shape-only models: four special tokens, then token id ``i`` is the word ``t<i>``
    (``"t17 t905"`` encodes to ``[17, 905]`` and back), so that text prompts and outputs carry ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3} | {f"t{i}": i for i in range(4, vocab_size)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def shape_model_args(name: str, spec_file: str | Path | None = None) -> dict[str, Any]:
    """``HFQuantLM`` arguments of a named shape of ``specs/paper_speed.yaml`` (for the benchmarks)."""
    from harness_ext.spec import load_spec

    if spec_file is None:  # the packaged copy (harness_ext.specs): works from a checkout and from a wheel
        from importlib import resources

        with resources.as_file(resources.files("harness_ext.specs").joinpath("paper_speed.yaml")) as packaged:
            return shape_model_args(name, packaged)
    path = Path(spec_file)
    for m in load_spec(path).models:
        if m.label == name and m.shape:
            return {"pretrained": None, "shape": m.shape}
    raise ModelLoadError(f"no shape named {name!r} in {path}")
