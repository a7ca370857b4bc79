"""A catalogue of bad inputs, run through the real CLI entry point (``harness_ext.cli.main``).

Every row of :data:`CASES` is one thing a user can get wrong: a spec, a data file, a model path, a
run directory, a full disk. Each row names the exit code it must end with (2: usage, 1: runtime,
0: handled and the run goes on) and a fragment of the message that must reach the terminal; spec
errors also name the ``file:line: field.path`` they must point at. Every row also checks what must
never happen: a traceback, a half-written record, a ``.tmp`` file left behind, or (for usage errors)
a run directory created at all.

In-process, "the terminal" is the captured stderr plus the log records of level WARNING and above
(``cli.main`` sends those to stderr in a real terminal; under pytest, pytest's handler catches them
first). A few cases run ``python -m harness_ext.cli`` in a subprocess to show that no traceback
reaches a real terminal either.

The catalogue found six bugs when it was written (YAML tags and non-scalar keys escaping as
tracebacks, NaN accepted as a number, non-UTF-8 data files, failure reasons invisible without the
progress bar, a newer run directory modified before being refused); their rows now guard the fixes.
Issue 17 added hostile YAML (recursive aliases, deep nesting, alias bombs), booleans as numbers,
``--time-limit nan``, ``--only`` values the spec lacks, a missing CUDA device or hub, and broken
report inputs; tests/test_robustness.py covers what needs more than a row.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness_ext import cli
from harness_ext.store import RunStore
from harness_ext.store import files as store_files

# line numbers of this spec are what the spec-error rows point at (see the comments)
BASE = """\
name: bad-input
models:
  - {{name: tiny, pretrained: "{model}"}}
schemes: [fp32]
sampling:
  temperature: [0]
  max_new_tokens: [2]
tasks: [quant_nextword]
limit: 2
seeds: [0]
batch_size: 2
device: cpu
threads: 1
speed: {{enabled: false}}
probe: {{enabled: false}}
output_dir: "{out}"
"""
# 1 name  2 models  3 models[0]  4 schemes  5 sampling  6 temperature  7 max_new_tokens  8 tasks  9 limit
# 10 seeds  11 batch_size  12 device  13 threads  14 speed  15 probe  16 output_dir  17 (first appended line)

Edit = Callable[[str], str]


def rep(old: str, new: str) -> Edit:
    """Replace ``old`` (which must occur) by ``new`` in the spec text."""

    def edit(text: str) -> str:
        assert old in text, f"test bug: {old!r} not in the base spec"
        return text.replace(old, new)

    return edit


def add(extra: str) -> Edit:
    """Append lines (from line 17 on)."""
    return lambda text: text + extra


def drop_line(n: int) -> Edit:
    """Remove line ``n`` (1-based)."""
    return lambda text: "".join(line for i, line in enumerate(text.splitlines(True), 1) if i != n)


def whole(text: str) -> Edit:
    """Replace the whole spec."""
    return lambda _: text


def _same_model_twice_unnamed(text: str) -> str:
    line = text.splitlines(True)[2]  # the tiny model, whose folder is called "model"
    unnamed = line.replace("name: tiny, ", "")
    return text.replace(line, unnamed + unnamed)


@dataclass
class Ctx:
    """What a row's argv builder may use: a scratch folder, the tiny models, monkeypatch."""

    tmp: Path
    model: Path
    nopad: Path
    monkeypatch: pytest.MonkeyPatch
    finalizers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    @property
    def spec_path(self) -> Path:
        return self.tmp / "spec.yaml"

    def spec_text(self, *edits: Edit, model: Path | None = None) -> str:
        text = BASE.format(model=model or self.model, out=self.out)
        for e in edits:
            text = e(text)
        return text

    def run(self, *edits: Edit, model: Path | None = None) -> list[str]:
        """Write the base spec with ``edits`` and return the argv of ``run SPEC --no-progress``."""
        self.spec_path.write_text(self.spec_text(*edits, model=model), encoding="utf-8")
        return ["run", str(self.spec_path), "--no-progress"]

    def data(self, content: str | bytes) -> str:
        """Write a task data file; return its path."""
        path = self.tmp / "data.jsonl"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def with_data(self, content: str | bytes | None) -> list[str]:
        """``run`` with one task of ours on a data file (``None``: a file that does not exist)."""
        path = self.data(content) if content is not None else str(self.tmp / "missing.jsonl")
        task = f'tasks:\n  - {{name: mine, base: quant_nextword, data: "{path}"}}'
        return self.run(rep("tasks: [quant_nextword]", task))


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str  # stderr plus WARNING+ log records: what a terminal would show on stderr


@dataclass(frozen=True)
class Case:
    """One row: ``argv(ctx)`` through ``cli.main`` must exit with ``code`` and show ``fragment``.

    ``where``: ``stderr`` (the fragment is on the terminal), ``record`` (cells failed at run time:
    the fragment is in every failed record's error), ``ok`` (the run must succeed: every record ok),
    ``stdout`` (a success that prints the fragment).
    ``lines``: how many lines stderr must have (one per problem), None to not check.
    ``check``: a further check of the outcome (what was written where); ``timeout``: for a row that
    could hang (a FIFO, a pipe, a lock), the seconds it may take before it fails as a hang.
    """

    id: str
    argv: Callable[[Ctx], list[str]]
    code: int
    fragment: str | tuple[str, ...] | None
    where: str = "stderr"
    lines: int | None = 1
    check: Callable[[Ctx, Outcome], None] | None = None
    timeout: float | None = None


def spec_error(id: str, edits: Edit | tuple[Edit, ...], line: int, path: str | None, message: str) -> Case:
    """A spec that must be refused with ``spec.yaml:LINE: PATH: MESSAGE`` and exit code 2."""
    edits = edits if isinstance(edits, tuple) else (edits,)
    where = f"spec.yaml:{line}: " + (f"{path}: " if path else "")
    return Case(id, lambda c: c.run(*edits), 2, where + message)


def _newer_record(c: Ctx) -> list[str]:
    records = c.out / "records"
    records.mkdir(parents=True)
    (records / "0123456789abcdef.json").write_text(
        json.dumps({"record_version": 99, "cell_id": "0123456789abcdef", "kind": "eval", "shiny_new_field": {}})
    )
    return c.run()


def _unwritable_out(c: Ctx) -> list[str]:
    c.out.mkdir()
    c.out.chmod(0o500)
    c.finalizers.append(lambda: c.out.chmod(0o700))
    if os.access(c.out, os.W_OK):  # root writes anyway: use a folder that cannot be created instead
        blocker = c.tmp / "a-file"
        blocker.write_text("not a folder\n")
        return [*c.run(), "--output-dir", str(blocker / "sub")]
    return c.run()


def _output_dir_is_a_file(c: Ctx) -> list[str]:
    blocker = c.tmp / "a-file"
    blocker.write_text("not a folder\n")
    return [*c.run(), "--output-dir", str(blocker)]


class _DiskFull:
    """Stands in for the ``os`` module inside harness_ext.store.files: one call fails with ENOSPC."""

    def __init__(self, call: str, only: str | None = None):
        self.call, self.only = call, only

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self.call:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            target = str(args[-1]) if name == "replace" else os.readlink(f"/proc/self/fd/{args[0]}")
            if self.only is None or self.only in target:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        return failing


def _disk_full(call: str, only: str | None = None) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.monkeypatch.setattr(store_files, "os", _DiskFull(call, only))
        return c.run()

    return build


def _corrupt_record(c: Ctx) -> list[str]:
    from harness_ext.spec import load_spec, plan

    argv = c.run()
    cell = plan(load_spec(c.spec_path))[0]
    (c.out / "records").mkdir(parents=True)
    (c.out / "records" / f"{cell.id}.json").write_text('{"record_version": 1, "cell_id": "')  # cut short
    return argv


def _no_cuda(c: Ctx) -> list[str]:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: device: cuda is not an error here")
    return c.run(rep("device: cpu", "device: cuda"))


def axis(entry: str) -> Edit:
    """Add one more axis list to the sampling grid, on line 8."""
    return rep("  max_new_tokens: [2]", "  max_new_tokens: [2]\n  " + entry)


def temps(value: str) -> Edit:
    return rep("temperature: [0]", f"temperature: {value}")


def scheme(inline: str) -> Edit:
    """Schemes as a block list: fp32, then ``inline`` as schemes[1] on line 6."""
    return rep("schemes: [fp32]", f"schemes:\n  - fp32\n  - {inline}")


def ref(name: str) -> Edit:
    """Give the model (line 3) ``reference: name``."""
    return rep("}\nschemes", f", reference: {name}}}\nschemes")


def run(*edits: Edit) -> Callable[[Ctx], list[str]]:
    return lambda c: c.run(*edits)


def data(content: str | bytes | None) -> Callable[[Ctx], list[str]]:
    return lambda c: c.with_data(content)


def argv(*args: str) -> Callable[[Ctx], list[str]]:
    """Fixed argv; ``{tmp}`` becomes the scratch folder, ``{spec}`` the spec written from BASE."""

    def build(c: Ctx) -> list[str]:
        if any("{spec}" in a for a in args):
            c.run()
        return [a.format(tmp=c.tmp, spec=c.spec_path) for a in args]

    return build


def _spec_bytes(raw: bytes) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.spec_path.write_bytes(raw)
        return ["validate", str(c.spec_path)]

    return build


def _schema_under_a_file(c: Ctx) -> list[str]:
    (c.tmp / "a-file").write_text("not a folder\n")
    return ["schema", "-o", str(c.tmp / "a-file" / "s.json")]


def _report_of(run_json: str | None) -> Callable[[Ctx], list[str]]:
    """``report`` of a run directory whose tables/run.json is missing (None) or holds ``run_json``."""

    def build(c: Ctx) -> list[str]:
        (c.out / "tables").mkdir(parents=True)
        (c.out / "tables" / "cells.csv").write_text("cell_id,kind,status\n")
        if run_json is not None:
            (c.out / "tables" / "run.json").write_text(run_json)
        return ["report", str(c.out), "--output-dir", str(c.tmp / "report")]

    return build


# -- issue 27: run directories that are odd or hostile, text that must not be raw --------------------------------------


def _small_run(c: Ctx) -> Path:
    """A run directory of the base spec built without a model: one record per cell (failed, with a
    made-up reason), its tables and run.json, as a copied run directory would hold them."""
    from harness_ext.spec import load_spec, plan
    from harness_ext.store import Record, now

    text = c.spec_text()
    c.spec_path.write_text(text, encoding="utf-8")
    spec = load_spec(c.spec_path)
    cells = plan(spec)
    store = RunStore(c.out)
    store.records_dir.mkdir(parents=True)
    records = [
        Record(cell_id=x.id, kind=x.kind, label=x.label(), definition=x.definition(), status="failed",
               error="made up", started_at=now(), finished_at=now(), invocation="test")
        for x in cells
    ]  # fmt: skip
    for r in records:
        store.write(r)
    expected = [{"cell_id": x.id, "label": x.label(), "kind": x.kind} for x in cells]
    study = {"name": spec.name, "description": ""}
    store.export_tables(records, text, extra={"study": study, "expected_cells": expected, "report": {}})
    return c.out


def _report_with(odd: Callable[[Path], None]) -> Callable[[Ctx], list[str]]:
    """``report`` of a small run directory after ``odd(run_dir)`` put something odd in it."""

    def build(c: Ctx) -> list[str]:
        odd(_small_run(c))
        return ["report", str(c.out), "--output-dir", str(c.tmp / "report")]

    return build


def _record_path(run: Path) -> Path:
    return next((run / "records").glob("*.json"))


def _fifo_record(run: Path) -> None:
    os.mkfifo(run / "records" / "0123456789abcdef.json")  # nobody ever writes into it


def _device_record(run: Path) -> None:
    # /dev/null, not /dev/zero: a regression would read this link, and /dev/null ends at once (the
    # endless /dev/zero is tests/test_robustness.py::test_a_record_linked_to_dev_zero_is_not_read)
    (run / "records" / "0123456789abcdef.json").symlink_to("/dev/null")


def _linked_record(run: Path) -> None:
    real = _record_path(run)
    (run / "records" / "0123456789abcdef.json").symlink_to(real)  # a valid record, but through a link


def _tables_only_with_a_linked_csv(c: Ctx) -> list[str]:
    """A folder of tables alone (as a report's data/) whose cells.csv links to a private file."""
    _small_run(c)
    (c.tmp / "private.txt").write_text("ssh-rsa PRIVATE\n")
    (c.out / "tables" / "cells.csv").unlink()
    (c.out / "tables" / "cells.csv").symlink_to(c.tmp / "private.txt")
    return ["report", str(c.out / "tables"), "--output-dir", str(c.tmp / "report")]


def _private_file_not_copied(c: Ctx, res: Outcome) -> None:
    written = [p.read_text(errors="replace") for p in c.tmp.joinpath("report").rglob("*") if p.is_file()]
    assert not any("PRIVATE" in text for text in written)


def _deep_record(run: Path) -> None:
    (run / "records" / "0123456789abcdef.json").write_text("[" * 200_000 + "]" * 200_000)


def _kind_contradicts_definition(run: Path) -> None:
    path = _record_path(run)
    data = json.loads(path.read_text())
    data["kind"] = "speed"  # its definition (hashed into its name) says eval
    path.write_text(json.dumps(data))


def _invocation(content: str) -> Callable[[Path], None]:
    def odd(run: Path) -> None:
        (run / "invocations").mkdir(exist_ok=True)
        (run / "invocations" / "20260101T000000-1.json").write_text(content)

    return odd


def _run_json(**fields: Any) -> Callable[[Path], None]:
    def odd(run: Path) -> None:
        path = run / "tables" / "run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))

    return odd


def _report_goes_to_the_run_directory(c: Ctx, res: Outcome) -> None:
    assert (c.out / "report" / "index.html").is_file()
    assert not (c.tmp / "elsewhere").exists(), "run.json's report.output_dir chose where the report went"


def _report_output_dir_in_run_json(c: Ctx) -> list[str]:
    _run_json(report={"output_dir": str(c.tmp / "elsewhere")})(_small_run(c))
    return ["report", str(c.out)]


def _compare_output_dir_in_run_json(c: Ctx) -> list[str]:
    import shutil

    _run_json(report={"output_dir": str(c.tmp / "elsewhere")})(_small_run(c))
    shutil.copytree(c.out, c.tmp / "b")
    return ["report", str(c.out), "--compare", str(c.tmp / "b")]


def _compare_goes_to_the_run_directory(c: Ctx, res: Outcome) -> None:
    assert (c.out / "report" / "compare.html").is_file()
    assert not (c.tmp / "elsewhere").exists(), "run.json's report.output_dir chose where the comparison went"


def _planted_link(where: str) -> Callable[[Ctx], list[str]]:
    """A received run directory holding a link to a file outside it (``where``: spec.yaml, which
    ``run`` writes, or report/index.html, which ``report`` writes), or its report folder a link."""

    def build(c: Ctx) -> list[str]:
        outside = c.tmp / "outside"
        outside.mkdir()
        (outside / "precious.txt").write_text("keep me\n")
        if where == "spec.yaml":
            c.run()
            c.out.mkdir()
            (c.out / "spec.yaml").symlink_to(outside / "precious.txt")
            return [*c.run(), "--time-limit", "0.0001"]
        _small_run(c)
        if where == "report":
            (c.out / "report").symlink_to(outside)
        else:
            (c.out / "report").mkdir()
            (c.out / "report" / "index.html").symlink_to(outside / "precious.txt")
        return ["report", str(c.out)]

    return build


def _outside_untouched(c: Ctx, res: Outcome) -> None:
    assert sorted(p.name for p in (c.tmp / "outside").iterdir()) == ["precious.txt"]
    assert (c.tmp / "outside" / "precious.txt").read_text() == "keep me\n"


def _report_while_a_run_holds_the_lock(c: Ctx) -> list[str]:
    (c.out / "records").mkdir(parents=True)  # the run's first cell is not done: no tables yet
    store = RunStore(c.out)
    store.lock()
    c.finalizers.append(store.release)
    return ["report", str(c.out), "--output-dir", str(c.tmp / "report")]


def _schema_through_a_link(c: Ctx) -> list[str]:
    (c.tmp / "real.json").write_text("old\n")
    (c.tmp / "link.json").symlink_to(c.tmp / "real.json")
    return ["schema", "-o", str(c.tmp / "link.json")]


def _link_kept_and_target_written(c: Ctx, res: Outcome) -> None:
    assert (c.tmp / "link.json").is_symlink(), "the link was replaced by a file"
    assert json.loads((c.tmp / "real.json").read_text())["title"] == "StudySpec"


def _schema_onto(kind: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        target = c.tmp / "target"
        if kind == "fifo":
            os.mkfifo(target)
        else:  # a link to a device: as root, writing /dev/null itself would replace it
            target.symlink_to("/dev/null")
        return ["schema", "-o", str(target)]

    return build


def _target_untouched(c: Ctx, res: Outcome) -> None:
    target = c.tmp / "target"
    assert target.is_fifo() or (target.is_symlink() and Path("/dev/null").is_char_device())


def _spec_through_a_pipe(c: Ctx) -> list[str]:
    """``run <(cat spec.yaml)``: the spec is a pipe that can be read once."""
    text = c.spec_text()
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    c.finalizers.append(lambda: os.close(r))
    return ["run", f"/dev/fd/{r}", "--no-progress", "--time-limit", "0.0001"]


def _stored_spec_is_the_spec(c: Ctx, res: Outcome) -> None:
    assert (c.out / "spec.yaml").read_text(encoding="utf-8") == c.spec_text()


def _no_raw_escape(c: Ctx, res: Outcome) -> None:
    assert "\x1b" not in res.err + res.out


def _grid(values: int, axes: int = 4) -> Edit:
    """A grid of ``axes`` axes of ``values`` values each: values**axes points, a few hundred numbers of YAML."""
    lists = {
        "temperature": [round(i / values, 4) for i in range(values)],
        "top_k": list(range(1, values + 1)),
        "top_p": [round((i + 1) / values, 4) for i in range(values)],
        "max_new_tokens": list(range(1, values + 1)),
    }
    body = "".join(f"  {k}: {v}\n" for k, v in list(lists.items())[:axes])
    return rep(SAMPLING + "\n", "sampling:\n" + body)


def _shape(fields: str) -> Edit:
    """A second model, a random-weight shape (line 4: models[1])."""
    line = f"  - {{name: s, shape: {{model_type: llama, {fields}}}}}\n"
    return rep("schemes: [fp32]", line + "schemes: [fp32]")


#: a 9-level "billion laughs": 600 bytes that expand to 9**9 values
LAUGHS = "x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)

GE, GT = "Input should be greater than or equal to", "Input should be greater than"
LE = "Input should be less than or equal to"
SAMPLING = "sampling:\n  temperature: [0]\n  max_new_tokens: [2]"
ROW_1, ROW_2 = '{"context": "a b", "target": "c"}\n', '{"context": "d", "target": "e"}\n'
MODEL_FOLDER = "not a model folder (no config.json)"

# fmt: off
CASES: list[Any] = [
    # -- YAML ----------------------------------------------------------------------------------------------------------
    # spec_error(id,               edit(s) of BASE,                                     line, field path, message)
    spec_error("malformed_yaml", rep("[quant_nextword]", "[quant_nextword"), 8, None, "malformed YAML"),
    spec_error("tab_indentation", rep("  temperature", "\ttemperature"), 6, None, "malformed YAML: found character"),
    spec_error("yaml_list_not_mapping", whole("- name: x\n- models: []\n"), 1, None, "a study spec is a YAML mapping"),
    spec_error("empty_spec", whole(""), 1, None, "a study spec is a YAML mapping"),
    spec_error("duplicate_key", rep("limit: 2", "limit: 2\nlimit: 3"), 10, None, "key 'limit' appears twice"),
    spec_error("duplicate_nested_key", rep("{enabled: false}\nprobe", "{enabled: false, enabled: true}\nprobe"), 14,
               None, "key 'enabled' appears twice"),
    Case("yaml_tag", run(rep("name: bad-input", "name: !include x.yaml")), 2, ("spec.yaml:1: ", "!include")),
    Case("yaml_complex_key", run(add("? [a, b]\n: 1\n")), 2, "spec.yaml:17: "),
    spec_error("yaml_recursive_alias", add("x-r: &r [1, *r]\n"), 17, None, "recursive YAML alias *r"),
    spec_error("yaml_500_nested_brackets", add("x-deep: " + "[" * 500 + "]" * 500 + "\n"), 17, None,
               "YAML nested more than 64 levels deep"),
    Case("yaml_billion_laughs", run(add(LAUGHS)), 2, ("spec.yaml:", "expands to more than 100,000 values")),
    # -- keys and types ------------------------------------------------------------------------------------------------
    spec_error("unknown_top_level_key", add("colour: blue\n"), 17, "colour", "unknown key 'colour'; allowed keys:"),
    spec_error("unknown_nested_key", rep("{enabled: false}\nprobe", "{enabled: false, turbo: 1}\nprobe"), 14,
               "speed.turbo", "unknown key 'turbo'"),
    spec_error("unknown_key_in_point", rep(SAMPLING, "sampling:\n  points: [{temperature: 0, topk: 3}]"), 6,
               "sampling.points[0].topk", "unknown key 'topk'"),
    spec_error("missing_name", rep("name: bad-input\n", ""), 1, "name", "required key missing"),
    spec_error("batch_size_string", rep("batch_size: 2", "batch_size: eight"), 11, "batch_size",
               "Input should be a valid integer"),
    spec_error("seeds_string", rep("seeds: [0]", "seeds: zero"), 10, "seeds", "Input should be a valid list"),
    spec_error("temperature_string", temps("hot"), 6, "sampling.temperature", "Input should be a valid list"),
    spec_error("models_empty", (drop_line(3), rep("models:", "models: []")), 2, "models", "List should have at least"),
    spec_error("bad_study_name", rep("name: bad-input", "name: my study"), 1, "name", "String should match pattern"),
    spec_error("device_unknown", rep("device: cpu", "device: tpu"), 12, "device", "String should match pattern"),
    # -- sampling values -----------------------------------------------------------------------------------------------
    spec_error("temperature_negative", temps("[-1]"), 6, "sampling.temperature[0]", f"{GE} 0"),
    spec_error("temperature_11", temps("[11]"), 6, "sampling.temperature[0]", f"{LE} 10"),
    spec_error("temperature_nan", temps("[.nan]"), 6, "sampling.temperature[0]", "Input should be a finite number"),
    spec_error("top_p_0", axis("top_p: [0]"), 8, "sampling.top_p[0]", f"{GT} 0"),
    spec_error("top_p_1_5", axis("top_p: [1.5]"), 8, "sampling.top_p[0]", f"{LE} 1"),
    spec_error("top_k_0", axis("top_k: [0]"), 8, "sampling.top_k[0]", f"{GT} 0"),
    spec_error("max_new_tokens_0", rep("tokens: [2]", "tokens: [0]"), 7, "sampling.max_new_tokens[0]", f"{GE} 1"),
    spec_error("repetition_penalty_0", axis("repetition_penalty: [0]"), 8, "sampling.repetition_penalty[0]", f"{GT} 0"),
    spec_error("temperature_true", temps("[true]"), 6, "sampling.temperature[0]", "Input should be a valid number"),
    spec_error("top_k_true", axis("top_k: [true]"), 8, "sampling.top_k[0]", "Input should be a valid integer"),
    spec_error("max_new_tokens_false", rep("tokens: [2]", "tokens: [false]"), 7, "sampling.max_new_tokens[0]",
               "Input should be a valid integer"),
    spec_error("batch_size_true", rep("batch_size: 2", "batch_size: true"), 11, "batch_size",
               "Input should be a valid integer"),
    spec_error("seed_negative", rep("seeds: [0]", "seeds: [-1]"), 10, "seeds", "seed -1 out of range"),
    spec_error("limit_true", rep("limit: 2", "limit: true"), 9, "limit", "Input should be a valid integer"),
    spec_error("seed_true", rep("seeds: [0]", "seeds: [true]"), 10, "seeds[0]", "Input should be a valid integer"),
    spec_error("threads_true", rep("threads: 1", "threads: true"), 13, "threads", "Input should be a valid integer"),
    spec_error("repeats_true", rep("seeds: [0]", "seeds: [0]\nrepeats: true"), 11, "repeats",
               "Input should be a valid integer"),
    spec_error("speed_rounds_false", rep("d: {enabled: false}", "d: {rounds: false}"), 14, "speed.rounds",
               "Input should be a valid integer"),
    spec_error("empty_sampling_grid", rep(SAMPLING, "sampling: {}"), 5, "sampling", "the sampling grid is empty"),
    spec_error("points_and_axis_lists", axis("points: [{temperature: 0.5}]"), 5, "sampling",
               "give either explicit 'points' or the axis lists, not both"),
    spec_error("speed_repeats_2", rep("d: {enabled: false}", "d: {repeats: 2}"), 14, "speed.repeats", f"{GE} 3"),
    # -- schemes, models, tasks (cross-field) --------------------------------------------------------------------------
    spec_error("unknown_scheme", rep("[fp32]", "[fp32, nf5]"), 4, "schemes[1]", "unknown scheme 'nf5': built-ins are"),
    spec_error("int8_with_compute_dtype", scheme("{name: i8, quant: int8, compute_dtype: float16}"), 6, "schemes[1]",
               "compute_dtype applies to 4-bit schemes (nf4, fp4) only, not quant='int8'"),
    spec_error("nf4_with_int8_threshold", scheme("{name: q4, quant: nf4, int8_threshold: 6}"), 6, "schemes[1]",
               "int8_threshold applies to quant='int8' only, not 'nf4'"),
    spec_error("unquantized_without_dtype", scheme("{name: plain, quant: none}"), 6, "schemes[1]",
               "an unquantized scheme must name its dtype"),
    spec_error("scheme_listed_twice", rep("[fp32]", "[fp32, fp32]"), 4, "schemes[1]", "scheme 'fp32' is listed twice"),
    spec_error("reference_is_quantized", (rep("[fp32]", "[fp32, nf4]"), ref("nf4")), 3, "models[0].reference",
               "'nf4' is quantized; the reference must be unquantized"),
    spec_error("reference_not_a_scheme", ref("bf16"), 3, "models[0].reference", "'bf16' is not among the schemes"),
    spec_error("same_model_twice_unnamed", _same_model_twice_unnamed, 4, "models[1]",
               "model name 'model' is used twice: give each model a distinct `name`"),
    spec_error("probe_task_not_nextword", rep("probe: {enabled: false}", "probe: {task: quant_continuation}"), 15,
               "probe.task", "'quant_continuation' must be quant_nextword or a task in `tasks` with base:"),
    spec_error("data_without_base", rep("tasks: [quant_nextword]", "tasks:\n  - {name: mine, data: x.jsonl}"), 9,
               "tasks[0]", "a task with `data` must say which of our tasks it feeds"),
    Case("several_problems_one_line_each",
         run(rep("limit: 2", "limit: 0"), rep("batch_size: 2", "batch_size: x"), add("colour: 1\n")), 2,
         ("spec.yaml:9: limit: ", "spec.yaml:11: batch_size: ", "spec.yaml:17: colour: unknown key"), lines=3),
    # -- the spec file and the command line ----------------------------------------------------------------------------
    # Case(id,                      argv builder,                                 exit, stderr fragment)
    Case("spec_file_missing", argv("run", "{tmp}/nope.yaml"), 2, "nope.yaml: no such spec file"),
    Case("spec_file_not_utf8", _spec_bytes(b"\xff\xfename: x\n"), 2, "spec.yaml: cannot read the spec"),
    Case("spec_path_is_a_folder", argv("validate", "{tmp}"), 2, "cannot read the spec: [Errno 21] Is a directory"),
    Case("unknown_option", argv("run", "{spec}", "--bogus"), 2, "unrecognized arguments: --bogus", lines=None),
    Case("time_limit_nan", argv("run", "{spec}", "--time-limit", "nan"), 2, "--time-limit must be a positive number"),
    Case("time_limit_inf", argv("run", "{spec}", "--time-limit", "inf"), 2, "--time-limit must be a positive number"),
    Case("time_limit_negative", argv("run", "{spec}", "--time-limit", "-5"), 2, "--time-limit must be a positive"),
    Case("only_value_not_in_spec", argv("run", "{spec}", "--only", "scheme=fp3"), 2,
         "--only scheme=fp3: not in the spec; its scheme values: fp32"),
    Case("only_kind_the_spec_lacks", argv("run", "{spec}", "--only", "kind=probe"), 2,
         "--only kind=probe: not in the spec; its kind values: eval"),
    Case("only_unknown_key", argv("run", "{spec}", "--only", "colour=red"), 2, "expected KEY=V1,V2 with KEY one of"),
    # -- tasks and their data ------------------------------------------------------------------------------------------
    Case("unknown_task", run(rep("[quant_nextword]", "[no_such_task_xyz]")), 2, "unknown task 'no_such_task_xyz'"),
    Case("data_file_missing", data(None), 2, "missing.jsonl: data file not found"),
    Case("data_file_empty", data(""), 2, "data.jsonl: the data file has no rows"),
    Case("data_broken_json_line", data(ROW_1 + '{"context": "x", "target": \n'), 2, "data.jsonl:2: not valid JSON"),
    Case("data_duplicate_row", data(ROW_1 + ROW_2 + ROW_1), 2, "data.jsonl:3: duplicate of line 1"),
    Case("data_row_missing_target", data(ROW_1 + '{"context": "x y"}\n'), 2,
         "data.jsonl:2: field 'target' must be a non-empty string"),
    Case("data_row_not_an_object", data(ROW_1 + "[1, 2]\n"), 2, "data.jsonl:2: each line must be a JSON object"),
    Case("data_not_utf8", data(ROW_1.encode() + b"\xff\xfe{}\n"), 2, "data.jsonl:2:"),
    # -- models: the pair's cells are recorded as failed with the reason, the run exits 1 ------------------------------
    Case("model_path_missing", lambda c: c.run(model=c.tmp / "no" / "such"), 2,
         ("models[0].pretrained: model path", "no/such does not exist")),
    Case("folder_not_a_model", lambda c: c.run(model=c.tmp), 1, MODEL_FOLDER, "record", None),
    Case("device_cuda_without_gpu", _no_cuda, 2, "device: cuda, but this machine has no CUDA GPU visible to torch"),
    Case("hub_model_offline_not_in_cache", lambda c: c.run(model="nobody-xyz/no-such-model"), 1,
         ("nobody-xyz/no-such-model: not in the local Hugging Face cache", "HF_HUB_OFFLINE is set")),
    Case("tokenizer_without_pad_token_works", lambda c: c.run(model=c.nopad), 0, None, "ok", None),
    # -- the run directory and the disk --------------------------------------------------------------------------------
    Case("record_from_newer_version", _newer_record, 1, ("record version 99", "upgrade harness_ext")),
    Case("output_dir_not_writable", _unwritable_out, 1, "run directory"),
    Case("output_dir_is_a_file", _output_dir_is_a_file, 1, "cannot create the run directory"),
    Case("disk_full_on_rename_of_a_record", _disk_full("replace", only="/records/"), 1, "No space left on device"),
    Case("disk_full_on_fsync", _disk_full("fsync"), 1, "No space left on device"),
    Case("corrupt_record_is_recomputed", _corrupt_record, 0, "unreadable (JSONDecodeError)", "ok", None),
    Case("schema_into_missing_folder_creates_it", argv("schema", "-o", "{tmp}/new/s.json"), 0, "new/s.json", "stdout"),
    Case("schema_under_a_file", _schema_under_a_file, 1, "cannot write in"),
    Case("schema_onto_a_folder", argv("schema", "-o", "{tmp}"), 1, "Is a directory"),
    # -- reporting ---------------------------------------------------------------------------------------------------
    Case("report_run_json_missing", _report_of(None), 1, "tables/run.json is missing"),
    Case("report_run_json_not_json", _report_of("{"), 1, "tables/run.json cannot be read (JSONDecodeError"),
    Case("report_run_json_not_an_object", _report_of("[]"), 1, "tables/run.json is not a JSON object"),
    # -- issue 27: bounded grids ---------------------------------------------------------------------------------------
    Case("grid_of_10_to_the_8_cells", lambda c: ["validate", c.run(_grid(100))[1]], 2,
         ("plans up to 100,000,000 cells", "more than the limit of 100,000")),
    Case("grid_over_max_cells", lambda c: ["validate", c.run(axis("top_k: [1, 2, 3]"))[1], "--max-cells", "2"], 2,
         ("plans up to 3 cells", "more than the limit of 2", "--max-cells")),
    Case("max_cells_raised_for_the_grid", lambda c: ["validate", c.run(axis("top_k: [1, 2, 3]"))[1],
         "--max-cells", "3"], 0, "3 cells", "stdout"),
    Case("max_cells_zero", argv("validate", "{spec}", "--max-cells", "0"), 2, "--max-cells must be a positive"),
    Case("probe_grid_over_max_cells", lambda c: ["validate", c.run(rep("probe: {enabled: false}",
         "probe: {temperatures: [0.1, 0.2, 0.3]}"))[1], "--max-cells", "3"], 2,
         "the probe's grid has 4 points"),
    # -- issue 27: values that break identity or types -----------------------------------------------------------------
    spec_error("shape_nan", _shape("rms_norm_eps: .nan"), 4, "models[1]", "shape.rms_norm_eps: nan is not a finite"),
    spec_error("shape_negative_layers", _shape("num_hidden_layers: -3"), 4, "models[1]",
               "shape.num_hidden_layers: -3 is not a whole number from 1 to 16,777,216"),
    spec_error("shape_vocab_0", _shape("vocab_size: 0"), 4, "models[1]", "shape.vocab_size: 0 is not a whole number"),
    spec_error("shape_hidden_4e9", _shape("hidden_size: 4e9"), 4, "models[1]",
               "shape.hidden_size: '4e9' is not a whole number"),
    spec_error("shape_hidden_4_billion", _shape("hidden_size: 4000000000"), 4, "models[1]",
               "shape.hidden_size: 4000000000 is not a whole number"),
    spec_error("shape_nested_mapping", _shape("rope_scaling: {factor: {x: 1}}"), 4, "models[1]",
               "shape.rope_scaling.factor: a nested config field holds plain values"),
    spec_error("shape_size_a_mapping", _shape("hidden_size: {a: 1}"), 4, "models[1]",
               "shape.hidden_size: {'a': 1} is not a whole number"),
    spec_error("top_k_1e23", axis("top_k: [100000000000000000000000]"), 8, "sampling.top_k[0]", f"{LE} 16777216"),
    spec_error("num_gpus_inf", rep("}\nschemes", ", num_gpus: .inf}\nschemes"), 3, "models[0].num_gpus",
               "Input should be a finite number"),
    spec_error("ray_gpu_memory_inf", add("ray: {gpu_memory_gb: .inf}\n"), 17, "ray.gpu_memory_gb",
               "Input should be a finite number"),
    spec_error("seeds_yaml_set", rep("seeds: [0]", "seeds: !!set {1, 2}"), 10, None,
               "not allowed in a spec: the YAML tag !!set"),
    spec_error("name_yaml_binary", rep("name: bad-input", "name: !!binary YmFkLWlucHV0"), 1, None,
               "not allowed in a spec: the YAML tag !!binary"),
    Case("output_dir_empty", argv("run", "{spec}", "--output-dir", ""), 2, "--output-dir is empty"),
    Case("report_output_dir_empty", argv("report", "{tmp}", "--output-dir", ""), 2, "--output-dir is empty"),
    # -- issue 28: local models that do not exist are one line before anything runs -----------------------------------
    Case("validate_model_path_missing", lambda c: ["validate", c.run(model=c.tmp / "no" / "such")[1]], 2,
         "models[0].pretrained: model path"),
    Case("gguf_file_missing", run(rep('"}\nschemes', '", gguf_file: m.gguf}\nschemes')), 2,
         ("models[0].gguf_file: GGUF file", "m.gguf not found")),
    # -- issue 27: text that must not be raw -------------------------------------------------------------------------
    Case("data_lone_surrogate", data(ROW_1 + '{"context": "x \\ud800 y", "target": "z"}\n'), 2,
         "data.jsonl:2: holds a lone surrogate (\\ud800)"),
    Case("data_100k_deep_line", data(ROW_1 + "[" * 100_000 + "]" * 100_000 + "\n"), 2,
         "data.jsonl:2: nested too deeply"),
    Case("only_value_with_an_escape_sequence", argv("run", "{spec}", "--only", "scheme=\x1b[2J\x1b[31mred"), 2,
         "--only scheme=\\x1b[2J\\x1b[31mred: not in the spec", check=_no_raw_escape),
    Case("spec_through_a_pipe_is_read_once", _spec_through_a_pipe, 3, "time limit reached", lines=None,
         check=_stored_spec_is_the_spec, timeout=120),
    # -- issue 27: writing through links, never over devices, FIFOs or folders ----------------------------------------
    Case("schema_through_a_symlink", _schema_through_a_link, 0, "link.json", "stdout",
         check=_link_kept_and_target_written),
    Case("schema_onto_a_fifo", _schema_onto("fifo"), 1, "it is a FIFO, not a regular file", check=_target_untouched,
         timeout=10),
    Case("schema_onto_a_device", _schema_onto("device"), 1, "it is a device, not a regular file",
         check=_target_untouched, timeout=10),
    # -- issue 27: odd files in a (copied) run directory: listed as unreadable, the report renders ---------------------
    Case("report_record_is_a_fifo", _report_with(_fifo_record), 0,
         "0123456789abcdef.json: unreadable (not a regular file (a FIFO))", timeout=20),
    Case("report_record_links_to_a_device", _report_with(_device_record), 0,
         "0123456789abcdef.json: unreadable (a symbolic link, not followed)", timeout=20),
    Case("report_record_links_to_a_file_elsewhere", _report_with(_linked_record), 0,
         "0123456789abcdef.json: unreadable (a symbolic link, not followed)"),
    Case("report_table_links_to_a_private_file", _tables_only_with_a_linked_csv, 1,
         "tables/cells.csv: a symbolic link, not followed", check=_private_file_not_copied),
    Case("report_record_200k_deep", _report_with(_deep_record), 0, "unreadable (nested more than 100 levels deep)"),
    Case("report_record_kind_contradicts_definition", _report_with(_kind_contradicts_definition), 0,
         "unreadable (its kind 'speed' is not its definition's 'eval')"),
    Case("report_invocation_is_a_list", _report_with(_invocation("[]")), 0,
         "invocations/20260101T000000-1.json: unreadable (not a JSON object (a JSON list)); left out"),
    Case("report_invocation_gpus_a_number", _report_with(_invocation('{"gpus": 5}')), 0,
         "invocations/20260101T000000-1.json: unreadable (gpus: Input should be a valid list)"),
    Case("report_run_json_examples_many", _report_with(_run_json(report={"examples": "many"})), 1,
         "tables/run.json is malformed: report.examples: Input should be a valid integer"),
    Case("report_run_json_expected_cells_5", _report_with(_run_json(expected_cells=5)), 1,
         "tables/run.json is malformed: expected_cells: Input should be a valid list"),
    Case("report_run_json_study_name_a_path", _report_with(_run_json(study={"name": "../../x"})), 1,
         "tables/run.json is malformed: study.name: String should match pattern"),
    Case("report_ignores_output_dir_in_run_json", _report_output_dir_in_run_json, 0, "report/index.html", "stdout",
         check=_report_goes_to_the_run_directory),
    Case("compare_ignores_output_dir_in_run_json", _compare_output_dir_in_run_json, 0, "report/compare.html",
         "stdout", check=_compare_goes_to_the_run_directory),
    Case("run_replaces_a_planted_link_not_its_target", _planted_link("spec.yaml"), 3, "time limit reached", lines=None,
         check=_outside_untouched),
    Case("report_replaces_a_planted_link_not_its_target", _planted_link("report/index.html"), 0, "report/index.html",
         "stdout", check=_outside_untouched),
    Case("report_folder_is_a_link", _planted_link("report"), 1, ("report is a link (to ", "pass --output-dir"),
         check=_outside_untouched),
    Case("report_while_a_run_holds_the_lock", _report_while_a_run_holds_the_lock, 1,
         ("tables/run.json is not written yet: a run holds this run directory's lock (pid ", "report once it"),
         timeout=20),
]
# fmt: on


def invoke(argv: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Outcome:
    """``cli.main(argv)`` as the console script runs it; an escaping exception becomes its traceback text."""
    caplog.clear()
    tb = ""
    try:
        code: int | None = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        code, tb = None, traceback.format_exc()
    captured = capsys.readouterr()
    logged = "".join(
        f"{r.levelname} {r.name}: {r.getMessage()}\n" for r in caplog.records if r.levelno >= logging.WARNING
    )
    return Outcome(code, captured.out, captured.err + logged + tb)


class Hung(Exception):
    """A row's command ran past its timeout (raised in the command by SIGALRM, so a blocked read ends)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`Hung` inside whatever runs after ``seconds`` (a blocking open of a FIFO included:
    a raising signal handler ends the system call instead of retrying it); None: no limit."""
    if seconds is None:
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fragments(case: Case) -> tuple[str, ...]:
    if case.fragment is None:
        return ()
    return case.fragment if isinstance(case.fragment, tuple) else (case.fragment,)


def check_no_debris(tmp: Path, out: Path, code: int | None) -> None:
    """No temporary file anywhere, no half-written record, and no run directory after a usage error."""
    assert not list(tmp.rglob("*.tmp")), f"temporary files left: {list(tmp.rglob('*.tmp'))}"
    for rec in out.glob("records/*.json"):
        if rec.is_file() and not rec.is_symlink() and rec.name != "0123456789abcdef.json":  # not a row's odd file
            json.loads(rec.read_text(encoding="utf-8"))  # complete JSON, never half a file
    if code == 2:
        assert not out.exists(), "a usage error must not create the run directory"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path, tiny_model, tiny_model_nopad, monkeypatch, capsys, caplog) -> None:
    ctx = Ctx(tmp_path, tiny_model, tiny_model_nopad, monkeypatch)
    try:
        argv = case.argv(ctx)
        with time_limit(case.timeout):
            res = invoke(argv, capsys, caplog)
    finally:
        for f in ctx.finalizers:
            f()
    assert "Hung: " not in res.err, f"{case.id} did not finish within {case.timeout} s"
    assert "Traceback" not in res.err + res.out, res.err
    assert res.code == case.code, f"exit code {res.code}, expected {case.code}\nstderr: {res.err}\nstdout: {res.out}"
    if case.where == "stderr":
        for frag in _fragments(case):
            assert frag in res.err, f"{frag!r} not in stderr: {res.err!r}"
        if case.code and case.lines is not None:
            assert res.err.startswith("harness-ext: error: "), res.err
            assert len(res.err.rstrip("\n").splitlines()) == case.lines, res.err
    elif case.where == "record":
        rs = RunStore(ctx.out)
        records = list(rs.load_records().values())
        assert records and not rs.problems
        assert all(r.status == "failed" for r in records), [r.status for r in records]
        for frag in _fragments(case):
            assert all(frag in (r.error or "") for r in records), [r.error for r in records]
    elif case.where == "stdout":
        for frag in _fragments(case):
            assert frag in res.out, f"{frag!r} not in stdout: {res.out!r}"
    elif case.where == "ok":
        for frag in _fragments(case):
            assert frag in res.err, f"{frag!r} not in stderr: {res.err!r}"
        rs = RunStore(ctx.out)
        records = list(rs.load_records().values())
        assert records and not rs.problems and all(r.status == "ok" for r in records)
    if case.check is not None:
        case.check(ctx, res)
    check_no_debris(tmp_path, ctx.out, res.code)


# -- cases that need more than a row ----------------------------------------------------------------------------------

RUNTIME_ROWS = [c for c in CASES if isinstance(c, Case) and c.where == "record"]


@pytest.mark.parametrize("case", RUNTIME_ROWS, ids=lambda c: c.id)
def test_failed_cell_reason_reaches_stderr(
    case: Case, tmp_path, tiny_model, tiny_model_nopad, monkeypatch, capsys, caplog
) -> None:
    ctx = Ctx(tmp_path, tiny_model, tiny_model_nopad, monkeypatch)
    res = invoke(case.argv(ctx), capsys, caplog)
    assert res.code == 1
    for frag in _fragments(case):
        assert frag in res.err, f"{frag!r} not in stderr: {res.err!r}"


def test_newer_run_directory_is_left_untouched(tmp_path, tiny_model, monkeypatch, capsys, caplog) -> None:
    ctx = Ctx(tmp_path, tiny_model, tiny_model, monkeypatch)
    argv = _newer_record(ctx)
    (ctx.out / "spec.yaml").write_text("# the newer version's spec\n")
    before = {p.relative_to(ctx.out): p.read_bytes() for p in ctx.out.rglob("*") if p.is_file()}
    res = invoke(argv, capsys, caplog)
    assert res.code == 1 and "upgrade harness_ext" in res.err
    after = {p.relative_to(ctx.out): p.read_bytes() for p in ctx.out.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub_unreachable"])
def test_hub_model_without_the_hub_fails_fast_and_creates_nothing(
    offline, tmp_path, tiny_model, monkeypatch, capsys, caplog
) -> None:
    """A hub id that is not cached: one line within seconds (not a minute of retries), no run directory."""
    import time

    ctx = Ctx(tmp_path, tiny_model, tiny_model, monkeypatch)
    if not offline:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    t0 = time.perf_counter()
    res = invoke(ctx.run(model="nobody-xyz/no-such-model"), capsys, caplog)  # type: ignore[arg-type]
    assert time.perf_counter() - t0 < 10
    assert res.code == 1 and res.err.startswith("harness-ext: error: ") and res.err.count("\n") == 1, res.err
    assert ("HF_HUB_OFFLINE is set" if offline else "http://127.0.0.1:9 cannot be reached") in res.err
    assert not ctx.out.exists()


# -- through a real subprocess: nothing but the one line reaches the terminal -----------------------------------------


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "harness_ext.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_subprocess_malformed_yaml(tmp_path, tiny_model, monkeypatch) -> None:
    ctx = Ctx(tmp_path, tiny_model, tiny_model, monkeypatch)
    argv = ctx.run(rep("tasks: [quant_nextword]", "tasks: [quant_nextword"))
    p = _subprocess(["validate", argv[1]], tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("harness-ext: error: ") and len(p.stderr.splitlines()) == 1, p.stderr
    assert "spec.yaml:8: malformed YAML" in p.stderr and "Traceback" not in p.stderr + p.stdout


@pytest.mark.slow
def test_subprocess_broken_data_line(tmp_path, tiny_model, monkeypatch) -> None:
    ctx = Ctx(tmp_path, tiny_model, tiny_model, monkeypatch)
    argv = ctx.with_data('{"context": "a b", "target": "c"}\n{"context": "x y", "target": \n')
    p = _subprocess(argv, tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("harness-ext: error: ") and len(p.stderr.splitlines()) == 1, p.stderr
    assert "data.jsonl:2: not valid JSON" in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert not ctx.out.exists()


@pytest.mark.slow
def test_subprocess_lm_eval_model_path_missing(tmp_path) -> None:
    """``harness-ext lm-eval`` with hf-quant on a missing model: our one line, exit 1 (lm-eval logs its own lines)."""
    from harness_ext.tasks import TASKS_DIR

    argv = [
        "lm-eval", "run", "--model", "hf-quant", "--model_args", "pretrained=/nonexistent,quant=nf4",
        "--tasks", "quant_nextword", "--include_path", str(TASKS_DIR), "--limit", "1", "--device", "cpu",
    ]  # fmt: skip
    p = _subprocess(argv, tmp_path)
    assert p.returncode == 1
    assert "harness-ext: error: model path /nonexistent does not exist" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
