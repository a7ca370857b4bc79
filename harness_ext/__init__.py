"""harness_ext: declarative studies of how quantized LLMs respond to sampling settings, on top of
lm-evaluation-harness.

The public surface is what ``__all__`` names; everything else is private to its package and may
change. The rooms, in the order data flows (README, "Layout"):

- :mod:`harness_ext.spec` — the study spec (pydantic), its cells and their identities; torch-free;
- :mod:`harness_ext.backend` — ``hf-quant``: loading, quantizing, generating, probing, timing (torch);
- :mod:`harness_ext.run` — the runner, one handler per cell kind, executors (local, Ray);
- :mod:`harness_ext.store` — the run directory: records (the contract) and tables; torch-free;
- :mod:`harness_ext.analysis` — the study's tables, statistics and the verdicts; torch-free;
- :mod:`harness_ext.report` — the HTML report, rendered from a run directory alone; torch-free.

Importing ``harness_ext`` loads the spec side only; the names of the torch side (``Runner``,
``HFQuantLM``) are imported when first used, so that a spec or a report never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harness_ext.errors import DataError, HarnessExtError, ModelLoadError, SpecError, StoreError, UnsupportedSchemeError
from harness_ext.point import SamplingPoint
from harness_ext.spec import Cell, Scheme, StudySpec, load_spec, parse_spec, plan

if TYPE_CHECKING:
    from harness_ext.analysis import Study
    from harness_ext.backend import HFQuantLM
    from harness_ext.report import render
    from harness_ext.run import Runner, RunResult
    from harness_ext.store import Record, RunStore

#: names imported on first use: (module, attribute)
_LAZY = {
    "Runner": "harness_ext.run",
    "RunResult": "harness_ext.run",
    "HFQuantLM": "harness_ext.backend",
    "RunStore": "harness_ext.store",
    "Record": "harness_ext.store",
    "Study": "harness_ext.analysis",
    "render": "harness_ext.report",
}

__all__ = [
    "Cell",
    "DataError",
    "HFQuantLM",
    "HarnessExtError",
    "ModelLoadError",
    "Record",
    "RunResult",
    "RunStore",
    "Runner",
    "SamplingPoint",
    "Scheme",
    "SpecError",
    "StoreError",
    "Study",
    "StudySpec",
    "UnsupportedSchemeError",
    "load_spec",
    "parse_spec",
    "plan",
    "render",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness_ext' has no attribute {name!r}")
