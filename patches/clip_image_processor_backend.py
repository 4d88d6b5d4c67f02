"""`CLIPImageProcessor` is the torchvision backend in transformers 5; LLaVA's pixels then differ from 4.x's.

Breaks (silently, no error): transformers 5 made `CLIPImageProcessor` the torchvision implementation and
moved the PIL/numpy one (4.x's `CLIPImageProcessor`) to `CLIPImageProcessorPil`. LLaVA's
`CLIPVisionTower.load_model` builds `CLIPImageProcessor.from_pretrained(...)`, so with torchvision
installed every image LLaVA trains and evaluates on is resized by torchvision's bicubic instead of PIL's:
`process_images` and the training-time padding give different pixel values (tests/test_golden_tokenization.py:
9 of 9 pixel digests differ from LLaVA's reference 4.37.2 on 5.17 and 5.24). Fix: LLaVA's clip_encoder module
uses `CLIPImageProcessorPil`, which gives pixels identical to 4.37.2/4.57; on 4.x (no such class) nothing
changes.
"""

from __future__ import annotations

from . import record, recorded

NAME = "clip_image_processor_backend"


def needed() -> bool:
    import transformers

    return hasattr(transformers, "CLIPImageProcessorPil")


def is_applied() -> bool:
    from llava.model.multimodal_encoder import clip_encoder

    return recorded(clip_encoder, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    import transformers
    from llava.model.multimodal_encoder import clip_encoder

    clip_encoder.CLIPImageProcessor = transformers.CLIPImageProcessorPil
    record(clip_encoder, NAME)
    return True
