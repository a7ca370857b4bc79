"""Checks made before a run creates its directory: is the device there, do local model paths and
GGUF files exist, can the hub models be fetched.

Without them a spec that asks for ``device: cuda`` on a machine without a GPU, or names a model
folder that does not exist, validates and then fails every cell with the same reason (a load
attempt per pair, a FAILED line per cell), and a hub id without network retries for minutes before
failing; with them each is one line and nothing is written. ``validate`` runs the path check too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from harness_ext.catalog import BUILTIN_MODELS
from harness_ext.errors import ModelLoadError, SpecError
from harness_ext.spec import ModelSpec, StudySpec

HUB_TIMEOUT_S = 3.0


def check_device(spec: StudySpec) -> None:
    """Refuse a CUDA device this machine does not have (local executor: Ray workers have their own)."""
    if spec.executor != "local" or not spec.device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.device.partition(":")[2] or 0)
    if count == 0:
        raise SpecError(f"device: {spec.device}, but this machine has no CUDA GPU visible to torch; use device: cpu")
    if index >= count:
        raise SpecError(f"device: {spec.device}, but this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")


def check_paths(spec: StudySpec) -> None:
    """Refuse, in one line, a local model folder, GGUF file or tokenizer path that does not exist
    (what :func:`harness_ext.backend.sources.resolve` would fail on for every cell of the model)."""
    for i, m in enumerate(spec.models):
        if m.pretrained is None or m.pretrained in BUILTIN_MODELS:
            continue
        paths = {"tokenizer": m.tokenizer}
        if m.gguf_file is None:
            paths["pretrained"] = m.pretrained
        elif not (gguf := Path(m.pretrained) / m.gguf_file).is_file():  # an absolute gguf_file replaces the folder
            raise SpecError(
                f"models[{i}].gguf_file: GGUF file {gguf} not found (a path, or a file inside `pretrained`)"
            )
        for field, name in paths.items():
            if name and _looks_like_a_path(name) and not Path(name).expanduser().exists():
                raise SpecError(
                    f"models[{i}].{field}: model path {name} does not exist (a folder saved with save_pretrained, "
                    "a GGUF file with gguf_file, or a hub id such as org/name)"
                )


def _looks_like_a_path(name: str) -> bool:
    """What :func:`harness_ext.backend.sources.resolve` takes for a path rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def hub_ids(spec: StudySpec) -> list[tuple[str, str | None]]:
    """The models (and tokenizers) that will be fetched from the Hugging Face hub, with their revision."""
    ids: list[tuple[str, str | None]] = []
    for m in spec.models:
        for name in (m.pretrained, m.tokenizer):
            if name and is_hub_id(m, name) and (name, m.revision) not in ids:
                ids.append((name, m.revision))
    return ids


def is_hub_id(model: ModelSpec, name: str) -> bool:
    """What :func:`harness_ext.backend.sources.resolve` would fetch from the hub (not a built-in, a GGUF
    file or a path)."""
    if name in BUILTIN_MODELS or (model.gguf_file and name == model.pretrained):
        return False
    return not (Path(name).expanduser().exists() or _looks_like_a_path(name))


def check_hub(spec: StudySpec) -> None:
    """Fail fast, in one line, when a hub model is not in the local cache and cannot be fetched:
    ``HF_HUB_OFFLINE`` is set, or the hub does not answer within a few seconds. A cached model, or a
    reachable hub, passes (the download itself is left to transformers)."""
    missing = [name for name, revision in hub_ids(spec) if not _cached(name, revision)]
    if not missing:
        return
    names = ", ".join(missing)
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        raise ModelLoadError(
            f"{names}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; download it first "
            "(unset HF_HUB_OFFLINE) or point `pretrained` at a local folder"
        )
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not _reachable(endpoint):
        raise ModelLoadError(
            f"{names}: not in the local Hugging Face cache, and {endpoint} cannot be reached; "
            "connect to the network or point `pretrained` at a local folder"
        )


def _cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str)
            for f in ("config.json", "tokenizer_config.json")
        )
    except Exception:  # an id the hub library refuses: let the loader say what is wrong with it
        return True


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _reachable(url: str) -> bool:
    """One TCP connection to the endpoint, no retries."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False
