"""The study spec as pydantic models: what a YAML spec may say, checked field by field and across fields.

A spec names models x quantization schemes x a sampling grid x tasks x seeds. Loading it from YAML
(with line numbers) is :mod:`harness_ext.spec.loading`; turning it into cells is
:mod:`harness_ext.spec.plan`. Importing this module imports pydantic only, never torch.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness_ext.point import MaxNewTokens, RepetitionPenalty, SamplingPoint, Temperature, TopK, TopP
from harness_ext.spec.bounds import check_shape
from harness_ext.spec.options import Finite, Mode, ProbeSpec, RaySpec, ReportSpec, SpeedSpec, Strict, nonempty_unique
from harness_ext.spec.schemes import BUILTIN_SCHEMES, DType, Scheme

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
OUR_TASKS = ("quant_nextword", "quant_continuation")
_Strict = Strict
_nonempty_unique = nonempty_unique


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
    num_gpus: Finite | None = Field(None, ge=0, description="executor ray: GPUs per task (default: from the weights)")
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
            check_shape(self.shape)
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
    limit: PositiveInt | None = Field(None, strict=True, description="prompts; overrides the study's limit")
    repeats: PositiveInt | None = Field(
        None, le=64, strict=True, description="samples per prompt; overrides the study's"
    )
    max_new_tokens: PositiveInt | None = Field(None, strict=True, description="pin this axis for this task")

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
UNION_TAGS = ("by-name", "inline")


class StudySpec(_Strict):
    """A whole study."""

    name: str = Field(pattern=SAFE_NAME, max_length=64)
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    schemes: list[SchemeEntry] = Field(min_length=1, description="built-in names or full definitions")
    sampling: SamplingGrid | None = Field(None, description="needed when a model with weights has tasks or the probe")
    tasks: list[TaskEntry] = Field(default_factory=list, description="empty: speed and memory only")
    limit: PositiveInt | None = Field(None, strict=True, description="prompts per task (default: all)")
    repeats: PositiveInt = Field(1, le=64, strict=True, description="samples per prompt per cell (sampled points)")
    seeds: list[Annotated[int, Field(strict=True)]] = Field(default_factory=lambda: [0], min_length=1)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    batch_size: PositiveInt = Field(8, le=4096, strict=True, description="rows per generate call")
    mode: Mode = Field("eager", description="generation mode of the evaluation cells")
    executor: Literal["local", "ray"] = Field("local", description="run pairs here, or as Ray tasks on a cluster")
    ray: RaySpec = Field(default_factory=RaySpec)
    grid_batching: bool = Field(True, description="batch rows of different grid points together")
    threads: PositiveInt | None = Field(None, le=1024, strict=True, description="torch CPU threads (default: torch's)")
    output_dir: str | None = Field(None, min_length=1, description="run directory; default runs/<name>")
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
            raise ValueError(f"{loc_path(loc)}: {msg}")
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
        for i, n in enumerate(self.probe.schemes or []):
            if n not in names:
                out.append((("probe", "schemes", i), f"{n!r} is not among the schemes {names}"))
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

    def probes(self, model: ModelSpec, scheme: Scheme) -> bool:
        """Whether the probe runs for (model, scheme): ``probe.schemes`` (default all), and the model's
        reference always (the other schemes' distances are taken to its logits)."""
        ref = self.reference_scheme(model)
        chosen = self.probe.schemes is None or scheme.name in self.probe.schemes
        return chosen or (ref is not None and ref.name == scheme.name)

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


def loc_path(loc: tuple[Any, ...]) -> str:
    """``models[0].reference`` of a pydantic error location, without union tags and validator names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in UNION_TAGS or "[" in str(part):
            continue  # union member tags and validator names
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"
