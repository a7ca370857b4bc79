"""Render a run's tables into a static, self-contained, paper-style HTML page.

Everything comes from the tables (:mod:`harness_ext.analysis`); nothing in the templates is a
number. Figures are SVG embedded in the page (matplotlib, fonts as paths), so the page is one file
that works offline; rendering is deterministic, so the same tables give the same bytes.
Autoescaping is on: model output, prompts and spec strings are text, never markup.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from harness_ext import analysis
from harness_ext.analysis import Estimate, Study
from harness_ext.errors import StoreError
from harness_ext.store import atomic_write
from harness_ext.store.tables import DERIVED_KEYS, TABLE_FILES  # a report keeps these input tables in data/

log = logging.getLogger(__name__)

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
FIGURE_METRICS = ["p_gold", "tv", "exact_match", "distinct_2", "rouge_l_ref", "nll_ref"]
PALETTE = ["#1b6ca8", "#d1495b", "#2e8b57", "#edae49", "#6c4f9c", "#00798c", "#8d6a4f", "#555555"]


def render(
    run_dir: str | Path, output_dir: str | Path | None = None, warn: Callable[[str], None] | None = None
) -> Path:
    """Render ``index.html`` (plus CSV tables and a copy of the input tables in ``data/``) and
    return its path. ``run_dir`` is a run directory or a folder holding its tables.

    Reading only: nothing in ``run_dir`` is written (it may be read-only, or another process's).
    A run directory's tables are re-derived from its records in memory; ``warn`` receives one line
    per record that cannot be read (default: the log). Every output file is written atomically,
    ``index.html`` last; a failure is one :class:`StoreError` line and leaves earlier files whole.
    """
    run_dir = Path(run_dir)
    warn = warn or log.warning
    files = input_tables(run_dir, warn)
    study = _study_from(files, run_dir)
    opts = study.run.get("report") or {}
    out = Path(output_dir or opts.get("output_dir") or default_report_dir(run_dir, study.run))
    page, tables = _build_page(study, opts, run_dir)
    outputs = {fname: frame.to_csv(index=False).encode() for fname, frame in tables.items()}
    src = run_dir / "tables" if (run_dir / "tables").is_dir() else run_dir
    if _resolved(out / "data") != _resolved(src):
        outputs |= {f"data/{fname}": data for fname, data in files.items()}
    outputs["index.html"] = page.encode()  # last: a complete page means complete inputs beside it
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the report folder {out}: {e.strerror or e}") from None
    for fname, data in outputs.items():
        atomic_write(out / fname, data)
    return out / "index.html"


def default_report_dir(run_dir: Path, run: dict[str, Any]) -> Path:
    """``RUN/report`` for a run directory; ``runs/<study>/report`` for a folder of tables alone
    (e.g. a committed report's ``data/``, which must not be written over)."""
    if (run_dir / "records").is_dir() or (run_dir / "tables").is_dir():
        return run_dir / "report"
    name = (run.get("study") or {}).get("name") or run_dir.name
    return Path("runs") / str(name) / "report"


def input_tables(run_dir: Path, warn: Callable[[str], None]) -> dict[str, bytes]:
    """The report's input tables as file contents, without writing anything.

    A run directory with records: derived from them (the contract), keeping the spec-derived facts
    of its ``tables/run.json`` (expected cells, references, report options); unreadable records are
    left out and each is passed to ``warn``. A folder of tables alone (a report's ``data/``), or a
    run directory whose records are gone: its tables as they are."""
    from harness_ext.store import RunStore

    tables = run_dir / "tables" if (run_dir / "tables").is_dir() else run_dir
    run = read_run_json(tables)
    records_dir = run_dir / "records"
    if not (records_dir.is_dir() and any(records_dir.glob("*.json"))):
        return {f: _read_bytes(tables / f) for f in TABLE_FILES if (tables / f).is_file()}
    store = RunStore(run_dir)
    records = store.load_records()
    for problem in store.problems:
        warn(f"{run_dir / 'records'}: {problem}")
    expected = {c["cell_id"] for c in run.get("expected_cells") or [] if isinstance(c, dict)}
    kept = [r for r in records.values() if not expected or r.cell_id in expected]
    return derived_tables(store, kept, run)


def derived_tables(store: Any, records: list[Any], run: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of ``tables/*`` as :meth:`RunStore.export_tables` would write them from ``records``."""
    from harness_ext.store import tables

    extra = {k: v for k, v in run.items() if k not in DERIVED_KEYS}
    return tables.table_files(records, run.get("spec_text"), store.invocations(), store.problems, extra)


def read_run_json(tables: Path) -> dict[str, Any]:
    """``tables/run.json`` as a mapping, or one :class:`StoreError` line saying what is wrong with it."""
    path = tables / "run.json"
    if not path.is_file():
        raise StoreError(f"{path} is missing: the run never finished writing its tables; run the study again")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path} cannot be read ({type(e).__name__}: {e}); run the study again") from None
    if not isinstance(run, dict):
        raise StoreError(f"{path} is not a JSON object; run the study again")
    return run


def _study_from(files: dict[str, bytes], run_dir: Path) -> Study:
    """Load the tables from their bytes (through a private temporary folder, as the run wrote them)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="harness-ext-report-") as tmp:
        for fname, data in files.items():
            Path(tmp, fname).write_bytes(data)
        try:
            return Study.load(tmp)
        except StoreError:
            raise StoreError(f"{run_dir} holds no run tables (tables/cells.parquet); run the study first") from None
        except (OSError, ValueError, ImportError) as e:  # a truncated parquet file: pyarrow's errors are ValueErrors
            raise StoreError(f"the tables of {run_dir} cannot be read ({type(e).__name__}: {e})") from None


def _build_page(study: Study, opts: dict[str, Any], run_dir: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    try:
        return build(study, opts)
    except jinja2.UndefinedError as e:  # run.json lacks what the page needs
        raise StoreError(f"{run_dir}: tables/run.json lacks what the report needs ({e}); run the study again") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None


def _resolved(p: Path) -> Path:
    return p.resolve() if p.exists() else p.absolute()


# -- page ----------------------------------------------------------------------------------------
def build(study: Study, opts: dict[str, Any]) -> tuple[str, dict[str, pd.DataFrame]]:
    """The page's HTML and its CSV tables."""
    margin = float(opts.get("equivalence_margin", 0.05))
    speed_margin = float(opts.get("speed_margin", 0.10))
    sensitivity_margin = float(opts.get("sensitivity_margin", 0.25))
    claims = analysis.claims(study, margin, speed_margin, sensitivity_margin)
    quality = analysis.quality_table(study)
    paired = analysis.paired_differences(study)
    sens = analysis.temperature_sensitivity(study)
    speed = analysis.speed_table(study)
    q_primary, q_desc = analysis.primary_quality(study)
    ctx = {
        "title": opts.get("title")
        or f"Quantization and sampling: {(study.run.get('study') or {}).get('name', 'study')}",
        "study": study.run.get("study") or {},
        "abstract": abstract(study, claims, q_desc),
        "setup": setup(study),
        "claims": claims,
        "margin": margin,
        "speed_margin": speed_margin,
        "quality_desc": q_desc,
        "slice": analysis.describe_slice(analysis.per_prompt(study, "p_gold", kind="probe"))
        or analysis.describe_slice(analysis.per_prompt(study, "exact_match")),
        "speed_rows": speed_rows(study, speed),
        "speed_summary": (summ := analysis.speed_summary(study, speed)).to_dict("records") if not speed.empty else [],
        "min_rounds": analysis.MIN_ROUNDS,
        "sensitivity_margin": sensitivity_margin,
        "has_floor": bool(not speed.empty and "floor_ms_per_token" in speed.columns),
        "quality_rows": quality_rows(study, quality),
        "quality_metrics": [m for m in QUALITY_METRICS if not quality.empty and m[0] in set(quality["metric"])],
        "paired_rows": (pr := paired_rows(study, paired)),
        "paired_temps": paired_temperatures(pr),
        "sens_rows": sens.to_dict("records") if not sens.empty else [],
        "figures": figures(study, quality),
        "examples": examples(study, int(opts.get("examples", 3))),
        "failed": failed_rows(study),
        "missing": missing_cells(study),
        "spec_text": study.run.get("spec_text") or "",
        "environments": study.run.get("invocations") or [],
        "notes": study.run.get("model_notes") or {},
        "problems": study.run.get("problems") or [],
        "primary_n": int(q_primary["doc_id"].nunique()) if not q_primary.empty else 0,
    }
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["est"] = lambda e, fmt=".3f": e.text(fmt) if isinstance(e, Estimate) else "n/a"
    env.filters["mb"] = lambda b: (
        "n/a" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 2**20:,.1f}"
    )
    page = visible(env.get_template("report.html.j2").render(**ctx, css=_template("report.css")))
    tables = {
        "quality.csv": quality,
        "paired_differences.csv": paired,
        "sensitivity.csv": sens,
        "speed.csv": speed,
        "speed_rounds_summary.csv": summ if not speed.empty else pd.DataFrame(),
        "claims.csv": pd.DataFrame(
            [
                {
                    "claim": c.key,
                    "verdict": c.verdict,
                    "scope": c.scope,
                    "per_model": json.dumps(c.per_model),
                    "reason": c.reason,
                    "rule": c.rule,
                    "evidence": json.dumps(c.evidence),
                }
                for c in claims
            ]
        ),
    }
    return page, tables


_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    # bidirectional controls and invisible characters: text that displays as something else
    # (``user\u202egnp.exe`` shows as ``userexe.png``) or hides characters
    "\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def visible(text: str) -> str:
    """Control characters (which model output can contain) are not allowed in HTML, and bidi controls
    and invisible characters would make text read as other text: show each as ``\\xNN`` or ``\\uNNNN``
    text instead. Our own markup contains none, so the whole page can pass through."""
    return _INVISIBLE.sub(_escape_char, text)


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _template(name: str) -> str:
    return resources.files("harness_ext.templates").joinpath(name).read_text(encoding="utf-8")


def _num(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:{fmt}}"


def abstract(study: Study, claims: list[analysis.Claim], q_desc: str) -> list[str]:
    """Sentences generated from what was measured and decided."""
    models = study.models()
    schemes = study.schemes()["scheme"].tolist()
    env = (study.run.get("invocations") or [{}])[-1]
    from harness_ext.environment import hardware_line

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
    from harness_ext.environment import hardware_line

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
    from harness_ext.catalog import gguf_caveat

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
        sel = _slice_rows(sel)
        for _, r in sel.iterrows():
            key = (r["model"], r["scheme"], r["temperature"])
            rows.setdefault(key, {"model": key[0], "scheme": key[1], "temperature": key[2]})[metric] = Estimate(
                r["mean"], r["lo"], r["hi"], int(r["n"])
            )
    order = {s: i for i, s in enumerate(study.schemes()["scheme"])}
    return sorted(rows.values(), key=lambda r: (r["model"], order.get(r["scheme"], 99), r["temperature"]))


def _slice_rows(summary: pd.DataFrame) -> pd.DataFrame:
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


# -- figures -------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": "harness_ext",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )
    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    _plt().close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG lives inside HTML
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def _line_with_band(ax: Any, g: pd.DataFrame, color: str | None, label: str) -> None:
    """A scheme's mean against temperature, with its 95% interval as a band."""
    ax.plot(g["temperature"], g["mean"], marker="o", ms=3, color=color, label=label)
    ax.fill_between(g["temperature"], g["lo"], g["hi"], color=color, alpha=0.15, lw=0)


def _figure(
    fig: Any, axes: Any, fig_id: str, caption: str, legend_y: float, ncol_max: int = 99, fontsize: float | None = None
) -> dict[str, str]:
    """One legend above the panels (from the first), then the figure as inline SVG with its caption."""
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="upper center",
        ncol=min(len(names), ncol_max),
        frameon=False,
        bbox_to_anchor=(0.5, legend_y),
        fontsize=fontsize,
    )
    fig.tight_layout()
    return {"id": fig_id, "svg": _svg(fig), "caption": caption}


def _colors(study: Study) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(study.schemes()["scheme"])}


def figures(study: Study, quality: pd.DataFrame) -> list[dict[str, str]]:
    figs = []
    if not quality.empty:
        for model in study.models():
            f = fig_vs_temperature(study, quality, model)
            if f:
                figs.append(f)
            f = fig_top_k(study, quality, model)
            if f:
                figs.append(f)
            f = fig_max_new_tokens(study, quality, model)
            if f:
                figs.append(f)
    f = fig_speed(study)
    if f:
        figs.append(f)
    return figs


def fig_vs_temperature(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    plt = _plt()
    labels = {m: (lab, kind) for m, kind, lab, *_ in QUALITY_METRICS}
    present = [m for m in FIGURE_METRICS if m in set(quality["metric"])]
    if not present:
        return None
    colors = _colors(study)
    ncol = min(3, len(present))
    nrow = math.ceil(len(present) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, metric in zip(axes.flat, present, strict=False):
        lab, kind = labels[metric]
        sel = quality[(quality["metric"] == metric) & (quality["model"] == model)]
        sel = (
            sel[sel["task"].str.startswith("probe:")] if kind == "probe" else sel[~sel["task"].str.startswith("probe:")]
        )
        sel = _slice_rows(sel)
        for scheme, g in sel.groupby("scheme", sort=False):
            g = g.sort_values("temperature")
            _line_with_band(ax, g, colors.get(scheme), scheme)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("temperature")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    return _figure(
        fig,
        axes,
        f"fig-temp-{model}",
        f"{model}: quality and divergence from the reference against temperature, one line per scheme; "
        "bands are 95% bootstrap intervals over prompts (least-truncated setting of the grid).",
        legend_y=1.04,
    )


def fig_top_k(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    sel = quality[
        (quality["metric"] == "p_gold") & (quality["model"] == model) & quality["task"].str.startswith("probe:")
    ]
    if sel.empty:
        sel = quality[(quality["metric"] == "exact_match") & (quality["model"] == model)]
    if sel.empty or sel["top_k"].nunique() < 2:
        return None
    sel = sel[(sel["top_p"] == sel["top_p"].max())]
    rp = sel["repetition_penalty"]
    sel = sel[rp == (1.0 if (rp == 1.0).any() else rp.min())]
    plt = _plt()
    colors = _colors(study)
    ks = sorted(sel["top_k"].unique(), key=lambda k: math.inf if k == -1 else k)
    fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 2.6), squeeze=False, sharey=True)
    for ax, k in zip(axes.flat, ks, strict=True):
        for scheme, g in sel[sel["top_k"] == k].groupby("scheme", sort=False):
            g = g.groupby("temperature", as_index=False)[["mean", "lo", "hi"]].mean().sort_values("temperature")
            _line_with_band(ax, g, colors.get(scheme), scheme)
        ax.set_title(f"top-k {'off' if k == -1 else int(k)}", fontsize=9)
        ax.set_xlabel("temperature")
    axes.flat[0].set_ylabel("P(gold next word)" if "p_gold" in set(sel["metric"]) else "exact match")
    return _figure(
        fig,
        axes,
        f"fig-topk-{model}",
        f"{model}: effect of top-k on next-word accuracy across temperatures (95% CIs over prompts).",
        legend_y=1.08,
    )


def fig_max_new_tokens(study: Study, quality: pd.DataFrame, model: str) -> dict[str, str] | None:
    sel = quality[(quality["model"] == model) & quality["metric"].isin(["hit_cap", "distinct_2", "nll_ref"])]
    if sel.empty or sel["max_new_tokens"].nunique() < 2:
        return None
    k = sel["top_k"]
    sel = sel[(k == -1) if (k == -1).any() else (k == k.max())]
    plt = _plt()
    colors = _colors(study)
    metrics = [m for m in ["hit_cap", "distinct_2", "nll_ref"] if m in set(sel["metric"])]
    caps = sorted(sel["max_new_tokens"].unique())
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.6), squeeze=False)
    labels = {m: lab for m, _, lab, *_ in QUALITY_METRICS}
    for ax, metric in zip(axes.flat, metrics, strict=True):
        for scheme, g in sel[sel["metric"] == metric].groupby("scheme", sort=False):
            for i, cap in enumerate(caps):
                h = g[g["max_new_tokens"] == cap].sort_values("temperature")
                ax.plot(
                    h["temperature"],
                    h["mean"],
                    ls=styles[i % 4],
                    marker="o",
                    ms=2.5,
                    color=colors.get(scheme),
                    label=f"{scheme}, {int(cap)} tokens",
                )
        ax.set_title(labels[metric], fontsize=9)
        ax.set_xlabel("temperature")
    return _figure(
        fig,
        axes,
        f"fig-cap-{model}",
        f"{model}: effect of the max-new-tokens cap (line style) on open-ended continuation.",
        legend_y=1.12,
        ncol_max=5,
        fontsize=7,
    )


def fig_speed(study: Study) -> dict[str, str] | None:
    speed = analysis.speed_table(study)
    if speed.empty:
        return None
    plt = _plt()
    colors = _colors(study)
    models = sorted(speed["model"].unique(), key=lambda m: study.parameters(m) or 0)
    batches = sorted(speed["batch_size"].unique())
    schemes = [s for s in study.schemes()["scheme"] if s in set(speed["scheme"])]
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(3.4 * (len(batches) + 1), 2.8), squeeze=False)
    width = 0.8 / max(len(schemes), 1)
    x = np.arange(len(models))
    modes = sorted(speed["mode"].unique())
    markers = dict(zip(modes, ["o", "^", "s", "D"], strict=False))
    for ax, bs in zip(axes.flat, batches, strict=False):
        labelled: set[str] = set()
        for i, s in enumerate(schemes):
            for j, m in enumerate(models):
                for mode in modes:
                    r = speed[(speed["model"] == m) & (speed["scheme"] == s) & (speed["batch_size"] == bs)]
                    r = r[r["mode"] == mode]
                    if r.empty:
                        continue
                    xs = np.full(len(r), x[j] + i * width) + np.linspace(-0.25, 0.25, len(r)) * width
                    ok = ~r["contended"].to_numpy()
                    y = r["decode_ms_per_token"].astype(float).to_numpy()
                    ax.scatter(xs[ok], y[ok], s=12, color=colors.get(s), marker=markers[mode], zorder=3,
                               label=None if s in labelled else s)
                    labelled.add(s)
                    ax.scatter(xs[~ok], y[~ok], s=14, facecolors="none", edgecolors=colors.get(s), marker=markers[mode])
        ax.set_xticks(x + width * (len(schemes) - 1) / 2, models)
        ax.set_title(f"decode ms/token, batch {int(bs)}", fontsize=9)
    ax = list(axes.flat)[-1]
    bs0 = batches[0]
    for i, s in enumerate(schemes):
        vals = []
        for m in models:
            r = speed[(speed["model"] == m) & (speed["scheme"] == s) & (speed["batch_size"] == bs0)]
            vals.append(float(r["weight_bytes"].iloc[0]) / 2**20 if not r.empty and "weight_bytes" in r else math.nan)
        ax.bar(x + i * width, vals, width, color=colors.get(s), label=s)
    ax.set_xticks(x + width * (len(schemes) - 1) / 2, models)
    ax.set_title("weight memory, MiB", fontsize=9)
    return _figure(
        fig,
        axes,
        "fig-speed",
        "Decode time per token: one dot per round (the median of that round's timed repeats; a hollow dot: the "
        "round ran contended and no verdict uses it; marker shape: mode), and weight memory per scheme, models "
        "ordered by size.",
        legend_y=1.06,
    )
