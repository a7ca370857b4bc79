"""What a wheel ships: every package of harness_ext is listed for setuptools.

The editable install (and the tests) see the whole source tree, so a subpackage missing from
``[tool.setuptools].packages`` only shows after ``pip install .``: ``harness_ext.analysis`` was left
out of the wheel that way, and ``harness-ext report`` failed on import in a regular install.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _packages_in(root: Path) -> set[str]:
    return {
        ".".join(init.parent.relative_to(root.parent).parts)
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_of_the_source_tree_goes_into_the_wheel() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = _packages_in(REPO / "harness_ext")
    assert "harness_ext.tasks" in found  # the walk sees subpackages at all
    assert found - listed == set(), "add these to [tool.setuptools].packages in pyproject.toml"
    mapped = set(setuptools.get("package-dir", {}))
    assert listed - found - mapped == set(), "listed packages that no longer exist"
