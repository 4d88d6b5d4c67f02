"""The training features `python -m aligngpt_plugin.train` can switch on, each registered in one call
(as peft registers its tuners with `register_peft_method(name=..., config_cls=..., ...)`):

    register_training_feature("aligngpt", settings_cls=AlignmentConfig, prefix="align_",
                              names={"num_levels": "levels"}, switch="num_levels", ...,
                              enable=enable_for_run, describe=describe)

Every feature has the same shape: a settings dataclass (its fields, with their help, are the feature's
`--{prefix}*` flags, built by `core.flags`), a data module (what replaces LLaVA's
`make_supervised_data_module`), and an enabling function (`enable(settings, run)`, which swaps the names
`llava.train.train` looks up at call time). The entry point (`training.run_training`) loops over the
registry: it takes each feature's flags off the command line, then enables the features whose switch
flag is given, in registration order (a feature that wraps another's data module and trainer registers
after it, and says so with `after=`).

This module holds the registry only; `aligngpt_training` and `patch_training` register themselves.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aligngpt_plugin.core.flags import DataclassFlags

PROG = "aligngpt_plugin.train"


@dataclass
class TrainingRun:
    """What an enabling function may read of the run: LLaVA's command line (after `patches/` rewrote it)."""

    argv: list[str]

    @functools.cached_property
    def model_args(self):
        """LLaVA's ModelArguments, read the way LLaVA's argument parser reads them."""
        from llava.train.train import ModelArguments
        from transformers import HfArgumentParser

        (model_args, _) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
            args=self.argv, return_remaining_strings=True)
        return model_args

    @property
    def pretraining(self) -> bool:
        """LLaVA's own stage flag (`--tune_mm_mlp_adapter True`)."""
        return bool(self.model_args.tune_mm_mlp_adapter)


@dataclass(frozen=True)
class TrainingFeature:
    """One registered feature (see `register_training_feature` for the fields)."""

    name: str
    settings_cls: type
    flags: DataclassFlags
    switch: str
    switch_metavar: str
    zero_is_off: bool
    title: str
    enable: Callable[[Any, TrainingRun], None]
    describe: Callable[[Any, TrainingRun], str]

    def parser(self) -> argparse.ArgumentParser:
        """The feature's flags alone (no -h: the entry point passes every other flag on to LLaVA)."""
        parser = argparse.ArgumentParser(prog=PROG, add_help=False)
        self.flags.add_to(parser)
        return parser

    def split(self, argv: list[str]) -> tuple[Any, list[str]]:
        """The settings the feature's flags in `argv` ask for (None when its switch is absent, or 0 where
        0 means off), and the rest of `argv`. SystemExit with the reason for a flag without the switch or a
        value the settings refuse."""
        known, rest = self.parser().parse_known_args(argv)
        values = self.flags.given(known)
        switch = self.flags.flag(self.switch)
        if self.switch not in values:
            if values:
                other = self.flags.flag(next(iter(values)))
                raise SystemExit(f"{other} needs {switch} {self.switch_metavar}")
            return None, rest
        if self.zero_is_off and not values[self.switch]:
            return None, rest
        try:
            return self.flags.build(known), rest
        except ValueError as err:
            raise SystemExit(str(err)) from None


_FEATURES: dict[str, TrainingFeature] = {}


def register_training_feature(
    name: str,
    *,
    settings_cls: type,
    prefix: str,
    switch: str,
    switch_metavar: str,
    title: str,
    enable: Callable[[Any, TrainingRun], None],
    describe: Callable[[Any, TrainingRun], str],
    names: Mapping[str, str] | None = None,
    zero_is_off: bool = False,
    after: Iterable[str] = (),
) -> TrainingFeature:
    """Register a training feature of the entry point.

    Args:
        name: the feature's name in the registry.
        settings_cls: its settings dataclass; each field is a flag `--{prefix}{field}` (help from the field).
        prefix: the flags' common prefix (`"align_"`).
        switch: the field whose flag turns the feature on; the others need it.
        switch_metavar: how the switch's value is called in messages (`"N"`).
        title: the heading of the feature's flags in `--help`.
        enable: `enable(settings, run)` makes the next `llava.train.train.train()` call use the feature; a
            ValueError (a combination it refuses) ends the command with its message.
        describe: `describe(settings, run)`, the line rank 0 prints once the feature is on.
        names: field -> flag stem where the flag is not named after the field.
        zero_is_off: whether a switch given as 0 leaves the feature off (a loss weight) rather than being
            passed to the settings for validation.
        after: features that must be registered (and so enabled) before this one: it wraps what they set.

    Returns:
        The registered TrainingFeature.
    """
    if name in _FEATURES:
        raise ValueError(f"training feature {name!r} is already registered")
    missing = [a for a in after if a not in _FEATURES]
    if missing:
        raise ValueError(f"training feature {name!r} wraps {missing}, which are not registered yet; "
                         "register it after them")
    flags = DataclassFlags(settings_cls, prefix=prefix, names=names, no_default=(switch,))
    taken = {flag for f in _FEATURES.values() for flag in map(f.flags.flag, f.flags.fields)}
    clash = sorted(taken & {flags.flag(f) for f in flags.fields})
    if clash:
        raise ValueError(f"training feature {name!r}: flags {clash} belong to another feature")
    feature = TrainingFeature(name, settings_cls, flags, switch, switch_metavar, zero_is_off, title, enable,
                              describe)
    _FEATURES[name] = feature
    return feature


def training_features() -> tuple[TrainingFeature, ...]:
    """The registered features, in the order they are enabled."""
    return tuple(_FEATURES.values())


def training_feature(name: str) -> TrainingFeature:
    """The feature registered as `name`.

    Args:
        name: its registered name (e.g. "aligngpt").
    Returns:
        The TrainingFeature.
    Raises:
        KeyError: naming the registered features, for an unknown name.
    """
    if name not in _FEATURES:
        raise KeyError(f"no training feature {name!r}; registered: {', '.join(_FEATURES)}")
    return _FEATURES[name]
