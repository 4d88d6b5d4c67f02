"""LLaVA's eval modules hard-code the CUDA device.

Breaks: `llava.eval.model_vqa_loader`, `model_vqa`, `model_vqa_science` and `model_vqa_mmbench` move
inputs with `device='cuda'` / `.cuda()`, so they fail on any machine without CUDA (CPU CI, Apple
silicon) on every version. Fix: when CUDA is absent, those modules are compiled from their own source
with the device literal replaced by the machine's device (`cpu` or `mps`); nothing else in them
changes, and `python -m aligngpt_plugin.llava_eval llava.eval.model_vqa_loader ...` runs them with
their own command line. Where CUDA is present the patch does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

NAME = "eval_device"
TARGETS = (
    "llava.eval.model_vqa_loader",
    "llava.eval.model_vqa",
    "llava.eval.model_vqa_science",
    "llava.eval.model_vqa_mmbench",
    "llava.eval.run_llava",
)
REPLACEMENTS = (
    ("device='cuda'", "device=_ALIGNGPT_DEVICE"),
    (".cuda()", ".to(_ALIGNGPT_DEVICE)"),
)
# Joined onto the first line so that line numbers in tracebacks stay those of LLaVA's file.
PRELUDE = "from aligngpt_plugin.patches.eval_device import DEVICE as _ALIGNGPT_DEVICE; "


def machine_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


DEVICE = machine_device()


def rewrite(source: str) -> str:
    """LLaVA eval source with its CUDA literals replaced by the machine's device."""
    for old, new in REPLACEMENTS:
        source = source.replace(old, new)
    return PRELUDE + source


class DeviceFixLoader(importlib.machinery.SourceFileLoader):
    """Compiles the rewritten source; never reads or writes bytecode caches (they hold the original)."""

    def get_code(self, fullname):
        return compile(rewrite(self.get_source(fullname)), self.path, "exec", dont_inherit=True)


class DeviceFixFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = DeviceFixLoader(fullname, spec.origin)
        return spec



def needed() -> bool:
    return DEVICE != "cuda"


def is_applied() -> bool:
    return any(isinstance(f, DeviceFixFinder) for f in sys.meta_path)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    sys.meta_path.insert(0, DeviceFixFinder())
    for name in TARGETS:  # modules imported before the patch are compiled again
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    return True
