"""The one typed sampling point: read from lm-eval's gen_kwargs with its refusals, labelled and stored
in the form records and committed reports hold (they must not change)."""

from __future__ import annotations

import pytest

from harness_ext.errors import SpecError
from harness_ext.point import SamplingError, SamplingPoint


def test_from_gen_kwargs_reads_lm_evals_conventions() -> None:
    p = SamplingPoint.from_gen_kwargs({"do_sample": True, "temperature": 0.7, "top_k": 0, "max_gen_toks": 9}, 32)
    assert (p.temperature, p.top_k, p.top_p, p.max_new_tokens, p.repetition_penalty) == (0.7, None, 1.0, 9, 1.0)
    greedy = SamplingPoint.from_gen_kwargs({"do_sample": False, "temperature": 0.7, "top_k": 5}, 32)
    assert greedy.greedy and greedy.top_k == 5  # do_sample=False is greedy whatever the temperature
    assert greedy.effective() == SamplingPoint(temperature=0.0, max_new_tokens=32)  # greedy ignores top-k/top-p
    assert SamplingPoint.from_gen_kwargs({"max_new_tokens": 7}, 32).max_new_tokens == 7
    assert SamplingPoint.from_gen_kwargs({}, 12) == SamplingPoint(max_new_tokens=12)


def test_from_gen_kwargs_refuses_in_one_line_and_a_spec_error() -> None:
    with pytest.raises(SamplingError, match=r"^temperature must be a number, not 'hot'$"):
        SamplingPoint.from_gen_kwargs({"temperature": "hot"}, 32)
    with pytest.raises(SpecError, match=r"^top_k must be >= 0"):
        SamplingPoint.from_gen_kwargs({"top_k": -1}, 32)
    assert issubclass(SamplingError, SpecError)


def test_a_task_may_go_beyond_the_specs_limits_as_in_lm_eval() -> None:
    """The spec's grid caps temperature at 10 and the length at 8192; a task's own gen_kwargs are read
    as lm-eval reads them (only settings without meaning are refused)."""
    p = SamplingPoint.from_gen_kwargs({"do_sample": True, "temperature": 20, "max_gen_toks": 10000}, 32)
    assert (p.temperature, p.max_new_tokens) == (20.0, 10000)


def test_labels_and_probe_record_fields_keep_their_text() -> None:
    p = SamplingPoint(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=64)
    assert p.label() == "T=0.7 k=50 p=0.9 n=64"
    assert p.label(cap=False) == "T=0.7 k=50 p=0.9"
    assert list(p.probe_fields().items()) == [
        ("temperature", 0.7),
        ("top_k", 50),
        ("top_p", 0.9),
        ("repetition_penalty", 1.0),
    ]
    assert p.truncated and not SamplingPoint(temperature=1.0).truncated
    assert p.capped(8) == SamplingPoint(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=8)


def test_every_field_is_documented() -> None:
    assert all(f.description for f in SamplingPoint.model_fields.values())


def test_a_table_rows_point_has_the_points_own_label() -> None:
    """The report's failed cells and the comparison's cells label a row by rebuilding its point:
    points that differ only in top-p or repetition penalty stay apart, and absent values (NaN, the
    -1 of merge keys) are left out rather than printed."""
    import math

    from harness_ext.point import row_label
    from harness_ext.report.compare import label

    nan = math.nan
    row = {"temperature": 0.7, "top_k": nan, "top_p": 1.0, "max_new_tokens": 64.0, "repetition_penalty": 1.0}
    assert row_label(row) == "T=0.7 k=- p=1 n=64"
    assert row_label({**row, "top_p": 0.9, "repetition_penalty": 1.2}) == "T=0.7 k=- p=0.9 n=64 rp=1.2"
    assert row_label({**row, "top_k": 50.0, "max_new_tokens": nan}) == "T=0.7 k=50 p=1"  # a probe's: no cap
    assert row_label({"temperature": nan, "max_new_tokens": nan}) == ""  # a speed cell
    keyed = {"model": "m", "scheme": "nf4", "task": "probe:quant_nextword", "metric": "p_gold"}
    assert (
        label({**keyed, **row, "top_k": -1, "max_new_tokens": -1})
        == "m | nf4 | probe:quant_nextword | p_gold | T=0.7 k=- p=1"
    )
    assert label({**keyed, "temperature": -1, "top_k": -1}) == "m | nf4 | probe:quant_nextword | p_gold"
