"""torchao and HQQ: a scheme's torchao config (reached through transformers' ``TorchAoConfig``, as
bitsandbytes is through ``BitsAndBytesConfig``), and HQQ's quantization of a loaded model.

HQQ goes through its own API, not ``HqqConfig``: transformers 5.25's HQQ quantizer has no quantize
operation in its new loading path (``from_pretrained(..., quantization_config=HqqConfig(...))`` raises
"QuantizationMethod.HQQ is not available yet"), and it refuses a device map with the CPU in it. So an
HQQ scheme loads unquantized and :func:`hqq_quantize` replaces the linear layers by ``HQQLinear`` —
what ``hqq.models.hf.base.AutoHQQHFModel.quantize_model`` does for any Hugging Face model.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch

from harness_ext.errors import UnsupportedSchemeError
from harness_ext.spec.schemes import Scheme

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torchao_config(scheme: Scheme) -> Any:
    """transformers' ``TorchAoConfig`` for a resolved torchao scheme.

    ``set_inductor_config=False``: torchao's default turns on inductor's coordinate-descent tuning for the
    whole process when a model loads, which would change (and lengthen) every later compile in it,
    unquantized schemes' included; schemes compiled side by side must compile alike.
    """
    with _quiet():
        import torchao.quantization as q
        from transformers import TorchAoConfig

    if scheme.quant == "int4" and scheme.kernel == "unpacked_to_int8":
        config = q.IntxWeightOnlyConfig(
            weight_dtype=torch.int4,
            granularity=q.PerGroup(scheme.group_size),
            mapping_type=q.MappingType.ASYMMETRIC,
        )
    elif scheme.quant == "int4":
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        config = q.Int4WeightOnlyConfig(
            group_size=scheme.group_size,
            int4_packing_format=Int4PackingFormat(scheme.kernel),
            set_inductor_config=False,
        )
    else:
        granularity = q.PerGroup(scheme.group_size) if scheme.group_size else q.PerRow()
        config = q.Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    skip = list(scheme.skip_modules) if scheme.skip_modules is not None else None
    return TorchAoConfig(config, modules_to_not_convert=skip)


def hqq_quantize(model: Any, scheme: Scheme, device: str) -> None:
    """Replace ``model``'s decoder linear layers by HQQ's (``nbits``/``group_size``/``axis`` of the
    scheme) on ``device``, the other layers cast to the scheme's dtype; then pick the kernel."""
    check_grouping(model, scheme, _quantizable(model, scheme))
    with _quiet():
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

    config = BaseQuantizeConfig(nbits=scheme.bits, group_size=scheme.group_size, axis=scheme.axis)
    if scheme.skip_modules:
        AutoHQQHFModel.setup_model(model)
        skip = scheme.skip_modules
        config = {tag: None if any(s in tag for s in skip) else config for tag in model.linear_tags}
    with _quiet():
        AutoHQQHFModel.quantize_model(
            model, quant_config=config, compute_dtype=TORCH_DTYPES[scheme.dtype], device=device
        )
    # a process-wide setting in HQQ: every scheme sets its own before it runs
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    if scheme.kernel == "torchao_int4":
        from hqq.utils.patching import prepare_for_inference

        try:
            with _quiet():
                prepare_for_inference(model, backend="torchao_int4")
        except RuntimeError as e:
            # seen on an H200, torch 2.11 and hqq 0.2.8: "Expected in.dtype() == at::kByte" (torch's int4
            # packing op takes uint8 weights; HQQ's repacking handed it another dtype)
            raise UnsupportedSchemeError(
                f"scheme {scheme.name!r}: HQQ's repacking for torchao's int4 kernel failed on torch "
                f"{torch.__version__} ({str(e).splitlines()[0][:160]}): use HQQ's own kernel (leave `kernel` "
                "out) or int4-torchao"
            ) from e


def _quantizable(model: Any, scheme: Scheme) -> dict[str, torch.nn.Linear]:
    """The linear layers a scheme quantizes: all but the output embedding and ``skip_modules``."""
    head = model.get_output_embeddings()
    skip = scheme.skip_modules or ()
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and not any(s in name for s in skip)
    }


def check_grouping(model: Any, scheme: Scheme, layers: dict[str, torch.nn.Linear]) -> None:
    """Refuse a group size that does not divide a layer's input size: torchao leaves such a layer
    unquantized without a word, and HQQ's groups would run across rows."""
    g = scheme.group_size
    bad = {name: m.in_features for name, m in layers.items() if g and m.in_features % g}
    if bad:
        name, size = next(iter(bad.items()))
        sizes = {m.in_features for m in layers.values()}
        fits = [c for c in (256, 128, 64, 32) if all(n % c == 0 for n in sizes)]
        hint = f" (e.g. {fits[0]})" if fits else ""
        raise UnsupportedSchemeError(
            f"scheme {scheme.name!r}: group_size {g} does not divide the input size {size} of {name} "
            f"({len(bad)} layers); choose a group_size that divides every layer's{hint}"
        )


def check_torchao_loaded(model: Any, scheme: Scheme) -> None:
    """After a torchao load: every layer the scheme covers holds a torchao tensor."""
    layers = _quantizable(model, scheme)
    check_grouping(model, scheme, layers)
    plain = [name for name, m in layers.items() if not hasattr(m.weight, "__tensor_flatten__")]
    if plain:
        raise UnsupportedSchemeError(
            f"scheme {scheme.name!r}: torchao left {len(plain)} layers unquantized ({plain[0]})"
        )


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the libraries' import chatter and progress bars (torchao's CUDA-only extensions that
    cannot load on a CPU build, HQQ's tqdm bars); errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
