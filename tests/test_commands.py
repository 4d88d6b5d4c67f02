"""Every installed command as a user types it: `--help` works, success exits 0 (so `cmd && next` goes on),
a bad input exits non-zero with a message."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SCRIPTS = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.value.startswith("aligngpt_plugin")}
BIN = Path(sys.executable).parent
ENV = {"PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def shell(command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=ENV, **kwargs)


def test_every_console_script_is_installed_and_a_command():
    assert sorted(SCRIPTS) == ["aligngpt-analyze", "aligngpt-convert", "aligngpt-demo", "aligngpt-eval",
                               "aligngpt-fixtures", "aligngpt-llava-eval", "aligngpt-score", "aligngpt-sft",
                               "aligngpt-train"]
    for name, target in SCRIPTS.items():
        module = target.split(":")[0]
        assert module.count(".") == 1, f"{name} -> {target}: commands live at the package's top level"
        assert (BIN / name).is_file(), f"{name} is not installed: pip install -e ."


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0(name):
    proc = shell(f"{name} --help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_train_help_lists_the_plugins_flags_beside_llavas():
    proc = shell("python -m aligngpt_plugin.train --help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--align_levels", "--align_mode", "--patch_align_weight", "--model_name_or_path",
                 "--tune_mm_mlp_adapter", "--deepspeed"):
        assert flag in proc.stdout, flag


def test_a_successful_command_lets_the_next_one_run(tmp_path):
    proc = shell(f"aligngpt-fixtures {tmp_path / 'fx'} --n-pretrain 2 --n-finetune 6 --n-questions 1 "
                 f"--hidden-size 32 && echo NEXT")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("NEXT")
    assert (tmp_path / "fx" / "llm" / "tokenizer.model").is_file()


@pytest.mark.parametrize("command, message", [
    ("aligngpt-convert to-plugin /nowhere/ckpt OUT", "does not exist"),
    ("aligngpt-eval check pope --eval-dir /nowhere", "pope"),
    ("aligngpt-llava-eval", "usage"),
    ("aligngpt-analyze --model /nowhere --images /nowhere --out OUT", "/nowhere"),
    ("aligngpt-sft --model_name_or_path /nowhere --dataset_name data.json --output_dir OUT", "/nowhere"),
])
def test_a_failing_command_exits_non_zero_with_a_message(command, message, tmp_path):
    proc = shell(f"{command} && echo NEXT", cwd=tmp_path)
    assert proc.returncode != 0 and "NEXT" not in proc.stdout
    assert message in proc.stderr, proc.stderr[-2000:]
