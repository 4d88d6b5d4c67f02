"""The `aligngpt` model class of lmms-eval (see `aligngpt_plugin.evaluation.lmms`); importing it needs lmms-eval."""

from __future__ import annotations

import contextlib

from aligngpt_plugin.evaluation.lmms import DocumentFetches, is_hf_native
from aligngpt_plugin.integrations.llava.compat import prepare_llava
from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading, set_gate_sample_ids

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

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval builds its model here: an HF-native AlignGPT folder (config `model_type` llava_aligngpt)
        goes to `aligngpt_plugin.evaluation.lmms_hf.AlignGPTHf` (transformers' classes), anything else to
        this class (LLaVA's loader).

        Args:
            arg_string: `--model_args`, e.g. `pretrained=FOLDER,dtype=bfloat16`.
            additional_config: lmms-eval's extra settings (batch size, device).
        Returns:
            The lmms-eval model instance.
        """
        from lmms_eval import utils

        pretrained = utils.simple_parse_args_string(arg_string).get("pretrained")
        if pretrained and is_hf_native(str(pretrained)):
            from aligngpt_plugin.evaluation.lmms_hf import AlignGPTHf

            return AlignGPTHf.create_from_arg_string(arg_string, additional_config)
        return super().create_from_arg_string(arg_string, additional_config)

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 **kwargs) -> None:
        import torch

        if device is None and device_map is None and not torch.cuda.is_available():
            # lmms-eval's class only leaves CUDA with device_map='auto', which places everything on the CPU here
            device, device_map = "cpu", "auto"
        with _aligngpt_loader():
            super().__init__(pretrained=pretrained, device=device or "cuda:0",
                             device_map=device_map or "cuda:0", **kwargs)
        self._fetched: list[dict] = []
        # the gate dump (ALIGNGPT_GATE_DUMP) writes each line with the task and document id it belongs to
        set_gate_sample_ids(self.model, self._batch_ids)

    def _batch_ids(self, batch: int) -> list[dict] | None:
        fetched = list(self._fetched)
        self._fetched.clear()  # in place: the `_Fetches` view writes into this list
        return fetched if len(fetched) == batch else None

    def generate_until(self, requests) -> list[str]:
        """lmms-eval's, with the documents it feeds each `generate` noted (see `_Fetches`).

        Args:
            requests: lmms-eval's generation requests.
        Returns:
            One answer per request, in request order.
        """
        tasks = self.task_dict
        self._fetched.clear()
        self.task_dict = DocumentFetches(tasks, self._fetched)
        try:
            return super().generate_until(requests)
        finally:
            self.task_dict = tasks
