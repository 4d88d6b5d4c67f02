"""The `aligngpt` model class of lmms-eval (see `aligngpt_plugin.evaluation.lmms`); importing it needs lmms-eval."""

from __future__ import annotations

import contextlib

from aligngpt_plugin.integrations.llava.compat import prepare_llava
from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading

prepare_llava()  # before lmms-eval imports LLaVA: it swallows an import failure and leaves names undefined
try:
    import lmms_eval.models.simple.llava as lmms_llava
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the `aligngpt` lmms-eval model needs lmms-eval: pip install 'aligngpt-plugin[lmms]'") from e


@contextlib.contextmanager
def _aligngpt_loader():
    """lmms-eval's llava module bound LLaVA's loader at import: lend it the AlignGPT-aware one meanwhile."""
    from llava.model import builder

    enable_aligngpt_loading()
    saved = lmms_llava.load_pretrained_model
    lmms_llava.load_pretrained_model = builder.load_pretrained_model
    try:
        yield
    finally:
        lmms_llava.load_pretrained_model = saved


class AlignGPT(lmms_llava.Llava):
    """lmms-eval's LLaVA model for AlignGPT (and LLaVA) checkpoints, recognised by their config.

    Same `--model_args` as lmms-eval's `llava` (pretrained, conv_template, batch_size, device, ...);
    `device` and `device_map` default to `cuda:0`, or to the CPU where CUDA is absent.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 **kwargs) -> None:
        import torch

        if device is None and device_map is None and not torch.cuda.is_available():
            # lmms-eval's class only leaves CUDA with device_map='auto', which places everything on the CPU here
            device, device_map = "cpu", "auto"
        with _aligngpt_loader():
            super().__init__(pretrained=pretrained, device=device or "cuda:0",
                             device_map=device_map or "cuda:0", **kwargs)
