"""The overview of a spec's plan that ``validate`` prints: its cells counted per dimension and per kind, with the reason
wherever a task's eval count is not the plain product of the dimensions.
"""

from __future__ import annotations

from harness_ext.spec.plan import Cell
from harness_ext.spec.schema import StudySpec


def overview(spec: StudySpec, cells: list[Cell]) -> str:
    """What ``validate`` prints: counts per dimension and per kind, and where the eval count is not
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
