"""lmms-eval: `--model aligngpt` is found through the plugin's entry point and evaluates an AlignGPT
checkpoint with lmms-eval's own LLaVA model code.

lmms-eval is installed by the Makefile into its own folder (`.venv/lmms-eval`, its model code and what
that imports), not into the venv: its `datasets` would otherwise be imported by every Trainer. So the
check runs in a subprocess with that folder on the path, as `lmms-eval` would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import eval_data
import pytest

LMMS_DIR = Path(os.environ.get("ALIGNGPT_LMMS_EVAL_DIR", Path(sys.prefix) / "lmms-eval"))

SCRIPT = r"""
import json, sys
from PIL import Image
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model, list_available_models

checkpoint, images = sys.argv[1], sys.argv[2:]
assert "aligngpt" in list_available_models(), "aligngpt not among lmms-eval's models"
cls = get_model("aligngpt")  # what `lmms-eval --model aligngpt` resolves
lm = cls(pretrained=checkpoint, conv_template="vicuna_v1")
lm.task_dict = {"colours": {"test": [{"image": Image.open(p).convert("RGB")} for p in images]}}
requests = [Instance("generate_until", ("<image>\nWhat colour is the shape?", {"max_new_tokens": 8, "until": ["</s>"]},
                                        lambda doc: [doc["image"]], i, "colours", "test"),
                     idx=0, metadata={"task": "colours", "doc_id": i, "repeats": 1}) for i in range(len(images))]
print("RESULT " + json.dumps({"class": f"{cls.__module__}.{cls.__name__}", "model": type(lm.model).__name__,
                              "answers": lm.generate_until(requests)}))
"""


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    # no 'llava' in the name: lmms-eval's own `llava` model would load it as a plain language model
    return eval_data.write_tiny_checkpoint(tiny, tmp_path_factory.mktemp("lmms") / "aligngpt-tiny")


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    from aligngpt_plugin.lmms import CLASS_PATH, MODEL_ID

    found = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert found.get(MODEL_ID) == "aligngpt_plugin.lmms:manifest"
    assert CLASS_PATH == "aligngpt_plugin.lmms_model.AlignGPT"


def test_lmms_eval_model_aligngpt_generates_and_dumps_gates(tiny, checkpoint, tmp_path):
    assert (LMMS_DIR / "lmms_eval").is_dir(), f"lmms-eval is not installed in {LMMS_DIR}: run `make install`"
    images = [str(tiny.images / q["file"]) for q in eval_data.pictures(tiny, n=2)]
    gates = tmp_path / "gates.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LMMS_DIR), os.environ.get("PYTHONPATH", "")]),
           "ALIGNGPT_GATE_DUMP": str(gates), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint), *images], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["class"] == "aligngpt_plugin.lmms_model.AlignGPT"
    assert result["model"] == "AlignGPTLlamaForCausalLM"
    assert result["answers"] == ["Yes", "Yes"]  # eval_data.answer_yes_then_stop
    rows = [json.loads(line)["gate_weights"] for line in gates.read_text().splitlines()]
    assert len(rows) == 2 and all(abs(sum(w) - 1) < 1e-3 for w in rows)
