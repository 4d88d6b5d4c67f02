"""The io module: files written atomically get the permission bits a plain `open` would give them, and the
plugin's writers of user-facing outputs go through it.

The expected modes come from the operating system: a file made by a plain `open(path, "w")` under the
same umask, and the POSIX rule 0o666 & ~umask written out (022 -> 0644, 077 -> 0600).
"""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from aligngpt_plugin.core import fileio

PACKAGE = Path(fileio.__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_open_mode(path: Path) -> int:
    with open(path, "w") as f:
        f.write("x")
    return mode(path)


WRITERS = {
    "text": lambda p: fileio.write_text_atomic(p, "hello\n"),
    "json": lambda p: fileio.write_json_atomic(p, {"a": 1}),
    "jsonl": lambda p: fileio.write_jsonl_atomic(p, [{"a": 1}]),
    "bytes": lambda p: fileio.write_bytes_atomic(p, b"\0\1"),
}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
@pytest.mark.parametrize("writer", ["text", "json", "jsonl", "bytes"])
def test_new_file_gets_the_mode_plain_open_gives(tmp_path, umask, mask, expected, writer):
    umask(mask)
    assert plain_open_mode(tmp_path / "plain") == expected  # the oracle: the OS itself
    WRITERS[writer](tmp_path / "atomic")
    assert mode(tmp_path / "atomic") == expected


def test_existing_file_keeps_its_mode(tmp_path, umask):
    """`open(path, "w")` on an existing file keeps the file's bits; so does the rename over it."""
    umask(0o022)
    target = tmp_path / "levels.json"
    target.write_text("old")
    target.chmod(0o640)
    fileio.write_json_atomic(target, [1, 2])
    assert mode(target) == 0o640
    assert json.loads(target.read_text()) == [1, 2]


def test_umask_read_from_proc_agrees_with_os_umask(umask):
    umask(0o027)
    assert fileio.process_umask() == 0o027


def test_umask_without_proc(tmp_path, umask, monkeypatch):
    """Where /proc/self/status is missing, the umask is read by setting it and setting it back."""
    monkeypatch.setattr(fileio, "PROC_STATUS", str(tmp_path / "no-such-file"))
    umask(0o077)
    assert fileio.process_umask() == 0o077
    assert os.umask(0o077) == 0o077  # left as it was


def test_atomic_path_with_a_library_writer(tmp_path, umask):
    """A library that writes the temporary path itself (safetensors, torch.save) still gets the mode."""
    import torch
    from safetensors.torch import load_file, save_file

    umask(0o022)
    target = tmp_path / "model.safetensors"
    with fileio.atomic_path(target) as tmp:
        save_file({"w": torch.ones(2)}, str(tmp))
    assert mode(target) == 0o644
    assert load_file(str(target))["w"].tolist() == [1.0, 1.0]


def test_save_figure_atomic(tmp_path, umask):
    """The format comes from the target's suffix, as `savefig(path)` takes it (the temporary ends in .tmp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    umask(0o022)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = fileio.save_figure_atomic(fig, tmp_path / "a.png", dpi=50)
    pdf = fileio.save_figure_atomic(fig, tmp_path / "a.pdf")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert mode(png) == mode(pdf) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf", "a.png"]  # no temporary left behind


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "scores.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), fileio.atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.jsonl"]


# Modules whose outputs a user keeps (reports, plots, logs of a pipeline) must write through the io
# module: a killed run leaves the old file whole, and the file gets the team's mode. Not listed: the
# builders of throwaway fixtures (devkit/tiny_checkpoints, shapes_*, demo_data: they fill a fresh
# folder), the append-only gate dump (integrations/llava/loader.py: a rename cannot append), and the
# demo's live subprocess log (devkit/demo_experiment.py: streamed while the stage runs).
THROUGH_FILEIO = ["analysis", "devkit/demo_report.py", "devkit/pipeline.py", "conversion", "scoring",
                  "evaluation/gates.py", "score.py", "convert.py", "analyze.py", "evaluate.py"]
DIRECT_WRITES = {"savefig", "write_text", "write_bytes", "save_file"}


def direct_writes(source: str) -> list[int]:
    """Lines that write a file without `atomic_path`/`atomic_open`: `x.savefig(...)`, `x.write_text(...)`,
    `x.write_bytes(...)`, `save_file(...)`, `torch.save(...)`, `open(..., "w"/"a"/"x")`, except inside a
    `with atomic_path(...)` / `with atomic_open(...)` block."""
    found = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            names = {getattr(getattr(item.context_expr, "func", None), "id", None)
                     or getattr(getattr(item.context_expr, "func", None), "attr", None) for item in node.items}
            guarded = guarded or bool(names & {"atomic_path", "atomic_open"})
        if isinstance(node, ast.Call) and not guarded:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DIRECT_WRITES or (name == "save" and getattr(func.value, "id", None) == "torch"):
                found.append(node.lineno)
            elif name == "open":
                modes = node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax") for m in modes):
                    found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(source), False)
    return found


def test_writers_go_through_the_io_module():
    files = []
    for entry in THROUGH_FILEIO:
        path = PACKAGE / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert len(files) > 10
    offenders = [f"{f.relative_to(PACKAGE)}:{line}" for f in files for line in direct_writes(f.read_text())]
    assert offenders == [], f"write through aligngpt_plugin.core.fileio instead: {offenders}"


@pytest.mark.parametrize("source, bad", [
    ("fig.savefig(path)", True),
    ("path.write_text('x')", True),
    ("torch.save(state, path)", True),
    ("f = open(path, 'w')", True),
    ("f = open(path, mode='ab')", True),
    ("f = open(path)", False),
    ("f = open(path, 'rb')", False),
    ("with atomic_path(p) as tmp:\n    torch.save(state, tmp)", False),
    ("with fileio.atomic_open(p, 'wb') as f:\n    fig.savefig(f)", False),
])
def test_the_direct_write_finder(source, bad):
    """The checker above finds what it is meant to (so an empty list from it means something)."""
    assert bool(direct_writes(source)) == bad
