"""Speed rounds: one load per (model, scheme, round), a balanced (Williams) order over rounds, rounds
that can be added later without redoing earlier ones, and what the machine was doing around each."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

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
    assert len({tuple(o) for o in orders}) == 4  # four rows of the 4-scheme Williams design
    assert orders == [schedule.round_order(spec.name, r, schedule.spec_pairs(spec)) for r in range(4)]
    assert schedule.work_units(cells, spec.name, schedule.spec_pairs(spec)) == units  # seeded: reproducible


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_a_full_cycle_of_rounds_balances_positions_and_neighbours(n: int) -> None:
    """Over a full cycle (n rounds, 2n for odd n) each scheme is timed in each position equally
    often, and each ordered pair of schemes is timed one after the other equally often."""
    pairs = [("m", f"s{i}") for i in range(n)] + [("k", f"s{i}") for i in range(n)]
    cycle = len(schedule.williams(n))
    assert cycle == (n if n % 2 == 0 else 2 * n)
    for model in ("m", "k"):
        orders = [[s for m, s in schedule.round_order("study", r, pairs) if m == model] for r in range(cycle)]
        positions = Counter((s, i) for o in orders for i, s in enumerate(o))
        neighbours = Counter(p for o in orders for p in itertools.pairwise(o))
        assert len(positions) == n * n and len(set(positions.values())) == 1
        assert len(neighbours) == n * (n - 1) and len(set(neighbours.values())) == 1
    assert schedule.round_order("study", cycle, pairs) == schedule.round_order("study", 0, pairs)  # the cycle repeats


def test_each_round_loads_afresh_and_records_its_facts_as_typed_fields(tiny_model, tmp_path) -> None:
    text = SPEC.format(a=tiny_model, rounds=2)
    runner = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "r")
    result = runner.run()
    assert result.failed == 0 and len(runner.loads) == 4 * 2  # one load per (scheme, round)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").glob("*.json")]
    assert sorted(r["measurements"]["round"] for r in recs) == [0] * 4 + [1] * 4
    for r in recs:
        m = r["measurements"]
        assert m["round_position"] == schedule.position(runner.spec, _cell(runner, r["cell_id"]))
        assert isinstance(m["contended"], bool) and isinstance(m["contention_why"], list)
        assert m["fingerprint"] == runner.machine == r["definition"]["params"]["machine"]
        assert m["window"]["samples"] >= 2 and m["speed_index"]["matmul_gflops"] > 0
        assert not {"round", "round_position", "contended"} & set(r["metrics"])  # facts, not metrics
        assert r["metrics"]["index_memory_gb_s"]["value"] == m["speed_index"]["memory_gb_s"]
    assert sorted(r["measurements"]["round_position"] for r in recs) == [0, 0, 1, 1, 2, 2, 3, 3]
    more = SPEC.format(a=tiny_model, rounds=3)
    again = Runner(parse_spec(more), more, progress=False, output_dir=tmp_path / "r")
    res2 = again.run()
    assert res2.skipped == 8 and len(again.loads) == 4  # round 2 only


def _cell(runner: Runner, cell_id: str):
    return next(c for c in expand(runner.spec, "cpu", machine=runner.machine) if c.id == cell_id)
