"""The store's typed record parts: validated when built and when read, written as the dicts they
replace (same keys, order and numbers), readable as those dicts; both stores satisfy one protocol."""

from __future__ import annotations

import copy
import json
import sys
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness_ext.store import (
    Generation,
    MemoryStore,
    MetricValue,
    ProbeMeasurements,
    Record,
    RunStore,
    SampleMetrics,
    SpeedMeasurements,
    SpeedSummary,
    Store,
    dumps,
    record_dict,
)


class UntypedRecord(BaseModel):
    """The record as it was before its parts were typed (format version 1): the reference for what
    the typed record must write."""

    model_config = ConfigDict(extra="forbid")

    record_version: int = 1
    cell_id: str
    kind: Literal["eval", "probe", "speed"]
    label: str
    definition: dict[str, Any]
    status: Literal["ok", "failed"]
    error: str | None = None
    traceback: str | None = None
    started_at: str
    finished_at: str
    invocation: str
    metrics: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    sample_metrics: list[dict[str, Any]] = Field(default_factory=list)
    generations: list[dict[str, Any]] = Field(default_factory=list)
    measurements: dict[str, Any] = Field(default_factory=dict)
    load: dict[str, Any] | None = None
    lm_eval: dict[str, Any] | None = None


def fresh(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record's fields (lm-eval's own results, never changed, are shared: they hold
    objects that do not copy)."""
    return {k: v if k == "lm_eval" else copy.deepcopy(v) for k, v in fields.items()}


def untyped_json(fields: dict[str, Any]) -> str:
    rec = UntypedRecord(**fresh(fields))
    return dumps(rec.model_dump(mode="python", exclude={"traceback"} if rec.traceback is None else None))


BASE = {
    "cell_id": "c",
    "label": "l",
    "definition": {},
    "status": "ok",
    "started_at": "s",
    "finished_at": "f",
    "invocation": "i",
}


def test_parts_write_the_keys_given_in_the_order_given() -> None:
    fields = {
        **BASE,
        "kind": "eval",
        "metrics": {"em": {"n": 3, "value": 1, "stderr": None}, "x": {"value": 0.5}},
        "sample_metrics": [{"doc_id": 0, "em": 1.0, "x": None}],
        "generations": [{"doc_id": 0, "sample": 0, "prompt": None, "text": "a", "finish": "eos"}],  # no new_tokens
        "measurements": {"kv_cache": None, "grid_batched": True, "evaluation": {"wall_s": 1, "cells": 2}},
    }
    typed = Record(**copy.deepcopy(fields))
    assert dumps(record_dict(typed)) == untyped_json(fields)
    assert isinstance(typed.metrics["em"], MetricValue) and typed.metrics["em"].n == 3.0
    assert isinstance(typed.generations[0], Generation) and typed.generations[0].text == "a"
    assert typed.measurements.evaluation.wall_s == 1 and isinstance(typed.measurements.evaluation.wall_s, int)


def test_measurements_are_the_part_of_the_records_kind() -> None:
    speed = Record(**BASE, kind="speed", measurements={"ttft_ms": {"n": 3, "median": 1.5}, "round": 2, "x": [1]})
    assert isinstance(speed.measurements, SpeedMeasurements) and isinstance(speed.measurements.ttft_ms, SpeedSummary)
    assert speed.measurements.round == 2 and speed.measurements["x"] == [1]  # undocumented keys are kept
    probe = Record(**BASE, kind="probe", measurements={"prompts": 4})
    assert isinstance(probe.measurements, ProbeMeasurements) and probe.measurements.prompts == 4
    again = Record.model_validate(json.loads(dumps(record_dict(speed))))
    assert isinstance(again.measurements, SpeedMeasurements) and record_dict(again) == record_dict(speed)


@pytest.mark.parametrize(
    "bad",
    [
        {"generations": [{"doc_id": 0, "sample": 0, "text": "a", "finish": "exploded"}]},
        {"generations": [{"doc_id": 0, "text": "a"}]},  # no sample index
        {"sample_metrics": [{"doc_id": 0, "em": "high"}]},
        {"metrics": {"em": {"value": 1.0, "median": 2.0}}},  # not a field of a metric value
        {"measurements": {"ttft_ms": {"median": "fast"}}},
    ],
)
def test_a_malformed_part_is_refused_when_built_and_when_read(bad: dict[str, Any], tmp_path) -> None:
    fields = {**BASE, "kind": "speed" if "measurements" in bad else "eval", **bad}
    with pytest.raises(ValidationError):
        Record(**fields)
    store = RunStore(tmp_path)
    store.records_dir.mkdir(parents=True)
    good = Record(**{**BASE, "kind": fields["kind"]})
    (store.records_dir / "c.json").write_text(dumps({**record_dict(good), **bad}))
    assert store.load_records() == {} and "invalid record" in store.problems[0]


def test_parts_read_and_change_like_the_dicts_they_replace() -> None:
    rec = Record(
        **BASE,
        kind="eval",
        metrics={"em": {"value": 0.5, "n": 2}},
        sample_metrics=[{"doc_id": 0, "em": 1.0}],
        generations=[{"doc_id": 0, "sample": 0, "text": "a"}],
    )
    g, row, m = rec.generations[0], rec.sample_metrics[0], rec.metrics["em"]
    assert (g["text"], g.get("finish"), "prompt" in g) == ("a", None, False)
    assert dict(g) == {"doc_id": 0, "sample": 0, "text": "a"}
    assert m == {"value": 0.5, "n": 2.0} and m == pytest.approx({"value": 0.5, "n": 2.0}) and m.get("lo") is None
    row["agree_ref"] = 0.25  # a metric added later goes last, as in a dict
    assert list(row) == ["doc_id", "em", "agree_ref"] and row.pop("em") == 1.0
    assert list(row.items()) == [("doc_id", 0), ("agree_ref", 0.25)]
    with pytest.raises(ValidationError):
        row["nll_ref"] = "high"
    rec.measurements["reference_metrics"] = {"reference_cell": "r", "metrics": ["agree_ref"]}
    assert rec.measurements.reference_metrics.reference_cell == "r"
    rec.metrics["nll"] = {"value": 1, "n": 3}  # a plain dict put in after the record was built: written as is
    assert json.loads(dumps(record_dict(rec)))["metrics"]["nll"] == {"value": 1, "n": 3}


def test_both_stores_satisfy_the_store_protocol(tmp_path) -> None:
    assert isinstance(RunStore(tmp_path), Store) and isinstance(MemoryStore(), Store)


def test_fresh_records_of_every_kind_write_what_the_untyped_record_wrote(tiny_model, tmp_path, monkeypatch) -> None:
    """Every record a real run builds (eval with metrics against the reference, probe, speed) writes
    the same JSON through the typed parts as through the untyped record, from the same fields."""
    from harness_ext.run import Runner
    from harness_ext.spec import parse_spec

    built: list[dict[str, Any]] = []

    class Capturing(Record):
        def __init__(self, **fields: Any) -> None:
            built.append(fresh(fields))
            super().__init__(**fields)

    for module in [m for name, m in sys.modules.items() if name.startswith("harness_ext.") and m is not None]:
        if getattr(module, "Record", None) is Record and not module.__name__.startswith("harness_ext.store"):
            monkeypatch.setattr(module, "Record", Capturing)
    text = (
        f'name: t\nmodels: [{{name: a, pretrained: "{tiny_model}"}}]\nschemes: [fp32, nf4]\n'
        "sampling: {temperature: [0.8], max_new_tokens: [3]}\ntasks: [quant_nextword, quant_continuation]\n"
        "limit: 2\nseeds: [0]\nprobe: {limit: 3}\nthreads: 1\n"
        "speed: {batch_sizes: [1], prompt_tokens: 4, new_tokens: 2, warmup: 0, repeats: 3, rounds: 1}\n"
    )
    Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r").run()
    assert {f["kind"] for f in built} == {"eval", "probe", "speed"} and all(f["status"] == "ok" for f in built)
    for fields in built:
        assert dumps(record_dict(Record(**fresh(fields)))) == untyped_json(fields), fields["label"]
    for path in (tmp_path / "r" / "records").glob("*.json"):  # after the metrics against the reference
        written = json.loads(path.read_text(encoding="utf-8"))
        assert dumps(record_dict(Record.model_validate(fresh(written)))) == untyped_json(written), path.name
    records = RunStore(tmp_path / "r").load_records()
    with_ref = [r for r in records.values() if "rouge_l_ref" in r.metrics]
    assert with_ref and all(isinstance(s, SampleMetrics) for r in with_ref for s in r.sample_metrics)


def test_a_table_column_of_the_wrong_type_is_named_against_the_schema() -> None:
    import pyarrow as pa

    from harness_ext.store.tables import SAMPLES, frame, mismatches

    row = dict.fromkeys(SAMPLES.names) | {"cell_id": "c", "doc_id": 0, "metric": "em", "value": 1.0}
    assert mismatches(pa.Schema.from_pandas(frame([row], SAMPLES), preserve_index=False), SAMPLES) == []
    bad = pa.Schema.from_pandas(frame([row | {"doc_id": "first"}], SAMPLES), preserve_index=False)
    assert mismatches(bad, SAMPLES) == ["column doc_id is large_string, not int64"]
