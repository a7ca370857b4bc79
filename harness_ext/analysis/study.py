"""The tables of one run as the analysis sees them, and the per-prompt tables built from them.

Reads only the tables of a run directory (``tables/``): no model, no GPU. The unit of resampling is
the prompt: a prompt's value is first averaged over seeds (and over a cell's repeats, which lm-eval
already did), then prompts are resampled with replacement.

Quality claims are decided on next-word accuracy: the probe's exact probability of the gold token
(``p_gold``: no sampling noise, every prompt) where the study ran the probe, else the sampled
``exact_match``. Its scale is absolute accuracy, so one margin reads the same for every model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness_ext.analysis.stats import Estimate
from harness_ext.store.tables import POINT_COLUMNS, SCHEMAS, SCHEME_COLUMNS


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Study:
    """The tables of one run, as the report sees them."""

    cells: pd.DataFrame
    samples: pd.DataFrame
    generations: pd.DataFrame
    run: dict[str, Any]

    def __post_init__(self) -> None:
        self.cells = with_schema_columns(self.cells, "cells")
        self.samples = with_schema_columns(self.samples, "samples")
        self.generations = with_schema_columns(self.generations, "generations")

    @classmethod
    def load(cls, folder: str | Path) -> Study:
        """Load from a run directory (its ``tables/``) or from a folder holding the tables themselves."""
        folder = Path(folder)
        tables = folder / "tables" if (folder / "tables").is_dir() else folder
        from harness_ext.errors import StoreError

        if not (tables / "cells.parquet").is_file() and not (tables / "cells.csv").is_file():
            raise StoreError(f"{folder} holds no run tables (tables/cells.parquet); run the study first")
        cells = _read(tables, "cells")
        samples = _read(tables, "samples")
        gens = _read(tables, "generations")
        run = json.loads((tables / "run.json").read_text(encoding="utf-8")) if (tables / "run.json").is_file() else {}
        return cls(cells, samples, gens, run)

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] != "ok"].drop_duplicates("cell_id")

    def schemes(self, measured: bool = False) -> pd.DataFrame:
        """One row per scheme: name, quant, bits, double_quant, dtype, compute_dtype (in spec order);
        ``measured``: only schemes with at least one completed cell (failed ones cannot decide anything)."""
        table = (self.ok if measured else self.cells)[list(SCHEME_COLUMNS)].drop_duplicates("scheme")
        order = {name: i for i, name in enumerate(self.run.get("schemes") or {})}
        return table.sort_values("scheme", key=lambda c: c.map(lambda n: order.get(n, len(order)))).reset_index(
            drop=True
        )

    def models(self) -> list[str]:
        return list(dict.fromkeys(self.cells["model"].dropna()))

    def loads(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(x["model"], x["scheme"]): x for x in self.run.get("loads", [])}

    def reference(self, model: str) -> str | None:
        """The model's unquantized reference scheme: the one its agreement metrics were computed against."""
        ref = self.run.get("references", {}).get(model)
        if ref:
            return ref
        unq = self.schemes().query("quant == 'none'")["scheme"].tolist()
        return unq[0] if unq else None

    def family(self, model: str) -> str:
        fam = self.run.get("families", {}).get(model)
        if fam:
            return fam
        for (m, _), info in self.loads().items():
            if m == model and info.get("model_type"):
                return str(info["model_type"])
        return "unknown"

    def parameters(self, model: str) -> int | None:
        """Parameter count of the model's unquantized load (bnb packs 4-bit weights, halving numel)."""
        counts = [
            info.get("num_parameters")
            for (m, s), info in self.loads().items()
            if m == model and (info.get("scheme_fields") or {}).get("quant") == "none"
        ]
        counts = [c for c in counts if c]
        return max(counts) if counts else None


def _read(folder: Path, name: str) -> pd.DataFrame:
    if (folder / f"{name}.parquet").is_file():
        return pd.read_parquet(folder / f"{name}.parquet")
    if (folder / f"{name}.csv").is_file():
        return pd.read_csv(folder / f"{name}.csv")
    return pd.DataFrame()


def with_schema_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """``frame`` with every column of its table's schema (:mod:`harness_ext.store.tables`), in the
    schema's order: a column that tables of an older version lack is added without values (so no
    reader has to ask whether a column exists); columns beyond the schema follow."""
    names = SCHEMAS[name].names
    missing = [c for c in names if c not in frame.columns]
    if not missing:
        return frame
    order = [*names, *(c for c in frame.columns if c not in names)]
    return frame.assign(**dict.fromkeys(missing)).reindex(columns=order)


# -- per-prompt tables ---------------------------------------------------------------------------
def per_prompt(study: Study, metric: str, task: str | None = None, kind: str | None = None) -> pd.DataFrame:
    """One value per (model, scheme, task, grid point, prompt): the metric averaged over seeds."""
    s = study.samples
    if s.empty:
        return s
    sel = s[s["metric"] == metric]
    if task is not None:
        sel = sel[sel["task"] == task]
    if kind is not None:
        sel = sel[sel["kind"] == kind]
    keys = ["model", "scheme", "task", *POINT_COLUMNS, "doc_id"]
    sel = sel.assign(**{c: sel[c].fillna(-1) for c in ("top_k", "max_new_tokens")})
    return sel.groupby(keys, dropna=False, as_index=False)["value"].mean()


def point_estimates(pp: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % bootstrap CI over prompts per (model, scheme, task, grid point)."""
    rows = []
    keys = ["model", "scheme", "task", *POINT_COLUMNS]
    for key, g in pp.groupby(keys, dropna=False):
        e = Estimate.of(g["value"].to_numpy())
        rows.append({**dict(zip(keys, key, strict=True)), "mean": e.value, "lo": e.lo, "hi": e.hi, "n": e.n})
    return pd.DataFrame(rows, columns=[*keys, "mean", "lo", "hi", "n"])


def quality_table(study: Study) -> pd.DataFrame:
    """Every sampled metric and probe metric, summarized per cell point with CIs (one frame)."""
    s = study.samples
    if s.empty:
        return pd.DataFrame()
    out = []
    for metric in sorted(s["metric"].dropna().unique()):
        t = point_estimates(per_prompt(study, metric))
        t.insert(3, "metric", metric)
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def paired_differences(study: Study) -> pd.DataFrame:
    """Scheme minus its model's reference on the same prompts (and seeds), per point and metric."""
    rows = []
    s = study.samples
    if s.empty:
        return pd.DataFrame()
    for metric in sorted(s["metric"].dropna().unique()):
        if metric.endswith("_ref") or metric in ("tv", "kl", "top1_agree"):
            continue  # already relative to the reference
        pp = per_prompt(study, metric)
        for model in pp["model"].unique():
            ref = study.reference(model)
            if ref is None:
                continue
            m = pp[pp["model"] == model]
            keys = ["task", *POINT_COLUMNS, "doc_id"]
            base = m[m["scheme"] == ref].set_index(keys)["value"]
            for scheme, g in m[m["scheme"] != ref].groupby("scheme"):
                joined = g.set_index(keys)["value"].to_frame("v").join(base.rename("r"), how="inner")
                for point, h in joined.groupby(level=["task", *POINT_COLUMNS], dropna=False):
                    e = Estimate.of((h["v"] - h["r"]).to_numpy())
                    rows.append(
                        {
                            "model": model,
                            "scheme": scheme,
                            "reference": ref,
                            "metric": metric,
                            **dict(zip(["task", *POINT_COLUMNS], point, strict=True)),
                            "diff": e.value,
                            "lo": e.lo,
                            "hi": e.hi,
                            "n": e.n,
                        }
                    )
    return pd.DataFrame(rows)


def profile_slice(pp: pd.DataFrame) -> pd.DataFrame:
    """The least-truncated setting of the grid (largest top-k or none, largest top-p, penalty 1 or
    the smallest, largest max-new-tokens): where temperature profiles are read."""
    if pp.empty:
        return pp
    sel = pp
    k = sel["top_k"]
    sel = sel[k == (-1 if (k == -1).any() else k.max())]
    sel = sel[sel["top_p"] == sel["top_p"].max()]
    rp = sel["repetition_penalty"]
    sel = sel[rp == (1.0 if (rp == 1.0).any() else rp.min())]
    return sel[sel["max_new_tokens"] == sel["max_new_tokens"].max()]


def describe_slice(pp: pd.DataFrame) -> str:
    s = profile_slice(pp)
    if s.empty:
        return ""
    k = s["top_k"].iloc[0]
    parts = [
        f"top-k {'off' if k == -1 else int(k)}",
        f"top-p {s['top_p'].iloc[0]:g}",
        f"repetition penalty {s['repetition_penalty'].iloc[0]:g}",
    ]
    if s["max_new_tokens"].iloc[0] != -1:
        parts.append(f"max new tokens {int(s['max_new_tokens'].iloc[0])}")
    return ", ".join(parts)


def next_word_tasks(study: Study) -> list[str]:
    """The study's next-word tasks (ours, or ours on a user's data), in spec order."""
    tasks = study.run.get("tasks") or {}
    named = [t for t, info in tasks.items() if isinstance(info, dict) and info.get("kind") == "quant_nextword"]
    if named or tasks:
        return named
    # tables written before run.json listed the tasks: the task names themselves say it
    found = study.samples["task"].dropna().unique() if not study.samples.empty else []
    return sorted({str(t).removeprefix("probe:") for t in found if "nextword" in str(t)})


def primary_quality(study: Study) -> tuple[pd.DataFrame, str]:
    """Per-prompt next-word accuracy of one task at the profile slice: the probe's p_gold if the
    study probed, else the sampled exact_match of its first next-word task (a task's doc 0 is never
    averaged with another task's). Returns (frame with a ``temperature`` column, description naming
    the task)."""
    probe = per_prompt(study, "p_gold", kind="probe")
    if not probe.empty:
        task = str(probe["task"].iloc[0])
        probe = probe[probe["task"] == task]
        name = task.removeprefix("probe:")
        return (
            profile_slice(probe),
            f"the exact probability of the gold next word on {name} (probe: every prompt, no sampling noise)",
        )
    tasks = next_word_tasks(study)
    em = per_prompt(study, "exact_match")
    em = em[em["task"].isin(tasks)] if not em.empty else em
    if em.empty:
        return pd.DataFrame(), ""
    task = next(t for t in tasks if t in set(em["task"]))
    others = [t for t in tasks if t != task and t in set(em["task"])]
    desc = f"sampled next-word exact match on {task}"
    if others:
        desc += f" (the other next-word task{'s' * (len(others) > 1)} {', '.join(others)} not used for verdicts)"
    return profile_slice(em[em["task"] == task]), desc


def _matrix(pp: pd.DataFrame, model: str, scheme: str) -> pd.DataFrame:
    """doc_id x temperature matrix of one (model, scheme) on one task (empty if the run measured no
    quality); ``pp`` must hold a single task (as :func:`primary_quality` returns)."""
    if pp.empty:
        return pd.DataFrame()
    if "task" in pp.columns and pp["task"].nunique() > 1:
        raise ValueError("a quality matrix is read on one task: select it first")
    m = pp[(pp["model"] == model) & (pp["scheme"] == scheme)]
    return m.pivot_table(index="doc_id", columns="temperature", values="value", aggfunc="mean")


def temperature_sensitivity(study: Study) -> pd.DataFrame:
    """Per (model, scheme, measure): change from the lowest to the highest grid temperature, per
    prompt, with CI — for next-word accuracy (a drop is positive) and for TV distance to the reference."""
    rows = []
    measures = []
    q, _ = primary_quality(study)
    if not q.empty:
        measures.append(("accuracy drop", q, -1.0))
    tv = profile_slice(per_prompt(study, "tv", kind="probe"))
    if not tv.empty:
        measures.append(("TV-to-reference rise", tv[tv["task"] == tv["task"].iloc[0]], 1.0))
    for name, pp, sign in measures:
        for (model, scheme, task), _ in pp.groupby(["model", "scheme", "task"]):
            mat = _matrix(pp, model, scheme)
            if mat.shape[1] < 2:
                continue
            lo_t, hi_t = mat.columns.min(), mat.columns.max()
            e = Estimate.of((sign * (mat[hi_t] - mat[lo_t])).to_numpy())
            rows.append(
                {
                    "model": model,
                    "scheme": scheme,
                    "task": task,
                    "measure": name,
                    "from_T": lo_t,
                    "to_T": hi_t,
                    "change": e.value,
                    "lo": e.lo,
                    "hi": e.hi,
                    "n": e.n,
                }
            )
    return pd.DataFrame(rows)
