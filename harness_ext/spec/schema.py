"""The study spec: pydantic models, YAML loading with line numbers, grid expansion, cells.

A spec names models x quantization schemes x a sampling grid x tasks x seeds. ``expand`` turns it
into cells, each with a content hash that changes whenever anything that could change its result
changes, so a resumed run never mixes results of different definitions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness_ext.errors import SpecError
from harness_ext.point import MaxNewTokens, RepetitionPenalty, SamplingPoint, Temperature, TopK, TopP
from harness_ext.quant import BUILTIN_SCHEMES, DType, Scheme

#: Bump when the meaning of a cell's definition changes: every cell gets a new hash.
CELL_HASH_VERSION = 1

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
OUR_TASKS = ("quant_nextword", "quant_continuation")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _nonempty_unique(values: list[Any], what: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice: {values}")
    return values


class SamplingGrid(_Strict):
    """Either a full factorial over the axis lists, or explicit ``points`` (not both)."""

    temperature: list[Temperature] | None = Field(None, min_length=1)
    top_k: list[TopK] | None = Field(None, min_length=1)
    top_p: list[TopP] | None = Field(None, min_length=1)
    max_new_tokens: list[MaxNewTokens] | None = Field(None, min_length=1)
    repetition_penalty: list[RepetitionPenalty] | None = Field(None, min_length=1)
    points: list[SamplingPoint] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> SamplingGrid:
        axes = {a: getattr(self, a) for a in AXES}
        given = [a for a, v in axes.items() if v is not None]
        if self.points is not None and given:
            raise ValueError(f"give either explicit 'points' or the axis lists, not both (axes given: {given})")
        if self.points is None and not given:
            raise ValueError(
                "the sampling grid is empty: give at least one axis list "
                "(temperature, top_k, top_p, max_new_tokens, repetition_penalty) or 'points'"
            )
        for a in given:
            _nonempty_unique(axes[a], a)
        return self

    def expand(self) -> list[SamplingPoint]:
        """All grid points, in a stable order, without duplicates."""
        if self.points is not None:
            pts = list(self.points)
        else:
            default = SamplingPoint()
            lists = [getattr(self, a) or [getattr(default, a)] for a in AXES]
            pts = [SamplingPoint(**dict(zip(AXES, combo, strict=True))) for combo in itertools.product(*lists)]
        seen: dict[SamplingPoint, None] = {}
        for p in pts:
            seen.setdefault(p, None)
        return list(seen)


AXES = ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty")


class ModelSpec(_Strict):
    """A model: a Hugging Face id, a local folder, a GGUF file, a built-in name — or an architecture
    ``shape`` (config fields) built with random weights, for speed and memory cells only."""

    name: str | None = Field(None, pattern=SAFE_NAME, max_length=64, description="label; default from pretrained")
    pretrained: str | None = Field(
        None, min_length=1, description="HF hub id, local path, or built-in name (smollm2-135m)"
    )
    shape: dict[str, Any] | None = Field(
        None, description="config fields incl. model_type: random weights, speed and memory cells only"
    )
    revision: str | None = None
    gguf_file: str | None = Field(None, description="GGUF file inside `pretrained` (or a path)")
    tokenizer: str | None = Field(None, description="tokenizer id/path if not the model's own")
    dtype: DType = Field("float32", description="dtype of unquantized layers for quantized schemes")
    trust_remote_code: bool = False
    reference: str | None = Field(
        None, description="scheme used as the unquantized reference; default: first unquantized scheme"
    )
    num_gpus: float | None = Field(None, ge=0, description="executor ray: GPUs per task (default: from the weights)")
    family: str | None = Field(None, description="model family for per-family findings; default: config.model_type")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.pretrained is None) == (self.shape is None):
            raise ValueError("give exactly one of `pretrained` (weights) or `shape` (config fields, random weights)")
        if self.shape is not None:
            if not self.name:
                raise ValueError("a `shape` model needs a `name`")
            if not isinstance(self.shape.get("model_type"), str):
                raise ValueError("`shape` needs a model_type (e.g. llama) and the config fields of the architecture")
            if self.gguf_file or self.revision or self.tokenizer:
                raise ValueError("`shape` models have no weights: drop gguf_file, revision and tokenizer")
        return self

    @property
    def speed_only(self) -> bool:
        """Random-weight shapes measure speed and memory, never quality."""
        return self.shape is not None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = (self.pretrained or "model").rstrip("/").split("/")[-1]
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in base) or "model"

    def identity(self) -> dict[str, Any]:
        """What makes two model entries load the same weights (hashed into cells). ``shape`` is added
        only for shape models, so that the ids of models with weights stay as they were."""
        out = self.model_dump(
            include={"pretrained", "revision", "gguf_file", "tokenizer", "dtype", "trust_remote_code"}
        )
        if self.shape is not None:
            out["shape"] = self.shape
        return out


class TaskSpec(_Strict):
    """A task: one of ours (``quant_nextword``, ``quant_continuation``), optionally on your own JSONL,
    or any lm-eval task name."""

    name: str = Field(min_length=1, max_length=64, pattern=SAFE_NAME)
    base: Literal["quant_nextword", "quant_continuation"] | None = Field(
        None, description="with `data`: which of our tasks to run on it"
    )
    data: str | None = Field(None, description="JSONL file for `base` (relative to the spec file)")
    limit: PositiveInt | None = Field(None, description="prompts; overrides the study's limit")
    repeats: PositiveInt | None = Field(None, le=64, description="samples per prompt; overrides the study's")
    max_new_tokens: PositiveInt | None = Field(None, description="pin this axis for this task")

    @model_validator(mode="after")
    def _data_needs_base(self) -> TaskSpec:
        if self.data is not None and self.base is None and self.name not in OUR_TASKS:
            raise ValueError(
                "a task with `data` must say which of our tasks it feeds: base: quant_nextword or quant_continuation"
            )
        if self.base is not None and self.data is None:
            raise ValueError("`base` goes with `data` (a JSONL file); drop `base` or add `data`")
        return self

    @property
    def kind(self) -> str | None:
        """Which of our tasks this is (``quant_nextword``/``quant_continuation``), or None for stock lm-eval."""
        if self.base:
            return self.base
        return self.name if self.name in OUR_TASKS else None


class ProbeSpec(_Strict):
    """The exact next-token probe: one forward pass per prompt, all temperatures/top-k exactly."""

    enabled: bool = True
    task: str = Field("quant_nextword", description="name of a nextword-kind task in `tasks`, or quant_nextword")
    limit: PositiveInt | None = None
    temperatures: list[Temperature] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(16)],
        description="temperatures the probe computes besides the grid's (one forward pass serves them all): "
        "dense so that claims (b), (c) and (c2) can be decided from the probe",
    )


Mode = Literal["eager", "compiled"]


class SpeedSpec(_Strict):
    """Fixed-length generation benchmark per (model, scheme)."""

    enabled: bool = True
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    modes: list[Mode] = Field(
        default_factory=lambda: ["eager"],
        min_length=1,
        description="eager: HF generate as is; compiled: static KV cache + torch.compile",
    )
    prompt_tokens: PositiveInt = Field(64, le=8192)
    new_tokens: PositiveInt = Field(64, ge=2, le=8192)
    warmup: int = Field(1, ge=0, le=20)
    repeats: int = Field(3, ge=3, le=100, description="timed repeats (>= 3) inside one round")
    rounds: int = Field(
        3,
        ge=1,
        le=100,
        description="rounds: each loads, warms up and times every scheme afresh, in a shuffled order; "
        "speed verdicts need >= 3. Raising it later adds rounds without redoing earlier ones",
    )

    @field_validator("batch_sizes", "modes")
    @classmethod
    def _unique(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        return _nonempty_unique(v, info.field_name)


class RaySpec(_Strict):
    """Options of ``executor: ray``."""

    address: str | None = Field(None, description="an existing cluster ('auto', 'ray://host:10001'); none: start one")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per (model, scheme) task")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per task; default: enough for the weights on CUDA")
    gpu_memory_gb: float = Field(80.0, gt=0, description="memory of one GPU, to size num_gpus from the weights")
    max_retries: int = Field(3, ge=0, le=100, description="retries of a task whose worker died")


class ReportSpec(_Strict):
    """Options of the rendered report."""

    title: str | None = Field(None, max_length=200)
    output_dir: str | None = Field(None, description="default: report/ in the run directory")
    examples: int = Field(3, ge=0, le=20, description="example generations shown per scheme")
    equivalence_margin: float = Field(
        0.05, gt=0, le=1, description="claim (a): quality difference counted as 'alike' (absolute)"
    )
    speed_margin: float = Field(
        0.10, gt=0, le=1, description="claim (a): relative speed/memory difference counted as 'alike'"
    )
    sensitivity_margin: float = Field(
        0.25,
        gt=0,
        le=10,
        description="claims (c), (c2): an excess accuracy drop counts as meaningful above this share of the "
        "reference's own drop (relative; see docs/VERDICTS.md)",
    )


def _known_scheme(name: str) -> str:
    if name not in BUILTIN_SCHEMES:
        raise ValueError(
            f"unknown scheme {name!r}: built-ins are {', '.join(BUILTIN_SCHEMES)}; "
            "or define one inline as {name: ..., quant: none|int8|nf4|fp4, ...}"
        )
    return name


def _by_name_or_inline(value: Any) -> str:
    return "by-name" if isinstance(value, str) else "inline"


#: A scheme: a built-in name, or an inline definition. The discriminator keeps errors to one member.
SchemeEntry = Annotated[
    Annotated[str, AfterValidator(_known_scheme), Tag("by-name")] | Annotated[Scheme, Tag("inline")],
    Discriminator(_by_name_or_inline),
]
TaskEntry = Annotated[
    Annotated[str, Field(pattern=SAFE_NAME, max_length=64), Tag("by-name")] | Annotated[TaskSpec, Tag("inline")],
    Discriminator(_by_name_or_inline),
]
_UNION_TAGS = ("by-name", "inline")


class StudySpec(_Strict):
    """A whole study."""

    name: str = Field(pattern=SAFE_NAME, max_length=64)
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    schemes: list[SchemeEntry] = Field(min_length=1, description="built-in names or full definitions")
    sampling: SamplingGrid | None = Field(None, description="needed when a model with weights has tasks or the probe")
    tasks: list[TaskEntry] = Field(default_factory=list, description="empty: speed and memory only")
    limit: PositiveInt | None = Field(None, description="prompts per task (default: all)")
    repeats: PositiveInt = Field(1, le=64, description="samples per prompt per cell (sampled points)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    batch_size: PositiveInt = Field(8, le=4096, strict=True, description="rows per generate call")
    mode: Mode = Field("eager", description="generation mode of the evaluation cells")
    executor: Literal["local", "ray"] = Field("local", description="run pairs here, or as Ray tasks on a cluster")
    ray: RaySpec = Field(default_factory=RaySpec)
    grid_batching: bool = Field(True, description="batch rows of different grid points together")
    threads: PositiveInt | None = Field(None, le=1024, description="torch CPU threads (default: torch's)")
    output_dir: str | None = Field(None, description="run directory; default runs/<name>")
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s < 2**31:
                raise ValueError(f"seed {s} out of range: seeds are integers in [0, 2**31)")
        return _nonempty_unique(v, "seeds")

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> StudySpec:
        if info.context and info.context.get("skip_cross"):
            return self
        problems = self.problems()
        if problems:
            loc, msg = problems[0]
            raise ValueError(f"{_loc_path(loc)}: {msg}")
        return self

    def problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """Checks across fields, as (location, message) so that errors can name their line."""
        out: list[tuple[tuple[Any, ...], str]] = []
        seen_models: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.label in seen_models:
                out.append((("models", i), f"model name {m.label!r} is used twice: give each model a distinct `name`"))
            seen_models[m.label] = i
        names = [s if isinstance(s, str) else s.name for s in self.schemes]
        for i, n in enumerate(names):
            if n in names[:i]:
                out.append((("schemes", i), f"scheme {n!r} is listed twice"))
        for i, m in enumerate(self.models):
            if m.reference is None:
                continue
            if m.reference not in names:
                out.append((("models", i, "reference"), f"{m.reference!r} is not among the schemes {names}"))
            elif self.scheme(m.reference).quantized:
                out.append(
                    (("models", i, "reference"), f"{m.reference!r} is quantized; the reference must be unquantized")
                )
        tnames = [t if isinstance(t, str) else t.name for t in self.tasks]
        for i, n in enumerate(tnames):
            if n in tnames[:i]:
                out.append((("tasks", i), f"task {n!r} is listed twice"))
        if self.probe.enabled and self.probe.task != "quant_nextword":
            t = next((t for t in self.task_list if t.name == self.probe.task), None)
            if t is None or t.kind != "quant_nextword":
                out.append(
                    (
                        ("probe", "task"),
                        f"{self.probe.task!r} must be quant_nextword or a task in `tasks` with base: quant_nextword",
                    )
                )
        weights = any(not m.speed_only for m in self.models)
        if self.sampling is None and weights and (self.tasks or self.probe.enabled):
            out.append(
                (
                    ("sampling",),
                    "required: tasks and the probe sweep a sampling grid "
                    "(for speed only: no tasks and probe: {enabled: false})",
                )
            )
        if not self.tasks and not self.speed.enabled and not (self.probe.enabled and weights):
            out.append((("tasks",), "nothing to run: give tasks, or enable the probe or the speed benchmark"))
        return out

    # -- accessors -------------------------------------------------------------------------------
    def scheme(self, name: str) -> Scheme:
        for s in self.schemes:
            if isinstance(s, Scheme) and s.name == name:
                return s
        return BUILTIN_SCHEMES[name]

    @property
    def scheme_list(self) -> list[Scheme]:
        return [self.scheme(s) if isinstance(s, str) else s for s in self.schemes]

    def task(self, name: str) -> TaskSpec:
        for t in self.task_list:
            if t.name == name:
                return t
        if name in OUR_TASKS:
            return TaskSpec(name=name)
        raise KeyError(name)

    @property
    def task_list(self) -> list[TaskSpec]:
        return [TaskSpec(name=t) if isinstance(t, str) else t for t in self.tasks]

    def reference_scheme(self, model: ModelSpec) -> Scheme | None:
        """The unquantized scheme a model's quantized schemes are compared against (None if none)."""
        if model.reference:
            return self.scheme(model.reference)
        return next((s for s in self.scheme_list if not s.quantized), None)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    @property
    def report_dir(self) -> Path:
        """The report's folder: ``report.output_dir``, else ``report/`` inside the run directory (so that
        a demo or a study run from a checkout never writes over committed files)."""
        return Path(self.report.output_dir) if self.report.output_dir else self.run_dir / "report"


# ---------------------------------------------------------------------------------------------
# Cells


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

    def definition(self) -> dict[str, Any]:
        """Everything that defines the cell's result; hashed into :attr:`id` and stored in its record."""
        return {
            "hash_version": CELL_HASH_VERSION,
            "kind": self.kind,
            "model": {"name": self.model.label, **self.model.identity()},
            "scheme": self.scheme.model_dump(mode="json"),
            "device": self.device,
            "task": self.task.name if self.task else None,
            "point": self.point.model_dump(mode="json") if self.point else None,
            "seed": self.seed,
            "params": self.params,
        }

    @property
    def id(self) -> str:
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


def expand(spec: StudySpec, device: str, task_params: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """All cells of a study, reference pairs first per model.

    ``task_params`` maps task name to extra identity (e.g. the data file's hash, whether the task is
    a loglikelihood task, which collapses the sampling axes); the runner supplies it.
    """
    task_params = task_params or {}
    cells: list[Cell] = []
    points = spec.sampling.expand() if spec.sampling else []
    for model in spec.models:
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
                        cells.append(Cell("eval", model, rs, device, task, point, seed, params))
            if spec.probe.enabled and not model.speed_only and spec.sampling is not None:
                ptask = spec.task(spec.probe.task)
                probe_params = {
                    "limit": spec.probe.limit or ptask.limit or spec.limit,
                    "task": ptask.name,
                    **{k: v for k, v in task_params.get(ptask.name, {}).items() if k != "generative"},
                    "grid": probe_grid(spec),
                }
                cells.append(Cell("probe", model, rs, device, ptask, None, None, probe_params))
            if spec.speed.enabled:
                for mode in spec.speed.modes:
                    for bs in spec.speed.batch_sizes:
                        sp = spec.speed.model_dump(exclude={"enabled", "batch_sizes", "modes", "rounds"})
                        # CPU timings move with the thread count; on a GPU they do not (a key only when set)
                        threads = {"threads": spec.threads} if spec.threads and device == "cpu" else {}
                        for r in range(spec.speed.rounds):  # `rounds` is no identity: more rounds = more cells
                            params = {"batch_size": bs, "mode": mode, **sp, **threads, "round": r}
                            cells.append(Cell("speed", model, rs, device, None, None, None, params))
    return cells


def probe_grid(spec: StudySpec) -> dict[str, list[Any]]:
    """The probe's axes: every temperature of the grid and of ``probe.temperatures``, and every
    top-k, top-p and repetition penalty of the grid."""
    pts = spec.sampling.expand()
    return {
        "temperature": sorted({p.temperature for p in pts} | set(spec.probe.temperatures)),
        "top_k": sorted({p.top_k for p in pts}, key=lambda k: math.inf if k is None else k),
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


# ---------------------------------------------------------------------------------------------
# Loading YAML with line numbers


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


#: Bounds that keep hostile YAML cheap: nesting depth (PyYAML's composer recurses per level) and the
#: number of nodes the document holds once every alias is expanded (a "billion laughs" bomb is a few
#: hundred bytes that expand to 10**9 nodes). A real spec has a few hundred nodes, 5 levels deep.
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        _check_yaml_shape(text, source)
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}:{_yaml_error_detail(e)}") from None
    except RecursionError:  # a backstop: _check_yaml_shape bounds the depth first
        raise SpecError(f"{source}: malformed YAML: nested too deeply") from None
    _check_duplicate_keys(node, source)
    return node


def _yaml_error_detail(e: yaml.YAMLError) -> str:
    """``LINE: malformed YAML: what`` of a PyYAML error (its context line, then the problem's)."""
    problem_mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = context_mark or problem_mark
    where = f"{mark.line + 1}: " if mark else " "
    detail = f"{e.context} here; {problem}" if context_mark is not None and getattr(e, "context", None) else problem
    if context_mark is not None and problem_mark is not None and problem_mark.line != context_mark.line:
        detail += f" (line {problem_mark.line + 1})"
    return f"{where}malformed YAML: {detail}"


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse recursive aliases, deep nesting and alias bombs from the event stream, before any node
    is built: one linear pass, no recursion. Each anchored node's expanded size is remembered, so an
    alias costs one addition however large the node it names."""
    sizes: dict[str, int] = {}  # anchor -> nodes of its value with aliases expanded
    stack: list[list[Any]] = []  # open collections: [anchor, expanded nodes so far]
    total = 0
    for ev in yaml.parse(text, Loader=_UniqueKeyLoader):
        line = ev.start_mark.line + 1 if ev.start_mark else None
        if isinstance(ev, yaml.AliasEvent):
            if any(frame[0] == ev.anchor for frame in stack):
                raise SpecError(f"{_where(source, line)}: recursive YAML alias *{ev.anchor} (it contains itself)")
            added = sizes.get(ev.anchor, 1)  # an undefined alias is the composer's error
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                raise SpecError(f"{_where(source, line)}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
            stack.append([ev.anchor, 1])
            continue
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, added = stack.pop()
            if anchor is not None:
                sizes[anchor] = added
        elif isinstance(ev, yaml.ScalarEvent):
            added = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        else:
            continue
        if stack:
            stack[-1][1] += added
        else:
            total += added
        if total + sum(frame[1] for frame in stack) > MAX_YAML_NODES:
            raise SpecError(
                f"{_where(source, line)}: the YAML expands to more than {MAX_YAML_NODES:,} values through its "
                "aliases (an alias bomb?); a spec is far smaller"
            )


def _check_duplicate_keys(node: yaml.Node | None, source: str, checked: set[int] | None = None) -> None:
    """Refuse duplicate and non-scalar mapping keys, in document order. Each node is checked once:
    aliases share nodes, so an alias bomb costs no more than its text."""
    checked = set() if checked is None else checked
    if node is None or id(node) in checked:
        return
    checked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise SpecError(
                    f"{source}:{k.start_mark.line + 1}: mapping keys must be plain names, not a list or mapping"
                )
            if k.value in seen:
                raise SpecError(f"{source}:{k.start_mark.line + 1}: key {k.value!r} appears twice in one mapping")
            seen.add(k.value)
            _check_duplicate_keys(v, source, checked)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _check_duplicate_keys(v, source, checked)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (best effort)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((kv for kv in node.value if getattr(kv[0], "value", None) == part), None)
            if match is None:
                continue  # pydantic union tags ("str", "Scheme") and missing keys: stay on the parent
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in str(part):
            continue  # union member tags and validator names
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_HINTS = {
    "extra_forbidden": "unknown key",
    "missing": "required key missing",
}


def format_validation_error(err: ValidationError, node: yaml.Node | None, source: str, model: type[BaseModel]) -> str:
    """One line per problem: ``file:line: field.path: message``; unions reported once, by best match."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc_path(loc)
        line = _line_of(node, loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            msg = f"unknown key {loc[-1]!r}" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required key missing"
        key = (path, msg)
        if key in seen:
            continue
        seen.add(key)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model at ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _UNION_TAGS:
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            continue
        current = _model_in(fields[part].annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse_spec(text: str, source: str = "<spec>") -> StudySpec:
    """Parse and validate spec text; raise :class:`SpecError` with ``file:line: path: message`` lines."""
    node = _compose(text, source)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) if node is not None else None
    except yaml.YAMLError as e:  # e.g. a tag (!include, !!python/object) that the safe loader refuses
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(
            f"{_where(source, mark.line + 1 if mark else None)}: not allowed in a spec: {problem}"
        ) from None
    if isinstance(data, dict):  # top-level `x-...` keys hold YAML anchors for reuse (as in docker compose)
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}:1: a study spec is a YAML mapping (name:, models:, schemes:, ...), got {type(data).__name__}"
        )
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        cross = _cross_check_errors(data)
        if cross is not None:  # fields are fine one by one; report the cross-field problems by line
            raise SpecError(
                "\n".join(f"{_where(source, _line_of(node, loc))}: {_loc_path(loc)}: {msg}" for loc, msg in cross)
            ) from None
        raise SpecError(format_validation_error(e, node, source, StudySpec)) from None


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line else source


def _cross_check_errors(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]] | None:
    """If ``data`` fails only the cross-field checks, return those problems with their locations."""
    try:
        spec = StudySpec.model_construct(**StudySpec.model_validate(data, context={"skip_cross": True}).__dict__)
    except ValidationError:
        return None
    return spec.problems() or None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file. Relative task ``data`` paths resolve against the spec's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from None
    spec = parse_spec(text, str(path))
    return _resolve_data_paths(spec, path.parent)


def _resolve_data_paths(spec: StudySpec, base: Path) -> StudySpec:
    tasks: list[str | TaskSpec] = []
    for t in spec.tasks:
        if isinstance(t, TaskSpec) and t.data and not Path(t.data).is_absolute():
            t = t.model_copy(update={"data": str((base / t.data).resolve())})
        tasks.append(t)
    return spec.model_copy(update={"tasks": tasks})


def summarize(spec: StudySpec, cells: list[Cell]) -> str:
    """The ``validate`` summary: counts per dimension and per kind, and where the eval count is not
    the plain product of the dimensions, the reason per task (a pinned ``max_new_tokens`` collapses
    that axis; a loglikelihood task has no sampling axes and one seed)."""
    pts = spec.sampling.expand() if spec.sampling else []
    kinds = {k: sum(c.kind == k for c in cells) for k in ("eval", "probe", "speed")}
    lines = [
        f"study {spec.name!r}: {len(cells)} cells "
        f"({kinds['eval']} eval, {kinds['probe']} probe, {kinds['speed']} speed)",
        f"  {len(spec.models)} model(s) x {len(spec.schemes)} scheme(s) x {len(pts)} sampling point(s) "
        f"x {len(spec.tasks)} task(s) x {len(spec.seeds)} seed(s)",
        *_eval_count_lines(spec, cells, len(pts)),
        f"  models:  {', '.join(m.label for m in spec.models)}",
        f"  schemes: {', '.join(s.name + ' = ' + s.describe() for s in spec.scheme_list)}",
        f"  tasks:   {', '.join(t.name for t in spec.task_list) or '(none: speed and memory only)'}",
        f"  run dir: {spec.run_dir}   report: {spec.report_dir}",
    ]
    return "\n".join(lines)


def _eval_count_lines(spec: StudySpec, cells: list[Cell], grid_points: int) -> list[str]:
    """How the eval cells add up, task by task: ``pairs x points x seeds`` with the reason wherever a
    task has fewer points or seeds than the grid (so that the count never looks like an error)."""
    evals = [c for c in cells if c.kind == "eval"]
    if not evals:
        return []
    out = ["  eval cells per task (model/scheme pairs x sampling points x seeds):"]
    for task in spec.task_list:
        mine = [c for c in evals if c.task is not None and c.task.name == task.name]
        if not mine:
            continue
        pairs = len({c.pair for c in mine})
        points = len({c.point for c in mine})
        seeds = len({c.seed for c in mine})
        why = ""
        if all(c.point is None for c in mine):
            why = "  (loglikelihood task: no sampling axes, one seed)"
        elif points < grid_points and task.max_new_tokens is not None:
            why = (
                f"  (max_new_tokens pinned to {task.max_new_tokens} for this task: "
                f"{grid_points} grid points collapse to {points})"
            )
        out.append(f"    {task.name}: {pairs} x {points} x {seeds} = {len(mine)}{why}")
    speed_only = [m.label for m in spec.models if m.speed_only]
    if speed_only:
        out.append(f"    (no eval cells for shape-only models: {', '.join(speed_only)})")
    return out
