"""Speed rounds: one load per (model, scheme, round), a seeded shuffled order per round, rounds that
can be added later without redoing earlier ones, and what the machine was doing around each."""

from __future__ import annotations

import json

from harness_ext import machine
from harness_ext.run import Runner, schedule
from harness_ext.spec import expand, parse_spec

SPEC = """\
name: rounds-test
models:
  - {{name: a, pretrained: "{a}"}}
schemes: [fp32, bf16, nf4, fp4]
tasks: []
probe: {{enabled: false}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 3, repeats: 3, warmup: 0, rounds: {rounds}}}
threads: 1
"""


def _cells(text: str):
    return expand(parse_spec(text), "cpu")


def test_rounds_are_not_part_of_a_cell_identity(tiny_model) -> None:
    three = {c.id for c in _cells(SPEC.format(a=tiny_model, rounds=3))}
    five = {c.id for c in _cells(SPEC.format(a=tiny_model, rounds=5))}
    assert three < five and len(five - three) == 2 * 4  # rounds 3 and 4 of each scheme: new cells only


def test_units_put_quality_first_then_each_round_in_its_own_seeded_order(tiny_model) -> None:
    text = SPEC.format(a=tiny_model, rounds=4).replace("probe: {enabled: false}", "probe: {enabled: true}")
    text = text.replace("tasks: []", "tasks: [quant_nextword]\nsampling: {temperature: [0]}")
    spec = parse_spec(text)
    cells = expand(spec, "cpu")
    units = schedule.work_units(cells, spec.name, schedule.spec_pairs(spec))
    keys = list(units)
    assert [len(k) for k in keys[:4]] == [2] * 4 and all(c.kind != "speed" for k in keys[:4] for c in units[k])
    orders = [[k[:2] for k in keys if len(k) == 3 and k[2] == r] for r in range(4)]
    assert all(sorted(o) == sorted(orders[0]) for o in orders)  # every scheme once per round
    assert len({tuple(o) for o in orders}) > 1  # shuffled: not the same order every round
    assert orders == [schedule.round_order(spec.name, r, schedule.spec_pairs(spec)) for r in range(4)]
    assert schedule.work_units(cells, spec.name, schedule.spec_pairs(spec)) == units  # seeded: reproducible


def test_each_round_loads_afresh_and_records_round_position_and_machine(tiny_model, tmp_path) -> None:
    text = SPEC.format(a=tiny_model, rounds=2)
    runner = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")
    result = runner.run()
    assert result.failed == 0 and len(runner.loads) == 4 * 2  # one load per (scheme, round)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").glob("*.json")]
    assert sorted(r["measurements"]["round"] for r in recs) == [0] * 4 + [1] * 4
    for r in recs:
        m = r["measurements"]
        assert m["round_position"] == schedule.position(runner.spec, _cell(runner, r["cell_id"]))
        assert "contended" in m["machine"]["contention"] and m["machine"]["before"]["load_1m"] is not None
        assert r["metrics"]["round"]["value"] == m["round"]
    more = SPEC.format(a=tiny_model, rounds=3)
    again = Runner(parse_spec(more), more, progress=False, output_dir=tmp_path / "r")
    res2 = again.run()
    assert res2.skipped == 8 and len(again.loads) == 4  # round 2 only


def _cell(runner: Runner, cell_id: str):
    return next(c for c in expand(runner.spec, "cpu") if c.id == cell_id)


def test_machine_snapshot_never_fails_and_flags_oversubscription() -> None:
    before, after = machine.snapshot(), machine.snapshot()
    assert machine.contention(before, after)["contended"] in (True, False)
    assert machine.contention({}, {})["contended"] is False  # unreadable: no flag, no exception
    stat = {"user": 0, "nice": 0, "system": 0, "idle": 0, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0}
    busy = {**stat, "user": 4 * 100 * 10}  # 4 cores busy for 10 s on a 2-core machine (100 ticks/s)
    b = {"time": 0.0, "cpus": 2, "proc_stat": stat, "self_cpu_s": 0.0}
    a = {"time": 10.0, "cpus": 2, "proc_stat": busy, "self_cpu_s": 10.0}
    import os

    if os.sysconf("SC_CLK_TCK") == 100:
        c = machine.contention(b, a)
        assert c["contended"] and abs(c["other_cores"] - 3.0) < 1e-9
        quiet = {**a, "proc_stat": {**stat, "user": 100 * 10, "idle": 100 * 10}}
        assert not machine.contention(b, quiet)["contended"]  # one core each: ours busy, the other idle
        starved = {**a, "proc_stat": {**stat, "user": 2 * 100 * 10}, "self_cpu_s": 5.0}  # measured here: 0.5 vs 1.5
        assert machine.contention(b, starved)["contended"]
        alone = {**a, "proc_stat": {**stat, "user": 2 * 100 * 10}, "self_cpu_s": 20.0}  # we used both cores
        assert not machine.contention(b, alone)["contended"]
    idle_gpu = {"sm_mhz": 345.0, "max_sm_mhz": 1980.0, "util_pct": 0.0}
    assert not machine.contention({"gpus": [idle_gpu]}, {"gpus": [idle_gpu]})["contended"]
    hot = {"sm_mhz": 1200.0, "max_sm_mhz": 1980.0, "util_pct": 99.0}
    assert machine.contention({"gpus": [hot]}, {"gpus": [hot]})["contended"]
