"""Before a study runs: what its design could detect, from a pilot run's variance.

For a spec, the design is how many prompts each quality test averages (the probe's prompts, or the
next-word task's where the spec does not probe), which temperatures the probe computes, and how many
speed rounds each ratio has. The pilot run gives each tested part's per-unit standard deviation (the
claims are decided on the pilot, at the spec's temperatures and margins, exactly as a report would);
each part's detectable distance is then recomputed for the spec's unit counts
(:class:`harness_ext.analysis.power.Detectable`), and the units a part needs for a target distance
(default: its own margin, so that a zero effect is decided) are found. Torch-free, like ``validate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness_ext.analysis.claims import Options, claims
from harness_ext.analysis.study import Study


@dataclass(frozen=True)
class Design:
    """What a spec fixes that a test's power depends on."""

    prompts: int  # per quality test (the probe's prompts, else the next-word task's)
    rounds: int  # per speed ratio
    temperatures: list[float] | None  # the probe's temperature list (None: the pilot's)
    options: Options

    @classmethod
    def of_spec(cls, spec) -> Design:
        """The design of a loaded spec (:class:`harness_ext.spec.StudySpec`)."""
        from harness_ext.spec.plan import prepare_tasks, probe_grid
        from harness_ext.tasks import loaders

        params = prepare_tasks(spec)
        temps = None
        if spec.probe.enabled and spec.sampling is not None:
            task = spec.task(spec.probe.task)
            limit = spec.probe.limit or task.limit or spec.limit
            temps = [float(t) for t in probe_grid(spec)["temperature"]]
        else:
            task = next((t for t in spec.task_list if t.kind == "quant_nextword"), None)
            limit = (task.limit or spec.limit) if task else None
        prompts = 0
        if task is not None:
            path = params.get(task.name, {}).get("data_file") or loaders.DATA_DIR / "nextword.jsonl"
            available = len(loaders.read_jsonl(Path(path), loaders.REQUIRED_FIELDS["nextword"]))
            prompts = min(limit, available) if limit else available
        rounds = spec.speed.rounds if spec.speed.enabled else 0
        margins = spec.report
        opts = Options(margins.equivalence_margin, margins.speed_margin, margins.sensitivity_margin)
        return cls(prompts, rounds, temps, opts)


def predict(pilot: Study, design: Design) -> pd.DataFrame:
    """One row per tested part of every claim: its detectable distance from the margin at the
    design's unit counts, whether a zero effect is decided, and the units needed for the target."""
    if design.temperatures is not None and not pilot.samples.empty:
        have = set(pilot.samples["temperature"].dropna().unique())
        keep = [t for t in design.temperatures if t in have]
        if keep:
            pilot = Study(
                pilot.cells, pilot.samples[pilot.samples["temperature"].isin(keep)], pilot.generations, pilot.run
            )
    rows = []
    for c in claims(pilot, design.options):
        for d in c.power:
            n = design.prompts if d.unit == "prompts" else design.rounds
            at = d.at(n) if n else d
            rows.append(
                {
                    "claim": c.key,
                    "model (pilot)": d.model,
                    "part": d.part,
                    "unit": d.unit,
                    "pilot n": d.n,
                    "design n": n,
                    "sd per unit": d.sd,
                    "margin": d.margin,
                    "detectable": at.mde,
                    "zero decided": at.decides_at_zero,
                    "needed for the margin": d.needed(d.margin),
                    "log": d.log,
                }
            )
    return pd.DataFrame(rows)


def text(table: pd.DataFrame, design: Design) -> str:
    """The planner's table for a terminal: one line per part, hardest first within each claim."""
    if table.empty:
        return "the pilot decides no claim part: nothing to predict (it needs quality or speed rounds)"
    lines = [
        f"design: {design.prompts} prompts per quality test, {design.rounds} speed rounds; 80 % power, one-sided 5 %",
        "claim  part (pilot model)                                         n      detectable        margin   "
        "zero effect   units for the margin",
    ]
    for _, r in table.iterrows():
        fmt = (lambda v: f"×{math.exp(v):.2f}") if r["log"] else (lambda v: f"{v:.3f}")
        det = fmt(r["detectable"]) if math.isfinite(r["detectable"]) else "n/a"
        need = r["needed for the margin"]
        need_text = f"{need} {r['unit']}" if need and not pd.isna(need) else "beyond reach"
        zero = "decided" if r["zero decided"] else "NOT decided"
        part = f"{r['part']} ({r['model (pilot)']})"
        lines.append(
            f"({r['claim']})".ljust(7)
            + part[:58].ljust(59)
            + f"{int(r['design n'])} {r['unit']}".ljust(13)
            + det.ljust(10)
            + fmt(r["margin"]).ljust(11)
            + zero.ljust(14)
            + need_text
        )
    return "\n".join(lines)
