"""The training features of `python -m aligngpt_plugin.train`: one registry the entry point loops over, each
feature's flags defined once (by its settings dataclass) and listed once in `--help`."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aligngpt_plugin.integrations.llava import features, training
from aligngpt_plugin.integrations.llava.features import register_training_feature, training_features

PACKAGE = Path(__file__).resolve().parents[1] / "aligngpt_plugin"


@dataclass
class Toy:
    size: int = field(default=3, metadata={"help": "how big"})
    kind: str = field(default="a", metadata={"help": "which kind"})


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry that a test may add to."""
    monkeypatch.setattr(features, "_FEATURES", dict(features._FEATURES))
    return features._FEATURES


def toy(name: str, prefix: str, calls: list, **kwargs):
    return register_training_feature(
        name, settings_cls=Toy, prefix=prefix, switch="size", switch_metavar="S", title=f"{name} flags",
        enable=lambda s, run: calls.append((name, s, list(run.argv))), describe=lambda s, run: f"{name} {s.size}",
        **kwargs)


def test_the_plugins_features_are_registered_alignGPT_first():
    # patch alignment wraps the data module and trainer AlignGPT puts in place, so it is enabled after it
    assert [f.name for f in training_features()] == ["aligngpt", "patch_alignment"]


def test_a_feature_switches_on_with_its_switch_flag(registry):
    feature = toy("toy", "toy_", [])
    assert feature.split(["--lr", "1"]) == (None, ["--lr", "1"])
    assert feature.split(["--toy_size", "5", "--lr", "1"]) == (Toy(5), ["--lr", "1"])
    with pytest.raises(SystemExit, match="--toy_kind needs --toy_size S"):
        feature.split(["--toy_kind", "b"])
    off = toy("toy0", "toy0_", [], zero_is_off=True)
    assert off.split(["--toy0_size", "0"]) == (None, [])


@pytest.mark.parametrize("name, prefix, kwargs, error", [
    ("aligngpt", "x_", {}, "'aligngpt' is already registered"),
    ("toy", "align_", {"names": {"size": "levels"}}, r"flags \['--align_levels'\] belong to another feature"),
    ("toy", "toy_", {"after": ("nothing",)}, r"wraps \['nothing'\], which are not registered yet"),
])
def test_registration_mistakes_are_refused(registry, name, prefix, kwargs, error):
    with pytest.raises(ValueError, match=error):
        toy(name, prefix, [], **kwargs)


def test_the_entry_point_enables_every_switched_on_feature_in_order(registry, monkeypatch, capsys, llava_ready):
    """run_training takes each feature's flags off the command line, enables those switched on in
    registration order, says so, and hands LLaVA's train() the rest."""
    from llava.train import train as llava_train

    calls = []
    registry.clear()
    toy("first", "one_", calls)
    toy("second", "two_", calls)
    toy("third", "three_", calls)
    seen = []
    monkeypatch.setattr(llava_train, "train", lambda attn_implementation: seen.append(list(sys.argv)))
    monkeypatch.delenv("ALIGNGPT_ATTN_IMPLEMENTATION", raising=False)
    training.run_training(["--two_size", "2", "--seed", "3", "--one_size", "1", "--one_kind", "b"])
    assert calls == [("first", Toy(1, "b"), ["--seed", "3"]), ("second", Toy(2), ["--seed", "3"])]
    assert seen == [["aligngpt_plugin.train", "--seed", "3"]]
    out = capsys.readouterr().out
    assert "[aligngpt] first 1\n[aligngpt] second 2\n" in out and "third" not in out


def test_no_module_writes_a_plugin_training_flag_by_hand():
    """The `--align_*` and `--patch_align_*` flags come from their settings dataclasses only: no
    add_argument call anywhere in the package names one."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and node.args[0].value.startswith(("--align_", "--patch_align_"))):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.args[0].value}")
    assert found == []


@pytest.fixture(scope="module")
def train_help() -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "aligngpt_plugin.train", "--help"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def help_entries(text: str) -> dict[str, list[str]]:
    """option -> the help text of each entry `--help` lists for it (argparse's two-column layout)."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (--[\w-]+)(?: \S+)?(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1)
            entries.setdefault(current, []).append(match.group(2) or "")
        elif current and re.match(r"^\s{10,}\S", line):
            entries[current][-1] += " " + line.strip()
        else:
            current = None
    return {k: [" ".join(v.split()) for v in vals] for k, vals in entries.items()}


@pytest.mark.parametrize("feature", ["aligngpt", "patch_alignment"])
def test_train_help_lists_each_flag_once_with_its_fields_help(train_help, feature):
    feature = features.training_feature(feature)
    entries = help_entries(train_help)
    for f in dataclasses.fields(feature.settings_cls):
        flag = feature.flags.flag(f.name)
        assert len(entries.get(flag, [])) == 1, (flag, entries.get(flag))
        want = " ".join(f.metadata["help"].split())
        if f.default is not None and f.name != feature.switch:
            want += f" (default: {f.default})"
        assert entries[flag][0] == want, flag
    for flag in entries:  # and nothing else of the feature's prefix
        if flag.startswith(feature.flags.flag(feature.switch).rsplit("_", 1)[0] + "_"):
            assert flag in {feature.flags.flag(n) for n in feature.flags.fields}, flag
