"""lmms-eval on an HF-native AlignGPT folder: `lmms-eval --model aligngpt --model_args pretrained=HF_FOLDER`
recognises the folder (config `model_type` llava_aligngpt) and evaluates it with transformers' classes
(lmms-eval's `llava_hf` model, aligngpt_plugin.evaluation.lmms_hf), on the offline POPE task of
tests/test_lmms.py. Expected values from outside the code under test: POPE's scores counted here from the
answers and the labels, and each document's gate recomputed here with the model's own forward on the prompt
LLaVA-1.5 evaluates with (the `vicuna_v1` conversation)."""

from __future__ import annotations

import json

import eval_data
import pytest
import torch
from PIL import Image
from test_lmms import pope_rows, run_lmms_eval
from weight_reports import assert_every_weight_in_place

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
POST_PROMPT = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def hf_checkpoint(tiny, tmp_path_factory):
    """eval_data's checkpoint (answers "Yes" then stops, random gate) converted to HF-native by to-hf."""
    from aligngpt_plugin.conversion.hf import llava_to_hf

    root = tmp_path_factory.mktemp("lmms_hf")
    llava = eval_data.write_converted_checkpoint(tiny, root / "aligngpt-tiny")
    return llava_to_hf(llava, root / "aligngpt-tiny-hf")


@pytest.fixture(scope="module")
def runs(tiny, hf_checkpoint, tmp_path_factory):
    """Batch 1 on the questions; batch 2 on the same questions stored in reverse order (document ids and
    lmms-eval's order both change). fp32, so the gates can be compared at 1e-5."""
    rows = pope_rows(tiny)
    root = tmp_path_factory.mktemp("lmms_hf_runs")
    return [(rows, run_lmms_eval(hf_checkpoint, rows, root / "b1", 1, model_args="dtype=float32")),
            (rows[::-1], run_lmms_eval(hf_checkpoint, rows[::-1], root / "b2", 2, model_args="dtype=float32"))]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_hf_native_folder_is_recognised(hf_checkpoint):
    from aligngpt_plugin.evaluation.lmms import is_hf_native

    assert is_hf_native(str(hf_checkpoint))
    assert not is_hf_native(str(hf_checkpoint.parent / "aligngpt-tiny"))  # the LLaVA-original folder it came from
    assert not is_hf_native(str(hf_checkpoint.parent / "nowhere"))


def test_pope_scores_are_the_hand_count_over_the_answers(runs):
    for rows, run in runs:
        assert_every_weight_in_place(run["log"])  # 4.x's sentences and 5.x's load report
        samples = read_jsonl(run["samples"])
        # lmms-eval 0.7 writes the filtered answer itself; older versions a one-item list
        answers = {s["doc_id"]: s["filtered_resps"] if isinstance(s["filtered_resps"], str)
                   else s["filtered_resps"][0] for s in samples}
        assert sorted(answers) == list(range(len(rows)))
        assert set(answers.values()) == {"Yes"}  # eval_data.answer_yes_then_stop, through transformers' generate
        said_yes = {d: a.strip().lower().startswith("yes") for d, a in answers.items()}
        truth = {d: rows[d]["answer"] == "yes" for d in answers}
        right = sum(said_yes[d] == truth[d] for d in answers)
        tp = sum(said_yes[d] and truth[d] for d in answers)
        fp = sum(said_yes[d] and not truth[d] for d in answers)
        fn = sum(not said_yes[d] and truth[d] for d in answers)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        assert run["results"]["pope_accuracy,none"] == pytest.approx(right / len(answers))
        assert run["results"]["pope_f1_score,none"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_gate_dump_joins_on_doc_ids_and_is_the_models_own_gate(tiny, hf_checkpoint, runs):
    """Each dumped gate, joined to its document by `join_gates`, is the gate the model computes for that
    document alone (its `last_gate_weights` after a generate on LLaVA-1.5's prompt), at batch 1 and 2."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from aligngpt_plugin.evaluation.gates import join_gates

    model = AutoModelForImageTextToText.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(hf_checkpoint)
    own = {}
    for row in pope_rows(tiny):
        prompt = f"{SYSTEM} USER: <image>\n{row['question']}{POST_PROMPT} ASSISTANT:"
        image = Image.open(row["image"]).convert("RGB")
        with torch.no_grad():
            model.generate(**processor(images=[image], text=[prompt], return_tensors="pt"), max_new_tokens=1,
                           do_sample=False)
        own[row["question"]] = model.last_gate_weights[0]
    values = list(own.values())  # distinct enough that a join by line order could not pass
    assert min((a - b).abs().max() for i, a in enumerate(values) for b in values[i + 1:]) > 1e-3
    for (rows, run), order in zip(runs, ([3, 2, 1, 0], [0, 1, 2, 3])):  # longest question first
        lines = read_jsonl(run["gates"])
        assert [(g["task"], g["doc_id"]) for g in lines] == [("pope_local", d) for d in order]
        joined = join_gates(run["samples"], run["gates"])
        assert [j["doc_id"] for j in joined] == [0, 1, 2, 3]
        for j in joined:
            torch.testing.assert_close(torch.tensor(j["gate_weights"]), own[rows[j["doc_id"]]["question"]],
                                       atol=1e-5, rtol=0)
