"""lm-eval's results -> the parts of a record: aggregate metrics, per-prompt metrics, generations.

Also the small metric shapes the handlers store (:func:`mean_sem`, :func:`point_metric`)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any


def metric_key(metric: str, filt: str, filters: set[str]) -> str:
    """Our name of an lm-eval metric under a filter: the bare metric name when the filter is lm-eval's
    default (``none``) or the only one the task reports the metric under; else lm-eval's own key
    ``<metric>,<filter>`` — so the filters of a multi-filter task (gsm8k's strict-match and
    flexible-extract) stay distinct metrics everywhere downstream."""
    return metric if filt == "none" or filters == {filt} else f"{metric},{filt}"


def split_results(results: dict[str, Any], name: str) -> dict[str, Any]:
    """One cell's share of a ``simple_evaluate`` result: lm-eval's dict restricted to the variant,
    aggregate metrics, per-prompt metrics and the generated texts (metric names: :func:`metric_key`)."""
    res = results["results"][name]
    samples = results.get("samples", {}).get(name, [])
    n = results.get("n-samples", {}).get(name, {}).get("effective")
    filters: dict[str, set[str]] = defaultdict(set)  # metric -> the filters it is reported under
    for key in res:
        if "," in key and "_stderr" not in key:
            metric, filt = key.split(",", 1)
            filters[metric].add(filt)
    for s in samples:
        for m in s.get("metrics") or []:
            filters[m].add(s.get("filter", "none"))
    metrics: dict[str, dict[str, float | None]] = {}
    for key, value in res.items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filt = key.split(",", 1)
        stderr = res.get(f"{metric}_stderr,{filt}")
        metrics[metric_key(metric, filt, filters[metric])] = {
            "value": finite(value),
            "stderr": finite(stderr) if isinstance(stderr, (int, float)) else None,
            "n": n,
            "lo": None,
            "hi": None,
        }
    by_doc: dict[Any, dict[str, Any]] = {}  # one row per prompt, every filter's metrics in it
    generations: list[dict[str, Any]] = []
    texts_of: set[Any] = set()
    for s in samples:
        filt = s.get("filter", "none")
        row = by_doc.setdefault(s["doc_id"], {"doc_id": s["doc_id"]})
        row.update({metric_key(m, filt, filters[m]): finite(s.get(m)) for m in s.get("metrics") or []})
        if s["doc_id"] in texts_of:
            continue  # the same responses again under another filter: the texts once
        texts_of.add(s["doc_id"])
        generations.extend(_generations_of(s))
    keep = {k: {name: v[name]} for k, v in results.items() if isinstance(v, dict) and name in v}
    keep["config"] = results.get("config")
    return {"metrics": metrics, "sample_metrics": list(by_doc.values()), "generations": generations, "lm_eval": keep}


def _generations_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The generated texts of one logged lm-eval sample (its raw responses, before any filter)."""
    context = _context_of(sample)
    resps = sample.get("resps") or []
    flat = (
        resps[0]
        if resps and isinstance(resps[0], list) and len(resps) == 1
        else [r[0] if isinstance(r, list) else r for r in resps]
    )
    return [
        {
            "doc_id": sample["doc_id"],
            "sample": k,
            "prompt": context,
            "text": str(text),
            "new_tokens": getattr(text, "new_tokens", None),
            "finish": getattr(text, "finish", None),
        }
        for k, text in enumerate(flat)
        if isinstance(text, str)
    ]


def _context_of(sample: dict[str, Any]) -> str | None:
    """The prompt of a logged sample: the first argument of its first request."""
    args = sample.get("arguments")
    if isinstance(args, dict) and args:
        first = next(iter(args.values()))
        if isinstance(first, dict):
            return first.get("arg_0")
    if isinstance(args, (list, tuple)) and args:
        first = args[0]
        return first[0] if isinstance(first, (list, tuple)) else first
    return None


def point_metric(v: float) -> dict[str, Any]:
    """A single recorded figure as a store metric (round, position, contended flag)."""
    return {"value": float(v), "lo": None, "hi": None, "n": 1, "stderr": None}


def finite(v: Any) -> float | None:
    """``v`` as a float, or None where it is not a finite number (JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_sem(values: list[Any]) -> dict[str, float | None]:
    """Mean and standard error of the mean of the non-missing values, as a store metric."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"value": None, "stderr": None, "n": 0, "lo": None, "hi": None}
    sem = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return {"value": statistics.fmean(vals), "stderr": sem, "n": len(vals), "lo": None, "hi": None}
