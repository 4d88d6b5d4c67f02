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
"""

from __future__ import annotations

from aligngpt_plugin.integrations.llava.configuration import MODEL_TYPE

MODEL_ID = "aligngpt"
CLASS_PATH = "aligngpt_plugin.evaluation.lmms_model.AlignGPT"


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval calls it when it collects external models."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=(MODEL_TYPE,))
