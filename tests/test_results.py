"""What a cell's record holds: lm-eval results split per filter, NLL of continuations, checked records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness_ext.run.reference import score_nll
from harness_ext.run.results import split_results
from harness_ext.store import RunStore


def _two_filter_results(name: str) -> dict:
    """A results dict in lm-eval's format for a gsm8k-style task (two filters over the same responses)."""
    samples = []
    for filt, hits in (("strict-match", [0.0, 1.0]), ("flexible-extract", [1.0, 1.0])):
        for doc_id, hit in enumerate(hits):
            samples.append(
                {
                    "doc_id": doc_id,
                    "arguments": [[f"Q{doc_id}", {"until": ["\n"]}]],
                    "resps": [[f"answer {doc_id}"]],
                    "filtered_resps": [f"{doc_id}"],
                    "filter": filt,
                    "metrics": ["exact_match"],
                    "exact_match": hit,
                }
            )
    return {
        "results": {
            name: {
                "alias": name,
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": 0.5,
                "exact_match,flexible-extract": 1.0,
                "exact_match_stderr,flexible-extract": 0.0,
            }
        },
        "samples": {name: samples},
        "n-samples": {name: {"original": 2, "effective": 2}},
    }


def test_two_filters_stay_two_metrics() -> None:
    out = split_results(_two_filter_results("gsm"), "gsm")
    assert out["metrics"]["exact_match,strict-match"]["value"] == 0.5
    assert out["metrics"]["exact_match,flexible-extract"]["value"] == 1.0
    assert "exact_match" not in out["metrics"]
    # one row per prompt, each filter's value under its own name (not averaged together)
    assert out["sample_metrics"] == [
        {"doc_id": 0, "exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0},
        {"doc_id": 1, "exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0},
    ]
    assert [g["text"] for g in out["generations"]] == ["answer 0", "answer 1"]  # the texts once, not per filter


def test_default_and_single_filters_keep_bare_names() -> None:
    res = _two_filter_results("t")
    res["results"]["t"] = {"acc,none": 0.25, "acc_stderr,none": 0.1, "exact_match,all": 0.5}
    res["samples"]["t"] = [
        {"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 0.25, "resps": [], "arguments": []},
        {"doc_id": 0, "filter": "all", "metrics": ["exact_match"], "exact_match": 0.5, "resps": [], "arguments": []},
    ]
    out = split_results(res, "t")
    assert set(out["metrics"]) == {"acc", "exact_match"}
    assert out["sample_metrics"] == [{"doc_id": 0, "acc": 0.25, "exact_match": 0.5}]


def _direct_nll(lm, prompt: str, text: str) -> float:
    """Mean NLL of ``text``'s tokens given ``prompt``: one unbatched forward of the (window-cut)
    sequence, in float64."""
    ctx, cont = lm._encode_pair(prompt, text)
    seq = (ctx + cont)[-lm.max_length :]
    n = min(len(cont), len(seq) - 1)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([seq])).logits[0].double()
    logp = torch.log_softmax(logits[len(seq) - n - 1 : len(seq) - 1], -1)
    return -logp.gather(1, torch.tensor(seq[len(seq) - n :])[:, None]).mean().item()


@pytest.mark.parametrize("window", [512, 12])
def test_score_nll_matches_a_direct_computation(tiny_lm_factory, window) -> None:
    """A continuation that is a truncated prefix of a longer one gets its own tokens' log-probs, with
    and without the window cutting the longer sequence."""
    lm = tiny_lm_factory(max_length=window)
    assert lm.max_length == window
    prompt = "the capital of france"
    long = " is paris and the capital of italy is rome"
    pairs = [(prompt, long), (prompt, " is paris"), (prompt, " is paris and"), ("salt and ", "pepper, bread")]
    together = score_nll(lm, pairs, batch_size=3)
    for (p, t), got in zip(pairs, together, strict=True):
        assert got == pytest.approx(_direct_nll(lm, p, t), abs=1e-4), (window, t)
    assert len({round(v, 6) for v in together}) == len(pairs)


def _write_run(tmp_path, tiny_model) -> tuple[RunStore, dict]:
    """A one-cell run directory (a speed cell of the tiny model)."""
    from harness_ext.run import Runner
    from harness_ext.spec import parse_spec

    text = (
        f'name: t\nmodels: [{{name: a, pretrained: "{tiny_model}"}}]\nschemes: [fp32]\n'
        "probe: {enabled: false}\nthreads: 1\n"
        "speed: {batch_sizes: [1], prompt_tokens: 4, new_tokens: 2, warmup: 0, repeats: 3, rounds: 1}\n"
    )
    Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r").run()
    store = RunStore(tmp_path / "r")
    (path,) = store.records_dir.glob("*.json")
    return store, json.loads(path.read_text())


def test_edited_or_wrongly_versioned_records_are_unreadable(tiny_model, tmp_path) -> None:
    store, data = _write_run(tmp_path, tiny_model)
    path = store.records_dir / f"{data['cell_id']}.json"
    assert list(store.load_records()) == [data["cell_id"]] and not store.problems
    edited = {**data, "definition": {**data["definition"], "device": "cuda"}}
    path.write_text(json.dumps(edited))
    assert store.load_records() == {} and "does not hash to its cell id" in store.problems[0]
    for version in ("1", "99", 1.0, True, None):
        path.write_text(json.dumps({**data, "record_version": version}))
        assert store.load_records() == {}, version
        assert "record_version" in store.problems[0], version
    path.write_text(json.dumps({**data, "record_version": 2}))
    from harness_ext.errors import StoreError

    with pytest.raises(StoreError, match="newer harness_ext"):
        store.load_records()


def test_an_unreadable_record_is_said_on_stderr_and_recomputed(tiny_model, tmp_path, capfd) -> None:
    from harness_ext.run import Runner
    from harness_ext.spec import parse_spec

    store, data = _write_run(tmp_path, tiny_model)
    path = store.records_dir / f"{data['cell_id']}.json"
    path.write_text(json.dumps({**data, "record_version": "1"}))
    capfd.readouterr()
    text = (store.root / "spec.yaml").read_text()
    result = Runner(parse_spec(text), text, progress=False, output_dir=store.root).run()
    assert "record_version '1' is not 1" in capfd.readouterr().err
    assert result.ok == 1 and result.skipped == 0
    assert math.isfinite(json.loads(path.read_text())["metrics"]["wall_ms"]["value"])
