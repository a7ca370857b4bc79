"""Study spec: validation with field paths and line numbers, grid expansion, stable cell hashes."""

from __future__ import annotations

import pytest
from conftest import heavy_modules

from harness_ext.errors import SpecError
from harness_ext.point import SamplingPoint
from harness_ext.spec import SamplingGrid, StudySpec, expand, parse_spec

BASE = """\
name: s
models:
  - pretrained: some/model
schemes: [fp32, nf4, int8]
sampling:
  temperature: [0, 0.7]
  top_k: [null, 50]
  max_new_tokens: [16, 64]
tasks: [quant_nextword, quant_continuation]
seeds: [0, 1]
"""


def test_expansion_counts_and_reference_first() -> None:
    spec = parse_spec(BASE)
    cells = expand(spec, "cpu")
    evals = [c for c in cells if c.kind == "eval"]
    assert len(evals) == 3 * 8 * 2 * 2
    assert sum(c.kind == "probe" for c in cells) == 3
    assert sum(c.kind == "speed" for c in cells) == 3 * 3  # three schemes x three rounds (the default)
    assert cells[0].scheme.name == "fp32"  # the unquantized reference runs first
    assert len({c.id for c in cells}) == len(cells)


def test_hash_is_stable_and_changes_with_definition() -> None:
    a = {c.id for c in expand(parse_spec(BASE), "cpu")}
    assert a == {c.id for c in expand(parse_spec(BASE), "cpu")}
    changed = {c.id for c in expand(parse_spec(BASE.replace("[0, 0.7]", "[0, 0.8]")), "cpu")}
    assert len(a & changed) > 0 and a != changed  # temperature-0 cells survive, the 0.7 ones do not
    other_device = {c.id for c in expand(parse_spec(BASE), "cuda")}
    assert not a & other_device


def test_resolved_scheme_carries_dtype() -> None:
    spec = parse_spec(BASE.replace("pretrained: some/model", "pretrained: some/model\n    dtype: bfloat16"))
    nf4 = next(c for c in expand(spec, "cpu") if c.scheme.name == "nf4")
    assert nf4.scheme.dtype == "bfloat16" and nf4.scheme.compute_dtype == "bfloat16"


def test_explicit_points_and_dedup() -> None:
    grid = SamplingGrid(points=[SamplingPoint(temperature=0.5), SamplingPoint(temperature=0.5)])
    assert grid.expand() == [SamplingPoint(temperature=0.5)]
    with pytest.raises(ValueError, match="not both"):
        SamplingGrid(points=[SamplingPoint()], temperature=[0.1])


def test_task_pins_max_new_tokens() -> None:
    spec = parse_spec(
        BASE.replace(
            "tasks: [quant_nextword, quant_continuation]",
            "tasks: [{name: quant_nextword, max_new_tokens: 8}, quant_continuation]",
        )
    )
    nw = [c for c in expand(spec, "cpu") if c.kind == "eval" and c.task.name == "quant_nextword"]
    assert {c.point.max_new_tokens for c in nw} == {8}
    assert len(nw) == 3 * 4 * 2


def test_gen_kwargs_temperature_zero_is_greedy() -> None:
    kw = SamplingPoint(temperature=0, top_k=5).gen_kwargs()
    assert kw["do_sample"] is False and kw["temperature"] == 0


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        (
            "  - pretrained: some/model",
            "  - pretrained: some/model\n    colour: red",
            4,
            "models[0].colour: unknown key 'colour'; allowed keys",
        ),
        ("seeds: [0, 1]", "seeds: zero", 10, "seeds: Input should be a valid list"),
        (
            "  temperature: [0, 0.7]",
            "  temperature: [0, -0.5]",
            6,
            "sampling.temperature[1]: Input should be greater than or equal to 0",
        ),
        ("  top_k: [null, 50]", "  top_k: [null, 0]", 7, "sampling.top_k[1]: Input should be greater than 0"),
        (
            "sampling:\n  temperature: [0, 0.7]\n  top_k: [null, 50]\n  max_new_tokens: [16, 64]",
            "sampling: {}",
            5,
            "the sampling grid is empty",
        ),
        ("[fp32, nf4, int8]", "[fp32, nf5]", 4, "schemes[1]: unknown scheme 'nf5': built-ins are"),
        (
            "[fp32, nf4, int8]",
            "\n  - fp32\n  - {name: i8, quant: int8, compute_dtype: float16}",
            6,
            "compute_dtype applies to 4-bit schemes",
        ),
        ("seeds: [0, 1]", "seeds: [0, 1\n", 10, "malformed YAML: while parsing a flow sequence here"),
        ("seeds: [0, 1]", "seeds: [0, 0]", 10, "seeds: Value error, seeds lists a value twice"),
    ],
)
def test_bad_specs_name_field_and_line(old: str, new: str, line: int, fragment: str) -> None:
    text = BASE.replace(old, new)
    assert text != BASE
    with pytest.raises(SpecError) as e:
        parse_spec(text, "x.yaml")
    msg = str(e.value)
    assert msg.startswith(f"x.yaml:{line}:"), msg
    assert fragment.replace("Value error, ", "") in msg, msg


def test_json_schema_describes_fields() -> None:
    schema = StudySpec.model_json_schema()
    assert {"name", "models", "schemes"} <= set(schema["required"])  # tasks/sampling: optional for speed-only
    assert {"sampling", "tasks", "speed", "probe"} <= set(schema["properties"])
    assert "temperature" in schema["$defs"]["SamplingGrid"]["properties"]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("name: s", "name: ../escape", "name: String should match pattern"),
        (
            "  - pretrained: some/model",
            "  - pretrained: some/model\n    name: /etc",
            "models[0].name: String should match",
        ),
        ("[fp32, nf4, int8]", "\n  - {name: ../x, quant: nf4}", "schemes[0].name: String should match"),
        ("tasks: [quant_nextword, quant_continuation]", "tasks: [../../tasks]", "tasks[0]: String should match"),
    ],
)
def test_names_used_in_paths_cannot_escape(old: str, new: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(BASE.replace(old, new), "x.yaml")


def test_trust_remote_code_is_off_unless_asked() -> None:
    spec = parse_spec(BASE)
    assert spec.models[0].trust_remote_code is False
    on = parse_spec(
        BASE.replace("  - pretrained: some/model", "  - pretrained: some/model\n    trust_remote_code: true")
    )
    assert on.models[0].trust_remote_code is True


def test_artifact_names_cannot_leave_the_run_directory(tmp_path) -> None:
    from harness_ext.errors import StoreError
    from harness_ext.store import RunStore

    store = RunStore(tmp_path / "run")
    assert store.artifact("probe/m/x.pt").is_relative_to(tmp_path / "run" / "artifacts")
    for bad in ("../x.pt", "/etc/passwd", "probe/../../x.pt"):
        with pytest.raises(StoreError, match="escapes the run directory"):
            store.artifact(bad)


def test_importing_the_spec_imports_no_torch(fresh_imports) -> None:
    """A scheme is data until a backend builds it: the spec package (schemes and plan included) stays
    torch-free, so that `validate` and the report can use it cheaply."""
    assert heavy_modules(fresh_imports["modules"]["spec"]) == set()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_validate_imports_neither_torch_nor_lm_eval(fresh_imports, device: str) -> None:
    """`harness-ext validate` of a spec with our tasks does every check without torch or lm-eval
    (``device: auto`` included: the cell counts do not depend on the device)."""
    assert heavy_modules(fresh_imports["modules"][f"validate_{device}"]) == set()


def test_plan_records_the_device_type() -> None:
    from harness_ext.spec import plan

    assert {c.device for c in plan(parse_spec(BASE), "cuda:1")} == {"cuda"}
    assert {c.device for c in plan(parse_spec(BASE), "cpu")} == {"cpu"}


def test_the_probe_has_its_own_top_k_values_that_add_no_sampled_cells() -> None:
    from harness_ext.spec import expand, parse_spec

    base = (
        "name: p\nmodels: [{pretrained: org/m}]\nschemes: [fp32]\ntasks: [quant_nextword]\n"
        "sampling: {temperature: [0.5], top_k: [null, 50]}\nspeed: {enabled: false}\n"
    )
    plain, more_k = expand(parse_spec(base), "cpu"), expand(parse_spec(base + "probe: {top_k: [1, 5, 50]}\n"), "cpu")
    assert [c.id for c in plain if c.kind == "eval"] == [c.id for c in more_k if c.kind == "eval"]
    (probe,) = [c for c in more_k if c.kind == "probe"]
    assert probe.params["grid"]["top_k"] == [1, 5, 50, None]  # the grid's and the probe's own
    assert next(c for c in plain if c.kind == "probe").params["grid"]["top_k"] == [50, None]


def test_the_probe_runs_for_the_schemes_it_names_and_always_for_the_reference() -> None:
    """probe.schemes spends the probe's forward passes where verdicts are decided; the reference is
    probed whatever the list says (the other schemes' distances are to its logits)."""
    spec = parse_spec(BASE + "probe: {schemes: [nf4]}\n")
    probed = [c.scheme.name for c in expand(spec, "cpu") if c.kind == "probe"]
    assert probed == ["fp32", "nf4"]
    with pytest.raises(SpecError, match=r"probe.schemes.*'fp8' is not among the schemes"):
        parse_spec(BASE + "probe: {schemes: [fp8]}\n")
