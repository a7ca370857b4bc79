"""Metric functions of our tasks. Pure functions of text; lm-eval's hooks sit at the bottom.

Responses may be a single string (lm-eval's default ``take_first`` filter) or a list of strings
(``take_first_k``, used with ``repeats``): every per-prompt metric is then the mean over the list.
Responses produced by ``hf-quant`` also carry ``new_tokens`` and ``hit_cap`` attributes (a ``str``
subclass); for other backends those two metrics are NaN, never guessed from the text.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]")


# -- text metrics -------------------------------------------------------------------------------
def normalize_word(word: str) -> str:
    """Lowercase and keep letters and digits only: ``"Paris."`` -> ``"paris"``."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def first_word(text: str) -> str:
    """The first word of a generation, normalised (``""`` if there is none)."""
    m = _WORD.search(text)
    return normalize_word(m.group(0)) if m else ""


def nextword_hit(generation: str, target: str) -> float:
    """1.0 if the generation's first word equals the target after normalisation, else 0.0."""
    return float(first_word(generation) == normalize_word(target) != "")


def tokens(text: str) -> list[str]:
    """Lowercased word and punctuation tokens: the unit of the diversity metrics."""
    return [t.lower() for t in _TOKEN.findall(text)]


def ngrams(toks: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(toks: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of one text (NaN when the text has no n-gram)."""
    grams = ngrams(toks, n)
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(toks: Sequence[str], n: int = 4) -> float:
    """Share of n-gram occurrences that repeat an earlier n-gram of the same text (seq-rep-n,
    Welleck et al. 2019); NaN when the text has no n-gram."""
    grams = ngrams(toks, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else math.nan


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of two texts (rouge-score's tokenizer); 1.0 when both are empty."""
    if not prediction.strip() and not reference.strip():
        return 1.0
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none): the aggregation of metrics that can be undefined."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


# -- lm-eval hooks ------------------------------------------------------------------------------
def _responses(results: Sequence[Any]) -> list[str]:
    """The response strings of one document, whichever filter produced them."""
    first = results[0]
    return list(first) if isinstance(first, (list, tuple)) else [first]


def _stat(resp: Any, name: str) -> float:
    value = getattr(resp, name, None)
    return math.nan if value is None else float(value)


def process_nextword(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, float]:
    """Per prompt: ``exact_match`` = share of samples whose first word is the target."""
    resps = _responses(results)
    return {"exact_match": sum(nextword_hit(r, doc["target"]) for r in resps) / len(resps)}


def process_continuation(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, float]:
    """Per prompt, averaged over samples: distinct-1/2/3, seq-rep-4, words, new tokens, cap hits."""
    resps = _responses(results)
    toks = [tokens(r) for r in resps]
    return {
        "distinct_1": nanmean([distinct_n(t, 1) for t in toks]),
        "distinct_2": nanmean([distinct_n(t, 2) for t in toks]),
        "distinct_3": nanmean([distinct_n(t, 3) for t in toks]),
        "repetition_4": nanmean([repetition_rate(t, 4) for t in toks]),
        "words": sum(len(_WORD.findall(r)) for r in resps) / len(resps),
        "new_tokens": nanmean([_stat(r, "new_tokens") for r in resps]),
        "hit_cap": nanmean([_stat(r, "hit_cap") for r in resps]),
    }


def doc_to_text_lambada(doc: dict[str, Any]) -> str:
    """LAMBADA text without its last word (for quant_nextword_lambada)."""
    return doc["text"].rsplit(" ", 1)[0]


def doc_to_target_lambada(doc: dict[str, Any]) -> str:
    """LAMBADA's last word."""
    return doc["text"].rsplit(" ", 1)[1]


def process_nextword_lambada(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, float]:
    """``process_nextword`` on a LAMBADA document."""
    return process_nextword({"target": doc_to_target_lambada(doc)}, results)
