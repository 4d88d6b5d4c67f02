"""Command-line flags built from a settings dataclass: help, defaults, choices and validation written once,
in the dataclass (standard library only).

    @dataclass
    class Settings:
        weight: float = field(default=0.0, metadata={"help": "lambda of the loss (0 = off)"})
        multi: Literal["mean", "best"] = field(default="mean", metadata={"help": "several phrases on a patch"})

    flags = DataclassFlags(Settings, prefix="patch_align_")       # --patch_align_weight, --patch_align_multi
    parser = argparse.ArgumentParser()
    flags.add_to(parser)                                          # or to an argument group
    args = parser.parse_args(["--patch_align_weight", "0.5"])
    flags.given(args)    # {"weight": 0.5}: only what the command line gave
    flags.build(args)    # Settings(weight=0.5, multi="mean"): the dataclass fills in and validates the rest

What each field becomes:

- the flag: `--{prefix}{stem}`, the stem being the field name or `names[field]`, written with underscores
  (`spelling="underscore"`, LLaVA's and transformers' style) or dashes (`spelling="dash"`, the plugin's own
  commands); each command keeps the one spelling it has always accepted;
- help: `metadata["help"]`, then "(default: X)" unless the default is None, a bool, or the field is in
  `no_default` (a switch that is off when absent); `metadata["metavar"]` if given;
- type: `int`, `float`, `str`, `X | None` (the same, None when absent), `Literal[...]` (its values become
  argparse choices), `bool` (a `--flag` that sets True; with a True default a `--no-flag` that sets False);
- a field without a default is a required flag.

The parser holds no defaults (argparse.SUPPRESS): a flag absent from the command line is absent from the
namespace, so `given` tells what the user asked for and `build` leaves every default to the dataclass.
Validation stays in the dataclass's `__post_init__`. `deprecated={"--old_flag": "field"}` keeps an old
spelling working, hidden from `--help`, with a DeprecationWarning and a line on stderr naming the new flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

SPELLINGS = ("underscore", "dash")


@dataclasses.dataclass(frozen=True)
class _FieldFlag:
    """One field as a flag: argparse's add_argument arguments, with the option string and dest apart."""

    field: str
    option: str
    dest: str
    kwargs: dict


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores what the new one would, and says which one to use."""

    def __init__(self, option_strings, dest, new_option: str, flag_value: Any = None, nargs=None, **kwargs):
        self.new_option = new_option
        self.flag_value = flag_value  # a bool flag's stored value (it takes no argument)
        super().__init__(option_strings, dest, nargs=0 if flag_value is not None else nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        message = f"{option_string} is deprecated and will be removed; use {self.new_option}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)
        setattr(namespace, self.dest, self.flag_value if self.flag_value is not None else values)


def _flag_type(tp: Any, where: str) -> tuple[type, tuple | None]:
    """(the value type, the choices or None) of an annotation; `X | None` counts as X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{where}: {tp} has several non-None types; a flag takes one")
        return _flag_type(inner[0], where)
    if origin is Literal:
        choices = typing.get_args(tp)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or not kinds <= {int, float, str}:
            raise TypeError(f"{where}: {tp} mixes value types; a flag's choices share one (int, float or str)")
        return kinds.pop(), choices
    if tp in (bool, int, float, str):
        return tp, None
    raise TypeError(f"{where}: type {tp} is not a flag type (bool, int, float, str, Literal, X | None)")


class DataclassFlags:
    """The flags of one settings dataclass (module docstring); one object per dataclass and command.

    Args:
        cls: the settings dataclass; its fields' `metadata["help"]` (and optional `"metavar"`) describe them.
        prefix: put before every stem (`"align_"` gives `--align_levels`); the same spelling rule applies.
        spelling: "underscore" (`--flag_name`) or "dash" (`--flag-name`).
        names: field -> stem where the flag is not named after the field (`{"num_levels": "levels"}`).
        skip: fields that get no flag (the dataclass default, or `build`'s `extra`, gives them a value).
        hidden: fields whose flag works but is left out of `--help`.
        no_default: fields whose help shows no default (a switch that is off when absent).
        deprecated: old option string -> field, each still accepted with a warning.
    """

    def __init__(self, cls: type, *, prefix: str = "", spelling: str = "underscore",
                 names: Mapping[str, str] | None = None, skip: Iterable[str] = (), hidden: Iterable[str] = (),
                 no_default: Iterable[str] = (), deprecated: Mapping[str, str] | None = None):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        if spelling not in SPELLINGS:
            raise ValueError(f"spelling={spelling!r}; choose one of {', '.join(SPELLINGS)}")
        self.cls = cls
        self.prefix = prefix
        self.spelling = spelling
        known = {f.name for f in dataclasses.fields(cls)}
        names, deprecated = dict(names or {}), dict(deprecated or {})
        skip, hidden, no_default = set(skip), set(hidden), set(no_default)
        for what, given in (("names", set(names)), ("skip", skip), ("hidden", hidden), ("no_default", no_default),
                            ("deprecated", set(deprecated.values()))):
            unknown = given - known
            if unknown:
                raise ValueError(f"{what} names {sorted(unknown)}, not fields of {cls.__name__} ({sorted(known)})")
        hints = typing.get_type_hints(cls)
        self._flags: dict[str, _FieldFlag] = {}
        for f in dataclasses.fields(cls):
            if f.name in skip or not f.init:
                continue
            self._flags[f.name] = self._field_flag(f, hints[f.name], names.get(f.name, f.name),
                                                   f.name in hidden, f.name in no_default)
        self._deprecated = {}
        for old, name in deprecated.items():
            if name not in self._flags:
                raise ValueError(f"deprecated flag {old} points at {name}, which has no flag here")
            self._deprecated[old] = name

    def _spell(self, stem: str) -> str:
        stem = f"{self.prefix}{stem}".replace("-", "_")
        return stem.replace("_", "-") if self.spelling == "dash" else stem

    def _field_flag(self, f: dataclasses.Field, tp: Any, stem: str, hidden: bool, no_default: bool) -> _FieldFlag:
        where = f"{self.cls.__name__}.{f.name}"
        kind, choices = _flag_type(tp, where)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if has_default else None)
        text = str(f.metadata.get("help", "")).replace("%", "%%")  # argparse %-formats help strings
        if has_default and default is not None and kind is not bool and not no_default:
            text = f"{text} (default: {default})".lstrip()
        dest = f"{self.prefix}{stem}".replace("-", "_")
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS,
                                  "help": argparse.SUPPRESS if hidden else text}
        option = f"--{self._spell(stem)}"
        if kind is bool:
            if default is True:  # the flag turns it off
                option = f"--no{'-' if self.spelling == 'dash' else '_'}{self._spell(stem)}"
                kwargs.update(action="store_false")
            else:
                kwargs.update(action="store_true")
        else:
            kwargs.update(type=kind)
            if choices is not None:
                kwargs["choices"] = choices
            if "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
        kwargs["required"] = not has_default
        return _FieldFlag(f.name, option, dest, kwargs)

    def flag(self, name: str) -> str:
        """The option string of field `name` (e.g. "--align_levels")."""
        return self._flags[name].option

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields that have a flag, in the dataclass's order."""
        return tuple(self._flags)

    def help(self, name: str) -> str:
        """The help text `--help` shows for field `name`."""
        return self._flags[name].kwargs["help"].replace("%%", "%")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add every field's flag (and the deprecated spellings, hidden) to `parser` or an argument group."""
        for flag in self._flags.values():
            parser.add_argument(flag.option, **flag.kwargs)
        for old, name in self._deprecated.items():
            flag = self._flags[name]
            kwargs = {k: v for k, v in flag.kwargs.items() if k in ("type", "choices", "dest", "default")}
            action = flag.kwargs.get("action")
            value = {"store_true": True, "store_false": False}.get(action)
            parser.add_argument(old, action=_DeprecatedFlag, new_option=flag.option, flag_value=value,
                                help=argparse.SUPPRESS, **kwargs)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """Field -> value for the flags on the command line (absent flags are left out)."""
        values = vars(args)
        return {name: values[flag.dest] for name, flag in self._flags.items() if flag.dest in values}

    def build(self, args: argparse.Namespace, **extra: Any) -> Any:
        """The dataclass from the given flags plus `extra` (fields without a flag); its defaults fill in the
        rest and its `__post_init__` validates (a ValueError names the field)."""
        return self.cls(**self.given(args), **extra)
