"""core/flags.py: a settings dataclass's fields as command-line flags (help, choices, defaults, bools,
deprecated spellings) and the dataclass built back from the parsed command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Literal

import pytest

from aligngpt_plugin.core.flags import DataclassFlags


@dataclass
class Settings:
    path: str = field(metadata={"help": "where the data is"})
    weight: float = field(default=0.0, metadata={"help": "lambda of the loss; 50% is 0.5"})
    multi: Literal["mean", "best"] = field(default="mean", metadata={"help": "several phrases on a patch"})
    steps: int | None = field(default=None, metadata={"help": "stop after this many", "metavar": "N"})
    strict: bool = field(default=False, metadata={"help": "stop at the first bad record"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    num_levels: int = field(default=8, metadata={"help": "N levels"})

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight={self.weight}: must be >= 0")


def parser_for(flags: DataclassFlags) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmd")
    flags.add_to(parser)
    return parser


def option_help(parser: argparse.ArgumentParser, option: str) -> str | None:
    """The help argparse holds for `option` (None: no such option)."""
    for action in parser._actions:
        if option in action.option_strings:
            return action.help
    return None


UNDERSCORE = DataclassFlags(Settings, prefix="my_", names={"num_levels": "levels"})
DASH = DataclassFlags(Settings, spelling="dash")


def test_option_strings_follow_the_spelling_prefix_and_names():
    assert [UNDERSCORE.flag(n) for n in UNDERSCORE.fields] == [
        "--my_path", "--my_weight", "--my_multi", "--my_steps", "--my_strict", "--no_my_progress", "--my_levels"]
    assert [DASH.flag(n) for n in DASH.fields] == [
        "--path", "--weight", "--multi", "--steps", "--strict", "--no-progress", "--num-levels"]


def test_help_is_the_fields_help_with_its_default():
    parser = parser_for(DASH)
    assert option_help(parser, "--path") == "where the data is"  # required: no default to show
    assert option_help(parser, "--multi") == "several phrases on a patch (default: mean)"
    assert option_help(parser, "--steps") == "stop after this many"  # a None default is not shown
    assert option_help(parser, "--strict") == "stop at the first bad record"
    text = parser.format_help()  # a % in the help is text, not a format directive
    assert "50% is 0.5 (default: 0.0)" in " ".join(text.split())
    assert "--steps N" in text
    assert DASH.help("weight") == "lambda of the loss; 50% is 0.5 (default: 0.0)"
    no_default = DataclassFlags(Settings, no_default=("num_levels",), hidden=("steps",))
    parser = parser_for(no_default)
    assert option_help(parser, "--num_levels") == "N levels" and "--steps" not in parser.format_help()
    assert no_default.build(parser.parse_args(["--path", "p", "--steps", "3"])).steps == 3  # hidden still works


def test_literal_becomes_choices():
    parser = parser_for(DASH)
    assert DASH.build(parser.parse_args(["--path", "p", "--multi", "best"])).multi == "best"
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--multi", "worst"])
    assert "{mean,best}" in parser.format_help()


def test_defaults_come_from_the_dataclass_and_only_given_flags_are_given():
    parser = parser_for(UNDERSCORE)
    args = parser.parse_args(["--my_path", "p", "--my_levels", "4"])
    assert UNDERSCORE.given(args) == {"path": "p", "num_levels": 4}
    assert UNDERSCORE.build(args) == Settings(path="p", num_levels=4)
    with pytest.raises(SystemExit):  # a field without a default is a required flag
        parser.parse_args([])


def test_bools_are_switches():
    parser = parser_for(DASH)
    args = parser.parse_args(["--path", "p", "--strict", "--no-progress"])
    assert DASH.given(args) == {"path": "p", "strict": True, "progress": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--strict", "True"])


def test_types_and_validation_stay_the_dataclasses():
    parser = parser_for(DASH)
    args = parser.parse_args(["--path", "p", "--weight", "0.25", "--steps", "7"])
    assert (DASH.build(args).weight, DASH.build(args).steps) == (0.25, 7)
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--steps", "seven"])
    with pytest.raises(ValueError, match="weight=-1.0: must be >= 0"):
        DASH.build(parser.parse_args(["--path", "p", "--weight", "-1"]))


def test_round_trip():
    """Any settings written as flags come back equal."""
    settings = Settings(path="data.json", weight=0.5, multi="best", steps=3, strict=True, progress=False,
                        num_levels=4)
    argv = []
    for name, value in asdict(settings).items():
        if isinstance(value, bool):
            argv += [DASH.flag(name)] if value != Settings.__dataclass_fields__[name].default else []
        else:
            argv += [DASH.flag(name), str(value)]
    assert DASH.build(parser_for(DASH).parse_args(argv)) == settings
    assert DASH.build(parser_for(DASH).parse_args(["--path", "x"]), strict=True) == Settings("x", strict=True)


def test_deprecated_spelling_still_works_with_a_warning(capsys):
    flags = DataclassFlags(Settings, spelling="dash", deprecated={"--levels": "num_levels", "--quiet": "progress"})
    parser = parser_for(flags)
    assert "--levels" not in parser.format_help().replace("--num-levels", "")
    with pytest.warns(DeprecationWarning) as caught:
        args = parser.parse_args(["--path", "p", "--levels", "4", "--quiet"])
    assert [str(w.message) for w in caught] == ["--levels is deprecated and will be removed; use --num-levels",
                                                "--quiet is deprecated and will be removed; use --no-progress"]
    assert flags.build(args) == Settings("p", num_levels=4, progress=False)
    err = capsys.readouterr().err
    assert "cmd: warning: --levels is deprecated" in err and "use --no-progress" in err
    with pytest.raises(SystemExit):  # typed as the new flag
        parser.parse_args(["--path", "p", "--levels", "four"])


@pytest.mark.parametrize("kwargs, error", [
    ({"names": {"levels": "n"}}, r"names names \['levels'\], not fields of Settings"),
    ({"deprecated": {"--old": "nothing"}}, "deprecated names"),
    ({"spelling": "camel"}, "spelling='camel'"),
])
def test_mistakes_in_the_declaration_are_named(kwargs, error):
    with pytest.raises(ValueError, match=error):
        DataclassFlags(Settings, **kwargs)


def test_unsupported_types_are_refused_naming_the_field():
    @dataclass
    class Bad:
        sizes: list = field(default_factory=list, metadata={"help": "sizes"})

    with pytest.raises(TypeError, match="Bad.sizes: type <class 'list'> is not a flag type"):
        DataclassFlags(Bad)
