"""The page's sections as plain rows: abstract, setup, the tables' rows and the example generations.

Each function reads a :class:`Study` (the run's tables) and returns what a template loop needs;
no HTML here and no number the tables do not hold.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study
from harness_ext.catalog import gguf_caveat
from harness_ext.environment import hardware_line
from harness_ext.point import row_label

QUALITY_METRICS = [  # (metric, kind, label, higher is better, format)
    ("p_gold", "probe", "next word: P(gold) (probe)", True, ".3f"),
    ("tv", "probe", "next word: TV to reference (probe)", False, ".3f"),
    ("entropy", "probe", "next word: entropy, nats (probe)", None, ".2f"),
    ("exact_match", "eval", "next word: exact match (sampled)", True, ".3f"),
    ("agree_ref", "eval", "next word: same first word as reference", True, ".3f"),
    ("distinct_2", "eval", "continuation: distinct-2", True, ".3f"),
    ("repetition_4", "eval", "continuation: seq-rep-4", False, ".3f"),
    ("rouge_l_ref", "eval", "continuation: ROUGE-L vs reference", True, ".3f"),
    ("nll_ref", "eval", "continuation: NLL under reference (nats/token)", False, ".2f"),
    ("hit_cap", "eval", "continuation: share hitting the token cap", None, ".2f"),
]
#: metrics whose paired differences (scheme minus reference) the page shows; every one is in the CSV
PAIRED_METRICS = ["p_gold", "exact_match", "distinct_2", "nll_ref", "entropy"]


def abstract(study: Study, q_desc: str) -> list[str]:
    """Sentences generated from what was measured (the verdicts follow in the at-a-glance table)."""
    models = study.models()
    schemes = study.schemes()["scheme"].tolist()
    env = (study.run.get("invocations") or [{}])[-1]
    n_ok = int(study.ok["cell_id"].nunique())
    n_all = len(study.run.get("expected_cells") or []) or int(study.cells["cell_id"].nunique())
    out = [
        f"We evaluated {len(models)} model(s) ({', '.join(models)}) in {len(schemes)} schemes "
        f"({', '.join(schemes)}) over a sampling grid, on {hardware_line(env) if env else 'unrecorded hardware'}; "
        f"{n_ok} of {n_all} cells completed."
    ]
    if q_desc:
        out.append(f"Quality verdicts use {q_desc}.")
    return out


def caveats(study: Study) -> list[str]:
    """What bounds every verdict of this run, said where the reader starts: a reference that is itself
    a dequantized GGUF, models with random weights (shape only), and the device that was timed."""
    out = []
    sources = {m: info.get("source") or {} for (m, _), info in study.loads().items()}
    for model, source in sources.items():
        caveat = gguf_caveat(source.get("gguf_tensor_types"))
        if caveat:
            out.append(
                f"{model}: {caveat}, so quality differences between schemes are measured against an "
                "already-quantized model."
            )
    shapes = [m for m, source in sources.items() if "shape" in source]
    if shapes:
        out.append(
            f"{', '.join(shapes)}: random weights of the real shapes (shape only): their speed and memory are those "
            "of the architecture; they have no quality to measure."
        )
    out.extend(_device_caveats(study))
    return out


def _device_caveats(study: Study) -> list[str]:
    """Which device each kind of measurement ran on; speed verdicts belong to that device only."""
    if "device" not in study.cells:
        return []
    ok = study.ok
    by_kind = {k: sorted({str(d) for d in g["device"].dropna()}) for k, g in ok.groupby("kind")}
    speed = by_kind.get("speed") or []
    out = []
    if speed:
        gpus = sorted({g["name"] for inv in study.run.get("invocations") or [] for g in inv.get("gpus") or []})
        where = (
            f"the GPU ({', '.join(gpus)})"
            if speed == ["cuda"] and gpus
            else "the CPU"
            if speed == ["cpu"]
            else ", ".join(speed)
        )
        other = "a GPU" if speed == ["cpu"] else "other GPUs or a CPU"
        out.append(
            f"Speed was timed on {where}: bitsandbytes' kernels differ between devices, so the speed verdicts "
            f"describe this device, not {other}."
        )
    quality = sorted({d for k in ("eval", "probe") for d in by_kind.get(k) or []})
    if speed and quality and quality != speed:
        out.append(f"Quality was measured on {', '.join(quality)}, speed on {', '.join(speed)}.")
    return out


def glance(claims: list[analysis.Claim]) -> list[dict[str, Any]]:
    """The verdicts at a glance: one row per claim, with its scope, the figure that decided it and
    the anchor of its section; where the models read differently, each model's reading and figure."""
    return [
        {
            "key": c.key,
            "title": c.title,
            "verdict": c.verdict,
            "css": c.css,
            "scope": c.scope if c.verdict != "not tested" else "",
            "deciding": c.deciding or c.reason,
            "detectable": c.detectable,
            "anchor": f"claim-{c.key}",
            "per_model": [
                {"model": m, "verdict": v, "css": v.replace(" ", "-"), "deciding": c.per_model_deciding.get(m, "")}
                for m, v in c.per_model.items()
                if v != "not tested"
            ]
            if c.models_disagree
            else [],
        }
        for c in claims
    ]


def speed_rows(study: Study, speed: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per round of a (model, scheme, batch, mode); "× reference" divides by the reference
    scheme's row of the same model, batch, mode, round and invocation (a scheme against itself: 1.00×)."""
    if speed.empty:
        return []
    rows = []
    same = ["model", "batch_size", "mode", "round", "invocation", "fingerprint", "gpu"]
    for _, r in speed.iterrows():
        ref = study.reference(r["model"])
        base = speed[(speed[same] == r[same]).all(axis=1) & (speed["scheme"] == ref)]
        ratio = float(r["decode_ms_per_token"]) / float(base["decode_ms_per_token"].iloc[0]) if not base.empty else None
        g = r.get
        rows.append(
            {
                "model": r["model"],
                "scheme": r["scheme"],
                "batch": int(r["batch_size"]),
                "mode": g("mode", "eager"),
                "round": int(r["round"]),
                "invocation": r["invocation"],
                "position": g("round_position"),
                "contended": bool(r["contended"]),
                "decode": g("decode_ms_per_token"),
                "decode_lo": g("decode_ms_per_token_lo"),
                "decode_hi": g("decode_ms_per_token_hi"),
                "tps": g("tokens_per_s"),
                "ttft": g("ttft_ms"),
                "ratio": f"{ratio:.2f}×" if ratio is not None and math.isfinite(ratio) else "n/a",
                "weights": g("weight_bytes"),
                "load_peak": g("load_peak_bytes"),
                "peak": g("peak_memory_bytes"),
                "load_s": g("load_s"),
                "floor": g("floor_ms_per_token"),
                "over_floor": g("decode_over_floor"),
            }
        )
    return rows


def quality_rows(study: Study, quality: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, scheme, temperature) at the profile slice: one Estimate per quality metric."""
    if quality.empty:
        return []
    rows: dict[tuple, dict[str, Any]] = {}
    for metric, kind, *_ in QUALITY_METRICS:
        sel = quality[quality["metric"] == metric]
        if kind == "probe":
            sel = sel[sel["task"].str.startswith("probe:")]
        else:
            sel = sel[~sel["task"].str.startswith("probe:")]
        sel = slice_rows(sel)
        for _, r in sel.iterrows():
            key = (r["model"], r["scheme"], r["temperature"])
            rows.setdefault(key, {"model": key[0], "scheme": key[1], "temperature": key[2]})[metric] = Estimate(
                r["mean"], r["lo"], r["hi"], int(r["n"])
            )
    order = {s: i for i, s in enumerate(study.schemes()["scheme"])}
    return sorted(rows.values(), key=lambda r: (r["model"], order.get(r["scheme"], 99), r["temperature"]))


def quality_tables(study: Study, quality: pd.DataFrame) -> list[dict[str, Any]]:
    """The quality rows split by task family (next word, continuation): two tables of a few columns
    each, rather than one that does not fit a page; a row appears where it has a value."""
    rows = quality_rows(study, quality)
    present = set(quality["metric"]) if not quality.empty else set()
    tables = []
    for family in ("next word", "continuation"):
        metrics = [m for m in QUALITY_METRICS if m[2].startswith(family) and m[0] in present]
        mine = [r for r in rows if any(m[0] in r for m in metrics)]
        if metrics and mine:
            tables.append(
                {"title": family, "metrics": [(*m[:2], m[2].split(": ", 1)[1], *m[3:]) for m in metrics], "rows": mine}
            )
    return tables


def slice_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows at the profile slice, chosen per task (axes differ between tasks)."""
    if summary.empty:
        return summary
    parts = [analysis.profile_slice(g) for _, g in summary.groupby("task")]
    return pd.concat(parts) if parts else summary


def paired_tables(study: Study, paired: pd.DataFrame) -> list[dict[str, Any]]:
    """One table per metric: a row per (model, temperature), a column per scheme (scheme minus its
    reference), at the profile slice. Temperatures run down the page, so a dense probe grid stays narrow."""
    if paired.empty:
        return []
    keep = paired[paired["metric"].isin(PAIRED_METRICS)]
    if keep.empty:
        return []
    keep = pd.concat([analysis.profile_slice(g) for _, g in keep.groupby(["task", "metric"])])
    labels = {m: lab for m, _, lab, *_ in QUALITY_METRICS}
    order = {s: i for i, s in enumerate(study.schemes()["scheme"])}
    tables = []
    for metric in [m for m in PAIRED_METRICS if m in set(keep["metric"])]:
        sel = keep[keep["metric"] == metric]
        schemes = sorted(set(sel["scheme"]), key=lambda s: order.get(s, 99))
        refs = sorted(set(sel["reference"]))
        rows: dict[tuple, dict[str, Any]] = {}
        for _, r in sel.iterrows():
            row = rows.setdefault(
                (r["model"], r["temperature"]), {"model": r["model"], "temperature": r["temperature"], "by": {}}
            )
            row["by"][r["scheme"]] = Estimate(r["diff"], r["lo"], r["hi"], int(r["n"]))
        tables.append(
            {
                "metric": labels.get(metric, metric),
                "columns": [(s, f"{s} − {refs[0] if len(refs) == 1 else 'reference'}") for s in schemes],
                "rows": sorted(rows.values(), key=lambda x: (x["model"], x["temperature"])),
            }
        )
    return tables


def failed_rows(study: Study) -> list[dict[str, Any]]:
    f = study.failed
    return [
        {
            "kind": r["kind"],
            "model": r["model"],
            "scheme": r["scheme"],
            "task": r["task"] or "",
            "point": row_label(r),
            "error": r["error"] or "",
        }
        for _, r in f.iterrows()
    ]


def missing_cells(study: Study) -> list[dict[str, str]]:
    present = set(study.cells["cell_id"])
    return [c for c in (study.run.get("expected_cells") or []) if c["cell_id"] not in present]
