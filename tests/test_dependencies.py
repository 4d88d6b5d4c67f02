"""A hard dependency (pyproject's `dependencies`) is imported plainly in the tests: `importorskip` on one
would turn a broken install into skipped tests, which a green run does not show."""

from __future__ import annotations

import ast
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def hard_dependencies() -> set[str]:
    """The installed plugin's requirements outside every extra (pyproject's `dependencies`)."""
    wanted = [Requirement(r) for r in requires("aligngpt-plugin") or []]
    return {canonicalize_name(r.name) for r in wanted if r.marker is None or "extra" not in str(r.marker)}


def skipped_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every `importorskip("module")` call."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "importorskip"
                and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, node.args[0].value))
    return found


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide `module`'s top-level package (from the installed metadata)."""
    return {canonicalize_name(d) for d in packages_distributions().get(module.split(".")[0], [])}


def test_hard_dependencies_are_not_imported_with_importorskip():
    hard = hard_dependencies()
    assert {"pyarrow", "webdataset", "torch", "transformers"} <= hard
    offenders = [f"{f.relative_to(ROOT)}:{line} importorskip({module!r})"
                 for f in sorted((ROOT / "tests").rglob("*.py"))
                 for line, module in skipped_imports(f.read_text()) if distributions_of(module) & hard]
    assert offenders == [], f"import these plainly, they are in pyproject's dependencies: {offenders}"


@pytest.mark.parametrize("module, hard", [("pyarrow.parquet", True), ("webdataset", True), ("PIL", True),
                                          ("deepspeed", False), ("lmms_eval", False)])
def test_the_finder_knows_hard_from_optional(module, hard):
    """The check above can tell them apart (so an empty list from it means something)."""
    assert skipped_imports(f"import pytest\npytest.importorskip({module!r})\n") == [(2, module)]
    assert bool(distributions_of(module) & hard_dependencies()) == hard
