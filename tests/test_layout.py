"""The package's layers and what each may import (docs/internals.md#layers): checked on every module's imports.

A static check, as import-linter does: every `import` and `from ... import` in a layer's files, also those
inside functions (lazy imports are imports too). Plus one run-time check that the core and the scoring
library load without `llava`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aligngpt_plugin"
LAYERS = ("core", "integrations", "integrations/llava", "integrations/hf", "conversion", "scoring", "evaluation",
          "analysis", "devkit")


def plugin(*layers: str) -> set[str]:
    return {f"aligngpt_plugin.{layer.replace('/', '.')}" for layer in layers}


# layer -> what it must not import (a module, or anything under it)
UPPER = plugin("conversion", "scoring", "evaluation", "analysis", "devkit")
FORBIDDEN = {
    "core": {"llava", "transformers", "open_clip", "lmms_eval", "deepspeed.runtime"} | plugin(*LAYERS[1:]),
    "scoring": {"llava", "lmms_eval"} | plugin("integrations", "conversion", "evaluation", "analysis", "devkit"),
    "integrations/llava": {"lmms_eval"} | UPPER | plugin("integrations/hf"),
    # transformers' own Llava only: no LLaVA code, no other integration
    "integrations/hf": {"llava", "lmms_eval"} | UPPER | plugin("integrations/llava"),
    "conversion": {"lmms_eval"} | plugin("scoring", "evaluation", "analysis", "devkit"),
    "evaluation": plugin("scoring", "analysis", "devkit"),
    "analysis": {"lmms_eval"} | plugin("scoring", "evaluation", "devkit"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, wherever the statement is (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def violations(folder: Path, forbidden: set[str]) -> list[str]:
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(layer):
    assert (PACKAGE / layer / "__init__.py").is_file()
    assert violations(PACKAGE / layer, FORBIDDEN[layer]) == []


def test_the_check_finds_a_forbidden_import_wherever_it_is(tmp_path, monkeypatch):
    fake = tmp_path / "aligngpt_plugin" / "core"
    fake.mkdir(parents=True)
    (fake / "ok.py").write_text("import torch\nfrom aligngpt_plugin.core import fileio\n")
    (fake / "lazy.py").write_text("def f():\n    from llava.model import builder\n")
    (fake / "relative.py").write_text("from ..integrations.llava import model\n")
    (fake / "parent.py").write_text("from aligngpt_plugin import integrations\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "aligngpt_plugin")
    found = violations(fake, FORBIDDEN["core"])
    assert found == ["aligngpt_plugin/core/lazy.py imports llava.model",
                     "aligngpt_plugin/core/lazy.py imports llava.model.builder",
                     "aligngpt_plugin/core/parent.py imports aligngpt_plugin.integrations",
                     "aligngpt_plugin/core/relative.py imports aligngpt_plugin.integrations.llava",
                     "aligngpt_plugin/core/relative.py imports aligngpt_plugin.integrations.llava.model"]


def test_every_subpackage_says_what_lives_there():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and len(doc.split()) > 15, layer


def test_top_level_modules_are_the_commands():
    """The top level holds the commands (each `main(argv) -> exit status`), the subpackages the layers."""
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert modules == ["analyze", "convert", "demo", "evaluate", "fixtures", "llava_eval", "lora", "score", "train"]
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name


def test_core_and_scoring_load_without_llava():
    """(`import aligngpt_plugin` registers the config types with transformers, which needs no llava.)"""
    code = ("import sys\n"
            "import aligngpt_plugin.core.alignment, aligngpt_plugin.core.level_edges, aligngpt_plugin.core.patch_loss\n"
            "import aligngpt_plugin.core.patch_geometry, aligngpt_plugin.core.metrics, aligngpt_plugin.core.fileio\n"
            "import aligngpt_plugin.scoring, aligngpt_plugin.score\n"
            "heavy = ('aligngpt_plugin.integrations.llava.model', 'aligngpt_plugin.integrations.llava.compat')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'llava' or m in heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
