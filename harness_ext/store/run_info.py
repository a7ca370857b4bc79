"""What a reader of a run directory may rely on in ``tables/run.json`` and ``invocations/*.json``:
the types of the fields a report reads, checked before it reads them.

A run directory may come from elsewhere, so its JSON may be anything: ``[]`` instead of an object,
``examples: "many"``, ``expected_cells: 5``. Checked strictly (a string is not a number) against
these models, such a file is one line naming the field, instead of an ``AttributeError`` deep in the
report. Unknown fields are allowed and kept (a newer writer may add some); nothing is converted,
so what passes is read exactly as written.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: The study name becomes a folder name (``runs/<study>/report``): a plain name, as in a spec.
_SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Number = int | float


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Gpu(_Read):
    name: str
    memory_bytes: Number = 0


class Invocation(_Read):
    """One invocation's environment (``invocations/<id>.json``; the list in run.json)."""

    gpus: list[Gpu] = Field(default_factory=list)
    packages: dict[str, str | None] = Field(default_factory=dict)
    cpu: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    cuda: str | None = None
    driver: str | None = None
    python: str | None = None
    git_sha: str | None = None


class LoadInfo(_Read):
    model: str
    scheme: str
    source: dict[str, Any] | None = None
    scheme_fields: dict[str, Any] | None = None
    num_parameters: int | None = None
    model_type: str | None = None


class ExpectedCell(_Read):
    cell_id: str
    label: str = ""
    kind: str = ""


class TaskInfo(_Read):
    limit: int | None = None
    data: str | None = None
    kind: str | None = None


class StudyInfo(_Read):
    name: str | None = Field(None, pattern=_SAFE_NAME)
    description: str | None = None


class RunInfo(_Read):
    """``tables/run.json``: the spec's facts a report needs besides the tables."""

    record_version: int | None = None
    spec_text: str | None = None
    invocations: list[Invocation] = Field(default_factory=list)
    loads: list[LoadInfo] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    study: StudyInfo | None = None
    references: dict[str, str | None] = Field(default_factory=dict)
    families: dict[str, str] = Field(default_factory=dict)
    model_notes: dict[str, str] = Field(default_factory=dict)
    schemes: dict[str, str] = Field(default_factory=dict)
    trust_remote_code: dict[str, bool] = Field(default_factory=dict)
    expected_cells: list[ExpectedCell] = Field(default_factory=list)
    report: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    tasks: dict[str, TaskInfo] = Field(default_factory=dict)

    @field_validator("report")
    @classmethod
    def _report_options(cls, report: dict[str, Any]) -> dict[str, Any]:
        """The report options as a spec's ``report:`` allows them; ``output_dir`` is not read (a run
        directory does not choose where a report goes) and unknown options are left alone."""
        from harness_ext.spec.schema import ReportSpec

        known = {k: v for k, v in report.items() if k in ReportSpec.model_fields and k != "output_dir"}
        ReportSpec.model_validate(known)
        return report


def problem(data: Any, model: type[BaseModel]) -> str | None:
    """Why ``data`` is not a valid ``model`` (its first problem: ``field.path: message``), or None."""
    if not isinstance(data, dict):
        return f"not a JSON object (a JSON {type(data).__name__})"
    try:
        model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return f"{where}: {err['msg'].removeprefix('Value error, ')}{more}"
    return None
