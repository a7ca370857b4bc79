"""The page's sections as plain rows: abstract, setup, the tables' rows and the example generations.

Each function reads a :class:`Study` (the run's tables) and returns what a template loop needs;
no HTML here and no number the tables do not hold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study
from harness_ext.environment import hardware_line
from harness_ext.sources import gguf_caveat

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


def abstract(study: Study, claims: list[analysis.Claim], q_desc: str) -> list[str]:
    """Sentences generated from what was measured and decided."""
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
    for c in claims:
        where = f" on {c.scope}" if c.scope and c.verdict != "not tested" else ""
        out.append(f"({c.key}) {c.statement} — {c.verdict}{where}: {c.reason}.")
    return out


def setup(study: Study) -> dict[str, Any]:
    loads = study.loads()
    models = []
    for m in study.models():
        info = next((v for (mm, _), v in loads.items() if mm == m), {})
        models.append(
            {
                "name": m,
                "parameters": study.parameters(m),
                "family": study.family(m),
                "source": describe_source(info.get("source") or {}),
                "reference": study.reference(m),
                "note": (study.run.get("model_notes") or {}).get(m),
                "trust_remote_code": (study.run.get("trust_remote_code") or {}).get(m, False),
            }
        )
    described = study.run.get("schemes") or {}
    schemes = [
        {**{k: _none_if_nan(v) for k, v in r.items()}, "description": described.get(r["scheme"], "")}
        for r in study.schemes().to_dict("records")
    ]
    ev = study.ok[study.ok["kind"] == "eval"]
    grid = {c: sorted({_fmt_axis(v) for v in ev[c].dropna()}, key=_axis_key) or ["—"] for c in analysis.POINT_COLUMNS}
    if "top_k" in ev and ev["top_k"].isna().any():
        grid["top_k"] = ["off", *grid["top_k"]] if grid["top_k"] != ["—"] else ["off"]
    tasks = []
    for name, t in (study.run.get("tasks") or {}).items():
        n = study.samples[study.samples["task"] == name]["doc_id"].nunique() if not study.samples.empty else 0
        tasks.append({"name": name, "prompts": int(n), "data": t.get("data") or "shipped with harness_ext"})
    probe = study.samples[study.samples["kind"] == "probe"] if not study.samples.empty else pd.DataFrame()
    if not probe.empty:
        tasks.append(
            {
                "name": "probe (" + probe["task"].iloc[0].split(":", 1)[-1] + ")",
                "prompts": int(probe["doc_id"].nunique()),
                "data": "exact next-token distribution",
            }
        )
    envs = study.run.get("invocations") or []
    return {
        "models": models,
        "schemes": schemes,
        "grid": grid,
        "tasks": tasks,
        "seeds": study.run.get("seeds") or [],
        "hardware": sorted({hardware_line(e) for e in envs}),
        "versions": (envs[-1].get("packages") if envs else {}),
        "invocations": len(envs),
        "git": envs[-1].get("git_sha") if envs else None,
    }


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def describe_source(source: dict[str, Any]) -> str:
    """Where the weights came from, without the paths of the machine that ran the study; for a GGUF
    whose weights were quantized, the caveat that the "unquantized" reference carries that error."""
    if "gguf" in source:
        gguf = Path(str(source.get("gguf", ""))).name
        where = (
            f"built-in {source['builtin']} ({gguf}, dequantized to a safetensors cache)"
            if "builtin" in source
            else f"GGUF {gguf} (dequantized)"
        )
        types = source.get("gguf_tensor_types")
        if not types:
            return where  # recorded before harness_ext read the file's tensor types
        counts = ", ".join(f"{n} {t}" for t, n in types.items())
        caveat = gguf_caveat(types)
        return f"{where}, tensors: {counts}" + (f"; {caveat}" if caveat else "")
    if "shape" in source:
        s = source["shape"]
        return (
            f"shape only, random weights: {s.get('model_type')} hidden {s.get('hidden_size')}, "
            f"{s.get('num_hidden_layers')} layers"
        )
    if "hub" in source:
        return f"hub {source['hub']}" + (f" @ {source['revision']}" if source.get("revision") else "")
    if "local" in source:
        return f"local folder {Path(str(source['local'])).name}"
    return ", ".join(f"{k}: {v}" for k, v in source.items())


def _fmt_axis(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axis_key(s: str) -> tuple[int, float | str]:
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


# -- tables --------------------------------------------------------------------------------------
def speed_rows(study: Study, speed: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per round of a (model, scheme, batch, mode); "× reference" divides by the reference
    scheme's row of the same model, batch, mode, round and invocation (a scheme against itself: 1.00×)."""
    if speed.empty:
        return []
    rows = []
    same = ["model", "batch_size", "mode", "round", "invocation"]
    for _, r in speed.iterrows():
        ref = study.reference(r["model"])
        base = speed[(speed[same] == r[same]).all(axis=1) & (speed["scheme"] == ref)]
        ratio = (
            float(r["decode_ms_per_token"]) / float(base["decode_ms_per_token"].iloc[0]) if not base.empty else None
        )
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


def slice_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows at the profile slice, chosen per task (axes differ between tasks)."""
    if summary.empty:
        return summary
    parts = [analysis.profile_slice(g) for _, g in summary.groupby("task")]
    return pd.concat(parts) if parts else summary


def paired_rows(study: Study, paired: pd.DataFrame) -> list[dict[str, Any]]:
    if paired.empty:
        return []
    keep = paired[paired["metric"].isin(["p_gold", "exact_match", "distinct_2", "nll_ref", "entropy"])]
    keep = (
        pd.concat([analysis.profile_slice(g) for _, g in keep.groupby(["task", "metric"])]) if not keep.empty else keep
    )
    labels = {m: lab for m, _, lab, *_ in QUALITY_METRICS}
    order = {s: i for i, s in enumerate(study.schemes()["scheme"])}
    rows: dict[tuple, dict[str, Any]] = {}
    for _, r in keep.iterrows():  # one row per (model, metric, scheme); one column per temperature
        key = (r["model"], labels.get(r["metric"], r["metric"]), r["scheme"])
        row = rows.setdefault(
            key, {"model": key[0], "metric": key[1], "scheme": key[2], "reference": r["reference"], "by_t": {}}
        )
        row["by_t"][r["temperature"]] = Estimate(r["diff"], r["lo"], r["hi"], int(r["n"]))
    return sorted(rows.values(), key=lambda x: (x["model"], x["metric"], order.get(x["scheme"], 99)))


def paired_temperatures(rows: list[dict[str, Any]]) -> list[float]:
    return sorted({t for r in rows for t in r["by_t"]})


def failed_rows(study: Study) -> list[dict[str, Any]]:
    f = study.failed
    return [
        {
            "kind": r["kind"],
            "model": r["model"],
            "scheme": r["scheme"],
            "task": r["task"] or "",
            "point": _point_label(r),
            "error": r["error"] or "",
        }
        for _, r in f.iterrows()
    ]


def missing_cells(study: Study) -> list[dict[str, str]]:
    present = set(study.cells["cell_id"])
    return [c for c in (study.run.get("expected_cells") or []) if c["cell_id"] not in present]


def _point_label(r: pd.Series) -> str:
    if r.get("temperature") is None or (isinstance(r.get("temperature"), float) and math.isnan(r["temperature"])):
        return ""
    k = r.get("top_k")
    return (
        f"T={r['temperature']:g} k={'-' if k is None or (isinstance(k, float) and math.isnan(k)) else int(k)} "
        f"n={int(r['max_new_tokens']) if r.get('max_new_tokens') == r.get('max_new_tokens') else '-'}"
    )


def examples(study: Study, per_scheme: int) -> list[dict[str, Any]]:
    """A few continuation prompts, each with every scheme's output side by side, greedy and sampled."""
    g = study.generations
    if g.empty or per_scheme <= 0:
        return []
    cont = g[g["task"].astype(str).str.contains("continuation")]
    g = cont if not cont.empty else g
    g = g[(g["seed"].fillna(0) == g["seed"].fillna(0).min()) & (g["sample"] == 0)]
    k = g["top_k"]
    g = g[(k.isna()) if k.isna().any() else (k == k.max())]
    g = g[g["max_new_tokens"] == g["max_new_tokens"].max()]
    temps = sorted(g["temperature"].unique())
    chosen = [
        *[t for t in temps if t == 0.0][:1],
        min((t for t in temps if t > 0), key=lambda t: abs(t - 0.7), default=None),
    ]
    chosen = [t for t in chosen if t is not None]
    order = list(study.schemes()["scheme"])
    out = []
    for model in study.models():
        m = g[g["model"] == model]
        for doc in sorted(m["doc_id"].unique())[:per_scheme]:
            d = m[m["doc_id"] == doc]
            rows = []
            for t in chosen:
                for s in order:
                    x = d[(d["temperature"] == t) & (d["scheme"] == s)]
                    if not x.empty:
                        rows.append(
                            {
                                "temperature": t,
                                "scheme": s,
                                "text": str(x.iloc[0]["text"]),
                                "finish": x.iloc[0].get("finish") or "",
                            }
                        )
            if rows:
                out.append({"model": model, "doc_id": int(doc), "prompt": str(d.iloc[0]["prompt"] or ""), "rows": rows})
    return out


