"""``run --only KEY=V1,V2``: which cells of a spec an invocation runs now (the rest stay pending for
a later one). Torch-free, like the rest of the spec room."""

from __future__ import annotations

from harness_ext.errors import SpecError

ONLY_KEYS = ("model", "scheme", "kind", "task", "mode", "batch")


def check_only(only: dict[str, set[str]], spec) -> None:
    """Refuse an ``--only`` value the spec does not have (it would select nothing and exit 0)."""
    known = only_values(spec)
    for key, values in only.items():
        unknown = sorted(values - known[key])
        if unknown:
            have = ", ".join(sorted(known[key])) or "none in this spec"
            raise SpecError(f"--only {key}={','.join(unknown)}: not in the spec; its {key} values: {have}")


def only_values(spec) -> dict[str, set[str]]:
    """What each ``--only`` key can select in ``spec``."""
    weights = any(not m.speed_only for m in spec.models)
    kinds = {
        "eval": weights and bool(spec.tasks),
        "probe": weights and spec.probe.enabled and spec.sampling is not None,
        "speed": spec.speed.enabled,
    }
    return {
        "model": {m.label for m in spec.models},
        "scheme": {s.name for s in spec.scheme_list},
        "kind": {k for k, present in kinds.items() if present},
        "task": {t.name for t in spec.task_list},
        "mode": {spec.mode, *(spec.speed.modes if spec.speed.enabled else [])},
        "batch": {str(b) for b in spec.speed.batch_sizes} if spec.speed.enabled else set(),
    }


def parse_only(items: list[str]) -> dict[str, set[str]]:
    """``["scheme=fp16,nf4", "mode=eager"]`` -> {"scheme": {"fp16", "nf4"}, "mode": {"eager"}}."""
    out: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in ONLY_KEYS or not values:
            raise SpecError(f"--only {item!r}: expected KEY=V1,V2 with KEY one of {', '.join(ONLY_KEYS)}")
        out.setdefault(key, set()).update(v for v in values.split(",") if v)
    return out
