"""The `aligngpt` model class of lmms-eval (see `aligngpt_plugin.evaluation.lmms`); importing it needs lmms-eval."""

from __future__ import annotations

import contextlib

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


class _Fetches:
    """lmms-eval's `task_dict` ({task: {split: documents}}) that notes every document fetched from it.

    lmms-eval's `generate_until` sorts the requests by context length and, for each batch, fetches the
    batch's documents by id (`task_dict[task][split][doc_id]`) just before it calls `generate`: the
    fetches since the last `generate` are that batch's documents, in batch order."""

    def __init__(self, tasks, log: list[dict], task=None):
        self._tasks, self._log, self._task = tasks, log, task

    def __getitem__(self, key):
        if self._task is None:  # task -> its splits
            return _Fetches(self._tasks[key], self._log, task=key)
        return _Documents(self._tasks[key], self._log, self._task)

    def __getattr__(self, name):  # anything else lmms-eval asks of the dict
        return getattr(self._tasks, name)

    def __contains__(self, key):
        return key in self._tasks


class _Documents:
    def __init__(self, docs, log: list[dict], task):
        self._docs, self._log, self._task = docs, log, task

    def __getitem__(self, doc_id):
        self._log.append({"task": self._task, "doc_id": _plain(doc_id)})
        return self._docs[doc_id]

    def __getattr__(self, name):
        return getattr(self._docs, name)

    def __len__(self):
        return len(self._docs)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


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
        self.task_dict = _Fetches(tasks, self._fetched)
        try:
            return super().generate_until(requests)
        finally:
            self.task_dict = tasks
