"""Loading a study spec from YAML: a safe loader that refuses duplicate keys, bounds on hostile YAML
(deep nesting, alias bombs, recursive aliases) checked before any node is built, and validation
errors as one ``file:line: field.path: message`` line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harness_ext.errors import SpecError
from harness_ext.spec.schema import UNION_TAGS, StudySpec, TaskSpec, loc_path


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


#: Bounds that keep hostile YAML cheap: nesting depth (PyYAML's composer recurses per level) and the
#: number of nodes the document holds once every alias is expanded (a "billion laughs" bomb is a few
#: hundred bytes that expand to 10**9 nodes). A real spec has a few hundred nodes, 5 levels deep.
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000
#: A spec file is read up to this many bytes: a path such as /dev/zero must not fill the memory.
MAX_SPEC_BYTES = 4 * 2**20
#: The only tags a spec may spell out: plain values, lists and mappings. PyYAML's safe loader would
#: also build sets, bytes and ordered pairs, which pydantic then reads as lists (in no fixed order)
#: or strings, so that ``!!set`` seeds or a ``!!binary`` name would pass as something else.
_CORE = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        _check_yaml_shape(text, source)
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}:{_yaml_error_detail(e)}") from None
    except RecursionError:  # a backstop: _check_yaml_shape bounds the depth first
        raise SpecError(f"{source}: malformed YAML: nested too deeply") from None
    _check_duplicate_keys(node, source)
    return node


def _yaml_error_detail(e: yaml.YAMLError) -> str:
    """``LINE: malformed YAML: what`` of a PyYAML error (its context line, then the problem's)."""
    problem_mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = context_mark or problem_mark
    where = f"{mark.line + 1}: " if mark else " "
    detail = f"{e.context} here; {problem}" if context_mark is not None and getattr(e, "context", None) else problem
    if context_mark is not None and problem_mark is not None and problem_mark.line != context_mark.line:
        detail += f" (line {problem_mark.line + 1})"
    return f"{where}malformed YAML: {detail}"


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse recursive aliases, deep nesting and alias bombs from the event stream, before any node
    is built: one linear pass, no recursion. Each anchored node's expanded size is remembered, so an
    alias costs one addition however large the node it names."""
    sizes: dict[str, int] = {}  # anchor -> nodes of its value with aliases expanded
    stack: list[list[Any]] = []  # open collections: [anchor, expanded nodes so far]
    total = 0
    for ev in yaml.parse(text, Loader=_UniqueKeyLoader):
        line = ev.start_mark.line + 1 if ev.start_mark else None
        tag = getattr(ev, "tag", None)
        if tag is not None and tag not in ALLOWED_TAGS and tag != "!":  # "!": a non-plain scalar, a string
            shown = "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag
            raise SpecError(
                f"{_where(source, line)}: not allowed in a spec: the YAML tag {shown} "
                "(a spec holds plain values, lists and mappings)"
            )
        if isinstance(ev, yaml.AliasEvent):
            if any(frame[0] == ev.anchor for frame in stack):
                raise SpecError(f"{_where(source, line)}: recursive YAML alias *{ev.anchor} (it contains itself)")
            added = sizes.get(ev.anchor, 1)  # an undefined alias is the composer's error
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                raise SpecError(f"{_where(source, line)}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
            stack.append([ev.anchor, 1])
            continue
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, added = stack.pop()
            if anchor is not None:
                sizes[anchor] = added
        elif isinstance(ev, yaml.ScalarEvent):
            added = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        else:
            continue
        if stack:
            stack[-1][1] += added
        else:
            total += added
        if total + sum(frame[1] for frame in stack) > MAX_YAML_NODES:
            raise SpecError(
                f"{_where(source, line)}: the YAML expands to more than {MAX_YAML_NODES:,} values through its "
                "aliases (an alias bomb?); a spec is far smaller"
            )


def _check_duplicate_keys(node: yaml.Node | None, source: str, checked: set[int] | None = None) -> None:
    """Refuse duplicate and non-scalar mapping keys, in document order. Each node is checked once:
    aliases share nodes, so an alias bomb costs no more than its text."""
    checked = set() if checked is None else checked
    if node is None or id(node) in checked:
        return
    checked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise SpecError(
                    f"{source}:{k.start_mark.line + 1}: mapping keys must be plain names, not a list or mapping"
                )
            if k.value in seen:
                raise SpecError(f"{source}:{k.start_mark.line + 1}: key {k.value!r} appears twice in one mapping")
            seen.add(k.value)
            _check_duplicate_keys(v, source, checked)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _check_duplicate_keys(v, source, checked)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (best effort)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((kv for kv in node.value if getattr(kv[0], "value", None) == part), None)
            if match is None:
                continue  # pydantic union tags ("str", "Scheme") and missing keys: stay on the parent
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def format_validation_error(err: ValidationError, node: yaml.Node | None, source: str, model: type[BaseModel]) -> str:
    """One line per problem: ``file:line: field.path: message``; unions reported once, by best match."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        path = loc_path(loc)
        line = _line_of(node, loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            msg = f"unknown key {loc[-1]!r}" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required key missing"
        key = (path, msg)
        if key in seen:
            continue
        seen.add(key)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model at ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if part in UNION_TAGS:
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            continue
        current = _model_in(fields[part].annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse_spec(text: str, source: str = "<spec>") -> StudySpec:
    """Parse and validate spec text; raise :class:`SpecError` with ``file:line: path: message`` lines."""
    node = _compose(text, source)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) if node is not None else None
    except yaml.YAMLError as e:  # e.g. a tag (!include, !!python/object) that the safe loader refuses
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(
            f"{_where(source, mark.line + 1 if mark else None)}: not allowed in a spec: {problem}"
        ) from None
    if isinstance(data, dict):  # top-level `x-...` keys hold YAML anchors for reuse (as in docker compose)
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}:1: a study spec is a YAML mapping (name:, models:, schemes:, ...), got {type(data).__name__}"
        )
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        cross = _cross_check_errors(data)
        if cross is not None:  # fields are fine one by one; report the cross-field problems by line
            raise SpecError(
                "\n".join(f"{_where(source, _line_of(node, loc))}: {loc_path(loc)}: {msg}" for loc, msg in cross)
            ) from None
        raise SpecError(format_validation_error(e, node, source, StudySpec)) from None


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line else source


def _cross_check_errors(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]] | None:
    """If ``data`` fails only the cross-field checks, return those problems with their locations."""
    try:
        spec = StudySpec.model_construct(**StudySpec.model_validate(data, context={"skip_cross": True}).__dict__)
    except ValidationError:
        return None
    return spec.problems() or None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file. Relative task ``data`` paths resolve against the spec's folder."""
    return load_spec_file(path)[0]


def load_spec_file(path: str | Path) -> tuple[StudySpec, str]:
    """The validated spec of a file and the text it was read from. The file is read once: a pipe
    (``run <(cat spec.yaml)``) gives its text only once, and the run directory stores that text."""
    path = Path(path)
    text = read_spec_text(path)
    return _resolve_data_paths(parse_spec(text, str(path)), path.parent), text


def read_spec_text(path: Path) -> str:
    """A spec file's text, read once and at most :data:`MAX_SPEC_BYTES`; one line if it cannot be read."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: cannot read the spec: over {MAX_SPEC_BYTES // 2**20} MiB (a spec is far smaller)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from None


def _resolve_data_paths(spec: StudySpec, base: Path) -> StudySpec:
    tasks: list[str | TaskSpec] = []
    for t in spec.tasks:
        if isinstance(t, TaskSpec) and t.data and not Path(t.data).is_absolute():
            t = t.model_copy(update={"data": str((base / t.data).resolve())})
        tasks.append(t)
    return spec.model_copy(update={"tasks": tasks})
