"""Probe cells: the exact next-token distribution at every grid point, from one forward pass.

The unquantized reference's probe stores its logits as an artifact; every other scheme's probe
compares its own with them (so the reference's probe runs first; see the Ray executor's waves)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from harness_ext.errors import StoreError
from harness_ext.run.api import PairWork, QuantLM, RunnerAPI
from harness_ext.run.reference import encode_pair
from harness_ext.run.results import finite, mean_sem
from harness_ext.spec import Cell
from harness_ext.tasks import loaders


class ProbeHandler:
    """Runs a pair's probe cells one by one; every cell gets a record, ok or failed."""

    def __call__(self, runner: RunnerAPI, work: PairWork, cells: list[Cell]) -> None:
        for c in cells:
            runner.check_time()
            runner.run_cell(c, work, lambda c=c: measure(runner, work.lm, c))


def measure(runner: RunnerAPI, lm: QuantLM, cell: Cell) -> dict[str, Any]:
    """One probe cell's record fields: per grid point its metrics, per prompt and point the values.
    Each prompt's context and first target token are split as lm-eval's log-likelihood splits them."""
    from harness_ext.backend import probe as probes

    t0 = time.perf_counter()
    path = Path(cell.params["data_file"]) if cell.params.get("data_file") else loaders.DATA_DIR / "nextword.jsonl"
    docs = loaders.read_jsonl(path, loaders.REQUIRED_FIELDS["nextword"])[: cell.params.get("limit") or None]
    split = [encode_pair(lm, d["context"], " " + d["target"]) for d in docs]
    ids = [list(ctx) for ctx, _ in split]
    logits = probes.next_token_logits(
        lm.model,
        ids,
        lm.device,
        progress=lambda done, total: runner.status(
            f"{cell.model.label} / {cell.scheme.name}: probe {done}/{total} prompts"
        ),
    )
    ref_scheme = runner.spec.reference_scheme(cell.model)
    reference = _reference_logits(runner, cell, logits, ref_scheme.name if ref_scheme else None)
    points = probes.grid_points(cell.params["grid"])
    gold = torch.tensor([cont[0] for _, cont in split])
    per = probes.probe_metrics(
        logits, gold, points, reference=reference, seen=probes.seen_tokens(ids, logits.shape[-1])
    )
    out_points, samples = [], []
    for p, metrics in per.items():
        pd = p.probe_fields()
        out_points.append({"point": pd, "metrics": {m: mean_sem(v) for m, v in metrics.items()}})
        for i in range(len(docs)):
            samples.append({"doc_id": i, "point": pd, **{m: finite(v[i]) for m, v in metrics.items()}})
    return {
        "points": out_points,
        "sample_metrics": samples,
        "measurements": {
            "prompts": len(docs),
            "wall_s": time.perf_counter() - t0,
            "reference": ref_scheme.name if ref_scheme else None,
            "forward": probes.FORWARD,
            "dtype": probes.DTYPE,
            "single_token_targets": sum(len(cont) == 1 for _, cont in split),
        },
    }


def _reference_logits(runner: RunnerAPI, cell: Cell, logits: torch.Tensor, ref: str | None) -> torch.Tensor | None:
    """The reference's logits to compare with: this cell's own, stored, where it is the reference;
    else the stored ones (a reference probe that failed or was removed fails this cell)."""
    if ref is None:
        return None
    if ref == cell.scheme.name:
        runner.store.put_tensor(probe_artifact(cell), logits)
        return logits
    reference = runner.store.get_tensor(probe_artifact(cell, ref))
    if reference is None:
        raise StoreError(
            f"the reference ({ref}) probe has no stored logits; it must run first "
            "(it failed or was removed): this cell is retried on the next run"
        )
    if reference.shape != logits.shape:
        raise StoreError(f"reference logits {tuple(reference.shape)} do not match {tuple(logits.shape)}")
    return reference


def probe_artifact(cell: Cell, scheme: str | None = None) -> str:
    """Artifact name of a probe's logits: model, scheme, and a hash of what the logits depend on."""
    from harness_ext.spec import content_hash

    key = {k: v for k, v in cell.params.items() if k != "grid"} | {
        "model": {**cell.model.identity(), **cell.weights},
        "device": cell.device,
    }
    return f"probe/{cell.model.label}/{scheme or cell.scheme.name}-{content_hash(key)}.pt"
