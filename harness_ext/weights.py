"""What identifies a model's weights beyond the name a spec gives them: the hub commit a revision
resolves to, and a content digest of a local folder or GGUF file. A cell's identity includes it, so
a changed checkpoint is a new cell, never a silent resume over results of other weights.

Torch-free (``validate`` and the plan use it). A file's digest is computed once, streamed, and
cached by (path, size, modification time) in ``<cache>/digests.json``: a checkpoint is read again
only when it changed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from harness_ext.catalog import BUILTIN_MODELS
from harness_ext.errors import ModelLoadError

#: Files of a model folder that ``from_pretrained`` reads: weights, configs, tokenizer, remote code.
FOLDER_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".py"})
HUB_TIMEOUT_S = 3.0


def cache_dir() -> Path:
    """Where converted checkpoints and digests live: ``$HARNESS_EXT_CACHE`` or ``~/.cache/harness_ext``."""
    root = os.environ.get("HARNESS_EXT_CACHE") or Path.home() / ".cache" / "harness_ext"
    return Path(root)


def source_kind(pretrained: str, gguf_file: str | None = None) -> Literal["builtin", "gguf", "local", "hub"]:
    """Where ``pretrained`` comes from, as the loader reads it: a built-in name, a GGUF file, a local
    path (existing or written as one), or a hub id."""
    if pretrained in BUILTIN_MODELS:
        return "builtin"
    if gguf_file is not None:
        return "gguf"
    looks_like_path = pretrained.startswith(("/", "./", "../", "~")) or pretrained.count("/") > 1
    return "local" if looks_like_path or Path(pretrained).expanduser().exists() else "hub"


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


def gguf_path(pretrained: str, gguf_file: str) -> Path:
    """The GGUF file a spec names: a path, or a file inside ``pretrained``."""
    return Path(gguf_file) if Path(gguf_file).is_absolute() else Path(pretrained) / gguf_file


# -- digests -------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed (a checkpoint is GBs), cached by path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    cache = _read_digests()
    hit = cache.get(key)
    if hit and hit.get("stamp") == stamp:
        return hit["sha256"]
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    _write_digests({**_read_digests(), key: {"stamp": stamp, "sha256": digest}})
    return digest


def folder_sha256(folder: Path) -> str:
    """Digest of a model folder: the name, size and SHA-256 of each file ``from_pretrained`` reads
    (:data:`FOLDER_SUFFIXES`, top level; a README or an ``original/`` subfolder does not count)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in FOLDER_SUFFIXES)
    listing = [[p.name, p.stat().st_size, file_sha256(p)] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _digests_file() -> Path:
    return cache_dir() / "digests.json"


def _read_digests() -> dict[str, Any]:
    try:
        data = json.loads(_digests_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_digests(data: dict[str, Any]) -> None:
    """Atomically (a concurrent writer may drop another's entry: it is computed again, never wrong)."""
    target = _digests_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, target)
    except OSError:  # a read-only cache: the digest is recomputed next time
        pass


# -- the hub -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a hub revision (default ``main``) resolves to: a full commit hash as given; else
    the local cache's (no network); else the hub's answer, unless offline. None when unknown."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an id the hub library refuses: the loader says what is wrong with it
        return None
    if isinstance(cached, str):
        return Path(cached).parent.name  # <cache>/models--org--name/snapshots/<commit>/config.json
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S).sha
    except Exception:  # no network, no such repo: the preflight and the loader say so in one line
        return None


# -- a model's identity ----------------------------------------------------------------------------
def weights_identity(
    pretrained: str | None, gguf_file: str | None = None, revision: str | None = None
) -> dict[str, Any]:
    """What identifies the weights beyond the spec's fields: ``{"commit": ...}`` for a hub model,
    ``{"weights_sha256": ...}`` (16 hex digits) for a local folder or GGUF file; nothing for a
    built-in whose file is the one the catalog names (a reinstalled package with another file
    adds its digest), for a shape model, or when the weights cannot be found (the loader says why)."""
    if pretrained is None:
        return {}
    kind = source_kind(pretrained, gguf_file)
    try:
        if kind == "hub":
            commit = hub_commit(pretrained, revision)
            return {"commit": commit} if commit else {}
        if kind == "builtin":
            digest = file_sha256(builtin_gguf(pretrained))
            return {} if digest == BUILTIN_MODELS[pretrained]["sha256"] else {"weights_sha256": digest[:16]}
        if kind == "gguf":
            return {"weights_sha256": file_sha256(gguf_path(pretrained, gguf_file or ""))[:16]}
        folder = Path(pretrained).expanduser()
        return {"weights_sha256": folder_sha256(folder)[:16]} if folder.is_dir() else {}
    except (OSError, ModelLoadError):
        return {}
