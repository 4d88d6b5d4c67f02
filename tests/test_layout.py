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


# The commands sit on top of every layer; `patches/` (fixes to LLaVA) is applied by the LLaVA integration only.
COMMANDS = plugin("analyze", "convert", "demo", "evaluate", "fixtures", "llava_eval", "lora", "score", "sft",
                  "train")
PATCHES = plugin("patches")

# layer -> what it must not import (a module, or anything under it)
UPPER = plugin("conversion", "scoring", "evaluation", "analysis", "devkit") | COMMANDS
FORBIDDEN = {
    "core": {"llava", "transformers", "open_clip", "lmms_eval", "deepspeed.runtime"} | plugin(*LAYERS[1:])
    | COMMANDS | PATCHES,
    "scoring": {"llava", "lmms_eval"} | plugin("integrations", "conversion", "evaluation", "analysis", "devkit")
    | COMMANDS | PATCHES,
    "integrations/llava": {"lmms_eval"} | UPPER | plugin("integrations/hf"),
    # transformers' own Llava only: no LLaVA code, no other integration, no fix to LLaVA
    "integrations/hf": {"llava", "lmms_eval"} | UPPER | plugin("integrations/llava") | PATCHES,
    "conversion": {"lmms_eval"} | plugin("scoring", "evaluation", "analysis", "devkit") | COMMANDS,
    "evaluation": plugin("scoring", "analysis", "devkit") | COMMANDS,
    "analysis": {"lmms_eval"} | plugin("scoring", "evaluation", "devkit") | COMMANDS,
}

DYNAMIC_IMPORTS = ("import_module", "__import__")


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
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("x") / import_module("x") / __import__("x"): imports too
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
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
    (fake / "dynamic.py").write_text("import importlib\nimportlib.import_module('transformers')\n"
                                     "__import__('aligngpt_plugin.scoring.engine')\n")
    (fake / "fixes.py").write_text("from aligngpt_plugin.patches import slow_tokenizer_class\n")
    (fake / "command.py").write_text("def f():\n    from aligngpt_plugin.train import main\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "aligngpt_plugin")
    found = violations(fake, FORBIDDEN["core"])
    assert found == ["aligngpt_plugin/core/command.py imports aligngpt_plugin.train",
                     "aligngpt_plugin/core/command.py imports aligngpt_plugin.train.main",
                     "aligngpt_plugin/core/dynamic.py imports aligngpt_plugin.scoring.engine",
                     "aligngpt_plugin/core/dynamic.py imports transformers",
                     "aligngpt_plugin/core/fixes.py imports aligngpt_plugin.patches",
                     "aligngpt_plugin/core/fixes.py imports aligngpt_plugin.patches.slow_tokenizer_class",
                     "aligngpt_plugin/core/lazy.py imports llava.model",
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
    assert modules == ["analyze", "convert", "demo", "evaluate", "fixtures", "llava_eval", "lora", "score", "sft",
                       "train"]
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name


def test_core_and_scoring_load_without_transformers_llava_or_an_integration():
    """At run time too: the package's `__init__` registers the AlignGPT types only once transformers is imported
    (by the process, for its own reasons), so the core and the scoring library load alone."""
    code = ("import sys\n"
            "import aligngpt_plugin.core.alignment, aligngpt_plugin.core.level_edges, aligngpt_plugin.core.patch_loss\n"
            "import aligngpt_plugin.core.patch_geometry, aligngpt_plugin.core.metrics, aligngpt_plugin.core.fileio\n"
            "import aligngpt_plugin.scoring, aligngpt_plugin.score\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llava', 'transformers', 'open_clip')\n"
            "             or m.startswith(('aligngpt_plugin.integrations', 'aligngpt_plugin.patches'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_transformers_after_the_package_registers_the_aligngpt_types():
    code = ("import aligngpt_plugin\n"
            "from transformers import AutoConfig\n"
            "print(type(AutoConfig.for_model('llava_aligngpt')).__name__, "
            "type(AutoConfig.for_model('aligngpt_llava')).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AlignGPTLlavaConfig", "AlignGPTConfig"]


@pytest.mark.parametrize("first", ["aligngpt_plugin.integrations.llava.configuration",
                                   "aligngpt_plugin.integrations.hf.configuration_aligngpt",
                                   "aligngpt_plugin.integrations.hf.processing_aligngpt",
                                   "aligngpt_plugin.integrations.hf.modeling_aligngpt",
                                   "aligngpt_plugin.integrations.hf.training", "aligngpt_plugin.sft",
                                   "aligngpt_plugin.integrations.llava.loader", "aligngpt_plugin.conversion.released"])
def test_a_module_that_imports_transformers_first_still_loads_and_registers(first):
    """The registration runs inside transformers' import; when that import comes from a module registration
    itself needs, the module registers at its own end instead of being re-entered half loaded."""
    code = (f"import {first}\n"
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
            "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
            "from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig\n"
            "print('llava_aligngpt' in CONFIG_MAPPING, 'aligngpt_llava' in CONFIG_MAPPING,\n"
            "      PROCESSOR_MAPPING[AlignGPTLlavaConfig].__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "AlignGPTLlavaProcessor"]
