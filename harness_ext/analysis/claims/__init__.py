"""The seed study's claims, one module per claim behind a small registry.

Every claim is drawn *per model first* and then across the models, and names its scope (models,
families, sizes, device). A general claim ("4-bit models are more sensitive") tested on one model
cannot be supported or contradicted, only found to hold or not on that model; across models the
verdict says how many agree. A claim whose subject is absent from the study is *not tested*. The
rules, margins and error-rate controls are in docs/VERDICTS.md. Shared parts live in :mod:`.base`.
"""

from __future__ import annotations

from harness_ext.analysis.claims.base import (
    PAIRED_BOOTSTRAP,
    RANGE_BOUNDS,
    REGISTRY,
    Claim,
    ModelReading,
    Options,
    PerModel,
    Verdict,
    across_models,
    claim,
    device_of,
    scope_of,
    size_groups,
)
from harness_ext.analysis.stats import BOOTSTRAP_OVER_PROMPTS, OVER_PROMPTS, OVER_ROUNDS
from harness_ext.analysis.study import Study

__all__ = [
    "BOOTSTRAP_OVER_PROMPTS",
    "OVER_PROMPTS",
    "OVER_ROUNDS",
    "PAIRED_BOOTSTRAP",
    "RANGE_BOUNDS",
    "REGISTRY",
    "Claim",
    "ModelReading",
    "Options",
    "PerModel",
    "Verdict",
    "across_models",
    "claim",
    "claims",
    "device_of",
    "scope_of",
    "size_groups",
]


def claims(study: Study, opts: Options | None = None) -> list[Claim]:
    """Every registered claim, decided with ``opts``' margins (default: the spec's defaults), in
    registry order: a, b, c, d (each followed by its sharpened form)."""
    from harness_ext.analysis.claims import a, b, c, d  # noqa: F401  (registers them)

    opts = opts or Options()
    return [x for key in sorted(REGISTRY) for x in REGISTRY[key](study, opts)]
