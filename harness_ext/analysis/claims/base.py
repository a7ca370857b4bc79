"""What every claim module shares: the verdict words, the claim record, the registry, scopes and
the reading across models. The claims themselves are :mod:`.a`, :mod:`.b`, :mod:`.c`, :mod:`.d`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness_ext.analysis.study import Study

#: holds / does not hold: on the models in scope (a single model, or models that disagree in size);
#: supported / contradicted: every one of >= 2 models agrees (and >= 2 sizes where the claim says "every size").
Verdict = Literal["supported", "contradicted", "holds", "does not hold", "inconclusive", "not tested"]
PerModel = Literal["holds", "does not hold", "inconclusive", "not tested"]


#: What an evidence value's bracketed interval is (its ``interval`` key): one label per statistic.
OVER_PROMPTS = "95 % t-interval over prompts"
OVER_ROUNDS = "95 % t-interval over rounds (log-ratio)"
BOOTSTRAP_OVER_PROMPTS = "95 % paired bootstrap interval over prompts"


@dataclass
class Options:
    """The margins a study's report sets (ReportSpec), in one object."""

    margin: float = 0.05  # absolute accuracy: (a) equivalence, (b) interaction
    speed_margin: float = 0.10  # relative speed/memory: (a) equivalence, (d) "much slower"
    sensitivity_margin: float = 0.25  # (c), (c2): share of the reference's own drop
    n_resamples: int = 2000  # sign-flip test of (b)

    @classmethod
    def of_report(cls, report: dict[str, Any]) -> Options:
        """The margins a run's report options (``run.json``'s ``report``) give, defaults where absent."""
        return cls(
            float(report.get("equivalence_margin", cls.margin)),
            float(report.get("speed_margin", cls.speed_margin)),
            float(report.get("sensitivity_margin", cls.sensitivity_margin)),
        )


@dataclass
class Claim:
    """One claim, decided on this run's data."""

    key: str
    title: str
    statement: str
    rule: str
    verdict: Verdict = "inconclusive"
    reason: str = ""
    scope: str = ""
    evidence: list[dict[str, str]] = field(default_factory=list)
    per_model: dict[str, PerModel] = field(default_factory=dict)
    #: the one figure that decided the verdict, with what it measures ("" where none did: not tested)
    deciding: str = ""

    def decide(self, verdict: Verdict, reason: str) -> Claim:
        self.verdict, self.reason = verdict, reason
        return self

    @property
    def css(self) -> str:
        return self.verdict.replace(" ", "-")


ClaimFn = Callable[[Study, Options], list[Claim]]
REGISTRY: dict[str, ClaimFn] = {}


def claim(key: str) -> Callable[[ClaimFn], ClaimFn]:
    """Register a claim module's decision function under its key (a, b, c, d; each may return its
    sharpened form too)."""

    def register(fn: ClaimFn) -> ClaimFn:
        REGISTRY[key] = fn
        return fn

    return register


def device_of(study: Study) -> str:
    """The device(s) the study ran on, with the GPU's name where recorded."""
    devices = sorted({str(d) for d in study.cells.get("device", []) if isinstance(d, str)}) or ["unknown device"]
    gpus = sorted({g["name"] for inv in study.run.get("invocations") or [] for g in inv.get("gpus") or []})
    return ", ".join(devices) + (f" ({', '.join(gpus)})" if gpus and "cuda" in devices else "")


def scope_of(study: Study, models: list[str], *, sizes: bool = False) -> str:
    """'smollm2-135m (1 model, cpu)' or '2 models: a, b (2 families, 2 sizes, cuda (NVIDIA H100))'."""
    if not models:
        return "no model"
    fams = {study.family(m) for m in models}
    extra = [f"{len(models)} model{'s' * (len(models) > 1)}"]
    if len(models) > 1:
        extra.append(f"{len(fams)} famil{'ies' if len(fams) > 1 else 'y'}")
    if sizes:
        n = len(size_groups(study, models))
        extra.append(f"{n} size{'s' * (n != 1)}" if n else "size unknown")
    extra.append(device_of(study))
    return f"{', '.join(models)} ({', '.join(extra)})"


def size_groups(study: Study, models: list[str]) -> set[int]:
    """Distinct known model sizes (parameter counts of the unquantized loads). A model of unknown
    size adds none: "every size" is not shown by models whose sizes may be the same."""
    return {p for p in (study.parameters(m) for m in models) if p}


def across_models(
    study: Study, c: Claim, per_model: dict[str, PerModel], *, needs_sizes: bool = False, words: dict[str, str]
) -> Claim:
    """The verdict across models from the per-model readings: one model -> holds/does not hold on
    it; every one of >= 2 models (and >= 2 sizes where ``needs_sizes``) agreeing -> supported or
    contradicted; disagreement -> inconclusive, saying how many agree. ``words``: reason per reading."""
    c.per_model = dict(per_model)
    tested = {m: v for m, v in per_model.items() if v != "not tested"}
    c.scope = scope_of(study, list(tested) or list(per_model), sizes=needs_sizes)
    if not tested:
        return c.decide("not tested", words.get("not tested", "the study lacks the claim's subject"))
    n = len(tested)
    holds = sum(v == "holds" for v in tested.values())
    fails = sum(v == "does not hold" for v in tested.values())
    general = n >= 2 and (not needs_sizes or len(size_groups(study, list(tested))) >= 2)
    tally = f"{holds} of {n} model{'s' * (n > 1)} hold, {fails} do{'es' * (fails == 1)} not"
    if holds == n:
        return c.decide("supported" if general else "holds", f"{words['holds']} ({tally})")
    if fails == n:
        return c.decide("contradicted" if general else "does not hold", f"{words['does not hold']} ({tally})")
    return c.decide("inconclusive", f"{words['inconclusive']} ({tally})")


#: the per-model reading a verdict across models stands on
_READING_OF: dict[str, PerModel] = {
    "supported": "holds",
    "holds": "holds",
    "contradicted": "does not hold",
    "does not hold": "does not hold",
    "inconclusive": "inconclusive",
}


def decided_by(c: Claim, readings: dict[str, tuple[str, ...]], *, first_part: bool = False) -> Claim:
    """Name the figure that decided ``c``'s verdict (``c.deciding``): among the evidence rows of the
    models read as the verdict reads, the first whose reading starts with ``readings[that reading][0]``,
    else with the next prefix. ``first_part``: the row's value lists several comparisons (``a; b``);
    the first one decided it."""
    target = _READING_OF.get(c.verdict)
    if target is None:
        return c
    models = [m for m, v in c.per_model.items() if v == target] or list(c.per_model)
    rows = [e for e in c.evidence if any(e["what"].startswith(m) for m in models)]
    for prefix in readings.get(target, ()):
        e = next((e for e in rows if str(e.get("verdict", "")).startswith(prefix)), None)
        if e is not None:
            value = e["value"].split("; ")[0] if first_part else e["value"]
            reading = e["verdict"] if e["verdict"] not in _READING_OF.values() else ""
            c.deciding = f"{e['what'].removesuffix(': reading')}: {value}" + (f" ({reading})" if reading else "")
            break
    return c
