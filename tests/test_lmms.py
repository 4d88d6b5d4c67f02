"""lmms-eval: `lmms-eval --model aligngpt` finds the model through the plugin's entry point and scores an
AlignGPT checkpoint on a POPE-format task with lmms-eval's own POPE code, offline.

The Makefile installs lmms-eval (its CLI and what that imports; not its task extras) into its own folder,
`.venv/lmms-eval`, rather than the venv: its `datasets` would otherwise be imported by every Trainer. So
the CLI runs in a subprocess with that folder on the path. The task is lmms-eval's POPE task pointed at a
dataset saved to disk (`load_from_disk`), the way lmms-eval runs offline.
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

BUILD_DATASET = r"""
import json, sys
import datasets
rows, out = json.loads(sys.argv[1]), sys.argv[2]
test = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
datasets.DatasetDict({"test": test}).save_to_disk(out)
"""

TASK = """task: pope_local
dataset_path: {dataset}
dataset_kwargs:
  load_from_disk: True
test_split: test
output_type: generate_until
doc_to_visual: !function utils.pope_doc_to_visual
doc_to_text: !function utils.pope_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
    higher_is_better: true
  - metric: pope_f1_score
    aggregation: !function utils.pope_aggregate_f1_score
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
"""


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    # converted from the released layout, as a user of the released checkpoints has it; no 'llava' in the
    # name: lmms-eval's own `llava` model would load it as a plain language model
    return eval_data.write_converted_checkpoint(tiny, tmp_path_factory.mktemp("lmms") / "aligngpt-tiny")


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    from aligngpt_plugin.evaluation.lmms import CLASS_PATH, MODEL_ID

    found = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert found.get(MODEL_ID) == "aligngpt_plugin.evaluation.lmms:manifest"
    assert CLASS_PATH == "aligngpt_plugin.evaluation.lmms_model.AlignGPT"


def test_lmms_eval_cli_scores_an_aligngpt_checkpoint(tiny, checkpoint, tmp_path):
    assert (LMMS_DIR / "lmms_eval").is_dir(), f"lmms-eval is not installed in {LMMS_DIR}: run `make install`"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LMMS_DIR), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ALIGNGPT_GATE_DUMP": str(tmp_path / "gates.jsonl")}

    rows = []  # per picture: its shape (label yes) and a dog (label no)
    for p in eval_data.pictures(tiny, n=2):
        for label, thing in (("yes", p["shape"]), ("no", "dog")):
            rows.append({"question_id": str(len(rows)), "question": f"Is there a {thing} in the image?",
                         "answer": label, "category": "random", "image": str(tiny.images / p["file"])})
    subprocess.run([sys.executable, "-c", BUILD_DATASET, json.dumps(rows), str(tmp_path / "dataset")],
                   env=env, check=True, capture_output=True)
    task = tmp_path / "task"
    task.mkdir()
    (task / "pope_local.yaml").write_text(TASK.format(dataset=tmp_path / "dataset"))
    (task / "utils.py").write_text("from lmms_eval.tasks.pope.utils import *  # noqa: F401,F403\n")

    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "aligngpt", "--model_args", f"pretrained={checkpoint}",
         "--tasks", "pope_local", "--include_path", str(task), "--batch_size", "1",
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for report in ("were not used", "newly initialized", "not initialized"):  # every weight found its place
        assert report not in proc.stdout + proc.stderr
    [results_file] = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]["pope_local"]
    # the checkpoint answers "Yes" to everything (eval_data.answer_yes_then_stop): 2 of 4 right;
    # TP 2, FP 2, FN 0 -> precision 1/2, recall 1, F1 2/3
    assert results["pope_accuracy,none"] == pytest.approx(0.5)
    assert results["pope_f1_score,none"] == pytest.approx(2 / 3)
    gates = [json.loads(line)["gate_weights"] for line in (tmp_path / "gates.jsonl").read_text().splitlines()]
    assert len(gates) == 4 and all(abs(sum(w) - 1) < 1e-3 for w in gates)  # the gate ran on every question
