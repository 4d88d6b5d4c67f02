"""Checks that the installed stack is one LLaVA trains correctly on, then makes LLaVA importable on it.

Every entry point of the plugin calls `prepare_llava()` before it touches `llava.train`: it refuses
stacks known to change LLaVA's training targets silently, and applies the fixes in `patches/`.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings

from packaging.specifiers import SpecifierSet
from packaging.version import Version

LLAVA_DIST = "llava-torch"
LLAVA_VERSION = "1.2.2.post1"

INSTALL_HINT = (
    f"pip install --no-deps {LLAVA_DIST}=={LLAVA_VERSION}  "
    "(its metadata pins 2024 releases that cannot install today; the plugin declares what it really needs)"
)
# The transformers releases the plugin is measured on. The whole suite runs on 4.57.6, 5.17.0 and 5.24.0; its
# transformers-bound part also on 5.0.0, 5.5.4, 5.10.4 and 5.14.1 (README.md#tested-versions). A release in
# neither range (4.37-4.56, or newer than 5.24) gets a warning: nobody has seen LLaVA train right on it.
TESTED: tuple[str, ...] = ("==4.57.*", ">=5.0,<5.25")
TESTED_LINES = "4.57.x or 5.0-5.24 (the whole suite runs on 4.57.6, 5.17.0 and 5.24.0)"
# (specifier, reason): releases that train or evaluate LLaVA wrongly, or not at all, even with patches/.
# Keyed on a version range, so a release is refused before anyone installs it and finds out mid-run.
REFUSED: tuple[tuple[str, str], ...] = (
    (">=5.40.0.dev0",
     "it removes the `past_key_values` keyword (deprecated since 5.24 in favour of `cache`; transformers marks "
     "it `deprecate_kwarg(\"past_key_values\", \"5.40.0\")` on the Llama forward and generate), which LLaVA's "
     "LlavaLlamaForCausalLM passes to the Llama forward and generate on every step."),
)


class UnsupportedStackError(RuntimeError):
    """The installed packages cannot run LLaVA training faithfully."""


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution.

    Args:
        dist: the distribution's name on PyPI (e.g. "llava").
    Returns:
        Its version string, or None when it is not installed.
    """
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def transformers_version() -> Version:
    """The installed transformers' version (imports transformers)."""
    import transformers

    return Version(transformers.__version__)


def check_stack() -> None:
    """Raise UnsupportedStackError with the fix when llava or transformers is missing or unfit."""
    llava = installed_version(LLAVA_DIST)
    if llava is None:
        raise UnsupportedStackError(f"the `llava` package is not installed. Install it with: {INSTALL_HINT}")
    if llava != LLAVA_VERSION:
        warnings.warn(
            f"{LLAVA_DIST} {llava} is installed; the plugin's fixes were written and tested for "
            f"{LLAVA_VERSION}. Install that with: {INSTALL_HINT}",
            stacklevel=2,
        )
    version = transformers_version()
    if version < Version("4.37"):
        raise UnsupportedStackError(
            f"transformers {version} is older than LLaVA-1.5's reference 4.37.2; install {TESTED_LINES}"
        )
    for spec, reason in REFUSED:
        if SpecifierSet(spec).contains(version, prereleases=True):
            raise UnsupportedStackError(
                f"transformers {version} is installed: {reason} Install a tested release: {TESTED_LINES}, "
                "e.g. pip install 'transformers==4.57.6' or 'transformers==5.24.0'."
            )
    if not is_tested(version):
        warnings.warn(
            f"transformers {version} is installed, which the plugin has not been tested on: LLaVA may train or "
            f"answer differently there. Tested: {TESTED_LINES}.",
            stacklevel=2,
        )


def is_tested(version: Version) -> bool:
    """Whether `version` falls in a measured range (`TESTED`); a pre-release counts as its release.

    Args:
        version: a transformers version.
    Returns:
        True when the plugin was tested on that line.
    """
    return any(SpecifierSet(spec).contains(version, prereleases=True) for spec in TESTED)


def prepare_llava() -> dict[str, bool]:
    """Check the stack, then apply every patch it needs. Returns {patch: changed something}."""
    check_stack()
    from aligngpt_plugin import patches

    return patches.apply_all()
