"""The setup section of a report: models and their sources, schemes (with what each quantized load
holds quantized, and by format x backend where several libraries are compared), the grid, tasks and
seeds, and the machines the run was timed on (their fingerprints)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Study
from harness_ext.catalog import gguf_caveat
from harness_ext.environment import hardware_line
from harness_ext.fingerprint import describe as describe_fingerprint


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
        "quantized": quantized_rows(study),
        "by_format": format_matrix(schemes),
        "grid": grid,
        "tasks": tasks,
        "seeds": study.run.get("seeds") or [],
        "hardware": sorted({hardware_line(e) for e in envs}),
        "fingerprints": fingerprint_lines(study),
        "versions": (envs[-1].get("packages") if envs else {}),
        "invocations": len(envs),
        "git": envs[-1].get("git_sha") if envs else None,
    }


def fingerprint_lines(study: Study) -> list[str]:
    """One line per machine fingerprint the run's invocations recorded, with the median machine speed
    index of the rounds timed there (two machines whose names read the same differ here)."""
    fps = {
        inv["fingerprint"]["key"]: inv["fingerprint"]
        for inv in study.run.get("invocations") or []
        if inv.get("fingerprint")
    }
    if not fps:
        return []
    speed = analysis.speed_table(study)
    out = []
    for key, fp in fps.items():
        line = describe_fingerprint(fp)
        rounds = speed[speed["fingerprint"] == key] if "fingerprint" in speed else speed.iloc[0:0]
        if {"index_matmul_gflops", "index_memory_gb_s"} <= set(rounds.columns) and len(rounds):
            mm, mem = rounds["index_matmul_gflops"].median(), rounds["index_memory_gb_s"].median()
            n = len(rounds)
            line += f"; machine speed index (median of {n} rounds): matmul {mm:.3g} GFLOP/s, memory {mem:.3g} GB/s"
        out.append(line)
    return out


def quantized_rows(study: Study) -> list[dict[str, Any]]:
    """Per quantized (model, scheme) load: its weight bytes and the share of the parameters it holds
    quantized. The rest (embeddings, norms, ``lm_head``) keeps the "other layers" dtype, so a model
    with a large embedding can take more memory in a 4-bit scheme than in bf16."""
    models = {m: i for i, m in enumerate(study.models())}
    schemes = {s: i for i, s in enumerate(study.schemes()["scheme"])}
    rows = []
    for (model, scheme), load in study.loads().items():
        quant = (load.get("scheme_fields") or {}).get("quant")
        share = quantized_share(load)
        if quant not in (None, "none") and share is not None:
            rows.append({"model": model, "scheme": scheme, "weights": load.get("weight_bytes"), "share": share})
    return sorted(rows, key=lambda r: (models.get(r["model"], len(models)), schemes.get(r["scheme"], len(schemes))))


def quantized_share(load: dict[str, Any]) -> float | None:
    """The share of a load's parameters held quantized: recorded at load, or (records before that)
    read from bitsandbytes' storage dtypes (int8 weights one per byte, 4-bit ones two per uint8 byte)."""
    quantized, rest = load.get("quantized_parameters"), load.get("unquantized_parameters")
    if quantized is None or rest is None:
        dtypes = dict(load.get("dtypes") or {})
        quant = (load.get("scheme_fields") or {}).get("quant")
        storage = {"int8": ("int8", 1), "nf4": ("uint8", 2), "fp4": ("uint8", 2)}.get(quant)
        if storage is None or storage[0] not in dtypes:
            return None
        quantized = dtypes.pop(storage[0]) * storage[1]
        rest = sum(dtypes.values())
    total = quantized + rest
    return quantized / total if total else None


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
        commit = f" (commit {source['commit'][:12]})" if source.get("commit") else ""
        return f"hub {source['hub']}" + (f" @ {source['revision']}" if source.get("revision") else "") + commit
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


def format_matrix(schemes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Schemes laid out by stored format (rows, fewest bits first) and backend (columns), so that a
    difference of format (down a column) reads apart from one of backend (along a row); None when the
    schemes come from one quantization library (and unquantized ones)."""
    backends = list(dict.fromkeys(s.get("backend") or "bitsandbytes" for s in schemes if s.get("quant") != "none"))
    if len(backends) < 2:
        return None
    rows: dict[str, dict[str, Any]] = {}
    for s in sorted(schemes, key=lambda s: (s.get("bits") or 99, s.get("format") or "")):
        if s.get("quant") == "none":
            continue
        row = rows.setdefault(
            s.get("format") or s["quant"], {"format": s.get("format") or s["quant"], "bits": s.get("bits"), "by": {}}
        )
        row["by"].setdefault(s.get("backend") or "bitsandbytes", []).append(s["scheme"])
    return {"backends": backends, "rows": list(rows.values())}
