"""Where a model's weights come from: a hub id, a local folder, a GGUF file, or a built-in name.

GGUF checkpoints cannot be quantized by bitsandbytes on load (transformers refuses ``gguf_file``
together with a ``quantization_config``), and a GGUF-loaded model refuses ``save_pretrained``. So a
GGUF is converted once into an ordinary safetensors folder in a cache, content-addressed by the
file's SHA-256, and every scheme loads from that folder.
"""

from __future__ import annotations

import functools
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

from harness_ext.catalog import BUILTIN_MODELS, gguf_caveat
from harness_ext.errors import ModelLoadError
from harness_ext.weights import builtin_gguf, cache_dir, file_sha256, gguf_path, hub_commit, source_kind


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is given, plus provenance for the record."""

    path: str  # folder or hub id
    revision: str | None = None
    tokenizer: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


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
    """Where a converted model came from. The tensor types are read from the GGUF once, at conversion,
    and kept beside the converted weights: parsing a GGUF's metadata takes about a second, and every
    speed round loads the model afresh in a process of its own."""
    try:
        types = json.loads((folder / "harness_ext.json").read_text(encoding="utf-8")).get("gguf_tensor_types")
    except (OSError, ValueError):
        types = None
    if not isinstance(types, dict):
        types = gguf_tensor_types(gguf)
    return {**extra, "gguf": str(gguf), "converted": str(folder), "gguf_tensor_types": types}


def resolve(
    pretrained: str, gguf_file: str | None = None, revision: str | None = None, tokenizer: str | None = None
) -> ModelSource:
    """Turn a model spec's fields into a loadable source, converting GGUF files on first use. A hub
    model loads the commit its revision resolves to (:func:`harness_ext.weights.hub_commit`): the
    one its cells' identities name."""
    kind = source_kind(pretrained, gguf_file)
    if kind == "builtin":
        gguf = builtin_gguf(pretrained)
        folder = convert_gguf(gguf)
        return ModelSource(
            str(folder),
            None,
            tokenizer,
            _gguf_origin(gguf, folder, builtin=pretrained),
            BUILTIN_MODELS[pretrained]["note"],
        )
    if kind == "gguf":
        gguf = gguf_path(pretrained, gguf_file or "")
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file {gguf} not found (gguf_file is a path, or a file inside `pretrained`)")
        folder = convert_gguf(gguf)
        origin = _gguf_origin(gguf, folder)
        caveat = gguf_caveat(origin["gguf_tensor_types"])
        return ModelSource(
            str(folder), None, tokenizer, origin, f"converted from GGUF {gguf.name}" + (f": {caveat}" if caveat else "")
        )
    if kind == "local":
        local = Path(pretrained).expanduser()
        if not local.exists():
            raise ModelLoadError(f"model path {pretrained} does not exist")
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"{local} is not a model folder (no config.json); point `pretrained` at a "
                "folder saved with save_pretrained, or name a hub id"
            )
        return ModelSource(str(local), None, tokenizer, {"local": str(local.resolve())})
    commit = hub_commit(pretrained, revision)
    return ModelSource(
        pretrained, commit or revision, tokenizer, {"hub": pretrained, "revision": revision, "commit": commit}
    )


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
        about = {"source_gguf": str(gguf), "sha256": digest, "gguf_tensor_types": gguf_tensor_types(gguf)}
        (tmp / "harness_ext.json").write_text(json.dumps(about, indent=1))
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
