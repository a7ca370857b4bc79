"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import pytest

from harness_ext.tasks import metrics as m


def test_first_word_and_hit() -> None:
    assert m.first_word(" Paris. It is") == "paris"
    assert m.first_word("  \n") == ""
    assert m.nextword_hit(" KEY!", "key") == 1.0
    assert m.nextword_hit(" keys", "key") == 0.0
    assert m.nextword_hit("", "key") == 0.0


def test_distinct_and_repetition_by_hand() -> None:
    toks = m.tokens("the cat the cat the dog")  # the cat the cat the dog
    assert toks == ["the", "cat", "the", "cat", "the", "dog"]
    assert m.distinct_n(toks, 1) == pytest.approx(3 / 6)
    # bigrams: the-cat, cat-the, the-cat, cat-the, the-dog -> 3 distinct of 5
    assert m.distinct_n(toks, 2) == pytest.approx(3 / 5)
    # trigrams: the-cat-the, cat-the-cat, the-cat-the, cat-the-dog -> 3 of 4
    assert m.distinct_n(toks, 3) == pytest.approx(3 / 4)
    # 4-grams: tcTc, cTcT, tcTd -> all distinct: seq-rep-4 = 0
    assert m.repetition_rate(toks, 4) == 0.0
    loop = m.tokens("a b a b a b a b")  # 4-grams: abab, baba, abab, baba, abab -> 2 distinct of 5
    assert m.repetition_rate(loop, 4) == pytest.approx(1 - 2 / 5)
    assert math.isnan(m.distinct_n(["x"], 2))


def test_rouge_l_by_hand() -> None:
    # LCS of "the cat sat" and "the cat ran" is "the cat": P = R = 2/3, F1 = 2/3
    assert m.rouge_l("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    assert m.rouge_l("", "") == 1.0
    assert m.rouge_l("abc", "") == 0.0


def test_process_results_accept_single_and_list_predictions() -> None:
    doc = {"target": "key", "context": "..."}
    assert m.process_nextword(doc, [" key"]) == {"exact_match": 1.0}
    assert m.process_nextword(doc, [[" key", " door", " Key.", " lock"]]) == {"exact_match": 0.5}  # take_first_k
    out = m.process_continuation({"prompt": "p"}, [["a b a b", "c d e"]])
    assert out["distinct_1"] == pytest.approx((2 / 4 + 3 / 3) / 2)
    assert out["words"] == pytest.approx((4 + 3) / 2)
    assert math.isnan(out["new_tokens"]) and math.isnan(out["hit_cap"])  # a plain str carries no token counts


def test_continuation_uses_hf_quant_token_counts() -> None:
    from harness_ext.backend import GeneratedText

    out = m.process_continuation(
        {"prompt": "p"}, [[GeneratedText("a b", 4, True, "cap"), GeneratedText("c", 2, False, "eos")]]
    )
    assert out["new_tokens"] == 3.0 and out["hit_cap"] == 0.5


def test_nanmean() -> None:
    assert m.nanmean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(m.nanmean([math.nan]))


def test_lambada_split() -> None:
    doc = {"text": "he picked up the phone and said hello"}
    assert m.doc_to_text_lambada(doc) == "he picked up the phone and said"
    assert m.doc_to_target_lambada(doc) == "hello"
