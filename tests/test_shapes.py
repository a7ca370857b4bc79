"""Shape-only models (random weights from config fields) and the generation modes, on a tiny config."""

from __future__ import annotations

import pandas as pd
import pytest

from harness_ext.errors import SpecError, UnsupportedSchemeError
from harness_ext.run import Runner
from harness_ext.spec import expand, parse_spec
from harness_ext.store import RunStore

SHAPE = (
    "{model_type: llama, vocab_size: 512, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, "
    "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}"
)
SPEC = """\
name: shapes
models:
  - name: tiny-shape
    shape: @SHAPE@
  - name: real
    pretrained: "@MODEL@"
schemes: [fp32, nf4, int8]
sampling: {temperature: [0]}
tasks: [quant_nextword]
limit: 2
probe: {limit: 4}
speed: {batch_sizes: [2], modes: [eager, compiled], prompt_tokens: 8, new_tokens: 4, repeats: 3, rounds: 1}
device: cpu
threads: 1
""".replace("@SHAPE@", SHAPE)


def test_shape_models_get_speed_cells_only(tiny_model) -> None:
    cells = expand(parse_spec(SPEC.replace("@MODEL@", str(tiny_model))), "cpu")
    shape_kinds = {c.kind for c in cells if c.model.label == "tiny-shape"}
    assert shape_kinds == {"speed"}  # no quality from random weights
    assert {c.kind for c in cells if c.model.label == "real"} == {"eval", "probe", "speed"}
    assert {c.params["mode"] for c in cells if c.kind == "speed"} == {"eager", "compiled"}


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("{name: s, shape: {hidden_size: 8}}", "needs a model_type"),
        ("{shape: " + SHAPE + "}", "needs a `name`"),
        ("{name: s, pretrained: x, shape: " + SHAPE + "}", "exactly one of `pretrained`"),
        ("{name: s}", "exactly one of `pretrained`"),
    ],
)
def test_bad_shape_specs(model: str, fragment: str) -> None:
    text = f"name: x\nmodels: [{model}]\nschemes: [fp32]\nspeed: {{batch_sizes: [1]}}\n"
    with pytest.raises(SpecError, match=fragment.replace("`", ".")):
        parse_spec(text, "x.yaml")


def test_modes_on_cpu_run_record_and_refuse_clearly(tmp_path, monkeypatch) -> None:
    """Each mode of each scheme runs or is refused in one line, and the compiled cells record how they
    ran. transformers compiles through Dynamo with the "eager" backend here: the same path through
    ``generate`` (a compiled forward, a static cache), without Inductor's 20-40 s of C++ codegen for
    the CPU, which is torch's to test."""
    import functools

    from transformers import CompileConfig

    from harness_ext.backend import generation

    monkeypatch.setattr(generation, "CompileConfig", functools.partial(CompileConfig, backend="eager"))
    text = SPEC.replace('  - name: real\n    pretrained: "@MODEL@"\n', "")  # the shape alone
    runner = Runner(parse_spec(text), text, progress=False, output_dir=tmp_path / "run")
    result = runner.run()
    cells = pd.read_parquet(tmp_path / "run" / "tables" / "cells.parquet")
    speed = cells[cells["kind"] == "speed"].drop_duplicates("cell_id").set_index(["scheme", "mode"])
    assert (speed["status"] == "ok").sum() == 4 and result.failed == 2
    assert speed.loc[("fp32", "compiled"), "status"] == "ok"  # transformers' compile runs on the CPU too
    assert "CUDA only" in speed.loc[("nf4", "compiled"), "error"]
    assert "cannot run compiled" in speed.loc[("int8", "compiled"), "error"]
    records = {
        (r.definition["scheme"]["name"], r.definition["params"]["mode"]): r
        for r in RunStore(tmp_path / "run").load_records().values()
    }
    compiled = records[("fp32", "compiled")]
    assert (
        compiled.measurements["mode"] == "compiled" and "compiles the forward" in compiled.measurements["compiled_how"]
    )
    assert compiled.load["source"]["shape"]["model_type"] == "llama"
    assert compiled.measurements["kv_cache"] == "static"  # what the calls ran with, from their stats
    assert records[("fp32", "eager")].measurements["kv_cache"] == "dynamic"  # eager speed: transformers' default
    assert compiled.load["layer_types"].get("Linear", 0) > 0
    nf4 = records[("nf4", "eager")]
    assert nf4.load["layer_types"]["Linear4bit"] == 14  # random weights, really quantized on load
    assert nf4.load["weight_bytes"] < compiled.load["weight_bytes"]


def test_compiled_refusals_come_before_any_work() -> None:
    from harness_ext.backend import check_mode

    assert check_mode("eager", {"quant": "int8", "name": "int8"}, "cpu") == "eager"
    assert check_mode("compiled", {"quant": "none", "name": "fp16"}, "cpu") == "compiled"
    with pytest.raises(UnsupportedSchemeError, match="int8"):
        check_mode("compiled", {"quant": "int8", "name": "int8"}, "cuda")
    with pytest.raises(UnsupportedSchemeError, match="CUDA only"):
        check_mode("compiled", {"quant": "nf4", "name": "nf4"}, "cpu")
    with pytest.raises(SpecError, match="eager or compiled"):
        check_mode("fast", {"quant": "none"}, "cpu")


def test_placeholder_tokenizer_writes_token_ids_as_words() -> None:
    from harness_ext.backend.shapes import placeholder_tokenizer

    tok = placeholder_tokenizer(1000)
    assert tok.encode("t17 t905  t999", add_special_tokens=False) == [17, 905, 999]
    assert tok.decode([17, 905, 2], skip_special_tokens=True) == "t17 t905"
    assert tok.encode("t1000 hello", add_special_tokens=False) == [tok.unk_token_id] * 2  # outside the vocab
    assert (tok.pad_token_id, tok.eos_token_id) == (3, 2)
