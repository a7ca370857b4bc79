"""The tidy tables of a run: ONE schema per table, used by the store that writes them and by the
analysis that reads them (:mod:`harness_ext.analysis.study`).

``tables/cells.{csv,parquet}``   one row per cell x metric (probe: per grid point x metric)
``tables/samples.parquet``       one row per cell x prompt x metric
``tables/generations.parquet``   one row per cell x prompt x sample: the generated text
``tables/run.json``              spec text, invocations, loads, problems, and the runner's extras

The schemas give each column's name, place and type. The parquet files are written through the
schema (``pa.Table.from_pandas(frame, schema=...)``): every column has its schema type whatever its
values. Tables written before that was enforced may hold a column without any value as ``null`` and
an integer column with missing values as ``double`` (pandas' NaN), and lack the columns added since
(:data:`ADDED_COLUMNS`); :func:`mismatches` allows exactly that, and the analysis reads them all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from harness_ext.store.record import RECORD_VERSION, Record, dumps

#: The sampling point's columns, in every table: what a grid point is made of.
POINT_COLUMNS = ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty")
#: The probe's grid point: the sampling point without max_new_tokens (the probe reads one token).
PROBE_POINT_COLUMNS = ("temperature", "top_k", "top_p", "repetition_penalty")
#: A scheme's description, as the cells table carries it.
SCHEME_COLUMNS = ("scheme", "quant", "bits", "double_quant", "dtype", "compute_dtype")
#: An aggregate metric's columns in the cells table.
VALUE_COLUMNS = ("metric", "value", "stderr", "lo", "hi", "n")

_POINT_FIELDS = [
    pa.field("temperature", pa.float64()),
    pa.field("top_k", pa.int64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_new_tokens", pa.int64()),
    pa.field("repetition_penalty", pa.float64()),
]

#: A speed round's facts (the machine's fingerprint key, the GPUs that timed it, the round, its
#: position in the round's order, whether it ran contended and why); empty for other cells.
_ROUND_FIELDS = [
    pa.field("fingerprint", pa.large_string()),
    pa.field("gpu", pa.large_string()),
    pa.field("round", pa.int64()),
    pa.field("round_position", pa.int64()),
    pa.field("contended", pa.bool_()),
    pa.field("contended_why", pa.large_string()),
]

CELLS = pa.schema(
    [
        pa.field("cell_id", pa.large_string()),
        pa.field("kind", pa.large_string()),
        pa.field("status", pa.large_string()),
        pa.field("model", pa.large_string()),
        pa.field("scheme", pa.large_string()),
        pa.field("quant", pa.large_string()),
        pa.field("bits", pa.int64()),
        pa.field("double_quant", pa.bool_()),
        pa.field("dtype", pa.large_string()),
        pa.field("compute_dtype", pa.large_string()),
        pa.field("device", pa.large_string()),
        pa.field("task", pa.large_string()),
        *_POINT_FIELDS,
        pa.field("seed", pa.int64()),
        pa.field("batch_size", pa.int64()),
        pa.field("mode", pa.large_string()),
        pa.field("grid_batched", pa.bool_()),
        pa.field("invocation", pa.large_string()),
        *_ROUND_FIELDS,
        pa.field("error", pa.large_string()),
        pa.field("metric", pa.large_string()),
        pa.field("value", pa.float64()),
        pa.field("stderr", pa.float64()),
        pa.field("lo", pa.float64()),
        pa.field("hi", pa.float64()),
        pa.field("n", pa.float64()),
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("cell_id", pa.large_string()),
        pa.field("kind", pa.large_string()),
        pa.field("model", pa.large_string()),
        pa.field("scheme", pa.large_string()),
        pa.field("task", pa.large_string()),
        *_POINT_FIELDS,
        pa.field("seed", pa.int64()),
        pa.field("doc_id", pa.int64()),
        pa.field("metric", pa.large_string()),
        pa.field("value", pa.float64()),
    ]
)

GENERATIONS = pa.schema(
    [
        pa.field("cell_id", pa.large_string()),
        pa.field("model", pa.large_string()),
        pa.field("scheme", pa.large_string()),
        pa.field("task", pa.large_string()),
        *_POINT_FIELDS,
        pa.field("seed", pa.int64()),
        pa.field("doc_id", pa.int64()),
        pa.field("sample", pa.int64()),
        pa.field("prompt", pa.large_string()),
        pa.field("text", pa.large_string()),
        pa.field("new_tokens", pa.int64()),
        pa.field("finish", pa.large_string()),
    ]
)

#: Facts about a speed round: typed columns of the cells table, filled for speed cells only.
ROUND_COLUMNS = tuple(f.name for f in _ROUND_FIELDS)
#: Columns added to a table after tables were first committed: older tables lack them.
ADDED_COLUMNS = {"cells": ROUND_COLUMNS}
#: Speed facts that records made before :data:`ROUND_COLUMNS` existed hold as metrics: not metrics.
FACT_METRICS = ("round", "round_position", "contended")

#: Each table by name (the file's stem).
SCHEMAS: dict[str, pa.Schema] = {"cells": CELLS, "samples": SAMPLES, "generations": GENERATIONS}
#: The files of ``tables/``, in the order they are written.
TABLE_FILES = ("cells.csv", "cells.parquet", "samples.parquet", "generations.parquet", "run.json")
#: The keys of ``run.json`` that come from the run directory itself (the rest come from the spec).
DERIVED_KEYS = ("record_version", "spec_text", "invocations", "loads", "problems")
_GENERATION_FIELDS = ("doc_id", "sample", "prompt", "text", "new_tokens", "finish")


# -- rows ----------------------------------------------------------------------------------------
def _describe(rec: Record) -> dict[str, Any]:
    """The columns of the cells table that describe ``rec``'s cell (the others hold a metric)."""
    d = rec.definition
    scheme = d.get("scheme", {})
    point = d.get("point") or {}
    params = d.get("params", {})
    bits = {"nf4": 4, "fp4": 4, "int8": 8}.get(scheme.get("quant"), 32 if scheme.get("dtype") == "float32" else 16)
    return {
        "cell_id": rec.cell_id,
        "kind": rec.kind,
        "status": rec.status,
        "model": d.get("model", {}).get("name"),
        "scheme": scheme.get("name"),
        "quant": scheme.get("quant"),
        "bits": bits,
        "double_quant": scheme.get("double_quant"),
        "dtype": scheme.get("dtype"),
        "compute_dtype": scheme.get("compute_dtype"),
        "device": d.get("device"),
        "task": d.get("task") if rec.kind != "probe" else f"probe:{d.get('task')}",
        **{k: point.get(k) for k in POINT_COLUMNS},
        "seed": d.get("seed"),
        "batch_size": params.get("batch_size"),
        "mode": params.get("mode"),
        "grid_batched": rec.measurements.get("grid_batched"),
        "invocation": rec.invocation,
        **(_round_facts(rec) if rec.kind == "speed" else dict.fromkeys(ROUND_COLUMNS)),
        "error": rec.error,
    }


def _round_facts(rec: Record) -> dict[str, Any]:
    """A speed record's round, position, contended flag (with why), machine fingerprint and GPUs,
    from its typed fields, or from the metrics and ``machine`` of a record made before them."""
    from harness_ext.store.parts import contended_of

    m = rec.measurements

    def fact(name: str) -> Any:
        if m.get(name) is not None:
            return m[name]
        v = rec.metrics.get(name)
        return v.get("value") if v is not None else None

    contended, why = contended_of(m, rec.metrics)
    rnd, pos = fact("round"), fact("round_position")
    return {
        "fingerprint": m.get("fingerprint"),
        "gpu": ",".join(m["gpus"]) if m.get("gpus") else None,
        "round": int(rnd) if rnd is not None else None,
        "round_position": int(pos) if pos is not None else None,
        "contended": contended,
        "contended_why": "; ".join(why) if why else None,
    }


def _value(v: Any) -> dict[str, Any]:
    return {k: v.get(k) for k in VALUE_COLUMNS[1:]}


def cell_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per cell x metric (probe: per grid point x metric); failed cells get one row."""
    rows = []
    for rec in records:
        base = _describe(rec)
        if rec.status != "ok":
            rows.append({**base, **dict.fromkeys(VALUE_COLUMNS)})
            continue
        if rec.kind == "probe":
            for pt in rec.points:
                b = {**base, **{k: pt["point"][k] for k in PROBE_POINT_COLUMNS}}
                for metric, v in pt["metrics"].items():
                    rows.append({**b, "metric": metric, **_value(v)})
            continue
        for metric, v in rec.metrics.items():
            if rec.kind == "speed" and metric in FACT_METRICS:
                continue  # a fact about the round: its typed column holds it
            rows.append({**base, "metric": metric, **_value(v)})
    return rows


def sample_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per cell x prompt x metric, for bootstrap confidence intervals and paired differences."""
    rows = []
    keys = SAMPLES.names[: SAMPLES.names.index("doc_id")]
    for rec in records:
        if rec.status != "ok":
            continue
        base = {k: v for k, v in _describe(rec).items() if k in keys}
        for s in rec.sample_metrics:
            b = base
            if "point" in s:
                b = {**base, **{k: s["point"][k] for k in PROBE_POINT_COLUMNS}}
            for metric, value in s.items():
                if metric in ("doc_id", "point"):
                    continue
                rows.append({**b, "doc_id": s["doc_id"], "metric": metric, "value": value})
    return rows


def generation_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per eval cell x prompt x sample: the generated text and how it ended."""
    rows = []
    for rec in records:
        if rec.status != "ok" or rec.kind != "eval":
            continue
        base = {k: v for k, v in _describe(rec).items() if k in GENERATIONS.names}
        for g in rec.generations:
            rows.append({**base, **{k: g.get(k) for k in _GENERATION_FIELDS}})
    return rows


def loads(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One entry per (model, scheme): the load information of its most recent record."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if rec.load:
            key = (rec.definition["model"]["name"], rec.definition["scheme"]["name"])
            fields = {k: v for k, v in rec.load.items() if k != "scheme"}
            seen[key] = {**fields, "model": key[0], "scheme": key[1], "scheme_fields": rec.load.get("scheme")}
    return list(seen.values())


# -- frames and files ----------------------------------------------------------------------------
def frame(rows: list[dict[str, Any]], schema: pa.Schema) -> Any:
    """A table's rows as a DataFrame with the schema's columns, in its order (types as pandas
    infers them from the values: see the module's docstring)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=schema.names)


def frames(records: Iterable[Record]) -> dict[str, Any]:
    """The three tables of ``records`` by name."""
    records = list(records)
    return {
        "cells": frame(cell_rows(records), CELLS),
        "samples": frame(sample_rows(records), SAMPLES),
        "generations": frame(generation_rows(records), GENERATIONS),
    }


def parquet_bytes(table: Any, schema: pa.Schema) -> bytes:
    """A table's parquet file, every column typed by ``schema`` (not by what pandas infers)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False), buf)
    return buf.getvalue()


def table_files(
    records: Iterable[Record],
    spec_text: str | None,
    invocations: list[dict[str, Any]],
    problems: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """The bytes of every file of ``tables/`` from ``records``: the three tables, and ``run.json``
    (record version, spec text, invocations, the loads found in the records, problems, then ``extra``:
    what the runner adds from the spec)."""
    records = list(records)
    t = frames(records)
    run = {
        "record_version": RECORD_VERSION,
        "spec_text": spec_text,
        "invocations": invocations,
        "loads": loads(records),
        "problems": problems,
        **(extra or {}),
    }
    return {
        "cells.csv": t["cells"].to_csv(index=False).encode(),
        "cells.parquet": parquet_bytes(t["cells"], CELLS),
        "samples.parquet": parquet_bytes(t["samples"], SAMPLES),
        "generations.parquet": parquet_bytes(t["generations"], GENERATIONS),
        "run.json": dumps(run).encode(),
    }


def mismatches(actual: pa.Schema, schema: pa.Schema) -> list[str]:
    """How a table's types differ from its schema, beyond what tables written before the schema was
    enforced hold (a column all missing: ``null``; an integer column with missing values: ``double``;
    the :data:`ADDED_COLUMNS` absent). Empty: it conforms."""
    out = []
    later = {c for cols in ADDED_COLUMNS.values() for c in cols}
    names = [n for n in schema.names if n in actual.names or n not in later]
    if actual.names != names:
        out.append(f"columns {actual.names} are not {names}")
    for name in set(actual.names) & set(schema.names):
        got, want = actual.field(name).type, schema.field(name).type
        allowed = {want, pa.null()} | ({pa.float64()} if pa.types.is_integer(want) else set())
        if pa.types.is_large_string(want):
            allowed.add(pa.string())
        if got not in allowed:
            out.append(f"column {name} is {got}, not {want}")
    return out
