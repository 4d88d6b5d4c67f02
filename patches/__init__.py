"""Fixes that let llava-torch 1.2.2.post1 run on today's stack, one documented fix per module.

Installed as ``aligngpt_plugin.patches``. Every module here has the same shape:

- its docstring says what breaks, on which versions, and the smallest change that fixes it;
- ``needed()`` tells whether the installed stack shows the breakage;
- ``apply()`` makes the change where needed and is a no-op otherwise, or when already applied;
- a patch that renames command-line flags also has ``rewrite_argv(argv)``.

``apply_all()`` runs them once, in the order below (the first must come before ``llava.train`` is
imported), and is what the plugin's entry points call. Nothing in ``llava``'s files is edited: the
fixes replace attributes on the imported modules and classes, and each is recorded on what it
changed (``record``) so that a second ``apply_all()`` changes nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

# Order matters only for the first: llava.train.llava_trainer cannot be imported without it.
PATCH_MODULES: tuple[str, ...] = (
    "all_layernorm_layers",
    "slow_tokenizer_class",
    "maybe_zero_3",
    "trainer_tokenizer_kwarg",
    "save_checkpoint_signature",
    "train_sampler_signature",
    "adapter_checkpoint_resume",
    "generate_cache_position",
    "eval_device",
    "evaluation_strategy_flag",
    "warmup_ratio_flag",
    "deepspeed_final_save",
    "quantized_loading_kwargs",
    "cpu_distributed",
    "clip_image_processor_backend",
    "vision_tower_rng",
)

REGISTRY = "__aligngpt_patches__"


@dataclass(frozen=True)
class PatchStatus:
    name: str
    summary: str
    needed: bool
    applied: bool


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def record(owner: object, name: str) -> None:
    """Note on the patched module or class that patch `name` changed it (keeps patches idempotent)."""
    applied = vars(owner).get(REGISTRY)
    if applied is None:
        applied = set()
        setattr(owner, REGISTRY, applied)
    applied.add(name)


def recorded(owner: object, name: str) -> bool:
    return name in vars(owner).get(REGISTRY, ())


_applied: dict[str, bool] = {}


def apply_all() -> dict[str, bool]:
    """Apply every patch that the installed stack needs; returns {patch: changed something}."""
    for name in PATCH_MODULES:
        if name not in _applied:
            _applied[name] = bool(_module(name).apply())
    return dict(_applied)


def rewrite_argv(argv: list[str]) -> list[str]:
    """Training arguments as the installed transformers expects them (for patches that rename flags)."""
    for name in PATCH_MODULES:
        rewrite = getattr(_module(name), "rewrite_argv", None)
        if rewrite is not None:
            argv = rewrite(argv)
    return list(argv)


def status() -> list[PatchStatus]:
    """What each patch is for, whether this stack needs it and whether it is in place."""
    out = []
    for name in PATCH_MODULES:
        mod = _module(name)
        summary = (mod.__doc__ or "").strip().splitlines()[0]
        out.append(PatchStatus(name, summary, bool(mod.needed()), bool(mod.is_applied())))
    return out
