"""The hf-quant backend inside lm-eval: by name with model_args, both request types, timing records."""

from __future__ import annotations

import sys

import lm_eval
import pytest

from harness_ext.point import SamplingPoint
from harness_ext.tasks import TASKS_DIR, make_variant, task_manager
from harness_ext.tasks.loaders import load_nextword


def _loglikelihood_task():
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(
        config={
            "task": "nextword_loglikelihood",
            "custom_dataset": load_nextword,
            "test_split": "test",
            "output_type": "loglikelihood",
            "doc_to_text": "{{context}}",
            "doc_to_target": " {{target}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    )


def test_hf_quant_by_name_runs_generate_and_loglikelihood(tiny_model) -> None:
    import harness_ext.backend  # noqa: F401  registers hf-quant

    gen = make_variant(
        "quant_nextword", "nw", gen_kwargs={"do_sample": True, "temperature": 0.7, "max_gen_toks": 4, "seed": 1}
    )
    res = lm_eval.simple_evaluate(
        model="hf-quant",
        model_args=f"pretrained={tiny_model},quant=nf4,double_quant=True,device=cpu,batch_size=4",
        tasks=[gen, _loglikelihood_task()],
        limit=5,
        task_manager=task_manager(),
        bootstrap_iters=0,
    )
    assert 0.0 <= res["results"]["nw"]["exact_match,all"] <= 1.0
    ll = res["results"]["nextword_loglikelihood"]
    assert ll["perplexity,none"] > 1.0 and 0.0 <= ll["acc,none"] <= 1.0
    assert res["config"]["hf_quant"]["scheme"]["quant"] == "nf4"
    assert res["config"]["hf_quant"]["scheme"]["double_quant"] is True
    assert len(res["samples"]["nw"]) == 5


def test_timing_record_fields_are_plausible(tiny_lm_factory) -> None:
    lm = tiny_lm_factory("int8")
    lm.pop_calls()
    task = make_variant("quant_continuation", "ct", gen_kwargs={"do_sample": False, "max_gen_toks": 6})
    lm_eval.simple_evaluate(model=lm, tasks=[task], limit=6, task_manager=task_manager(), bootstrap_iters=0)
    calls = lm.pop_calls()
    assert sum(c.rows for c in calls) == 6
    for c in calls:
        d = c.to_dict()
        for key in (
            "rows",
            "prompt_tokens",
            "new_tokens",
            "wall_ms",
            "ttft_ms",
            "decode_ms_per_step",
            "peak_memory_bytes",
        ):
            assert d[key] is not None and d[key] > 0, key
        assert c.new_tokens <= c.rows * 6
        assert c.ttft_ms < c.wall_ms
        assert c.decode_ms_per_step * c.steps < c.wall_ms
    info = lm.load_info
    assert info.weight_bytes > 0 and info.load_s > 0 and info.layer_types.get("Linear8bitLt") == 14


def test_tokenizer_without_pad_token_works(tiny_model_nopad) -> None:
    from harness_ext.backend import HFQuantLM

    lm = HFQuantLM(pretrained=str(tiny_model_nopad), quant="fp32", device="cpu", batch_size=4)
    task = make_variant("quant_nextword", "nw_nopad", gen_kwargs={"do_sample": False, "max_gen_toks": 3})
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=4, task_manager=task_manager(), bootstrap_iters=0)
    assert "exact_match,all" in res["results"]["nw_nopad"]


def test_greedy_run_is_deterministic(tiny_lm_factory) -> None:
    lm = tiny_lm_factory("nf4")
    outs = []
    for _ in range(2):
        task = make_variant("quant_continuation", "det", gen_kwargs={"do_sample": False, "max_gen_toks": 8})
        r = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=4, task_manager=task_manager(), bootstrap_iters=0)
        outs.append([s["resps"] for s in r["samples"]["det"]])
    assert outs[0] == outs[1]


def test_cli_hands_over_to_lm_eval(tiny_model, tmp_path, capsys, monkeypatch) -> None:
    """``harness-ext lm-eval`` registers hf-quant and runs lm-eval's own CLI, which prints and writes
    its results (in this process: a fresh interpreter costs seconds of imports for the same path)."""
    import logging

    import lm_eval.utils

    from harness_ext.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:])  # the hand-over sets lm-eval's argv
    # lm-eval's CLI would give its logger a handler on this test's captured stderr, which later tests
    # would write to after it closed: its records go through pytest's own logging capture instead
    monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", True)
    monkeypatch.setattr(logging.getLogger("lm_eval"), "level", logging.getLogger("lm_eval").level)
    out = tmp_path / "out"
    code = main(
        [
            "lm-eval", "run", "--model", "hf-quant", "--model_args", f"pretrained={tiny_model},quant=int8",
            "--device", "cpu", "--tasks", "quant_nextword", "--include_path", str(TASKS_DIR), "--limit", "3",
            "--output_path", str(out),
        ]
    )  # fmt: skip
    shown = capsys.readouterr()
    assert code == 0, shown.err[-2000:]
    assert "exact_match" in shown.out
    assert list(out.rglob("results_*.json"))


@pytest.mark.parametrize(
    "kw",
    [
        {"do_sample": True, "temperature": 0.7, "top_p": 0},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.0},
        {"do_sample": True, "temperature": 0.7, "top_p": -0.5},
        {"do_sample": True, "temperature": 0.7, "top_p": 1.5},
        {"do_sample": False, "top_p": 0},  # refused even where greedy would ignore it
        {"do_sample": True, "temperature": 0.7, "repetition_penalty": 0},
        {"do_sample": True, "temperature": -1},
    ],
)
def test_sampling_settings_out_of_range_are_refused_not_turned_off(kw) -> None:
    """``top_p: 0`` used to become 1.0 ("off"), the opposite of what was asked: now it is refused."""
    from harness_ext.errors import SpecError

    with pytest.raises(SpecError, match=next(k for k in ("top_p", "repetition_penalty", "temperature") if k in kw)):
        SamplingPoint.from_gen_kwargs(dict(kw), 32)


def test_top_p_in_range_and_top_k_zero_still_work(tiny_lm_factory) -> None:
    lm = tiny_lm_factory("fp32")
    kw = {"do_sample": True, "temperature": 0.7, "top_p": 0.5, "top_k": 0}
    row = lm._row(SamplingPoint.from_gen_kwargs(kw, lm.max_gen_toks), kw, "ctx", 0)
    assert row.point.top_p == 0.5 and row.point.top_k is None and row.point.temperature == 0.7 and row.key != 0


def test_lm_eval_gen_kwargs_top_p_zero_is_one_line_error(tiny_model, capsys) -> None:
    """Through ``harness-ext lm-eval ... --gen_kwargs top_p=0``: exit 2 and our one line, no run."""
    from harness_ext.cli import main

    code = main(
        [
            "lm-eval", "run", "--model", "hf-quant", "--model_args", f"pretrained={tiny_model},quant=fp32",
            "--device", "cpu", "--tasks", "quant_nextword", "--include_path", str(TASKS_DIR), "--limit", "2",
            "--gen_kwargs", "do_sample=True,temperature=0.7,top_p=0",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "harness-ext: error: top_p must be in (0, 1]" in err and "Traceback" not in err
