"""Every command's `main` returns the exit status its console script exits with (`sys.exit(main())`), so a
caller in python (a pipeline, a test) reads the same status as the shell."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

import pytest

SCRIPTS = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.value.startswith("aligngpt_plugin")}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_main_promises_an_int(name):
    module, function = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), function)
    assert inspect.signature(main).return_annotation in (int, "int"), f"{name}: {module}.{function} -> int"


def test_train_main_returns_0_after_help(capsys):
    from aligngpt_plugin.train import main

    assert main(["--help"]) == 0
    assert "--align_levels" in capsys.readouterr().out
