"""The option blocks of a study spec — the probe, the speed benchmark, Ray and the report — as pydantic
models (the spec itself is :mod:`harness_ext.spec.schema`). Imports pydantic only, never torch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator

from harness_ext.point import Count, Temperature, TopK

Finite = Annotated[float, Field(allow_inf_nan=False)]  # ``.inf`` GPUs would pass ``ge=0``


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def nonempty_unique(values: list[Any], what: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice: {values}")
    return values


class ProbeSpec(Strict):
    """The exact next-token probe: one forward pass per prompt, all temperatures/top-k exactly."""

    enabled: bool = True
    task: str = Field("quant_nextword", description="name of a nextword-kind task in `tasks`, or quant_nextword")
    limit: PositiveInt | None = Field(None, strict=True)
    temperatures: list[Temperature] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(16)],
        description="temperatures the probe computes besides the grid's (one forward pass serves them all): "
        "dense so that claims (b), (c) and (c2) can be decided from the probe",
    )
    top_k: list[TopK] = Field([], description="top-k values (null = off) the probe computes besides the grid's")
    schemes: list[str] | None = Field(
        None,
        description="schemes to probe (default: all); the model's reference is always probed. The probe is one "
        "forward pass per prompt and scheme: spend it where verdicts are decided (nf4, fp4 and the reference "
        "decide claims a, b, c)",
    )


Mode = Literal["eager", "compiled"]


class SpeedSpec(Strict):
    """Fixed-length generation benchmark per (model, scheme)."""

    enabled: bool = True
    batch_sizes: list[Count] = Field(default_factory=lambda: [1], min_length=1)
    modes: list[Mode] = Field(
        default_factory=lambda: ["eager"],
        min_length=1,
        description="eager: HF generate as is; compiled: static KV cache + torch.compile",
    )
    prompt_tokens: PositiveInt = Field(64, le=8192, strict=True)
    new_tokens: PositiveInt = Field(64, ge=2, le=8192, strict=True)
    warmup: int = Field(1, ge=0, le=20, strict=True)
    repeats: int = Field(3, ge=3, le=100, strict=True, description="timed repeats (>= 3) inside one round")
    rounds: int = Field(
        3,
        ge=1,
        le=100,
        strict=True,
        description="rounds: each loads, warms up and times every scheme afresh in a process of its own, in a "
        "balanced (Williams) order over rounds; "
        "speed verdicts need >= 3. Raising it later adds rounds without redoing earlier ones",
    )

    @field_validator("batch_sizes", "modes")
    @classmethod
    def _unique(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        return nonempty_unique(v, info.field_name)


class RaySpec(Strict):
    """Options of ``executor: ray``."""

    address: str | None = Field(None, description="an existing cluster ('auto', 'ray://host:10001'); none: start one")
    num_cpus: Finite = Field(1.0, gt=0, description="CPUs per (model, scheme) task")
    num_gpus: Finite | None = Field(None, ge=0, description="GPUs per task; default: enough for the weights on CUDA")
    gpu_memory_gb: Finite = Field(80.0, gt=0, description="memory of one GPU, to size num_gpus from the weights")
    max_retries: int = Field(3, ge=0, le=100, strict=True, description="retries of a task whose worker died")


class ReportSpec(Strict):
    """Options of the rendered report."""

    title: str | None = Field(None, max_length=200)
    output_dir: str | None = Field(None, min_length=1, description="where `run --report` renders; default: RUN/report")
    examples: int = Field(3, ge=0, le=20, strict=True, description="example generations shown per scheme")
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
