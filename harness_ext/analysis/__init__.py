"""From the tidy tables to findings: per-prompt tables with intervals, speed rounds with paired
ratios, and the seed study's claims as scoped verdicts (one module per claim under ``claims/``).

The public surface is re-exported here: ``from harness_ext import analysis; analysis.claims(study)``.
"""

from harness_ext.analysis.claims import REGISTRY, Claim, Options, Verdict, claims
from harness_ext.analysis.rounds import MIN_ROUNDS, speed_summary, speed_table
from harness_ext.analysis.stats import Estimate, bootstrap_ci
from harness_ext.analysis.study import (
    POINT_COLUMNS,
    Study,
    describe_slice,
    paired_differences,
    per_prompt,
    point_estimates,
    primary_quality,
    profile_slice,
    quality_table,
    temperature_sensitivity,
)

__all__ = [
    "MIN_ROUNDS",
    "POINT_COLUMNS",
    "REGISTRY",
    "Claim",
    "Estimate",
    "Options",
    "Study",
    "Verdict",
    "bootstrap_ci",
    "claims",
    "describe_slice",
    "paired_differences",
    "per_prompt",
    "point_estimates",
    "primary_quality",
    "profile_slice",
    "quality_table",
    "speed_summary",
    "speed_table",
    "temperature_sensitivity",
]
