"""Speed cells' random prompts: ordinary tokens only, however many special tokens a tokenizer has."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer

from harness_ext.backend import HFQuantLM, speed


def _many_specials(tiny_model: Path) -> tuple[object, set[int]]:
    """The tiny tokenizer with 200 of its ordinary tokens re-declared as special added tokens, as
    Gemma 3's control and unused tokens are (special in ``added_tokens_decoder``, not in ``all_special_ids``)."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    vocab = tok.get_vocab()
    words = sorted((w for w, i in vocab.items() if i >= 100), key=vocab.get)[:200]
    tok.add_tokens([AddedToken(w, special=True) for w in words], special_tokens=True)
    marked = {vocab[w] for w in words}
    assert len(tok) == len(vocab)  # same ids: the model's embeddings cover them
    assert not marked & set(tok.all_special_ids)  # only added_tokens_decoder says they are special
    return tok, marked


def test_special_token_ids_include_added_tokens_marked_special(tiny_model) -> None:
    tok, marked = _many_specials(tiny_model)
    special = speed.special_token_ids(tok)
    assert marked <= special and set(tok.all_special_ids) <= special
    assert len(special) == len(marked) + len(set(tok.all_special_ids))


def test_speed_benchmark_prompts_have_no_special_token(tiny_model, monkeypatch) -> None:
    tok, marked = _many_specials(tiny_model)
    lm = HFQuantLM(pretrained=str(tiny_model), tokenizer=tok, quant="fp32", device="cpu", batch_size=4)
    drawn: list[torch.Tensor] = []
    generate = lm.generate_rows
    monkeypatch.setattr(lm, "generate_rows", lambda ids, *a, **kw: drawn.append(ids) or generate(ids, *a, **kw))
    speed.benchmark(lm, batch_size=4, prompt_tokens=32, new_tokens=2, warmup=0, repeats=1)
    ids = set(torch.cat(drawn).flatten().tolist())
    assert len(ids) > 50  # a real draw over the vocabulary
    assert not ids & (marked | set(tok.all_special_ids))
