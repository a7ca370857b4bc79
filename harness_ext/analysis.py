"""From the tidy tables to findings: means with bootstrap CIs, paired differences against the
reference, temperature sensitivity, speed ratios, and the seed study's claims as verdicts.

Reads only the tables of a run directory (``tables/``): no model, no GPU. The unit of resampling is
the prompt: a prompt's value is first averaged over seeds (and over a cell's repeats, which lm-eval
already did), then prompts are resampled with replacement.

Quality claims are decided on next-word accuracy: the probe's exact probability of the gold token
(``p_gold``: no sampling noise, every prompt) where the study ran the probe, else the sampled
``exact_match``. Its scale is absolute accuracy, so one margin reads the same for every model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Verdict = Literal["supported", "contradicted", "inconclusive"]
POINT_COLUMNS = ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty")
MIN_PROMPTS = 10  # fewer prompts than this: no verdict
BAND = (0.5, 0.8)  # the sharpened claim (3'): the 4-bit models' extra sensitivity sits here
LOW_T_MAX = 1.0  # "low temperatures": 0 < T <= 1


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Study:
    """The tables of one run, as the report sees them."""

    cells: pd.DataFrame
    samples: pd.DataFrame
    generations: pd.DataFrame
    run: dict[str, Any]

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
        cols = ["scheme", "quant", "bits", "double_quant", "dtype", "compute_dtype"]
        table = (self.ok if measured else self.cells)[cols].drop_duplicates("scheme")
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


# -- statistics ----------------------------------------------------------------------------------
def bootstrap_ci(
    values: np.ndarray | list[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its percentile bootstrap interval over the values (prompts)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1 or np.all(v == v[0]):
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


@dataclass(frozen=True)
class Estimate:
    """A mean over prompts with its 95 % bootstrap interval."""

    value: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Estimate:
        v = np.asarray(values, dtype=float)
        mean, lo, hi = bootstrap_ci(v)
        return cls(mean, lo, hi, int(np.isfinite(v).sum()))

    def text(self, fmt: str = ".3f") -> str:
        if not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"

    def above(self, x: float) -> bool:
        return self.lo > x

    def below(self, x: float) -> bool:
        return self.hi < x

    def within(self, m: float) -> bool:
        return -m <= self.lo and self.hi <= m

    def outside(self, m: float) -> bool:
        return self.lo > m or self.hi < -m


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


def summarize(pp: pd.DataFrame) -> pd.DataFrame:
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
        t = summarize(per_prompt(study, metric))
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


def primary_quality(study: Study) -> tuple[pd.DataFrame, str]:
    """Per-prompt next-word accuracy at the profile slice: the probe's p_gold if present, else the
    sampled exact_match. Returns (frame with a ``temperature`` column, description)."""
    probe = per_prompt(study, "p_gold", kind="probe")
    if not probe.empty:
        return profile_slice(probe), "exact probability of the gold next word (probe: every prompt, no sampling noise)"
    em = per_prompt(study, "exact_match")
    if not em.empty:
        return profile_slice(em), "sampled next-word exact match"
    return pd.DataFrame(), ""


def _matrix(pp: pd.DataFrame, model: str, scheme: str) -> pd.DataFrame:
    """doc_id x temperature matrix of one (model, scheme) (empty if the run measured no quality)."""
    if pp.empty:
        return pd.DataFrame()
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
        measures.append(("TV-to-reference rise", tv, 1.0))
    for name, pp, sign in measures:
        for (model, scheme), _ in pp.groupby(["model", "scheme"]):
            mat = _matrix(pp, model, scheme)
            if mat.shape[1] < 2:
                continue
            lo_t, hi_t = mat.columns.min(), mat.columns.max()
            e = Estimate.of((sign * (mat[hi_t] - mat[lo_t])).to_numpy())
            rows.append(
                {
                    "model": model,
                    "scheme": scheme,
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


# -- speed ---------------------------------------------------------------------------------------
def speed_table(study: Study) -> pd.DataFrame:
    """One row per (model, scheme, batch size, mode): the speed cells' figures (median, p10, p90)."""
    sp = study.ok[study.ok["kind"] == "speed"]
    if sp.empty:
        return pd.DataFrame()
    keys = ["model", "scheme", "batch_size"]
    if "mode" in sp.columns:
        keys.append("mode")
    wide = sp.pivot_table(index=keys, columns="metric", values=["value", "lo", "hi"], aggfunc="first")
    wide.columns = [f"{m}" if stat == "value" else f"{m}_{stat}" for stat, m in wide.columns]
    wide = wide.reset_index()
    if "invocation" in sp.columns:
        inv = sp.groupby(keys, as_index=False)["invocation"].first()
        wide = wide.merge(inv, on=keys, how="left")
    return wide


def _one_invocation(rows: dict[str, pd.Series]) -> bool:
    """Timings are compared only within one invocation: eager timings move between machines and
    processes, so a comparison across invocations could reflect the machine, not the scheme."""
    return len({r.get("invocation") for r in rows.values()}) <= 1


def _largest_invocation(rows: dict[str, pd.Series]) -> tuple[dict[str, pd.Series], list[str]]:
    """The schemes timed together in the invocation that timed the most of them, and the others."""
    by_inv: dict[Any, list[str]] = {}
    for s, r in rows.items():
        by_inv.setdefault(r.get("invocation"), []).append(s)
    keep = max(by_inv.values(), key=len)
    return {s: rows[s] for s in keep}, sorted(set(rows) - set(keep))


CROSS_INVOCATION = (
    "timed in separate invocations (other machine or process): not compared; re-run them together "
    "with `harness-ext run --redo --only ...`"
)


@dataclass(frozen=True)
class Ratio:
    """A ratio of two medians with a conservative interval from the p10/p90 of both."""

    value: float
    lo: float
    hi: float

    @classmethod
    def of(cls, a: pd.Series, b: pd.Series, metric: str) -> Ratio:
        va, vb = float(a[metric]), float(b[metric])
        la, ha = float(a.get(f"{metric}_lo", va)), float(a.get(f"{metric}_hi", va))
        lb, hb = float(b.get(f"{metric}_lo", vb)), float(b.get(f"{metric}_hi", vb))
        return cls(va / vb, la / hb if hb else math.nan, ha / lb if lb else math.nan)

    def text(self) -> str:
        return f"{self.value:.2f}x [{self.lo:.2f}, {self.hi:.2f}]"


# -- verdicts -------------------------------------------------------------------------------------
@dataclass
class Claim:
    """One of the seed study's claims, decided on this run's data."""

    key: str
    title: str
    statement: str
    rule: str
    verdict: Verdict = "inconclusive"
    reason: str = ""
    evidence: list[dict[str, str]] = field(default_factory=list)

    def decide(self, verdict: Verdict, reason: str) -> Claim:
        self.verdict, self.reason = verdict, reason
        return self


def _all(parts: list[Verdict]) -> Verdict:
    """A conjunction ("alike in speed and memory and quality", "at every size"): one contradicted
    part contradicts it; it is supported only if every part is."""
    if parts and all(p == "supported" for p in parts):
        return "supported"
    return "contradicted" if "contradicted" in parts else "inconclusive"


def _unanimous(parts: list[Verdict]) -> Verdict:
    """A claim about every scheme or model, where disagreement means the data do not decide it."""
    if parts and all(p == "supported" for p in parts):
        return "supported"
    if parts and all(p == "contradicted" for p in parts):
        return "contradicted"
    return "inconclusive"


def _four_bit_pair(study: Study) -> tuple[str, str] | None:
    """(nf4 scheme, fp4 scheme) alike in every other field: plain first, then double-quant."""
    sch = study.schemes(measured=True)
    for dq in (False, True):
        nf4 = sch[(sch["quant"] == "nf4") & (sch["double_quant"] == dq)]
        fp4 = sch[(sch["quant"] == "fp4") & (sch["double_quant"] == dq)]
        for _, a in nf4.iterrows():
            for _, b in fp4.iterrows():
                if a["compute_dtype"] == b["compute_dtype"] and a["dtype"] == b["dtype"]:
                    return a["scheme"], b["scheme"]
    return None


def _few(e: Estimate) -> bool:
    return e.n < MIN_PROMPTS


def claim_a(study: Study, margin: float, speed_margin: float) -> Claim:
    c = Claim(
        "a",
        "nf4 and fp4 are alike",
        "nf4 and fp4 are alike in speed, memory and quality.",
        f"Alike = equivalent within margins: next-word accuracy difference (mean over the grid's temperatures, "
        f"per prompt) with its 95% CI inside ±{margin:g}; decode time and weight memory ratios (nf4/fp4, "
        f"interval from p10/p90) inside [{1 / (1 + speed_margin):.2f}, {1 + speed_margin:.2f}]. Supported if all "
        "three are equivalent for every model and batch size; contradicted if any CI lies wholly outside its "
        f"margin; otherwise inconclusive. Fewer than {MIN_PROMPTS} prompts: inconclusive.",
    )
    pair = _four_bit_pair(study)
    if pair is None:
        return c.decide("inconclusive", "the study has no nf4 and fp4 schemes that differ only in the 4-bit format")
    nf4, fp4 = pair
    parts: list[Verdict] = []
    q, _ = primary_quality(study)
    for model in study.models():
        a, b = _matrix(q, model, nf4), _matrix(q, model, fp4)
        if a.empty or b.empty:
            parts.append("inconclusive")
            c.evidence.append(
                {
                    "what": f"{model}: quality",
                    "value": "not measured (no next-word accuracy for this model; "
                    "random-weight shapes measure speed and memory only)"
                    if q.empty or model not in set(q["model"])
                    else "missing cells",
                }
            )
            continue
        diff = (a - b).mean(axis=1)
        e = Estimate.of(diff.to_numpy())
        v: Verdict = (
            "inconclusive"
            if _few(e)
            else "supported"
            if e.within(margin)
            else "contradicted"
            if e.outside(margin)
            else "inconclusive"
        )
        parts.append(v)
        c.evidence.append({"what": f"{model}: accuracy {nf4} − {fp4}", "value": e.text(), "verdict": v, "n": str(e.n)})
    sp = speed_table(study)
    speed_keys = ["model", "batch_size", "mode"] if "mode" in sp.columns else ["model", "batch_size"]
    for key, g in sp.groupby(speed_keys) if not sp.empty else []:
        model, bs = key[0], key[1]
        where = f"{model}, batch {int(bs)}" + (f", {key[2]}" if len(key) > 2 else "")
        rows = {r["scheme"]: r for _, r in g.iterrows()}
        if nf4 not in rows or fp4 not in rows:
            continue
        if not _one_invocation({s: rows[s] for s in (nf4, fp4)}):
            parts.append("inconclusive")
            c.evidence.append({"what": f"{where}: decode time {nf4}/{fp4}", "value": CROSS_INVOCATION})
            continue
        r = Ratio.of(rows[nf4], rows[fp4], "decode_ms_per_token")
        lo_m, hi_m = 1 / (1 + speed_margin), 1 + speed_margin
        v = (
            "supported"
            if lo_m <= r.lo and r.hi <= hi_m
            else "contradicted"
            if r.lo > hi_m or r.hi < lo_m
            else "inconclusive"
        )
        parts.append(v)
        c.evidence.append({"what": f"{where}: decode time {nf4}/{fp4}", "value": r.text(), "verdict": v})
        if "weight_bytes" in rows[nf4] and int(bs) == int(sp["batch_size"].min()) and key[-1] != "compiled":
            w = float(rows[nf4]["weight_bytes"]) / float(rows[fp4]["weight_bytes"])
            v = "supported" if lo_m <= w <= hi_m else "contradicted"
            parts.append(v)
            c.evidence.append({"what": f"{model}: weight memory {nf4}/{fp4}", "value": f"{w:.3f}x", "verdict": v})
    if sp.empty:
        parts.append("inconclusive")
        c.evidence.append({"what": "speed and memory", "value": "no speed cells in the run"})
    verdict = _all(parts)
    reason = {
        "supported": "quality, speed and memory are equivalent within the margins",
        "contradicted": "at least one of quality, speed or memory differs beyond its margin",
        "inconclusive": "the intervals neither establish equivalence nor a difference everywhere",
    }[verdict]
    return c.decide(verdict, reason)


def claim_b(study: Study, margin: float) -> list[Claim]:
    c = Claim(
        "b",
        "nf4 and fp4 differ across temperatures",
        "nf4 and fp4 behave differently across temperatures.",
        f"At each grid temperature, the per-prompt accuracy difference nf4 − fp4 with its 95% CI. Supported if at "
        f"some temperature the CI lies wholly outside ±{margin:g}; contradicted if at every temperature it lies "
        "inside ±margin (equivalent everywhere); otherwise inconclusive.",
    )
    c2 = Claim(
        "b2",
        "Which 4-bit format resists low temperatures (per family)",
        "nf4 is the more temperature-resilient 4-bit scheme at low temperature for Llama-2 models, fp4 for "
        "Falcon models (the revised abstract).",
        f"Resilience at low temperature = the accuracy lost when moving from greedy (T=0) to each grid temperature "
        f"0 < T ≤ {LOW_T_MAX:g}, averaged per prompt. nf4 is more resilient if (drop nf4 − drop fp4) has a CI "
        "wholly below 0, fp4 if wholly above. Decided only for Llama-2 and Falcon families; other families are "
        "reported, not judged.",
    )
    pair = _four_bit_pair(study)
    if pair is None:
        reason = "the study has no nf4/fp4 pair"
        return [c.decide("inconclusive", reason), c2.decide("inconclusive", reason)]
    nf4, fp4 = pair
    q, _ = primary_quality(study)
    if q.empty:
        reason = "no next-word accuracy in the run (speed and memory only)"
        return [c.decide("inconclusive", reason), c2.decide("inconclusive", reason)]
    parts: list[Verdict] = []
    fam_parts: list[Verdict] = []
    for model in study.models():
        a, b = _matrix(q, model, nf4), _matrix(q, model, fp4)
        if a.empty or b.empty:
            parts.append("inconclusive")
            continue
        outside_any, inside_all, few = False, True, False
        for t in sorted(set(a.columns) & set(b.columns)):
            e = Estimate.of((a[t] - b[t]).to_numpy())
            few |= _few(e)
            outside_any |= e.outside(margin)
            inside_all &= e.within(margin)
            c.evidence.append({"what": f"{model}, T={t:g}: accuracy {nf4} − {fp4}", "value": e.text()})
        parts.append(
            "inconclusive" if few else "supported" if outside_any else "contradicted" if inside_all else "inconclusive"
        )
        # (b2) resilience at low temperature
        low = [t for t in a.columns if 0 < t <= LOW_T_MAX and t in b.columns]
        family = study.family(model)
        if 0.0 not in a.columns or not low:
            c2.evidence.append({"what": f"{model} ({family})", "value": "needs T=0 and a temperature in (0, 1]"})
            fam_parts.append("inconclusive")
            continue
        drop_a = (a[[0.0]].to_numpy() - a[low].to_numpy()).mean(axis=1)
        drop_b = (b[[0.0]].to_numpy() - b[low].to_numpy()).mean(axis=1)
        e = Estimate.of(drop_a - drop_b)
        winner = nf4 if e.below(0) else fp4 if e.above(0) else "neither (CI includes 0)"
        c2.evidence.append(
            {
                "what": f"{model} ({family}): drop {nf4} − drop {fp4}",
                "value": e.text(),
                "verdict": f"more resilient: {winner}",
            }
        )
        fam = family.lower()
        expected = nf4 if "llama-2" in fam or "llama2" in fam else fp4 if "falcon" in fam else None
        if expected is None:
            continue
        if _few(e) or winner.startswith("neither"):
            fam_parts.append("inconclusive")
        else:
            fam_parts.append("supported" if winner == expected else "contradicted")
    c.decide(
        _unanimous(parts),
        {
            "supported": "the nf4 − fp4 gap exceeds the margin at some temperature",
            "contradicted": "nf4 and fp4 are equivalent at every temperature",
            "inconclusive": "no temperature shows a clear gap, nor equivalence at all of them",
        }[_unanimous(parts)],
    )
    if not fam_parts:
        c2.decide(
            "inconclusive",
            "the study has no Llama-2 or Falcon-family model: the family-specific claim cannot be "
            "tested here (the measured resilience of the models present is listed)",
        )
    else:
        v = _unanimous(fam_parts)
        c2.decide(
            v,
            {
                "supported": "the expected format is the more resilient one in every tested family",
                "contradicted": "the other format is the more resilient one",
                "inconclusive": "the resilience difference is not clear",
            }[v],
        )
    return [c, c2]


def _excess_per_prompt(q: pd.DataFrame, model: str, scheme: str, ref: str, temps: list[float]) -> pd.Series | None:
    """Per prompt (index: doc_id): the scheme's accuracy drop from T=0 to ``temps`` (averaged over
    them) minus the reference's on the same prompt; None without T=0 or any of ``temps``."""
    a, r = _matrix(q, model, scheme), _matrix(q, model, ref)
    temps = [t for t in temps if t in a.columns and t in r.columns]
    if a.empty or r.empty or 0.0 not in a.columns or 0.0 not in r.columns or not temps:
        return None
    da = a[0.0] - a[temps].mean(axis=1)
    dr = r[0.0] - r[temps].mean(axis=1)
    return (da - dr).dropna()  # aligned on doc_id: prompts both schemes answered


def _excess_drop(q: pd.DataFrame, model: str, scheme: str, ref: str, temps: list[float]) -> Estimate | None:
    """The mean excess drop over prompts with its interval (see :func:`_excess_per_prompt`)."""
    per = _excess_per_prompt(q, model, scheme, ref, temps)
    return None if per is None else Estimate.of(per.to_numpy())


def claim_c(study: Study, margin: float) -> list[Claim]:
    c = Claim(
        "c",
        "4-bit is more sensitive to low temperatures",
        "4-bit models are more sensitive to low temperatures than the unquantized model.",
        f"Excess sensitivity = per prompt, the accuracy a 4-bit scheme loses moving from greedy (T=0) to the grid's "
        f"temperatures 0 < T ≤ {LOW_T_MAX:g}, minus what the reference loses, averaged. Supported if its 95% CI "
        f"lies above 0 for every 4-bit scheme; contradicted if for every 4-bit scheme it lies below 0 or inside "
        f"±{margin:g}; otherwise inconclusive.",
    )
    c2 = Claim(
        "c2",
        "…and the extra sensitivity sits in 0.5–0.8",
        "The 4-bit models' extra sensitivity sits in the temperature range 0.5–0.8 (the revised abstract).",
        f"Excess sensitivity (as in c) computed over grid temperatures in [{BAND[0]}, {BAND[1]}] and over the "
        "other temperatures in (0, 1]. Supported if, for every 4-bit scheme, the in-band excess has a CI above 0 "
        "and exceeds the out-of-band excess (CI of the difference above 0); contradicted if the in-band excess "
        f"lies inside ±{margin:g} or below 0 for every 4-bit scheme; otherwise inconclusive.",
    )
    q, _ = primary_quality(study)
    if q.empty:
        return [c.decide("inconclusive", "no next-word accuracy in the run"), c2.decide("inconclusive", "no data")]
    temps = sorted(q["temperature"].unique())
    low = [t for t in temps if 0 < t <= LOW_T_MAX]
    band = [t for t in low if BAND[0] <= t <= BAND[1]]
    other = [t for t in low if t not in band]
    four_bit = study.schemes(measured=True).query("bits == 4")["scheme"].tolist()
    parts, band_parts = [], []
    for model in study.models():
        ref = study.reference(model)
        for s in four_bit:
            if ref is None:
                continue
            e = _excess_drop(q, model, s, ref, low)
            if e is None:
                parts.append("inconclusive")
                c.evidence.append({"what": f"{model}: {s} vs {ref}", "value": "needs T=0 and a temperature in (0, 1]"})
                continue
            v: Verdict = (
                "inconclusive"
                if _few(e)
                else "supported"
                if e.above(0)
                else "contradicted"
                if e.below(0) or e.within(margin)
                else "inconclusive"
            )
            parts.append(v)
            c.evidence.append(
                {
                    "what": f"{model}: excess drop {s} vs {ref}, T in {{{', '.join(f'{t:g}' for t in low)}}}",
                    "value": e.text(),
                    "verdict": v,
                    "n": str(e.n),
                }
            )
            if not band:
                continue
            eb = _excess_drop(q, model, s, ref, band)
            eo = _excess_drop(q, model, s, ref, other) if other else None
            gap = None
            if eb is not None and eo is not None:
                in_band = _excess_per_prompt(q, model, s, ref, band)
                gap = Estimate.of((in_band - _excess_per_prompt(q, model, s, ref, other)).dropna().to_numpy())
            if eb is None:
                band_parts.append("inconclusive")
                continue
            if _few(eb):
                vb: Verdict = "inconclusive"
            elif eb.above(0) and (gap is None or gap.above(0)):
                vb = "supported"
            elif eb.below(0) or eb.within(margin):
                vb = "contradicted"
            else:
                vb = "inconclusive"
            band_parts.append(vb)
            c2.evidence.append(
                {
                    "what": f"{model}: {s} excess in band {{{', '.join(f'{t:g}' for t in band)}}}",
                    "value": eb.text(),
                    "verdict": vb,
                }
            )
            if eo is not None:
                c2.evidence.append({"what": f"{model}: {s} excess outside the band", "value": eo.text()})
            if gap is not None:
                c2.evidence.append({"what": f"{model}: {s} in-band minus out-of-band", "value": gap.text()})
    if not four_bit:
        return [c.decide("inconclusive", "the study has no 4-bit scheme"), c2.decide("inconclusive", "no 4-bit scheme")]
    v = _unanimous(parts)
    c.decide(
        v,
        {
            "supported": "every 4-bit scheme loses more accuracy than the reference when leaving greedy decoding",
            "contradicted": "no 4-bit scheme loses meaningfully more than the reference",
            "inconclusive": "the schemes disagree or the intervals are too wide",
        }[v],
    )
    if not band:
        c2.decide("inconclusive", f"the grid has no temperature in [{BAND[0]}, {BAND[1]}]")
    else:
        vb2 = _unanimous(band_parts)
        c2.decide(
            vb2,
            {
                "supported": "the excess is positive in the band and larger there than elsewhere",
                "contradicted": "there is no meaningful excess in the band",
                "inconclusive": "the in-band excess is not clearly positive and concentrated",
            }[vb2],
        )
    return [c, c2]


def claim_d(study: Study, speed_margin: float) -> list[Claim]:
    c = Claim(
        "d",
        "int8 is much slower, fp16 the fastest",
        "int8 is much slower than the other schemes, and fp16 is the fastest at every model size.",
        f"Per model at batch size 1 (each generation mode separately), decode time per token, median with p10–p90. "
        f"int8 'much slower' = its median ≥ {1 + speed_margin:.2f}× every other scheme's and its p10 above their "
        "p90; 'fastest' = the unquantized 16-bit scheme (fp16, else bf16) has its p90 below every other scheme's "
        "p10. Supported if both hold for every model; contradicted if int8 is clearly faster than some scheme or "
        "the 16-bit scheme is clearly slower than some scheme; otherwise inconclusive.",
    )
    c2 = Claim(
        "d2",
        "bf16 is the fastest at every size",
        "Unquantized bf16 is the fastest at every model size (the revised abstract).",
        "As in (d), for bf16 alone.",
    )
    sp = speed_table(study)
    if sp.empty:
        return [c.decide("inconclusive", "no speed cells in the run"), c2.decide("inconclusive", "no speed cells")]
    sch = study.schemes(measured=True)
    int8 = sch[sch["quant"] == "int8"]["scheme"].tolist()
    unq16 = sch[(sch["quant"] == "none") & (sch["dtype"].isin(["float16", "bfloat16"]))]
    fast = (unq16[unq16["dtype"] == "float16"]["scheme"].tolist() or unq16["scheme"].tolist())[:1]
    bf16 = unq16[unq16["dtype"] == "bfloat16"]["scheme"].tolist()[:1]
    parts, parts2 = [], []
    untimed: list[str] = []
    group_keys = ["model", "mode"] if "mode" in sp.columns else ["model"]
    for key, g in sp[sp["batch_size"] == sp["batch_size"].min()].groupby(group_keys):
        label = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        rows, excluded = _largest_invocation({r["scheme"]: r for _, r in g.iterrows()})
        if excluded:
            c.evidence.append({"what": f"{label}: {', '.join(excluded)} left out", "value": CROSS_INVOCATION})
        med = {s: float(r["decode_ms_per_token"]) for s, r in rows.items()}
        lo = {s: float(r.get("decode_ms_per_token_lo", med[s])) for s, r in rows.items()}
        hi = {s: float(r.get("decode_ms_per_token_hi", med[s])) for s, r in rows.items()}
        c.evidence.append(
            {
                "what": f"{label}: decode ms/token (batch {int(g['batch_size'].min())})",
                "value": ", ".join(f"{s} {med[s]:.1f} [{lo[s]:.1f}, {hi[s]:.1f}]" for s in med),
            }
        )
        verdicts: list[Verdict] = []
        for s8 in int8:
            if s8 not in med:  # not timed for this model (or in another invocation): undecided, not skipped
                verdicts.append("inconclusive")
                untimed.append(f"{s8} for {label}")
                c.evidence.append({"what": f"{label}: {s8}", "value": "not timed with the others"})
                continue
            others = [s for s in med if s != s8]
            if all(med[s8] >= (1 + speed_margin) * med[o] and lo[s8] > hi[o] for o in others):
                verdicts.append("supported")
            elif any(hi[s8] < lo[o] for o in others):
                verdicts.append("contradicted")
            else:
                verdicts.append("inconclusive")
        if not int8:
            verdicts.append("inconclusive")
        for f in fast:
            verdicts.append(_fastest(f, med, lo, hi))
        if not fast:
            verdicts.append("inconclusive")
        v = _all(verdicts)
        parts.append(v)
        for b in bf16:
            parts2.append(_fastest(b, med, lo, hi))
    missing = [] if int8 else ["int8"]
    missing += [] if fast else ["fp16/bf16"]
    v = _all(parts) if not missing else ("contradicted" if "contradicted" in parts else "inconclusive")
    reason = {
        "supported": "int8 is the slowest by the margin and the 16-bit scheme the fastest, at every size",
        "contradicted": "int8 is not the slowest, or the 16-bit scheme is beaten, at some size",
        "inconclusive": "the timings do not separate the schemes clearly",
    }[v]
    if missing:
        reason = f"the study has no {' or '.join(missing)} scheme" + ("" if v == "inconclusive" else "; " + reason)
    elif v == "inconclusive" and untimed:
        reason = f"not every model and mode has an int8 timing to compare ({'; '.join(untimed)})"
    c.decide(v, reason)
    if not bf16:
        c2.decide("inconclusive", "the study has no bf16 scheme")
    else:
        v2 = _all(parts2)
        c2.decide(
            v2,
            {
                "supported": "bf16 is the fastest at every size",
                "contradicted": "bf16 is beaten at some size",
                "inconclusive": "bf16 is not clearly separated from every other scheme",
            }[v2],
        )
    return [c, c2]


def _fastest(s: str, med: dict[str, float], lo: dict[str, float], hi: dict[str, float]) -> Verdict:
    if s not in med:
        return "inconclusive"
    others = [o for o in med if o != s]
    if all(hi[s] < lo[o] for o in others):
        return "supported"
    if any(lo[s] > hi[o] for o in others):
        return "contradicted"
    return "inconclusive"


def claims(study: Study, margin: float = 0.05, speed_margin: float = 0.10) -> list[Claim]:
    """The seed study's four claims and their sharpened forms, each with a verdict."""
    return [
        claim_a(study, margin, speed_margin),
        *claim_b(study, margin),
        *claim_c(study, margin),
        *claim_d(study, speed_margin),
    ]
