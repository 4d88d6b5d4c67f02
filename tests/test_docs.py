"""The documentation that ships with the code is checked, as code is (docs/README.md says what it holds).

- every relative link of README.md and docs/*.md reaches a file, and its `#anchor` a heading there;
- every repository path they name (`scripts/pretrain.sh`, `aligngpt_plugin/core/alignment.py`, a module
  `aligngpt_plugin.integrations.llava.loader`) exists;
- every command shown in a shell block whose first word is one of pyproject.toml's console scripts (or that
  runs `-m aligngpt_plugin.X`, also under torchrun) uses only flags that the command's own `--help` lists
  (each help is run once, in parallel; subcommands and LLaVA's eval modules get their own help);
- every pointer from the code into the docs (`docs/method.md#the-gate`, `README.md#tested-versions`)
  reaches a heading, and none points outside the repository (`../shared`).

The checks are plain functions over text, so the last tests plant a dead link, a wrong path, an unknown
flag and a dangling pointer and see each one reported.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path that starts with one of these names a file of this repository
TOP_DIRS = ("aligngpt_plugin", "tests", "bench", "eval", "scripts", "patches", "docs", "tools")
TOP_FILES = ("Makefile", "constraints.txt", "pyproject.toml", "README.md")
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
CODE_DIRS = ("aligngpt_plugin", "patches", "scripts", "eval", "bench", "tests", "tools")

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_DIRS) + r")/[\w./*-]*|(?:"
                  + "|".join(re.escape(f) for f in TOP_FILES) + r"))(?![\w<{$])")
MODULE = re.compile(r"^aligngpt_plugin(?:\.\w+)+$")
POINTER = re.compile(r"(?<![\w/.-])((?:docs/[\w-]+|README)\.md)#([\w-]+)")
OPERATORS = {"|", "||", "&", "&&", ";", "<", ">", ">>", "(", ")"}


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the prose with fenced blocks removed, [(info string, body)] of each fenced block)."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]
    return FENCE.sub("", text), blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose, _ = split_fences(text)
    found: set[str] = set()
    for line in prose.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def link_problems(page: Path, text: str, root: Path = ROOT) -> list[str]:
    """Relative links of `text` (the page at `page`) whose file or #anchor does not exist."""
    prose, _ = split_fences(text)
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{page.name}: link {target} -> {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{page.name}: link {target}: no heading #{anchor} in {dest.name}")
        elif root not in dest.parents and dest != root:
            problems.append(f"{page.name}: link {target} leaves the repository")
    return problems


def module_exists(name: str, root: Path = ROOT) -> bool:
    """`aligngpt_plugin.a.b` is a module or package of the repository, or an attribute of one."""
    def source(parts: list[str]) -> Path | None:
        rel = parts[1:]
        base = root / "patches" if rel[:1] == ["patches"] else root / "aligngpt_plugin"
        path = base.joinpath(*(rel[1:] if rel[:1] == ["patches"] else rel))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    parts = name.split(".")
    if source(parts):
        return True
    parent = source(parts[:-1])  # an attribute: a name the parent module defines or imports
    return parent is not None and parts[-1] in top_level_names(parent)


def top_level_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def path_problems(page_name: str, text: str, root: Path = ROOT) -> list[str]:
    """Repository paths and modules named in `text` (inline code and fenced blocks) that do not exist."""
    prose, blocks = split_fences(text)
    spans = INLINE_CODE.findall(prose) + [body for _, body in blocks]
    problems = []
    for span in spans:
        for path in PATH.findall(span):
            path = path.rstrip(".")
            if not (list(root.glob(path)) if "*" in path else (root / path).exists()):
                problems.append(f"{page_name}: {path} does not exist")
        for word in re.split(r"[\s()\[\],:;]+", span):
            if MODULE.match(word) and not module_exists(word, root):
                problems.append(f"{page_name}: module {word} does not exist")
    return problems


# --- commands and their --help ----------------------------------------------------------------------

@cache
def console_scripts() -> dict[str, str]:
    """console script -> module name under aligngpt_plugin (pyproject.toml's [project.scripts])."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0].removeprefix("aligngpt_plugin.") for name, target in scripts.items()}


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the shell blocks of `text`, as word lists (continuations joined, comments and
    environment assignments dropped, pipelines and lists split into their commands)."""
    _, blocks = split_fences(text)
    commands = []
    for info, body in blocks:
        if info not in SHELL_BLOCKS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*\$\s+", "", line)
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for word in list(lexer) + [";"]:
                if word in OPERATORS or set(word) <= set("|&;<>()"):
                    if command:
                        commands.append(command)
                    command = []
                elif command or not re.match(r"^[A-Za-z_]\w*=", word):
                    command.append(word)
    return commands


def plugin_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(the plugin module a command runs, its arguments), or None for any other command."""
    if words and words[0] in console_scripts():
        return console_scripts()[words[0]], words[1:]
    for i, word in enumerate(words[:-1]):
        if word in ("-m", "--module") and words[i + 1].startswith("aligngpt_plugin."):
            return words[i + 1].removeprefix("aligngpt_plugin."), words[i + 2:]
    return None


def flags_of(help_text: str) -> set[str]:
    """The option strings of an argparse help: every -x/--xy at the start of an option line, with its aliases."""
    flags = set()
    for line in help_text.splitlines():
        if re.match(r"^\s+-", line):
            head = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?:^|,\s*)(--?[A-Za-z0-9][\w-]*)", head))
    return flags


# One interpreter prints every help asked for: each command module runs as `python -m` would run it, with
# `--help` in its argv, and its output is caught at the SystemExit that argparse raises. One start-up (torch,
# transformers) instead of one per command keeps the check to seconds. transformers is imported first, so
# the order the modules run in cannot change what any of them imports first (the suite's command tests run
# each command in its own process).
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
import transformers
result = {}
for inv in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = [inv[0], *inv[1:], "--help"]
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module("aligngpt_plugin." + inv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code or 0
    result[json.dumps(inv)] = [code, out.getvalue()]
sys.stdout.write(json.dumps(result))
"""


def run_helps(invocations: set[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """The output of `python -m aligngpt_plugin.<module> [sub] --help` for each invocation."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", HELP_DRIVER, json.dumps(sorted(invocations))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the --help driver failed:\n{proc.stderr[-3000:]}"
    helps = {}
    for key, (code, text) in json.loads(proc.stdout).items():
        inv = tuple(json.loads(key))
        assert code == 0, f"{' '.join(inv)} --help exited {code}:\n{text[-2000:]}"
        helps[inv] = text
    return helps


class HelpCache:
    """Each command's --help, run once per test session."""

    def __init__(self):
        self.helps: dict[tuple[str, ...], str] = {}

    def fetch(self, invocations: set[tuple[str, ...]]) -> None:
        missing = invocations - set(self.helps)
        if missing:
            self.helps.update(run_helps(missing))

    def invocation(self, module: str, args: list[str]) -> tuple[str, ...]:
        """The help that documents `args`: the command's, a subcommand's, or a LLaVA eval module's."""
        if module == "llava_eval":
            return (module, args[0]) if args and args[0].startswith("llava.") else (module,)
        self.fetch({(module,)})
        sub = re.search(r"\{([\w,-]+)\} \.\.\.", self.helps[(module,)])  # argparse subparsers
        if sub and args and args[0] in sub.group(1).split(","):
            return module, args[0]
        return (module,)

    def problems(self, page_name: str, text: str) -> list[str]:
        calls = [call for words in shell_commands(text) if (call := plugin_invocation(words))]
        # the command's help and, where the first argument may be a subcommand, its help too: one fetch
        self.fetch({(module,) for module, _ in calls if module != "llava_eval"}
                   | {(module, args[0]) for module, args in calls if args and not args[0].startswith("-")})
        wanted = [(self.invocation(module, args), args) for module, args in calls]
        self.fetch({inv for inv, _ in wanted})
        problems = []
        for inv, args in wanted:
            known = flags_of(self.helps[inv])
            for arg in args:
                flag = arg.split("=", 1)[0]
                if re.match(r"^--?[A-Za-z]", flag) and flag not in known:
                    problems.append(f"{page_name}: `{' '.join(inv)}` has no flag {flag} (see its --help)")
        return problems


@pytest.fixture(scope="module")
def helps() -> HelpCache:
    return HelpCache()


# --- the checks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_paths_exist(page):
    text = page.read_text()
    assert link_problems(page, text) + path_problems(page.relative_to(ROOT).as_posix(), text) == []


def test_commands_use_only_flags_their_help_lists(helps):
    problems = []
    for page in PAGES:
        problems += helps.problems(page.relative_to(ROOT).as_posix(), page.read_text())
    assert problems == []


def code_files() -> list[Path]:
    files = [ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in CODE_DIRS:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".sh", ".md", ".toml")]
    return files


def pointer_problems(name: str, text: str, root: Path = ROOT) -> list[str]:
    """Pointers `docs/X.md#anchor` / `README.md#anchor` in `text` that reach no heading, and any
    pointer to the design notes outside the repository."""
    problems = []
    for page, anchor in POINTER.findall(text):
        target = root / page
        if not target.is_file():
            problems.append(f"{name}: {page} does not exist")
        elif anchor not in anchors(target.read_text()):
            problems.append(f"{name}: {page} has no heading #{anchor}")
    if "METHOD.md" in text or "../shared/design" in text:
        problems.append(f"{name}: points at ../shared/design, which is not shipped; point at docs/ instead")
    return problems


def test_pointers_from_the_code_reach_the_docs():
    problems = []
    for path in code_files():
        if path.resolve() != Path(__file__).resolve():
            problems += pointer_problems(path.relative_to(ROOT).as_posix(), path.read_text(errors="replace"))
    assert problems == []


# --- the checks find what they are for (planted faults) -----------------------------------------------

def test_a_dead_link_a_wrong_anchor_and_a_missing_path_are_reported():
    page = ROOT / "docs" / "usage.md"
    text = ("See [the method](method.md#the-gate), [gone](method2.md), [anchor](method.md#no-such-heading),\n"
            "`scripts/pretrain.sh`, `scripts/pretrian.sh`, `eval/*.sh`, `bench/nothing*.py`, "
            "`aligngpt_plugin.core.alignment.AlignmentModule`, `aligngpt_plugin.core.levels`.\n"
            "```bash\nbash scripts/finetune.sh\nbash eval/nope.sh\n```\n")
    assert link_problems(page, text) == [
        f"usage.md: link method2.md -> {ROOT / 'docs' / 'method2.md'} does not exist",
        "usage.md: link method.md#no-such-heading: no heading #no-such-heading in method.md"]
    assert path_problems("usage.md", text) == [
        "usage.md: scripts/pretrian.sh does not exist", "usage.md: bench/nothing*.py does not exist",
        "usage.md: module aligngpt_plugin.core.levels does not exist", "usage.md: eval/nope.sh does not exist"]


def test_an_unknown_flag_is_reported(helps):
    text = ("```bash\n"
            "aligngpt-fixtures runs/tiny --hidden-size 64 --num-layer 2   # a typo: --num-layers\n"
            "LEVELS=8 python -m aligngpt_plugin.fixtures runs/tiny --seed=3 | tee log && echo done --not-a-flag\n"
            "aligngpt-eval gates runs/results --out runs/gates --answers a.jsonl   # --answers is score's\n"
            "```\n")
    assert helps.problems("usage.md", text) == [
        "usage.md: `fixtures` has no flag --num-layer (see its --help)",
        "usage.md: `evaluate gates` has no flag --answers (see its --help)"]


def test_a_dangling_pointer_from_the_code_is_reported():
    text = ('"""The gate (docs/method.md#the-gate); levels (docs/method.md#levels-that-moved); '
            'README.md#tested-versions; docs/nothing.md#x; see ../shared/design/METHOD.md section 2."""')
    assert pointer_problems("model.py", text) == [
        "model.py: docs/method.md has no heading #levels-that-moved", "model.py: docs/nothing.md does not exist",
        "model.py: points at ../shared/design, which is not shipped; point at docs/ instead"]


def test_slug_follows_github():
    assert slug("python -m aligngpt_plugin.lora merge") == "python--m-aligngpt_pluginlora-merge"
    assert slug("What `patches/` fixes") == "what-patches-fixes"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
