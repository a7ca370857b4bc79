"""Metrics against the reference: agreement of every scheme's outputs with the unquantized
reference's (same prompt, sample and seed), and the NLL of every continuation under the reference
model. They run after all pairs, with one more load of each model's reference.

Context/continuation splits are lm-eval's own (``TemplateLM._encode_pair``, through
:func:`encode_pair`), here and in the probe."""

from __future__ import annotations

import dataclasses
import gc
import math
import traceback
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from harness_ext.run.api import Executor, QuantLM, Records, RunnerAPI
from harness_ext.run.failures import expected_failure, reason, write_stderr
from harness_ext.run.results import mean_sem
from harness_ext.spec import Cell, ModelSpec, StudySpec
from harness_ext.store import Record, now

if TYPE_CHECKING:
    from harness_ext.spec.schemes import Scheme

#: Our tasks and the metrics against the reference each gets.
REFERENCE_METRICS = {"quant_nextword": ("agree_ref",), "quant_continuation": ("rouge_l_ref", "nll_ref")}


def reference_cell(spec: StudySpec, cell: Cell) -> Cell | None:
    """The reference scheme's cell with the same task, point and seed (None: no reference)."""
    ref = spec.reference_scheme(cell.model)
    if ref is None:
        return None
    return dataclasses.replace(cell, scheme=ref.resolve(cell.model.dtype))


def needs_reference_metrics(spec: StudySpec, cell: Cell, records: Records) -> bool:
    """A finished eval cell of our tasks whose reference metrics are missing or were computed
    against another reference record than the one stored now (the reference was redone)."""
    if cell.kind != "eval" or cell.task.kind not in REFERENCE_METRICS:
        return False
    rec, ref_cell = records.get(cell.id), reference_cell(spec, cell)
    if rec is None or rec.status != "ok" or ref_cell is None:
        return False
    ref_rec = records.get(ref_cell.id)
    if ref_rec is None or ref_rec.status != "ok":
        return False
    used = rec.measurements.get("reference_metrics") or {}
    return used.get("reference_record") != reference_record_hash(ref_rec)


def reference_record_hash(ref: Record) -> str:
    """What the metrics against a reference depend on in its record: its cell and its outputs."""
    from harness_ext.spec import content_hash

    return content_hash(
        {"cell_id": ref.cell_id, "texts": [[g["doc_id"], g["sample"], g["text"]] for g in ref.generations]}
    )


def add_run_reference_metrics(runner: RunnerAPI, executor: Executor, cells: list[Cell], records: Records) -> None:
    """Add the metrics against the reference to every cell of ``cells`` that needs them (stored)."""
    by_model: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if needs_reference_metrics(runner.spec, c, records):
            by_model[c.model.label].append(c)
    if not by_model:
        return
    todo_all = [c for cs in by_model.values() for c in cs]
    runner.note(
        f"metrics against the reference: agreement of {len(todo_all)} cells with the reference's outputs, and "
        "the NLL of every continuation under the reference model (one more load of each reference)"
    )
    bar = tqdm(total=len(todo_all), desc="vs reference", unit="cell", disable=not runner.progress, dynamic_ncols=True)
    try:
        for model in runner.spec.models:
            todo = by_model.get(model.label)
            ref = runner.spec.reference_scheme(model)
            if todo and ref is not None:
                _model_reference_metrics(runner, executor, model, ref, todo, records, bar)
    finally:
        bar.close()


def _model_reference_metrics(
    runner: RunnerAPI, executor: Executor, model: ModelSpec, ref: Scheme, todo: list[Cell], records: Records, bar: Any
) -> None:
    needs_nll = [c for c in todo if c.task.kind == "quant_continuation"]
    # every continuation of the model scored in one pass: shared texts and prefixes once
    pairs = [(g["prompt"] or "", g["text"]) for c in needs_nll for g in records[c.id].generations]
    scores = None
    if pairs:
        bar.set_postfix_str(f"scoring {len(pairs)} texts under {model.label} {ref.name}")
        try:
            scores = iter(executor.score(runner, model, ref, pairs, progress=_bar_progress(bar)))
        except Exception as e:
            runner.note(f"reference scoring failed for {model.label}: {reason(e)}; NLL left out", failure=True)
            if not expected_failure(e):
                write_stderr("".join(traceback.format_exception(e)))
        gc.collect()
        bar.set_postfix_str("")
    for c in todo:
        rec = records[c.id]
        wants_nll = c.task.kind == "quant_continuation"
        nll = [next(scores) for _ in rec.generations] if scores is not None and wants_nll else None
        ref_cell = reference_cell(runner.spec, c)
        complete = not (wants_nll and pairs and scores is None)  # scoring failed: the next run retries it
        add_reference_metrics(
            rec, records[ref_cell.id], c.task.kind, nll, is_reference=c.id == ref_cell.id, complete=complete
        )
        runner.store.write(rec)
        bar.update(1)


def _bar_progress(bar: Any) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that shows scoring batches in a bar's postfix."""

    def update(done: int, total: int) -> None:
        bar.set_postfix_str(f"scoring: {done}/{total} sequences")

    return update


def add_reference_metrics(
    rec: Record, ref: Record, kind: str, nll: list[float] | None, *, is_reference: bool, complete: bool = True
) -> None:
    """Per prompt: agreement with the reference's output for the same prompt, sample and seed
    (nextword: same first word; continuation: ROUGE-L F1), and the continuation's mean token NLL
    under the reference model (``nll``, one per generation, from :func:`score_nll`). Updates ``rec``.

    ``complete=False`` (a metric could not be computed, e.g. the NLL scoring failed) stores what was
    computed without the reference's hash, so that :func:`needs_reference_metrics` asks for them again."""
    from harness_ext.tasks.metrics import first_word, rouge_l

    stale = (rec.measurements.get("reference_metrics") or {}).get("metrics") or []
    for m in stale:  # recomputed below from this reference (or left out if it cannot be)
        rec.metrics.pop(m, None)
        for row in rec.sample_metrics:
            row.pop(m, None)
    ref_text = {(g["doc_id"], g["sample"]): g["text"] for g in ref.generations}
    per_doc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if not is_reference:
        for g in rec.generations:
            other = ref_text.get((g["doc_id"], g["sample"]))
            if other is None:
                continue
            if kind == "quant_nextword":
                per_doc[g["doc_id"]]["agree_ref"].append(float(first_word(g["text"]) == first_word(other)))
            else:
                per_doc[g["doc_id"]]["rouge_l_ref"].append(rouge_l(g["text"], other))
    if nll is not None:
        for g, v in zip(rec.generations, nll, strict=True):
            if not math.isnan(v):
                per_doc[g["doc_id"]]["nll_ref"].append(v)
    names = sorted({m for d in per_doc.values() for m in d})
    by_doc = {s["doc_id"]: s for s in rec.sample_metrics}
    for doc_id, metrics in per_doc.items():
        row = by_doc.setdefault(doc_id, {"doc_id": doc_id})
        for m, vals in metrics.items():
            row[m] = sum(vals) / len(vals)
    rec.sample_metrics = list(by_doc.values())
    for m in names:
        rec.metrics[m] = mean_sem([s.get(m) for s in rec.sample_metrics])
    rec.measurements["reference_metrics"] = {
        "reference_cell": ref.cell_id,
        "reference_record": reference_record_hash(ref) if complete else None,
        "metrics": names,
        "at": now(),
    }


def encode_pair(lm: QuantLM, prompt: str, text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Context and continuation tokens as lm-eval's loglikelihood splits them
    (``TemplateLM._encode_pair``: the prompt's trailing spaces go with the text, the whole is
    encoded once); an empty prompt becomes the model's prefix token, as in lm-eval."""
    if not prompt:
        return (lm.prefix_token_id,), tuple(lm.tok_encode(text, add_special_tokens=False))
    ctx, cont = lm._encode_pair(prompt, text)
    return tuple(ctx), tuple(cont)


@torch.no_grad()
def score_nll(
    lm: QuantLM,
    pairs: list[tuple[str, str]],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each continuation given its prompt under ``lm``'s
    model; NaN for an empty continuation. ``progress(done, total)`` is called after each batch.

    Each distinct token sequence is scored once: identical texts (greedy rows shared across top-k
    and seeds) and continuations that are a prefix of a longer one for the same prompt (a short
    max_new_tokens cut of the same stream) reuse the longer sequence's per-token log-probabilities —
    only where the longer sequence fits the model's window, so that the prefix's tokens see the
    same context as when scored alone. A sequence longer than the window keeps its last tokens.
    """
    encoded = [encode_pair(lm, prompt, text) for prompt, text in pairs]
    # the longest continuation per prompt covers every continuation that is its prefix
    cover: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
    for ctx, cont in sorted(set(encoded), key=lambda e: -len(e[1])):
        if cont and not any(_covers(long, cont, ctx, lm.max_length) for long in cover[ctx]):
            cover[ctx].append(cont)
    jobs = [(ctx, cont) for ctx, conts in cover.items() for cont in conts]
    token_logp: dict[tuple[tuple[int, ...], tuple[int, ...]], list[float]] = {}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    jobs.sort(key=lambda j: -(len(j[0]) + len(j[1])))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        seqs = [list(ctx + cont)[-lm.max_length :] for ctx, cont in batch]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, q in enumerate(seqs):
            ids[r, : len(q)] = torch.tensor(q)
            mask[r, : len(q)] = 1
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        for r, (ctx, cont) in enumerate(batch):
            n = min(len(cont), len(seqs[r]) - 1)  # the continuation's last n tokens are in the window
            end = len(seqs[r])
            targets = torch.tensor(seqs[r][end - n :], device=logits.device)
            logp = torch.log_softmax(logits[r, end - n - 1 : end - 1].float(), -1)  # the continuation's rows only
            token_logp[(ctx, cont)] = logp.gather(1, targets[:, None]).squeeze(1).tolist()
        if progress is not None:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    out = []
    for ctx, cont in encoded:
        if not cont:
            out.append(math.nan)
            continue
        long = next(c for c in cover[ctx] if _covers(c, cont, ctx, lm.max_length))
        lp = token_logp[(ctx, long)]
        if long != cont:  # a prefix of a sequence that fits the window: its log-probs are the first ones
            lp = lp[: len(cont)]
        out.append(-sum(lp) / len(lp))
    return out


def _covers(long: tuple[int, ...], cont: tuple[int, ...], ctx: tuple[int, ...], window: int) -> bool:
    """Whether ``cont``'s log-probs can be read off ``long``'s: the same sequence, or a prefix of a
    sequence scored whole (no token of it cut off by the window)."""
    return long == cont or (long[: len(cont)] == cont and len(ctx) + len(long) <= window)
