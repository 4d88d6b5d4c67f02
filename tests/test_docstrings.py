"""Public functions and classes outside `core/` and the HF integration carry a docstring, with an `Args:`
section where they take parameters (as transformers' model files do). An AST walk: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aligngpt_plugin"
FOLDERS = ("integrations/llava", "conversion", "evaluation", "analysis", "scoring", "devkit")
# documented by their owners' own tasks, not checked here
NOT_CHECKED = {"conversion/hf.py", "evaluation/gates.py", "evaluation/lmms.py", "scoring/config.py",
               "scoring/merge.py", "devkit/level_probe.py", "devkit/pipeline.py"}


def checked_files() -> list[Path]:
    files = []
    for folder in FOLDERS:
        for path in sorted((PACKAGE / folder).glob("*.py")):
            rel = path.relative_to(PACKAGE).as_posix()
            if rel not in NOT_CHECKED and not (folder == "devkit" and path.name.startswith("demo_")):
                files.append(path)
    return files


def is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)) == "dataclass":
            return True
    return False


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = function.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def problems_in(source: str, name: str) -> list[str]:
    """What is missing in one module's source: "<name>:<line> <what>" per public function, class or method."""
    tree = ast.parse(source)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    found = []

    def documented_in_a_base(cls: ast.ClassDef, method: str) -> bool:
        # an override inherits its base's docstring (inspect.getdoc's rule), for bases in the same module
        for base in cls.bases:
            parent = classes.get(base.id) if isinstance(base, ast.Name) else None
            if parent is None:
                continue
            for node in parent.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == method:
                    return ast.get_docstring(node) is not None
            if documented_in_a_base(parent, method):
                return True
        return False

    def check(function, label: str, cls: ast.ClassDef | None = None) -> None:
        doc = ast.get_docstring(function)
        if doc is None:
            if cls is None or not documented_in_a_base(cls, function.name):
                found.append(f"{name}:{function.lineno} {label}: no docstring")
        elif parameters(function) and "Args:" not in doc:
            found.append(f"{name}:{function.lineno} {label}: takes {', '.join(parameters(function))} but its "
                         "docstring has no Args: section")

    for node in tree.body:
        if getattr(node, "name", "_").startswith("_"):  # private, or not a definition
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "main":
            check(node, node.name)
        elif isinstance(node, ast.ClassDef):
            if ast.get_docstring(node) is None:
                found.append(f"{name}:{node.lineno} class {node.name}: no docstring")
            if is_dataclass(node):
                continue
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_"):
                    check(member, f"{node.name}.{member.name}", node)
    return found


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_public_api_is_documented_with_args(path):
    problems = problems_in(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).as_posix())
    assert not problems, "add a docstring (Google style: Args:/Returns:, tensor shapes):\n" + "\n".join(problems)


def test_the_check_finds_what_it_looks_for():
    source = '''
def documented(x):
    """Doc.

    Args:
        x: a thing.
    """

def no_args_section(x):
    """Doc without Args."""

def bare():
    pass

def _private(x):
    pass

class Base:
    """A base."""

    def run(self, x):
        """Run.

        Args:
            x: a thing.
        """

class Child(Base):
    """Overrides keep the base's docstring."""

    def run(self, x):
        return x

    def extra(self):
        return 1
'''
    assert problems_in(source, "m.py") == [
        "m.py:9 no_args_section: takes x but its docstring has no Args: section",
        "m.py:12 bare: no docstring",
        "m.py:34 Child.extra: no docstring",
    ]
