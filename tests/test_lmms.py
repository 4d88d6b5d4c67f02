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
from weight_reports import assert_every_weight_in_place

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


def pope_rows(tiny) -> list[dict]:
    """Four POPE questions, each longer than the one before (lmms-eval answers the longest first), on four
    pictures; labels yes (the picture's shape), no (a dog), yes, no."""
    pics = eval_data.pictures(tiny, n=4)
    asks = [("yes", "Is there a {shape}?"), ("no", "Is there a dog in the image?"),
            ("yes", "Is there a {shape} anywhere in this small picture?"),
            ("no", "Looking carefully at every part of this small picture, is there a dog anywhere in it?")]
    return [{"question_id": str(k), "question": q.format(**p), "answer": label, "category": "random",
             "image": str(tiny.images / p["file"])} for k, ((label, q), p) in enumerate(zip(asks, pics))]


def run_lmms_eval(checkpoint: Path, rows: list[dict], root: Path, batch_size: int, model_args: str = "") -> dict:
    """`lmms-eval --model aligngpt` on `rows` as lmms-eval's POPE task, with the gate dump (`model_args`: more
    `--model_args`, comma-separated); returns the output folder, the dump, the results and the samples file."""
    assert (LMMS_DIR / "lmms_eval").is_dir(), f"lmms-eval is not installed in {LMMS_DIR}: run `make install`"
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LMMS_DIR), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ALIGNGPT_GATE_DUMP": str(root / "gates.jsonl")}
    subprocess.run([sys.executable, "-c", BUILD_DATASET, json.dumps(rows), str(root / "dataset")],
                   env=env, check=True, capture_output=True)
    task = root / "task"
    task.mkdir()
    (task / "pope_local.yaml").write_text(TASK.format(dataset=root / "dataset"))
    (task / "utils.py").write_text("from lmms_eval.tasks.pope.utils import *  # noqa: F401,F403\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "aligngpt",
         "--model_args", ",".join([f"pretrained={checkpoint}", *filter(None, [model_args])]),
         "--tasks", "pope_local", "--include_path", str(task), "--batch_size", str(batch_size),
         "--output_path", str(root / "out"), "--log_samples"],
        env=env, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    [results] = (root / "out").rglob("*_results.json")
    [samples] = (root / "out").rglob("*_samples_pope_local.jsonl")
    return {"log": proc.stdout + proc.stderr, "gates": root / "gates.jsonl", "samples": samples,
            "results": json.loads(results.read_text())["results"]["pope_local"]}


@pytest.fixture(scope="module")
def batch_of_one(tiny, checkpoint, tmp_path_factory):
    return run_lmms_eval(checkpoint, pope_rows(tiny), tmp_path_factory.mktemp("lmms-b1"), batch_size=1)


def test_lmms_eval_cli_scores_an_aligngpt_checkpoint(batch_of_one):
    assert_every_weight_in_place(batch_of_one["log"])  # 4.x's sentences and 5.x's load report
    results = batch_of_one["results"]
    # the checkpoint answers "Yes" to everything (eval_data.answer_yes_then_stop): 2 of 4 right;
    # TP 2, FP 2, FN 0 -> precision 1/2, recall 1, F1 2/3
    assert results["pope_accuracy,none"] == pytest.approx(0.5)
    assert results["pope_f1_score,none"] == pytest.approx(2 / 3)
    gates = [json.loads(line)["gate_weights"] for line in batch_of_one["gates"].read_text().splitlines()]
    assert len(gates) == 4 and all(abs(sum(w) - 1) < 1e-3 for w in gates)  # the gate ran on every question


def test_gate_dump_joins_lmms_eval_samples_on_document_ids(tiny, checkpoint, batch_of_one, tmp_path):
    """lmms-eval answers the longest context first, at any batch size: the dump's lines carry the task and
    document id, and `join_gates` puts each gate beside its own document (batch 1 here; batch 2 on the same
    questions stored in reverse order, so that document ids and lmms-eval's order both change)."""
    from aligngpt_plugin.core.fileio import read_jsonl
    from aligngpt_plugin.evaluation.gates import join_gates

    rows = pope_rows(tiny)
    reverse = run_lmms_eval(checkpoint, rows[::-1], tmp_path / "b2", batch_size=2)
    # lmms-eval's order is by length, longest first: questions 3 2 1 0, which are documents 3 2 1 0 in the
    # first run and 0 1 2 3 in the reversed one
    for run, order in ((batch_of_one, [3, 2, 1, 0]), (reverse, [0, 1, 2, 3])):
        assert [(g["task"], g["doc_id"]) for g in read_jsonl(run["gates"])] == [("pope_local", d) for d in order]
    by_question = []
    for run in (batch_of_one, reverse):
        samples = {s["doc_id"]: s["input"] for s in read_jsonl(run["samples"])}  # input: the question asked
        joined = join_gates(run["samples"], run["gates"])
        assert [j["doc_id"] for j in joined] == sorted(samples)
        by_question.append({samples[j["doc_id"]]: j["gate_weights"] for j in joined})
    first, second = by_question
    # each question's gate is the same in both runs (fp16 on the CPU: a few steps of 1e-4 apart)...
    for question in first:
        assert max(abs(a - b) for a, b in zip(first[question], second[question])) < 2e-3, question
    # ...and the questions' gates differ from one another by more than that, so a join by line order
    # (gate of question 3 beside document 0) could not pass the check above
    gates = list(first.values())
    assert min(max(abs(a - b) for a, b in zip(g, h)) for i, g in enumerate(gates) for h in gates[i + 1:]) > 1e-2
