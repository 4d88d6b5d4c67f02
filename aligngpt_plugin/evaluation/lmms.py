"""lmms-eval support: `lmms-eval --model aligngpt --model_args pretrained=CHECKPOINT --tasks ...`.

pyproject.toml registers `manifest` under lmms-eval's `lmms_eval.models` entry-point group, so
installing the plugin beside lmms-eval (`pip install 'aligngpt-plugin[lmms]'`) is all it takes: lmms-eval
finds the model by that name, no fork and no file copied into its tree. The model is lmms-eval's own
LLaVA model (`lmms_eval.models.simple.llava.Llava`: prompts, batching, image handling, multi-GPU
through accelerate) with LLaVA's loader made AlignGPT-aware (`aligngpt_plugin.integrations.llava.loader`)
while it loads: AlignGPT and LLaVA checkpoints are recognised by their config whatever their folder is called, and
`ALIGNGPT_GATE_DUMP=FILE` appends the gate's weights per sample as the `eval/` scripts do, each line with
its task and document id (lmms-eval answers the longest contexts first, not in document order;
`aligngpt_plugin.evaluation.gates.join_gates` joins the lines with `--log_samples`' samples file on them).
Without CUDA it runs on the CPU (lmms-eval's class assumes `cuda:0`).

An HF-native AlignGPT folder (`aligngpt-convert to-hf` or `build-hf`; config `model_type` llava_aligngpt) is
recognised by the same `--model aligngpt` and evaluated with transformers' classes through lmms-eval's
`llava_hf` model (`aligngpt_plugin.evaluation.lmms_hf`), with the same gate dump.
"""

from __future__ import annotations

from aligngpt_plugin.integrations.llava.configuration import MODEL_TYPE

MODEL_ID = "aligngpt"
CLASS_PATH = "aligngpt_plugin.evaluation.lmms_model.AlignGPT"
HF_MODEL_TYPE = "llava_aligngpt"  # aligngpt_plugin.integrations.hf's config type (not imported: it needs transformers)


def is_hf_native(pretrained: str) -> bool:
    """Whether `pretrained` (a folder or hub id) is an HF-native AlignGPT: config.json's `model_type` is
    `llava_aligngpt`. A folder without config.json, or a hub id that cannot be read, is not."""
    import json
    from pathlib import Path

    config = Path(pretrained) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("model_type") == HF_MODEL_TYPE
        except (json.JSONDecodeError, AttributeError):
            return False
    if Path(pretrained).exists():
        return False
    try:
        from transformers import PretrainedConfig

        return PretrainedConfig.get_config_dict(pretrained)[0].get("model_type") == HF_MODEL_TYPE
    except Exception:  # noqa: BLE001 - offline or not a hub id: LLaVA's loader reports it
        return False


class DocumentFetches:
    """lmms-eval's `task_dict` ({task: {split: documents}}) that notes every document fetched from it.

    lmms-eval's `generate_until` sorts the requests by context length and, for each batch, fetches the
    batch's documents by id (`task_dict[task][split][doc_id]`) just before it calls `generate`: the
    fetches since the last `generate` are that batch's documents, in batch order."""

    def __init__(self, tasks, log: list[dict], task=None):
        self._tasks, self._log, self._task = tasks, log, task

    def __getitem__(self, key):
        if self._task is None:  # task -> its splits
            return DocumentFetches(self._tasks[key], self._log, task=key)
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


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval calls it when it collects external models."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=(MODEL_TYPE,))
