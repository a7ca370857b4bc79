"""What every claim module shares: the verdict words, the claim record, the registry, scopes and
the reading across models. The claims themselves are :mod:`.a`, :mod:`.b`, :mod:`.c`, :mod:`.d`.

A claim module is two steps: a *per-model reading* (the rule of :mod:`harness_ext.analysis.rules`
applied to one model's data, adding its evidence rows to the claim and naming the figure that
decided it) and :func:`across_models`, which turns the per-model readings into the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness_ext.analysis import power
from harness_ext.analysis.rules import Reading
from harness_ext.analysis.stats import Estimate
from harness_ext.analysis.study import Study

#: holds / does not hold: on the models in scope (a single model, or models that disagree in size);
#: supported / contradicted: every one of >= 2 models agrees (and >= 2 sizes where the claim says "every size").
Verdict = Literal["supported", "contradicted", "holds", "does not hold", "inconclusive", "not tested"]
PerModel = Reading


#: What an evidence value's bracketed interval is (its ``interval`` key): one label per statistic.
PAIRED_BOOTSTRAP = "95 % paired bootstrap interval over prompts"
RANGE_BOUNDS = "95 % bounds on the range (simultaneous lower, per-pair upper)"


def _report_default(name: str) -> float:
    """A margin's default, read from the spec's ReportSpec: the one place defaults live."""
    from harness_ext.spec.schema import ReportSpec

    return float(ReportSpec.model_fields[name].default)


@dataclass(frozen=True)
class Options:
    """The margins a study's report sets (``report:`` in the spec; defaults from ReportSpec)."""

    margin: float = field(default_factory=lambda: _report_default("equivalence_margin"))
    speed_margin: float = field(default_factory=lambda: _report_default("speed_margin"))
    sensitivity_margin: float = field(default_factory=lambda: _report_default("sensitivity_margin"))
    n_resamples: int = 2000  # sign flips behind (b)'s simultaneous bounds

    @classmethod
    def of_report(cls, report: dict[str, Any] | None) -> Options:
        """The margins a run's report options (``run.json``'s ``report``) give, defaults where absent."""
        report = report or {}
        given = {
            key: float(report[name])
            for key, name in (
                ("margin", "equivalence_margin"),
                ("speed_margin", "speed_margin"),
                ("sensitivity_margin", "sensitivity_margin"),
            )
            if report.get(name) is not None
        }
        return cls(**given)


@dataclass(frozen=True)
class ModelReading:
    """One model's reading of a claim: the reading, why in words (what was measured, which way it
    went), and the figure that decided it (``"what: value"``, "" where nothing was measured)."""

    reading: Reading
    why: str
    deciding: str = ""


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
    per_model: dict[str, Reading] = field(default_factory=dict)
    #: per model: the figure that decided its reading (the at-a-glance table shows them where models differ)
    per_model_deciding: dict[str, str] = field(default_factory=dict)
    #: the one figure that decided the verdict, with what it measures ("" where none did: not tested)
    deciding: str = ""
    #: every tested part's design: what it could have detected at 80 % power (analysis.power)
    power: list[power.Detectable] = field(default_factory=list)

    def decide(self, verdict: Verdict, reason: str, deciding: str = "") -> Claim:
        self.verdict, self.reason, self.deciding = verdict, reason, deciding
        return self

    def add(self, what: str, value: str | Estimate, reading: str, interval: str | None = None) -> dict[str, str]:
        """Add an evidence row and return it (:func:`quote` gives the text a deciding figure shows). An
        :class:`Estimate` value brings its own interval label (which statistic its interval is)."""
        if isinstance(value, Estimate):
            value, interval = (value.text("+.3f") if not value.ratio else value.text()), value.statistic
        row = {"what": what, "value": value, "verdict": reading}
        if interval:
            row["interval"] = interval
        self.evidence.append(row)
        return row

    def design(self, model: str, part: str, values, unit: str, margin: float, *, log: bool = False) -> None:
        """Note what a tested part's design could detect (its per-unit values against its margin)."""
        self.power.append(power.of(model, part, values, unit, margin, log=log))

    @property
    def detectable(self) -> str:
        """The part hardest to decide per model, as a distance from its margin at 80 % power."""
        return power.summary(self.power)

    @property
    def css(self) -> str:
        return self.verdict.replace(" ", "-")

    @property
    def models_disagree(self) -> bool:
        return len({v for v in self.per_model.values() if v != "not tested"}) > 1


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


def scope_of(study: Study, models: list[str], *, sizes: bool = False, what: str = "") -> str:
    """'smollm2-135m (1 model, cpu)' or '2 models: a, b (2 families, 2 sizes, cuda (NVIDIA H100))';
    ``what``: the schemes and batch sizes compared, appended after the device."""
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
    if what:
        extra.append(what)
    return f"{', '.join(models)} ({', '.join(extra)})"


def size_groups(study: Study, models: list[str]) -> set[int]:
    """Distinct known model sizes (parameter counts of the unquantized loads). A model of unknown
    size adds none: "every size" is not shown by models whose sizes may be the same."""
    return {p for p in (study.parameters(m) for m in models) if p}


#: the per-model reading a verdict across models stands on
_READING_OF: dict[str, Reading] = {
    "supported": "holds",
    "holds": "holds",
    "contradicted": "does not hold",
    "does not hold": "does not hold",
    "inconclusive": "inconclusive",
}


def across_models(
    study: Study,
    c: Claim,
    readings: dict[str, ModelReading],
    *,
    needs_sizes: bool = False,
    not_tested: str = "the study lacks the claim's subject",
    what: str = "",
) -> Claim:
    """The verdict across models from the per-model readings: one model -> holds/does not hold on
    it; every one of >= 2 models (and >= 2 sizes where ``needs_sizes``) agreeing -> supported or
    contradicted; disagreement -> inconclusive, with each model's reading. The reason is each
    tested model's own ``why``; the deciding figure is that of the first model read as the verdict
    reads. ``what``: the schemes/batches compared, for the scope."""
    c.per_model = {m: r.reading for m, r in readings.items()}
    c.per_model_deciding = {m: r.deciding for m, r in readings.items() if r.deciding}
    tested = {m: r for m, r in readings.items() if r.reading != "not tested"}
    c.scope = scope_of(study, list(tested) or list(readings), sizes=needs_sizes, what=what)
    if not tested:
        whys = sorted({r.why for r in readings.values() if r.why})
        return c.decide("not tested", "; ".join(whys) or not_tested)
    n = len(tested)
    holds = sum(r.reading == "holds" for r in tested.values())
    fails = sum(r.reading == "does not hold" for r in tested.values())
    general = n >= 2 and (not needs_sizes or len(size_groups(study, list(tested))) >= 2)
    if holds == n:
        verdict: Verdict = "supported" if general else "holds"
    elif fails == n:
        verdict = "contradicted" if general else "does not hold"
    else:
        verdict = "inconclusive"
    if n == 1:
        reason = next(iter(tested.values())).why
    else:
        tally = f"{holds} of {n} models hold, {fails} do{'es' * (fails == 1)} not"
        if verdict == "inconclusive" and holds + fails:
            tally += " — the models disagree"
        reason = tally + ": " + "; ".join(f"{m}: {r.reading} — {r.why}" for m, r in tested.items())
    target = _READING_OF[verdict]
    first = next((r for r in tested.values() if r.reading == target and r.deciding), None)
    first = first or next((r for r in tested.values() if r.deciding), None)
    return c.decide(verdict, reason, first.deciding if first else "")


def quote(row: dict[str, str] | None) -> str:
    """An evidence row as the figure that decided a reading: ``"what: value"``."""
    return f"{row['what']}: {row['value']}" if row else ""


def not_tested(why: str) -> ModelReading:
    return ModelReading("not tested", why)
