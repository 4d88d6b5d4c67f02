"""Checks that the installed stack is one LLaVA trains correctly on, then makes LLaVA importable on it.

Every entry point of the plugin calls `prepare_llava()` before it touches `llava.train`: it refuses
stacks known to change LLaVA's training targets silently, and applies the fixes in `patches/`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings

from packaging.version import Version

LLAVA_DIST = "llava-torch"
LLAVA_VERSION = "1.2.2.post1"
ALLOW_TRANSFORMERS_5 = "ALIGNGPT_ALLOW_TRANSFORMERS_5"

INSTALL_HINT = (
    f"pip install --no-deps {LLAVA_DIST}=={LLAVA_VERSION}  "
    "(its metadata pins 2024 releases that cannot install today; the plugin declares what it really needs)"
)

TRANSFORMERS_5_REFUSAL = (
    "transformers {version} is installed; the plugin runs LLaVA on transformers 4.57 (tested token for "
    "token against LLaVA's reference 4.37.2). Under 5.x: other tokenizers than Llama-2's were seen to give "
    "silently different training targets (no 'tokenization mismatch' warning); 5.0 crashes in LLaVA's "
    "preprocess_v1 (no tokenizer.legacy); 5.23 rejects flags of LLaVA's own scripts (--warmup_ratio). "
    "Install the tested release: pip install 'transformers>=4.57,<5'. To run anyway, at your own risk, "
    f"set {ALLOW_TRANSFORMERS_5}=1."
)


class UnsupportedStackError(RuntimeError):
    """The installed packages cannot run LLaVA training faithfully."""


def installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def transformers_version() -> Version:
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
    if version.major >= 5 and os.environ.get(ALLOW_TRANSFORMERS_5) != "1":
        raise UnsupportedStackError(TRANSFORMERS_5_REFUSAL.format(version=version))
    if version < Version("4.37"):
        raise UnsupportedStackError(
            f"transformers {version} is older than LLaVA-1.5's reference 4.37.2; install 'transformers>=4.57,<5'"
        )


def prepare_llava() -> dict[str, bool]:
    """Check the stack, then apply every patch it needs. Returns {patch: changed something}."""
    check_stack()
    from aligngpt_plugin import patches

    return patches.apply_all()
