"""Loading LLaVA's vision tower draws from torch's RNG on transformers 4.x, so a seed gives another run on 5.x.

Breaks (silently, no error): LLaVA builds the projector right after it loads the CLIP tower
(`initialize_vision_modules`). On transformers 4.57, `CLIPVisionModel.from_pretrained` draws from torch's
global RNG while it loads (it initialises weights it then overwrites); 5.x loads without drawing. So the
same `--seed` gives the projector other initial weights on 4.57 than on 5.x, and the two lines train
different runs from the same command (step-1 pre-training loss 10.388 vs 10.338 on the tiny fixtures).
Fix: on 4.x the tower loads inside `torch.random.fork_rng`, so loading leaves the RNG as 5.x does and the
projector draws the same numbers on both lines (tests/test_reference_run.py). Nothing changes on 5.x.
"""

from __future__ import annotations

import functools

from . import record, recorded

NAME = "vision_tower_rng"


def _target():
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    return CLIPVisionTower


def needed() -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).major < 5


def is_applied() -> bool:
    return recorded(_target(), NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    cls = _target()
    original = cls.load_model

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        import torch

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return original(self, *args, **kwargs)

    cls.load_model = load_model
    record(cls, NAME)
    return True
