"""A spec's plan: its cells (grid expansion, reference first), their identity hashes, and the checks of
its tasks that the cells' identities need (data hashes, stock lm-eval task versions).

Torch-free: ``auto`` devices resolve through torch only when asked, and only our own tasks are
checked without lm-eval; a stock lm-eval task's output type and version come from lm-eval's task
index (seconds to build), so a spec that names one pays for it in ``validate`` as well.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness_ext.errors import DataError, SpecError
from harness_ext.point import SamplingPoint
from harness_ext.spec.schema import ModelSpec, StudySpec, TaskSpec
from harness_ext.spec.schemes import Scheme
from harness_ext.tasks import loaders

#: Bump when the meaning of a cell's definition changes: every cell gets a new hash.
CELL_HASH_VERSION = 1


def content_hash(obj: Any) -> str:
    """16-hex-digit SHA-256 of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """A unit of work with one stored record. ``kind``: eval (a task at a grid point and seed),
    probe (the exact next-token probe), speed (the generation benchmark at one batch size)."""

    kind: Literal["eval", "probe", "speed"]
    model: ModelSpec
    scheme: Scheme  # resolved
    device: str  # resolved device type: cpu or cuda
    task: TaskSpec | None = None
    point: SamplingPoint | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # limit, repeats, batch size, data hash, ...
    weights: dict[str, Any] = field(default_factory=dict)  # hub commit or content digest (model_weights)

    def definition(self) -> dict[str, Any]:
        """Everything that defines the cell's result; hashed into :attr:`id` and stored in its record."""
        return {
            "hash_version": CELL_HASH_VERSION,
            "kind": self.kind,
            "model": {"name": self.model.label, **self.model.identity(), **self.weights},
            "scheme": self.scheme.model_dump(mode="json"),
            "device": self.device,
            "task": self.task.name if self.task else None,
            "point": self.point.model_dump(mode="json") if self.point else None,
            "seed": self.seed,
            "params": self.params,
        }

    @functools.cached_property
    def id(self) -> str:
        """The hash of :meth:`definition`, computed once: a run looks each cell's id up several times."""
        return content_hash(self.definition())

    @property
    def pair(self) -> tuple[str, str]:
        return (self.model.label, self.scheme.name)

    def label(self) -> str:
        parts = [self.kind, self.model.label, self.scheme.name]
        if self.task:
            parts.append(self.task.name)
        if self.point:
            parts.append(self.point.label())
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.kind == "speed":
            parts.append(f"batch={self.params['batch_size']} {self.params.get('mode', 'eager')}")
            parts.append(f"round={self.params.get('round', 0)}")
        return " | ".join(parts)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def expand(
    spec: StudySpec,
    device: str,
    task_params: dict[str, dict[str, Any]] | None = None,
    weights: dict[str, dict[str, Any]] | None = None,
    machine: str | None = None,
) -> list[Cell]:
    """All cells of a study, reference pairs first per model.

    ``task_params`` maps task name to extra identity (e.g. the data file's hash, whether the task is
    a loglikelihood task, which collapses the sampling axes); the runner supplies it. ``weights``
    maps model label to the identity of its weights: :func:`model_weights` unless given (a Ray
    worker is given the driver's), so that every caller gets the cells' real ids. ``machine``: the
    fingerprint key of the machine that times the speed cells (:mod:`harness_ext.fingerprint`), part
    of their identity so that two kinds of machine never share a cell; the runner computes it once
    (``validate`` plans without it: the count of cells does not depend on it).
    """
    task_params = task_params or {}
    weights = model_weights(spec) if weights is None else weights
    cells: list[Cell] = []
    points = spec.sampling.expand() if spec.sampling else []
    for model in spec.models:
        add = functools.partial(_add_cell, cells, weights.get(model.label, {}))
        for scheme in ordered_schemes(spec, model):
            rs = scheme.resolve(model.dtype)
            for task in [] if model.speed_only else spec.task_list:
                extra = dict(task_params.get(task.name, {}))
                generative = extra.pop("generative", True)
                params = {
                    "limit": task.limit or spec.limit,
                    "repeats": (task.repeats or spec.repeats) if generative else 1,
                    "mode": spec.mode,
                    **extra,
                }
                task_points: list[SamplingPoint | None]
                if generative:
                    seen: dict[SamplingPoint, None] = {}
                    for p in points:
                        if task.max_new_tokens is not None:
                            p = p.model_copy(update={"max_new_tokens": task.max_new_tokens})
                        seen.setdefault(p, None)
                    task_points = list(seen)
                else:
                    task_points = [None]
                for point in task_points:
                    for seed in spec.seeds if generative else spec.seeds[:1]:
                        add(Cell("eval", model, rs, device, task, point, seed, params))
            if spec.probe.enabled and not model.speed_only and spec.sampling is not None and spec.probes(model, scheme):
                ptask = spec.task(spec.probe.task)
                probe_params = {
                    "limit": spec.probe.limit or ptask.limit or spec.limit,
                    "task": ptask.name,
                    **{k: v for k, v in task_params.get(ptask.name, {}).items() if k != "generative"},
                    "grid": probe_grid(spec),
                }
                add(Cell("probe", model, rs, device, ptask, None, None, probe_params))
            if spec.speed.enabled:
                for mode in spec.speed.modes:
                    for bs in spec.speed.batch_sizes:
                        sp = spec.speed.model_dump(exclude={"enabled", "batch_sizes", "modes", "rounds"})
                        # CPU timings move with the thread count; on a GPU they do not (a key only when set)
                        threads = {"threads": spec.threads} if spec.threads and device == "cpu" else {}
                        where = {"machine": machine} if machine else {}
                        for r in range(spec.speed.rounds):  # `rounds` is no identity: more rounds = more cells
                            params = {"batch_size": bs, "mode": mode, **sp, **threads, **where, "round": r}
                            add(Cell("speed", model, rs, device, None, None, None, params))
    return cells


def _add_cell(cells: list[Cell], weights: dict[str, Any], cell: Cell) -> None:
    cells.append(dataclasses.replace(cell, weights=weights) if weights else cell)


def model_weights(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Per model label, what identifies its weights beyond the spec: the hub commit, or a digest of
    the local folder or GGUF file (:func:`harness_ext.weights.weights_identity`; cached, no torch)."""
    from harness_ext.weights import weights_identity

    return {m.label: weights_identity(m.pretrained, m.gguf_file, m.revision) for m in spec.models if m.shape is None}


def probe_grid(spec: StudySpec) -> dict[str, list[Any]]:
    """The probe's axes: every temperature and top-k of the grid and of the probe's own lists
    (``probe.temperatures``, ``probe.top_k``), and every top-p and repetition penalty of the grid."""
    pts = spec.sampling.expand()
    return {
        "temperature": sorted({p.temperature for p in pts} | set(spec.probe.temperatures)),
        "top_k": sorted({p.top_k for p in pts} | set(spec.probe.top_k), key=lambda k: math.inf if k is None else k),
        "top_p": sorted({p.top_p for p in pts}),
        "repetition_penalty": sorted({p.repetition_penalty for p in pts}),
    }


def ordered_schemes(spec: StudySpec, model: ModelSpec) -> list[Scheme]:
    """The model's schemes with its unquantized reference first (metrics against it need it)."""
    ref = spec.reference_scheme(model)
    schemes = spec.scheme_list
    if ref is None:
        return schemes
    return [ref] + [s for s in schemes if s.name != ref.name]


# -- tasks ---------------------------------------------------------------------------------------
def prepare_tasks(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Check every task before anything loads; return per-task identity for the cells (data hash,
    generative or not). Unknown tasks and bad data files raise one-line errors."""
    out: dict[str, dict[str, Any]] = {}
    for t in spec.task_list:
        if t.kind is not None:
            kind = "nextword" if t.kind == "quant_nextword" else "continuation"
            path = Path(t.data) if t.data else loaders.DATA_DIR / f"{kind}.jsonl"
            try:
                loaders.read_jsonl(path, loaders.REQUIRED_FIELDS[kind])
            except loaders.TaskDataError as e:
                raise DataError(f"task {t.name!r}: {e}") from None
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[t.name] = {
                "generative": True,
                "base": t.kind,
                "data_sha256": digest[:16],
                "data_file": str(path) if t.data else None,
            }
            continue
        from harness_ext.tasks import output_type  # lm-eval's task index: stock tasks only

        try:
            otype = output_type(t.name)
        except KeyError:
            raise SpecError(
                f"unknown task {t.name!r}: not one of ours (quant_nextword, quant_continuation) "
                "nor an lm-eval task; `lm_eval ls tasks` lists them"
            ) from None
        except ValueError as e:
            raise SpecError(f"task {t.name!r}: {e}") from None
        out[t.name] = {"generative": otype == "generate_until", "base": t.name, "output_type": otype}
        out[t.name].update(_stock_task_identity(t.name))
    return out


def _stock_task_identity(name: str) -> dict[str, Any]:
    """What of a stock lm-eval task's config can change its results beyond its name: the task's
    version (lm-eval bumps it when the prompt or scoring changes) and its default few-shot count."""
    from harness_ext.tasks import base_config

    cfg = base_config(name) or {}
    out: dict[str, Any] = {}
    version = (cfg.get("metadata") or {}).get("version")
    if version is not None:
        out["task_version"] = version
    if cfg.get("num_fewshot") is not None:
        out["num_fewshot"] = cfg["num_fewshot"]
    return out


def device_type(device: str) -> str:
    """``cuda`` of ``cuda:1``: the device type that cells record (the spec's pattern allows no other form)."""
    return device.partition(":")[0]


def plan(spec: StudySpec, device: str | None = None) -> list[Cell]:
    """All cells of a spec on a device (``auto`` resolved here)."""
    device = resolve_device(device or spec.device)
    return expand(spec, device_type(device), prepare_tasks(spec))
