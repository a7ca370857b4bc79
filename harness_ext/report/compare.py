"""Compare two runs of one study: which verdicts and figures moved (``harness-ext report A --compare B``).

The first thing a user does after re-running a study on another machine. Both runs are read the way
the report reads them (their records, through :mod:`harness_ext.analysis`); nothing in either run
directory is written. Per claim: the verdict and its deciding evidence in each run. Per quality cell
and metric, and per speed cell: the figure in each run, the difference, and whether it is larger
than the two runs' own uncertainty (:data:`RULE`). Cells present in one run only are listed, and a
spec or environment that differs is said first: a moved figure means little when the study changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from harness_ext import analysis
from harness_ext.analysis import Claim, Study
from harness_ext.analysis.claims import device_of
from harness_ext.point import row_label

ALPHA = 0.05
RULE = (
    "A figure moved when B − A is larger than the two runs' own uncertainty: a two-sided Welch t-test of "
    "the difference of the two means, each with its own standard error (over prompts for quality, over "
    "uncontended rounds of log ms/token for speed), Benjamini–Hochberg at 5% over the cells of each table. "
    "It treats the runs as independent although they share prompts and seeds, which makes it conservative: "
    "it flags what the reports' own intervals can resolve, not numeric jitter (stricter intervals would "
    "flag every rounding difference between two devices). It is less strict than requiring the two "
    "95% intervals not to overlap (by up to √2 on the standard error)."
)
QUALITY_KEYS = ["model", "scheme", "task", "metric", *analysis.POINT_COLUMNS]
SPEED_KEYS = ["model", "scheme", "batch_size", "mode"]
ENV_FIELDS = ("cpu", "cpu_count", "torch_threads", "cuda", "driver", "python", "platform", "git_sha")


@dataclass
class Comparison:
    """Everything the compare page shows; each table also goes out as CSV."""

    a: str
    b: str
    warnings: list[str]
    claims: pd.DataFrame
    quality: pd.DataFrame
    speed: pd.DataFrame
    only: dict[str, list[str]] = field(default_factory=dict)  # "A"/"B" -> cells present in that run only
    environment: list[str] = field(default_factory=list)  # "field: value in A → value in B", where they differ
    rule: str = RULE


def load_study(run_dir: str | Path, warn: Callable[[str], None]) -> Study:
    """A run directory (or a folder of its tables) as the report reads it: re-derived from its
    records in memory, writing nothing."""
    from harness_ext.report.page import input_tables, study_from_tables

    run_dir = Path(run_dir)
    return study_from_tables(input_tables(run_dir, warn), run_dir)


def compare(a: Study, b: Study, name_a: str = "A", name_b: str = "B") -> Comparison:
    """Compare run B against run A (A is the baseline: differences are B − A)."""
    qa, qb = quality_cells(a), quality_cells(b)
    sa, sb = speed_cells(a), speed_cells(b)
    only = {
        "A": _only(qa, qb, QUALITY_KEYS) + _only(sa, sb, SPEED_KEYS),
        "B": _only(qb, qa, QUALITY_KEYS) + _only(sb, sa, SPEED_KEYS),
    }
    return Comparison(
        a=name_a,
        b=name_b,
        warnings=spec_warnings(a, b) + environment_warnings(env := environment_changes(a, b)),
        claims=claim_changes(_claims(a), _claims(b)),
        quality=moved(qa, qb, QUALITY_KEYS),
        speed=moved(sa, sb, SPEED_KEYS),
        only=only,
        environment=env,
    )


# -- what differs around the figures ---------------------------------------------------------------
def spec_hash(study: Study) -> str | None:
    """A hash of the spec's content (parsed YAML), so that comments and layout do not count."""
    parsed = _spec(study)
    if parsed is None:
        return None
    return hashlib.sha256(json.dumps(parsed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _spec(study: Study) -> Any:
    text = study.run.get("spec_text")
    if not text:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def spec_warnings(a: Study, b: Study) -> list[str]:
    ha, hb = spec_hash(a), spec_hash(b)
    if ha is None or hb is None:
        return ["a run records no spec: cannot tell whether both ran the same study"]
    if ha == hb:
        return []
    sa, sb = _spec(a), _spec(b)
    keys = sorted({*sa, *sb} - {k for k in {*sa, *sb} if sa.get(k) == sb.get(k)}) if _both_dicts(sa, sb) else []
    where = f" (they differ in: {', '.join(map(str, keys))})" if keys else ""
    return [
        f"the two runs ran different specs: hash {ha} vs {hb}{where}; figures may have moved because the study changed"
    ]


def _both_dicts(x: Any, y: Any) -> bool:
    return isinstance(x, dict) and isinstance(y, dict)


def fingerprint_fields(study: Study) -> dict[str, str]:
    """The machine fingerprints of a run's invocations (:mod:`harness_ext.fingerprint`), field by
    field: what makes speed figures of two machines incomparable. "unrecorded" before fingerprints."""
    fps = [inv["fingerprint"] for inv in study.run.get("invocations") or [] if inv.get("fingerprint")]

    def each(f: Callable[[dict[str, Any]], Any]) -> str:
        return _values(f(fp) for fp in fps)

    def bnb(fp: dict[str, Any], what: str) -> Any:
        return ((fp.get("kernels") or {}).get("bitsandbytes") or {}).get(what)

    cpu = ("vendor", "model_name", "family", "model", "stepping")
    return {
        "fingerprint": each(lambda fp: fp.get("key")),
        "fingerprint: CPU": each(lambda fp: " ".join(str((fp.get("cpu") or {}).get(k)) for k in cpu)),
        "fingerprint: CPU flags": each(lambda fp: " ".join((fp.get("cpu") or {}).get("flags") or []) or None),
        "fingerprint: torch ISA": each(lambda fp: fp.get("isa")),
        "fingerprint: cores, threads": each(lambda fp: f"{fp.get('cores')}, {fp.get('threads')}"),
        "fingerprint: GPUs": each(
            lambda fp: ", ".join(f"{g.get('name')} {g.get('uuid')}" for g in fp.get("gpus") or []) or None
        ),
        "fingerprint: GPU clocks, ECC, power limit": each(
            lambda fp: (
                ", ".join(
                    f"{g.get('max_sm_mhz')}/{g.get('max_mem_mhz')} MHz ECC {g.get('ecc')} {g.get('power_limit_w')} W"
                    for g in fp.get("gpus") or []
                )
                or None
            )
        ),
        "fingerprint: bitsandbytes 4-bit CPU kernel": each(lambda fp: bnb(fp, "gemv_4bit")),
        "fingerprint: bitsandbytes int8 CPU matmul": each(lambda fp: bnb(fp, "int8_matmul")),
        "fingerprint: governor": each(lambda fp: fp.get("governor")),
    }


def environment(study: Study) -> dict[str, str]:
    """What a figure may depend on besides the spec, the machine's fingerprint first: device (with GPU
    names), CPU, threads, CUDA, driver, Python, platform, package versions and the harness_ext commit,
    over all invocations of the run."""
    invs = study.run.get("invocations") or []
    out = {**fingerprint_fields(study), "device": device_of(study)}
    for key in ENV_FIELDS:
        out[key] = _values(inv.get(key) for inv in invs)
    out["gpus"] = _values(", ".join(g.get("name", "?") for g in inv.get("gpus") or []) or None for inv in invs)
    for pkg in sorted({p for inv in invs for p in inv.get("packages") or {}}):
        out[pkg] = _values((inv.get("packages") or {}).get(pkg) for inv in invs)
    return out


def _values(xs: Any) -> str:
    return " / ".join(dict.fromkeys(str(x) for x in xs if x is not None)) or "unrecorded"


def environment_changes(a: Study, b: Study) -> list[str]:
    """'field: A → B' for every environment field that differs between the runs."""
    ea, eb = environment(a), environment(b)
    return [
        f"{k}: {ea.get(k, 'unrecorded')} → {eb.get(k, 'unrecorded')}"
        for k in dict.fromkeys([*ea, *eb])
        if ea.get(k, "unrecorded") != eb.get(k, "unrecorded")
    ]


def environment_warnings(changes: list[str]) -> list[str]:
    """One warning naming the fields that differ (each change is listed beside it); first, where the
    machine fingerprints differ, that their speed figures were timed on different machines."""
    if not changes:
        return []
    out = []
    if any(x.startswith("fingerprint") for x in changes):
        out.append(
            "the runs were timed on machines with different fingerprints: their speed figures are compared, "
            "never pooled, and a moved speed figure may be the machine's"
        )
    names = ", ".join(_field(x) for x in changes)
    return [*out, f"the environments differ in {names}: figures may have moved for that"]


def _field(change: str) -> str:
    """The field a 'field: A → B' line is about ('fingerprint: CPU' for a fingerprint's part)."""
    parts = change.split(": ")
    return ": ".join(parts[:2]) if parts[0] == "fingerprint" and len(parts) > 2 else parts[0]


# -- claims ---------------------------------------------------------------------------------------------
def _claims(study: Study) -> list[Claim]:
    """The claims as the run's own report decides them (its own margins)."""
    return analysis.claims(study, analysis.Options.of_report(study.run.get("report")))


def deciding(c: Claim) -> str:
    """The figure that decided the verdict (``Claim.deciding``, as the report's at-a-glance table shows
    it); where the claim names none, the first evidence entry carrying a reading of its own."""
    if c.deciding:
        return c.deciding
    read = [e for e in c.evidence if e.get("verdict")] or c.evidence
    return f"{read[0]['what']}: {read[0]['value']}" if read else c.reason


def claim_changes(ca: list[Claim], cb: list[Claim]) -> pd.DataFrame:
    """One row per claim: verdict and deciding evidence in A and B, and the evidence figures that differ."""
    by_b = {c.key: c for c in cb}
    rows = []
    for c in ca:
        d = by_b.get(c.key)
        ev_a = {e["what"]: e["value"] for e in c.evidence}
        ev_b = {e["what"]: e["value"] for e in d.evidence} if d else {}
        changed = [
            f"{w}: {ev_a.get(w, '—')} → {ev_b.get(w, '—')}"
            for w in dict.fromkeys([*ev_a, *ev_b])
            if ev_a.get(w) != ev_b.get(w)
        ]
        rows.append(
            {
                "claim": c.key,
                "title": c.title,
                "verdict_a": c.verdict,
                "verdict_b": d.verdict if d else "absent",
                "moved": d is None or c.verdict != d.verdict,
                "per_model_a": json.dumps(c.per_model),
                "per_model_b": json.dumps(d.per_model) if d else "{}",
                "deciding_a": deciding(c),
                "deciding_b": deciding(d) if d else "",
                "evidence_changed": changed,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "claim",
            "title",
            "verdict_a",
            "verdict_b",
            "moved",
            "per_model_a",
            "per_model_b",
            "deciding_a",
            "deciding_b",
            "evidence_changed",
        ],
    )


# -- figures ----------------------------------------------------------------------------------------------
def quality_cells(study: Study) -> pd.DataFrame:
    """Per (model, scheme, task, metric, grid point): mean over prompts, its standard error and n."""
    s = study.samples
    if s.empty:
        return pd.DataFrame(columns=[*QUALITY_KEYS, "value", "se", "n"])
    parts = []
    for metric in sorted(s["metric"].dropna().unique()):
        pp = analysis.per_prompt(study, metric).dropna(subset=["value"])
        g = pp.groupby(QUALITY_KEYS[:3] + QUALITY_KEYS[4:], dropna=False)["value"]
        t = g.agg(value="mean", sd="std", n="count").reset_index()
        t.insert(3, "metric", metric)
        parts.append(t)
    out = pd.concat(parts, ignore_index=True)
    out["se"] = out["sd"] / np.sqrt(out["n"])
    return out.drop(columns="sd")


def speed_cells(study: Study) -> pd.DataFrame:
    """Per (model, scheme, batch size, mode): the median decode ms/token over uncontended rounds, the
    mean and standard error of its log over rounds, the rounds, and the weight memory."""
    sp = analysis.speed_table(study)
    cols = [*SPEED_KEYS, "value", "log_mean", "se", "n", "weight_mib"]
    if sp.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in sp.groupby(SPEED_KEYS, sort=False):
        ms = g.loc[~g["contended"], "decode_ms_per_token"].astype(float).dropna()
        logs = np.log(ms.to_numpy())
        wb = g["weight_bytes"].dropna() if "weight_bytes" in g else pd.Series(dtype=float)
        rows.append(
            {
                **dict(zip(SPEED_KEYS, key, strict=True)),
                "value": float(ms.median()) if len(ms) else math.nan,
                "log_mean": float(logs.mean()) if len(logs) else math.nan,
                "se": float(logs.std(ddof=1) / math.sqrt(len(logs))) if len(logs) >= 2 else math.nan,
                "n": len(logs),
                "weight_mib": float(wb.iloc[0]) / 2**20 if len(wb) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=cols)


def welch_p(d: np.ndarray, se_a: np.ndarray, se_b: np.ndarray, n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """Two-sided p of a difference ``d`` of two independent means (Welch–Satterthwaite degrees of
    freedom). Both standard errors 0: p = 0 if the means differ, else 1; one unknown (fewer than 2
    prompts or rounds): NaN, the difference cannot be judged."""
    var = se_a**2 + se_b**2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var**2 / (se_a**4 / np.maximum(n_a - 1, 1) + se_b**4 / np.maximum(n_b - 1, 1))
        p = 2 * stats.t.sf(np.abs(d) / np.sqrt(var), df)
    p = np.where(var == 0, np.where(d == 0, 1.0, 0.0), p)
    return np.where(np.isfinite(se_a) & np.isfinite(se_b) & (n_a >= 2) & (n_b >= 2), p, np.nan)


def moved(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Cells present in both runs: value in A and B, B − A, Welch p, BH-adjusted, and ``moved``."""
    j = _keyed(a, keys).merge(_keyed(b, keys), on=keys, suffixes=("_a", "_b"))
    speed = "log_mean_a" in j
    d = (j["log_mean_b"] - j["log_mean_a"]) if speed else (j["value_b"] - j["value_a"])
    j["diff"] = j["value_b"] - j["value_a"]
    if speed:
        j["ratio"] = np.exp(d)  # B/A, geometric mean over rounds
    p = welch_p(d.to_numpy(float), *(j[c].to_numpy(float) for c in ("se_a", "se_b", "n_a", "n_b")))
    j["p"] = p
    j["p_adjusted"] = np.nan
    ok = np.isfinite(p)
    if ok.any():
        j.loc[ok, "p_adjusted"] = stats.false_discovery_control(p[ok], method="bh")
    sampled = j["p_adjusted"] < ALPHA
    weight = pd.Series(False, index=j.index)
    if speed:  # weight memory is counted, not sampled: any change is a change
        weight = (j["weight_mib_a"] != j["weight_mib_b"]) & j[["weight_mib_a", "weight_mib_b"]].notna().all(axis=1)
    j["moved"] = sampled | weight
    reasons = (("decode time" if speed else "value", sampled), ("weight memory", weight))
    j["why"] = [", ".join(w for w, hit in reasons if hit[i]) for i in j.index]
    j["judged"] = ok
    return j.sort_values(["moved", *keys[:2]], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def _keyed(t: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """NaN keys (a speed cell's task, no top-k) made comparable for merging."""
    return t.assign(**{k: t[k].fillna(-1) if t[k].dtype.kind == "f" else t[k].fillna("") for k in keys if k in t})


def _only(x: pd.DataFrame, y: pd.DataFrame, keys: list[str]) -> list[str]:
    """Labels of the cells of ``x`` that ``y`` lacks."""
    if x.empty:
        return []
    xs, ys = _keyed(x, keys), _keyed(y, keys)
    mine = xs[keys].drop_duplicates()
    other = {tuple(r) for r in ys[keys].itertuples(index=False)} if not ys.empty else set()
    return [label(dict(zip(keys, r, strict=True))) for r in mine.itertuples(index=False) if tuple(r) not in other]


def label(row: dict[str, Any]) -> str:
    """'tiny | nf4 | quant_nextword | exact_match | T=0.7 k=5 p=1 n=6' (the point's own label,
    :func:`~harness_ext.point.row_label`) or 'tiny | nf4 | batch 1 eager'."""
    if "batch_size" in row:
        return f"{row['model']} | {row['scheme']} | batch {int(row['batch_size'])} {row['mode']}"
    point = row_label(row)
    return f"{row['model']} | {row['scheme']} | {row['task']} | {row['metric']}" + (f" | {point}" if point else "")
