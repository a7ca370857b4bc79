"""Speed rounds in the analysis (issue 25, issue 28 item 4): rounds grouped by machine fingerprint and
paired within a GPU, a slow machine speed index flags its round, and the facts of a round read the
same whether a record holds them as typed fields or (made before them) as metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness_ext.analysis import Study
from harness_ext.analysis import rounds as rd
from harness_ext.store import Record
from harness_ext.store.tables import CELLS, GENERATIONS, SAMPLES, cell_rows, frame

SCHEMES = {"fp16": ("none", "float16"), "nf4": ("nf4", "float16")}


def _record(scheme: str, rnd: int, ms: float, *, fp: str | None = "m1", gpu: str | None = None, typed: bool = True,
            contended: bool = False, index: float = 10.0) -> Record:  # fmt: skip
    quant, dtype = SCHEMES[scheme]
    params = {"batch_size": 1, "mode": "eager", "round": rnd, **({"machine": fp} if fp else {})}
    definition = {"kind": "speed", "model": {"name": "m"}, "scheme": {"name": scheme, "quant": quant, "dtype": dtype},
                  "device": "cuda", "params": params}  # fmt: skip
    metrics = {
        "decode_ms_per_token": {"value": ms, "lo": ms * 0.9, "hi": ms * 1.1, "n": 3},
        "index_matmul_gflops": {"value": index, "lo": None, "hi": None, "n": 1},
    }
    measurements: dict = {"round": rnd, "round_position": 0}
    if typed:
        measurements |= {"contended": contended, "contention_why": ["busy"] if contended else [], "fingerprint": fp}
        measurements |= {"gpus": [gpu]} if gpu else {}
    else:  # recorded before the typed facts: round, position and contended as metrics
        metrics |= {k: {"value": float(v), "lo": None, "hi": None, "n": 1.0, "stderr": None}
                    for k, v in (("round", rnd), ("round_position", 0), ("contended", contended))}  # fmt: skip
    cid = f"{scheme}-{rnd}-{fp}-{gpu}-{typed}"
    return Record(cell_id=cid, kind="speed", label=cid, definition=definition, status="ok", started_at="t",
                  finished_at="t", invocation="inv", metrics=metrics, measurements=measurements)  # fmt: skip


def _study(records: list[Record]) -> Study:
    run = {"references": {"m": "fp16"}, "schemes": {s: "" for s in SCHEMES}}
    return Study(frame(cell_rows(records), CELLS), frame([], SAMPLES), frame([], GENERATIONS), run)


def test_rounds_of_two_machines_are_two_groups_never_one_test() -> None:
    recs = [_record(s, r, ms * k, fp=fp) for fp, k in (("m1", 1.0), ("m2", 3.0))
            for s, ms in (("fp16", 10.0), ("nf4", 20.0)) for r in range(3)]  # fmt: skip
    sp = rd.speed_table(_study(recs))
    assert set(sp["fingerprint"]) == {"m1", "m2"} and "round" in sp and "round" not in sp.filter(like="_lo")
    summary = rd.speed_summary(_study(recs))
    assert sorted(summary["fingerprint"]) == ["m1", "m1", "m2", "m2"]
    assert (summary["rounds"] == 3).all()
    nf4 = summary[summary["scheme"] == "nf4"]
    assert np.allclose(nf4["vs_reference"], 2.0)  # paired within each machine's rounds
    with pytest.raises(ValueError, match="fingerprints"):
        rd.paired_log_ratios(sp, "nf4", "fp16")  # a group across machines is refused, not pooled
    for _, g in sp.groupby(rd.GROUP):
        assert len(rd.paired_log_ratios(g, "nf4", "fp16")) == 3


def test_a_ratio_pairs_rounds_timed_on_the_same_gpu_only() -> None:
    recs = [_record("fp16", r, 10.0, gpu="GPU-0") for r in range(3)]
    recs += [
        _record("nf4", 0, 20.0, gpu="GPU-0"),
        _record("nf4", 1, 20.0, gpu="GPU-1"),
        _record("nf4", 2, 20.0, gpu="GPU-0"),
    ]
    sp = rd.speed_table(_study(recs))
    assert sorted(set(sp["gpu"])) == ["GPU-0", "GPU-1"]
    assert len(rd.paired_log_ratios(sp, "nf4", "fp16")) == 2  # round 1's nf4 ran on another GPU: no pair


def test_a_round_whose_machine_ran_slow_counts_as_contended() -> None:
    recs = [_record(s, r, 10.0, index=5.0 if (s, r) == ("nf4", 2) else 10.0) for s in SCHEMES for r in range(4)]
    sp = rd.speed_table(_study(recs))
    slow = sp[sp["contended"]]
    assert list(zip(slow["scheme"], slow["round"], strict=True)) == [("nf4", 2)]
    assert "50% below the median" in slow["contended_why"].iloc[0]
    fewer = rd.speed_table(_study([_record("nf4", r, 10.0, index=5.0 + 5 * r) for r in range(2)]))
    assert not fewer["contended"].any()  # two indexed rounds: no median to judge by


def test_round_facts_read_the_same_from_typed_fields_and_from_old_metrics() -> None:
    def table(typed: bool):
        recs = [_record(s, r, 10.0 + r, typed=typed, fp=None, contended=(r == 1)) for s in SCHEMES for r in range(3)]
        return rd.speed_table(_study(recs))

    new, old = table(True), table(False)
    cols = ["scheme", "round", "round_position", "contended", "decode_ms_per_token"]
    assert new[cols].astype(str).equals(old[cols].astype(str))
    assert (new["fingerprint"] == "").all() and (old["fingerprint"] == "").all()  # one unrecorded group
    assert set(new.loc[new["contended"], "contended_why"]) == {"busy"}  # why: in typed records only
    assert set(old.loc[old["contended"], "contended_why"]) == {""} and old["contended"].sum() == 2


def test_typed_round_facts_are_columns_of_the_cells_table_not_metric_rows() -> None:
    rows = cell_rows([_record("nf4", 2, 10.0, gpu="GPU-7", contended=True)])
    assert {r["metric"] for r in rows} == {"decode_ms_per_token", "index_matmul_gflops"}
    assert {(r["round"], r["fingerprint"], r["gpu"], r["contended"], r["contended_why"]) for r in rows} == {
        (2, "m1", "GPU-7", True, "busy")
    }
    old = cell_rows([_record("nf4", 2, 10.0, typed=False, contended=True)])
    assert {r["metric"] for r in old} == {"decode_ms_per_token", "index_matmul_gflops"}
    assert {(r["round"], r["round_position"], r["contended"]) for r in old} == {(2, 0, True)}


def test_summary_keeps_its_columns_for_the_claims() -> None:
    s = rd.speed_summary(_study([_record(sch, r, 10.0) for sch in SCHEMES for r in range(3)]))
    assert list(s.columns[:5]) == ["model", "batch_size", "mode", "fingerprint", "scheme"]
    assert math.isclose(s["between_round_cv"].iloc[0], 0.0)
