"""The study spec: pydantic models (:mod:`.schema`), schemes as data (:mod:`.schemes`), YAML loading
with line-numbered errors (:mod:`.loading`), cells and their identities (:mod:`.plan`), and the
``validate`` overview (:mod:`.overview`).

Importing it imports pydantic and PyYAML, never torch: a scheme is data until a backend builds it,
so that ``harness-ext validate`` stays fast.
"""

from harness_ext.spec.loading import load_spec, parse_spec
from harness_ext.spec.overview import overview
from harness_ext.spec.plan import (
    CELL_HASH_VERSION,
    Cell,
    content_hash,
    expand,
    ordered_schemes,
    plan,
    prepare_tasks,
    probe_grid,
    resolve_device,
)
from harness_ext.spec.schema import (
    OUR_TASKS,
    ModelSpec,
    ProbeSpec,
    RaySpec,
    ReportSpec,
    SamplingGrid,
    SpeedSpec,
    StudySpec,
    TaskSpec,
)
from harness_ext.spec.schemes import BUILTIN_SCHEMES, DType, Scheme

__all__ = [
    "BUILTIN_SCHEMES",
    "CELL_HASH_VERSION",
    "OUR_TASKS",
    "Cell",
    "DType",
    "ModelSpec",
    "ProbeSpec",
    "RaySpec",
    "ReportSpec",
    "SamplingGrid",
    "Scheme",
    "SpeedSpec",
    "StudySpec",
    "TaskSpec",
    "content_hash",
    "expand",
    "load_spec",
    "ordered_schemes",
    "overview",
    "parse_spec",
    "plan",
    "prepare_tasks",
    "probe_grid",
    "resolve_device",
]
