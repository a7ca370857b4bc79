"""Building a (model, scheme): from a checkpoint (hub id, folder, GGUF, built-in name) or from a shape
with random weights, quantized by a :class:`~harness_ext.spec.schemes.Scheme` on load; measured (time,
memory) and described (:class:`LoadInfo`: what the layers became, where the weights are).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from pydantic import ValidationError
from transformers import GenerationConfig

from harness_ext.backend.measure import (
    cuda_devices,
    model_devices,
    synchronize,
    track_peak_memory,
    weight_bytes_by_device,
)
from harness_ext.backend.quantize import check_supported, from_pretrained_kwargs
from harness_ext.backend.shapes import placeholder_tokenizer, random_model, shape_config, spread_random_model
from harness_ext.backend.sources import ModelSource, resolve
from harness_ext.catalog import SHAPE_NOTE
from harness_ext.errors import ModelLoadError, SpecError
from harness_ext.spec.schemes import BUILTIN_SCHEMES, Scheme

QUANT_LAYER_TYPES = ("Linear4bit", "Linear8bitLt")


@dataclass
class LoadInfo:
    """How a (model, scheme) was loaded: time, memory, and proof of what the layers became."""

    load_s: float
    weight_bytes: int
    load_peak_bytes: int | None
    load_peak_kind: str
    num_parameters: int
    layer_types: dict[str, int]
    dtypes: dict[str, int]
    device: str
    source: dict[str, Any]
    note: str | None
    scheme: dict[str, Any]
    model_type: str | None = None
    original_generation_config: dict[str, Any] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)  # where the weights are, in the order layers run
    weight_bytes_by_device: dict[str, int] = field(default_factory=dict)
    load_peak_by_device: dict[str, int] | None = None  # CUDA: each device's own peak while loading
    quantized_parameters: int = 0  # weights of the quantized layers, counted as the unquantized model counts them
    unquantized_parameters: int = 0  # every other parameter (embeddings, norms, lm_head, biases)


def scheme_from_args(quant: str | Scheme, **fields: Any) -> Scheme:
    """A scheme from ``quant=<built-in name>`` plus any scheme fields given as model args."""
    if isinstance(quant, Scheme):
        return quant
    base = BUILTIN_SCHEMES.get(quant)
    if base is None:
        raise SpecError(f"unknown quant={quant!r}: built-ins are {', '.join(BUILTIN_SCHEMES)}")
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return base
    data = base.model_dump(exclude_none=True) | given
    try:
        return Scheme.model_validate(data)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"quant={quant!r} with {given}: {msg}") from None


def _count(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    layers: dict[str, int] = defaultdict(int)
    for m in model.modules():
        name = type(m).__name__
        if name in QUANT_LAYER_TYPES or name == "Linear":
            layers[name] += 1
    dtypes: dict[str, int] = defaultdict(int)
    for p in model.parameters():
        dtypes[str(p.dtype).removeprefix("torch.")] += p.numel()
    return dict(layers), dict(dtypes)


def load_model(
    pretrained: str | None,
    scheme: Scheme,
    device: str,
    *,
    model_dtype: str = "float32",
    revision: str | None = None,
    gguf_file: str | None = None,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    shape: dict[str, Any] | None = None,
    device_map: str | None = None,
) -> tuple[transformers.PreTrainedModel, Any, LoadInfo]:
    """Load ``pretrained`` (or build ``shape`` with random weights) quantized by ``scheme`` on
    ``device`` — or, with ``device_map="auto"``, spread over every GPU this process sees; measure
    load time and memory."""
    scheme = scheme.resolve(model_dtype)
    check_supported(scheme, device)  # before any weights load
    if device_map not in (None, "auto"):
        raise SpecError(f"device_map must be 'auto' or unset, not {device_map!r}")
    if shape is not None:
        if device_map == "auto" and scheme.quantized:
            raise SpecError(
                f"scheme {scheme.name!r}: a shape spread over several GPUs is built unquantized only "
                "(bitsandbytes quantizes while a checkpoint loads): give this model num_gpus: 1"
            )
        return _build_shape(shape, scheme, device, spread=device_map == "auto")
    if pretrained is None:
        raise ModelLoadError("a model needs `pretrained` (weights) or `shape` (config fields)")
    source = resolve(pretrained, gguf_file=gguf_file, revision=revision, tokenizer=tokenizer)
    config, tok = _config_and_tokenizer(pretrained, source, trust_remote_code)
    kwargs = from_pretrained_kwargs(scheme)
    if device_map == "auto":
        kwargs["device_map"] = "auto"  # accelerate places layers over the visible GPUs
    elif scheme.quantized:
        kwargs["device_map"] = {"": device}  # bitsandbytes quantizes as the weights land on the device
    load_devices = _load_devices(device, device_map)
    with track_peak_memory(load_devices) as peak:
        t0 = time.perf_counter()
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source.path, revision=source.revision, trust_remote_code=trust_remote_code, **kwargs
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load {pretrained!r} as {scheme.name}: {_one_line(e)}") from e
        if not scheme.quantized and device_map is None:
            model.to(device)
        synchronize(cuda_devices(load_devices))
        load_s = time.perf_counter() - t0
    return model, tok, _finish_load(model, config, scheme, device, load_s, peak, source.origin, source.note)


def _config_and_tokenizer(pretrained: str, source: ModelSource, trust_remote_code: bool) -> tuple[Any, Any]:
    """The checkpoint's config and tokenizer, refusing (in one line) a checkpoint that is already quantized."""
    try:
        config = transformers.AutoConfig.from_pretrained(
            source.path, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load the config of {pretrained!r}: {_one_line(e)}") from e
    if getattr(config, "quantization_config", None):
        raise ModelLoadError(
            f"{pretrained!r} is already quantized ({config.quantization_config.get('quant_method', '?')}); "
            "harness_ext quantizes on load: point it at the unquantized checkpoint"
        )
    try:
        revision = None if source.tokenizer else source.revision  # the model's commit is not the tokenizer's
        tok = transformers.AutoTokenizer.from_pretrained(
            source.tokenizer or source.path, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer of {pretrained!r}: {_one_line(e)}") from e
    return config, tok


def _load_devices(device: str, device_map: str | None) -> list[torch.device]:
    """The devices a load may touch: every visible GPU with ``device_map="auto"``, else ``device``."""
    if device_map == "auto" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(device)]


def _build_shape(shape: dict[str, Any], scheme: Scheme, device: str, spread: bool = False) -> tuple[Any, Any, LoadInfo]:
    config = shape_config(shape)
    tok = placeholder_tokenizer(getattr(config, "vocab_size", 4))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    load_devices = _load_devices(device, "auto" if spread else None)
    with track_peak_memory(load_devices) as peak:
        t0 = time.perf_counter()
        if spread:  # device_map="auto": over every GPU this process sees (a Ray task's)
            model = spread_random_model(config, from_pretrained_kwargs(scheme)["dtype"])
        else:
            model = random_model(config, from_pretrained_kwargs(scheme), device)
        synchronize(cuda_devices(load_devices))
        load_s = time.perf_counter() - t0
    return model, tok, _finish_load(model, config, scheme, device, load_s, peak, {"shape": shape}, SHAPE_NOTE)


def _finish_load(
    model: Any,
    config: Any,
    scheme: Scheme,
    device: str,
    load_s: float,
    peak: Any,
    origin: dict[str, Any],
    note: str | None,
) -> LoadInfo:
    """Neutralise the model's own sampling defaults and describe what was loaded."""
    model.eval()
    original_gc = model.generation_config.to_diff_dict() if model.generation_config else {}
    # a model's own sampling defaults (temperature, repetition_penalty, ...) must not leak into cells
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    layers, dtypes = _count(model)
    quantized, unquantized = _quantized_split(model)
    return LoadInfo(
        load_s=load_s,
        weight_bytes=int(model.get_memory_footprint()),
        load_peak_bytes=peak.bytes,
        load_peak_kind=peak.kind,
        num_parameters=sum(p.numel() for p in model.parameters()),
        layer_types=layers,
        dtypes=dtypes,
        device=str(device),
        source=origin,
        note=note,
        scheme=scheme.model_dump(mode="json"),
        model_type=getattr(config, "model_type", None),
        original_generation_config={k: v for k, v in original_gc.items() if isinstance(v, (int, float, str, bool))},
        devices=[str(d) for d in model_devices(model)],
        weight_bytes_by_device=weight_bytes_by_device(model),
        load_peak_by_device=peak.by_device,
        quantized_parameters=quantized,
        unquantized_parameters=unquantized,
    )


def _quantized_split(model: torch.nn.Module) -> tuple[int, int]:
    """Parameters held quantized (the weights of the quantized layers, ``in × out`` each: bitsandbytes
    packs two 4-bit values per byte, so their ``numel`` is not the count) and those held unquantized.
    A large tied embedding stays unquantized: the share says how much of the model a scheme reached."""
    quantized, packed = 0, set()
    for m in model.modules():
        if type(m).__name__ in QUANT_LAYER_TYPES:
            quantized += m.in_features * m.out_features
            packed.add(id(m.weight))
    unquantized = sum(p.numel() for p in model.parameters() if id(p) not in packed)
    return quantized, unquantized


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
