"""Gate dumps carry each sample's id and are joined with the answers on it: LLaVA's eval modules (the
question id, read from the module's own command line and chunking), lmms-eval (task and document id;
its real run is in tests/test_lmms.py), batches of several samples, old dumps without ids."""

from __future__ import annotations

import json
from pathlib import Path

import eval_data
import pytest
import torch

from aligngpt_plugin.core.fileio import read_jsonl
from aligngpt_plugin.evaluation.gates import join_gates
from aligngpt_plugin.evaluation.scorers import AnswersError

W = {k: [k / 16, 1 - k / 16] for k in range(10)}  # a distinct gate row per sample (exact in float32)


def write(path: Path, rows: list[dict]) -> Path:
    return eval_data.write_jsonl(path, rows)


# --- join_gates ------------------------------------------------------------------------------------------

def test_join_on_question_ids_whatever_the_order(tmp_path):
    answers = write(tmp_path / "a.jsonl", [{"question_id": q, "text": "x"} for q in (5, 3, 9)])
    gates = write(tmp_path / "g.jsonl", [{"question_id": q, "gate_weights": W[q]} for q in (9, 5, 3)])
    assert join_gates(answers, gates) == [{"question_id": q, "gate_weights": W[q]} for q in (5, 3, 9)]


def test_join_mme_questions_sharing_their_image_id_in_order(tmp_path):
    # LLaVA's llava_mme.jsonl: question_id is the image, two questions each; the module answers in file order
    ids = ["count/1.png", "count/1.png", "count/2.png", "count/2.png"]
    answers = write(tmp_path / "a.jsonl", [{"question_id": q, "text": "Yes"} for q in ids])
    gates = write(tmp_path / "g.jsonl", [{"question_id": ids[n], "gate_weights": W[n]} for n in (2, 0, 3, 1)])
    assert [j["gate_weights"] for j in join_gates(answers, gates)] == [W[0], W[1], W[2], W[3]]


def test_join_mmbench_rounds_on_question_and_round(tmp_path):
    keys = [(7, 0), (7, 1), (8, 0)]
    answers = write(tmp_path / "a.jsonl", [{"question_id": q, "round_id": r, "text": "A"} for q, r in keys])
    gates = write(tmp_path / "g.jsonl", [{"question_id": q, "round_id": r, "gate_weights": W[n]}
                                         for n, (q, r) in reversed(list(enumerate(keys)))])
    assert [j["gate_weights"] for j in join_gates(answers, gates)] == [W[0], W[1], W[2]]


def test_join_lmms_eval_samples_of_one_task(tmp_path):
    # lmms-eval's --log_samples file, named <date>_samples_<task>.jsonl, in document order; one dump for the
    # whole run, two tasks, in lmms-eval's order (longest context first)
    samples = write(tmp_path / "20260101_samples_pope_local.jsonl", [{"doc_id": d, "input": "q"} for d in range(3)])
    pope = [{"task": "pope_local", "doc_id": d, "gate_weights": W[d]} for d in (2, 0, 1)]
    gates = write(tmp_path / "g.jsonl", [{"task": "mme", "doc_id": 0, "gate_weights": W[9]}, *pope,
                                         {"task": "mme", "doc_id": 1, "gate_weights": W[8]}])
    expected = [{"task": "pope_local", "doc_id": d, "gate_weights": W[d]} for d in range(3)]
    assert join_gates(samples, gates) == expected
    renamed = write(tmp_path / "samples.jsonl", read_jsonl(samples))
    with pytest.raises(AnswersError, match="which lmms-eval task"):
        join_gates(renamed, gates)
    assert join_gates(renamed, gates, task="pope_local") == expected


def test_old_dump_without_ids_is_joined_by_order_with_a_warning(tmp_path):
    answers = write(tmp_path / "a.jsonl", [{"question_id": q, "text": "x"} for q in (5, 3)])
    gates = write(tmp_path / "g.jsonl", [{"gate_weights": W[5]}, {"gate_weights": W[3]}])
    with pytest.warns(UserWarning, match="by order"):
        assert join_gates(answers, gates) == [{"question_id": 5, "gate_weights": W[5]},
                                              {"question_id": 3, "gate_weights": W[3]}]


@pytest.mark.parametrize("gate_ids, message", [((5, 4), "not of the same run"), ((5, 3, 5), "doubles it"),
                                               ((5, None), "carry no sample id")])
def test_gates_of_another_run_are_refused(tmp_path, gate_ids, message):
    answers = write(tmp_path / "a.jsonl", [{"question_id": q, "text": "x"} for q in (5, 3)])
    lines = [{"gate_weights": [1.0]} if q is None else {"question_id": q, "gate_weights": [1.0]} for q in gate_ids]
    with pytest.raises(AnswersError, match=message):
        join_gates(answers, write(tmp_path / "g.jsonl", lines))


# --- the dump's lines ------------------------------------------------------------------------------------

class FakeModel:
    """What the dump reads of an AlignGPT model after `generate`: the gate rows of the image samples."""

    def __init__(self):
        self.last_gate_weights = self.last_gate_samples = None

    def generate(self, batch: list[int | None]):  # each sample: its gate row's key in W, or None: text-only
        has_image = torch.tensor([b is not None for b in batch])
        self.last_gate_samples = has_image
        self.last_gate_weights = torch.tensor([W[b] for b in batch if b is not None]) if has_image.any() else None
        return torch.zeros(len(batch), 3, dtype=torch.long)


def test_dump_lines_carry_ids_at_any_batch_size(tmp_path):
    from aligngpt_plugin.integrations.llava.loader import dump_gate_weights, sample_ids_in_order

    model = FakeModel()
    dump_gate_weights(model, tmp_path / "g.jsonl", sample_ids_in_order({"question_id": q} for q in "abcd"))
    model.generate([1, None])  # a batch of two, the second text-only
    model.generate([2])
    model.generate([3])
    with pytest.warns(UserWarning, match="carry no id"):
        model.generate([4])  # more generates than questions: no id to give
    assert read_jsonl(tmp_path / "g.jsonl") == [
        {"question_id": "a", "gate_weights": W[1]}, {"question_id": "b", "gate_weights": None},
        {"question_id": "c", "gate_weights": W[2]}, {"question_id": "d", "gate_weights": W[3]},
        {"gate_weights": W[4]}]


def test_llava_modules_ids_follow_their_own_chunking(tmp_path, llava_ready):
    from aligngpt_plugin.integrations.llava.loader import llava_module_sample_ids

    def ids(module: str, question_file: Path, *args: str, batches: int) -> list:
        take = llava_module_sample_ids([f"/site-packages/llava/eval/{module}.py", "--question-file",
                                        str(question_file), "--answers-file", "x.jsonl", *args])
        return [take(1) for _ in range(batches)]

    vqa = write(tmp_path / "q.jsonl", [{"question_id": f"q{k}", "text": "?"} for k in range(5)])
    # LLaVA's split_list: chunks of ceil(5 / 2) = 3 questions, so chunk 1 is questions 3 and 4
    assert ids("model_vqa_loader", vqa, "--num-chunks", "2", "--chunk-idx", "1", batches=3) == [
        [{"question_id": "q3"}], [{"question_id": "q4"}], None]
    assert ids("model_vqa", vqa, batches=1) == [[{"question_id": "q0"}]]

    science = tmp_path / "sqa.json"  # a JSON list, the id under "id"
    science.write_text(json.dumps([{"id": "100", "conversations": []}, {"id": "101", "conversations": []}]))
    assert ids("model_vqa_science", science, batches=2) == [[{"question_id": "100"}], [{"question_id": "101"}]]

    import pandas as pd

    tsv = tmp_path / "mmbench.tsv"  # --all-rounds: one generate per option (4, then 2 where C, D are empty)
    pd.DataFrame([{"index": 10, "question": "?", "A": "a", "B": "b", "C": "c", "D": "d"},
                  {"index": 11, "question": "?", "A": "a", "B": "b", "C": float("nan"), "D": float("nan")}]
                 ).to_csv(tsv, sep="\t", index=False)
    rounds = [(10, r) for r in range(4)] + [(11, 0), (11, 1)]
    assert ids("model_vqa_mmbench", tsv, "--all-rounds", batches=6) == [
        [{"question_id": q, "round_id": r}] for q, r in rounds]
    assert ids("model_vqa_mmbench", tsv, batches=2) == [[{"question_id": 10, "round_id": 0}],
                                                        [{"question_id": 11, "round_id": 0}]]
    assert llava_module_sample_ids(["lmms_eval/__main__.py", "--tasks", "pope"]) is None  # not a LLaVA module
