"""The benchmark scorers against hand-made answer files with known right and wrong answers and each
benchmark's format traps, the expected values computed by hand here, and against scorers that are not
ours: lmms-eval's own task code for the same benchmark (tests/lmms_oracles.py) and LLaVA's own scripts
(eval_pope, eval_science_qa, the m4c TextVQA evaluator and EvalAI answer processor, which ours run).

Where ours and lmms-eval's rules differ on purpose (ours is the rule of the benchmark's official tool,
or LLaVA's script whose numbers the paper reports), the test pins lmms-eval's value too, so that the
difference is stated and computed, not assumed. Per benchmark:

| benchmark | ours | checked against |
|---|---|---|
| POPE | LLaVA's eval_pope, mean F1 of 3 splits | hand; lmms-eval pope aggregates on eval_pope's yes/no reading |
| SQA-I | LLaVA's eval_science_qa | hand; lmms-eval scienceqa_img per question (differs on purpose) |
| TextVQA | LLaVA's m4c TextVQAAccuracyEvaluator | hand; lmms-eval textvqa per question (equal) |
| GQA | LLaVA's convert_gqa_for_eval + exact match | hand; lmms-eval gqa exact_match (differs on purpose) |
| MME | MME's calculation.py (acc + acc+) | hand; lmms-eval mme aggregates (differs on purpose) |
| SEED-I | LLaVA's exact letter match | hand; lmms-eval seedbench (differs on purpose) |
| VQAv2, VizWiz | EvalAI answers for the server | hand; lmms-eval's submission answers and VQA accuracy |
| MMBench, -CN | the server's sheet | lmms-eval's CircularEval (static) on our sheet, hand |
| LLaVA-W, MM-Vet | files for the GPT-4 judge | keys and order as LLaVA's / MM-Vet's scripts read them |
"""

from __future__ import annotations

import json
from pathlib import Path

import eval_data
import lmms_oracles
import pytest

import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
from aligngpt_plugin.evaluation import benchmarks
from aligngpt_plugin.evaluation.scorers import AnswersError, score

pytestmark = pytest.mark.usefixtures("llava_ready")
SHORT = eval_data.SHORT


def run_score(key: str, eval_dir: Path, rows: list[dict]) -> dict:
    answers = eval_data.write_jsonl(eval_dir / "answers" / f"{key}.jsonl", rows)
    return score(benchmarks.get(key), eval_dir, answers, eval_dir / "results", "m")


# --- the answer files, by hand -------------------------------------------------------------------------
# POPE: (label, answer text, how LLaVA's eval_pope reads it: first sentence, commas dropped, "yes" unless
# the words hold "No", "no" or "not" -- case-sensitive, so "NO" reads yes and "Not" reads yes)
POPE = {
    "adversarial": [("yes", "Yes, there is a dog in the image.", "yes"), ("no", "No.", "no"),
                    ("yes", "yes", "yes"), ("no", "There is no dog.", "no")],
    "popular": [("yes", "NO", "yes"), ("yes", "no, it is not", "no"), ("no", "Yes.", "yes"), ("no", "No", "no")],
    "random": [("yes", "Yes", "yes"), ("no", "Yes", "yes"), ("no", "no.", "no"), ("no", "No, there is not.", "no")],
}
# SQA: (pid, choices, answer index, with image, text, right by eval_science_qa, right by lmms-eval)
SQA = [("1", ["red", "blue"], 1, True, "B", 1, 1),
       ("2", ["cat", "dog", "bird"], 0, True, "A. cat", 1, 1),
       ("3", ["yes", "no"], 1, True, "The answer is B.", 1, 0),  # LLaVA's pattern; lmms-eval: not a letter
       ("4", ["2", "3", "4"], 2, True, "c", 0, 1),  # LLaVA: no option "c" (FAILED); lmms-eval lower-cases
       ("5", ["sun", "moon"], 0, True, "B", 0, 0),
       ("7", ["hot", "cold"], 1, True, "B.", 0, 1),  # LLaVA needs "B" or "B. text"; lmms-eval takes "B."
       ("6", ["x", "y"], 0, False, "A", 1, 1)]  # no image: in the overall accuracy, not in SQA-I
# TextVQA: (image id, question, the 10 human answers, text, accuracy by hand)
TEXTVQA = [
    ("t1", "what does the sign say?", ["stop"] * 10, "STOP.", 1.0),  # case and punctuation
    ("t2", "how many cans are there?", ["2"] * 10, "two", 1.0),  # number word -> digit
    # 2 of 10 humans: leave-one-out over the 10, min(1, matches/3): 2 subsets keep 1 match, 8 keep 2
    # -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    ("t3", "what brand is the drink?", ["coca cola"] * 2 + ["coke"] * 8, "Coca Cola", 0.6),
    ("t4", "what animal is on the shirt?", ["a dog"] * 3 + ["dog"] * 7, "dog", 1.0),  # articles dropped
    # 1 of 10: the subset without it has 0 matches, the 9 others 1 -> 9 * 1/3 / 10 = 0.3
    ("t5", "what is written on the can?", ["pepsi"] + ["unanswerable"] * 9, "Pepsi!", 0.3),
    ("t6", "what colour is the car?", ["blue"] * 10, "red", 0.0),
]
# GQA: (question id, answer, text or None (unanswered), right by ours, right by lmms-eval)
GQA = [("g1", "red", "Red.", 1, 1), ("g2", "yes", "yes,", 0, 1),  # LLaVA strips a trailing "." only
       ("g3", "left", "Left", 1, 1), ("g4", "no", "No", 1, 1), ("g5", "table", "the table", 0, 0),
       ("g6", "white", None, 0, None)]
# MME: (category, image, truth, text, right by MME's calculation.py, right by lmms-eval's reading)
MME = [("existence", "e1", "Yes", "Yes", 1, 1), ("existence", "e1", "No", "No.", 1, 1),
       ("existence", "e2", "Yes", "yes, there is", 1, 1), ("existence", "e2", "No", "Not at all", 1, 1),
       ("count", "c1", "Yes", "Y", 0, 1), ("count", "c1", "No", "n", 0, 1),  # lmms-eval reads y / n
       ("count", "c2", "No", "No", 1, 1), ("count", "c2", "Yes", "I think yes", 0, 0),  # "i th": other
       ("code_reasoning", "r1", "Yes", "Yes", 1, 1), ("code_reasoning", "r1", "No", "Yes", 0, 0),
       ("code_reasoning", "r2", "Yes", "No", 0, 0), ("code_reasoning", "r2", "No", "No", 1, 1)]
# SEED: (question id, answer, data type, text, right by LLaVA's exact match, right by lmms-eval)
SEED = [("s1", "A", "image", "A", 1, 1), ("s2", "B", "image", "B.", 0, 1),  # lmms-eval: first character
        ("s3", "C", "image", "c", 0, 1),  # lmms-eval: case-insensitive
        ("s4", "D", "image", "The answer is D", 0, 0), ("s5", "A", "image", "B", 0, 0),
        ("s6", "A", "video", "A", 1, 1)]
# VQAv2: (question id, text, EvalAI answer by hand, the 10 human answers, VQA accuracy by hand)
VQAV2 = [(1, "Two.", "2", ["2"] * 10, 1.0),
         # 3 of 10 say dog: leaving out a dog (3 subsets) leaves 2 matches -> 2/3, else 3 -> 1;
         # (3 * 2/3 + 7 * 1) / 10 = 0.9
         (2, "A dog", "dog", ["dog"] * 3 + ["cat"] * 7, 0.9),
         (3, "Yes!", "yes", ["yes"] * 10, 1.0), (4, "ten", "10", ["10"] * 10, 1.0),
         (5, "\nNo", "no", ["yes"] * 10, 0.0), (6, "1,000", "1000", ["1000"] * 10, 1.0),
         (7, "It's red.", "it 's red", ["red"] * 10, 0.0)]
# VizWiz: (question id, text, EvalAI answer by hand, the 10 human answers, accuracy by hand)
VIZWIZ = [(0, "Unanswerable", "unanswerable", ["unanswerable"] * 10, 1.0),
          (1, "Two dollars.", "2 dollars", ["two dollars"] * 5 + ["2 dollars"] * 5, 1.0),
          (2, "White.", "white", ["white"] * 2 + ["unanswerable"] * 8, 0.6),  # as TextVQA t3
          (3, "a can of soup", "can of soup", ["soup"] * 10, 0.0)]


# --- lmms-eval on the same answers, in one subprocess ------------------------------------------------

def oracle_requests() -> dict:
    pope = {}
    for split, rows in POPE.items():
        pope[f"{split}_raw"] = [{"question_id": i, "answer": lab, "prediction": t} for i, (lab, t, _) in
                                enumerate(rows)]
        pope[f"{split}_read"] = [{"question_id": i, "answer": lab, "prediction": r} for i, (lab, _, r) in
                                 enumerate(rows)]
    return {
        "pope": pope,
        "scienceqa": {"img": [{"choices": c, "answer": a, "prediction": t} for _, c, a, img, t, _, _ in SQA if img]},
        "textvqa": {"all": [{"question_id": i, "answers": list(h), "prediction": t} for i, _, h, t, _ in TEXTVQA]},
        "gqa": {"answered": [{"answer": a, "prediction": t} for _, a, t, _, _ in GQA if t is not None]},
        "mme": {"all": [{"question_id": f"{c}/{i}.png", "category": c, "answer": a, "prediction": t}
                        for c, i, a, t, _, _ in MME]},
        "seedbench": {"all": [{"question_id": q, "answer": a, "data_type": d, "prediction": t}
                              for q, a, d, t, _, _ in SEED]},
        "vqav2": {"raw": [{"question_id": q, "answers": [{"answer": "x"}] * 10, "prediction": t}
                          for q, t, _, _, _ in VQAV2],
                  # VQAv2's answer records carry answer_id 1..10 (lmms-eval leaves one out by comparing records)
                  "ours": [{"question_id": q, "answers": [{"answer": h, "answer_id": n} for n, h in
                                                          enumerate(humans, 1)], "prediction": ours}
                           for q, _, ours, humans, _ in VQAV2]},
        "vizwiz": {"raw": [{"question_id": q, "answers": ["x"] * 10, "prediction": t} for q, t, _, _, _ in VIZWIZ],
                   "ours": [{"question_id": q, "answers": list(h), "prediction": ours}
                            for q, _, ours, h, _ in VIZWIZ]},
    }


@pytest.fixture(scope="module")
def sheets(tmp_path_factory):
    """Our MMBench / MMBench-CN server sheets of the MMBENCH answers (see below)."""
    return {key: write_mmbench_sheet(tmp_path_factory.mktemp(key), key) for key in MMBENCH}


@pytest.fixture(scope="module")
def lmms(sheets):
    requests = oracle_requests()
    # the sheet as the server reads it, with the category the server keeps on its side (lmms-eval's
    # evaluator reports per category)
    requests["mmbench"] = {key: json.loads(s["sheet"].assign(category="fixture").to_json(orient="records"))
                           for key, s in sheets.items()}
    return lmms_oracles.run(requests)


# --- POPE ----------------------------------------------------------------------------------------------

def write_pope(root: Path) -> list[dict]:
    questions, rows = [], []
    for split, cases in POPE.items():
        labels = []
        for label, text, _ in cases:
            qid = len(questions)
            questions.append({"question_id": qid, "image": f"{qid}.jpg", "category": split,
                              "text": f"Is there a dog in the image?\n{SHORT}"})
            labels.append({"question_id": qid, "image": f"{qid}.jpg", "text": "Is there a dog?", "label": label})
            rows.append({"question_id": qid, "prompt": questions[-1]["text"], "text": text})
        eval_data.write_jsonl(root / f"pope/coco/coco_pope_{split}.json", labels)
    eval_data.write_jsonl(root / "pope/llava_pope_test.jsonl", questions)
    return rows


def test_pope(tmp_path, lmms):
    result = run_score("pope", tmp_path, write_pope(tmp_path))
    # adversarial: read yes no yes no vs labels yes no yes no -> TP 2, TN 2: F1 1, accuracy 1
    # popular: "NO" reads yes (eval_pope is case-sensitive): TP 1 FN 1 FP 1 TN 1 -> P 1/2, R 1/2, F1 1/2
    # random: TP 1 FP 1 TN 2 -> P 1/2, R 1, F1 2/3, accuracy 3/4
    hand = {"adversarial": (1.0, 1.0), "popular": (0.5, 0.5), "random": (2 / 3, 0.75)}
    for split, (f1, accuracy) in hand.items():
        assert result["details"][split]["f1"] == pytest.approx(f1), split
        assert result["details"][split]["accuracy"] == pytest.approx(accuracy), split
        # lmms-eval's aggregation on the same yes/no readings gives the same numbers
        assert lmms["pope"][f"{split}_read"]["f1_score"] == pytest.approx(f1), split
        assert lmms["pope"][f"{split}_read"]["accuracy"] == pytest.approx(accuracy), split
    assert result["score"] == pytest.approx(100 * (1 + 1 / 2 + 2 / 3) / 3)  # 72.22: mean F1 of the splits
    # on purpose: lmms-eval compares the lower-cased answer with the label, so "yes, there is a dog in the
    # image." and "there is no dog." match nothing (accuracy 1/4 where POPE's rule gives 1)
    assert lmms["pope"]["adversarial_raw"]["accuracy"] == pytest.approx(0.25)


def test_pope_with_no_true_positive_scores_zero_f1(tmp_path):
    rows = write_pope(tmp_path)
    for r in rows:
        r["text"] = "No"  # precision 0/0: LLaVA's eval_pope divides by zero, ours reports F1 0 for the split
    result = run_score("pope", tmp_path, rows)
    assert result["score"] == 0.0 and "no true positive" in result["details"]["random"]["note"]


# --- ScienceQA -----------------------------------------------------------------------------------------

def test_sqa(tmp_path, lmms):
    base = tmp_path / "scienceqa"
    base.mkdir()
    problems = {pid: {"question": "Which one?", "choices": c, "answer": a, "hint": "",
                      "image": "image.png" if img else None, "split": "test"} for pid, c, a, img, *_ in SQA}
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    rows = [{"question_id": pid, "prompt": ("<image>\n" if img else "") + "Which one?", "text": t}
            for pid, _, _, img, t, *_ in SQA]
    result = run_score("sqa", tmp_path, rows)
    # image questions 1 2 3 4 5 7, right by eval_science_qa: 1 2 3 -> 3/6; all: 1 2 3 6 -> 4/7
    assert result["score"] == pytest.approx(100 * 3 / 6)
    assert result["details"]["accuracy"] == pytest.approx(100 * 4 / 7)
    assert result["details"]["image_correct"] == sum(r for *_, img, _, r, _ in SQA if img)
    # lmms-eval's scienceqa_img: right 1 2 4 7 -> 4/6 (on purpose: it takes "c" and "B." but not LLaVA's
    # "The answer is B."; ours is LLaVA's eval_science_qa, which gave the paper's SQA-I)
    assert lmms["scienceqa"]["img"]["per_doc"] == [float(r) for *_, img, _, _, r in SQA if img]
    assert lmms["scienceqa"]["img"]["mean"] == pytest.approx(4 / 6)


# --- TextVQA -------------------------------------------------------------------------------------------

def test_textvqa(tmp_path, lmms):
    (tmp_path / "textvqa").mkdir()
    data = [{"image_id": i, "question": q, "answers": h} for i, q, h, _, _ in TEXTVQA]
    (tmp_path / "textvqa/TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    rows = [{"question_id": i, "prompt": f"{q.capitalize()}\n{SHORT}", "text": t} for i, q, _, t, _ in TEXTVQA]
    result = run_score("textvqa", tmp_path, rows)
    hand = [acc for *_, acc in TEXTVQA]
    assert result["score"] == pytest.approx(100 * sum(hand) / len(hand))  # 3.9 / 6 -> 65.0
    assert lmms["textvqa"]["all"]["per_doc"] == pytest.approx(hand)  # lmms-eval: the same rule, same values


# --- GQA -----------------------------------------------------------------------------------------------

def test_gqa(tmp_path, lmms):
    eval_data.write_gqa(tmp_path, {q: {"answer": a} for q, a, *_ in GQA})
    rows = [{"question_id": q, "text": t} for q, _, t, *_ in GQA if t is not None]
    result = run_score("gqa", tmp_path, rows)
    # right: g1 g3 g4 of 6 (g6 unanswered counts wrong, as in GQA's eval.py over all testdev questions)
    assert result["score"] == pytest.approx(100 * 3 / 6)
    assert result["details"] == {"correct": 3, "unanswered": 1}
    # on purpose: lmms-eval's gqa drops every punctuation mark ("yes," is right there); LLaVA's
    # convert_gqa_for_eval strips a trailing "." only and GQA's eval.py compares exactly
    assert lmms["gqa"]["answered"]["per_doc"] == [float(r) for *_, t, _, r in GQA if t is not None]


# --- MME -----------------------------------------------------------------------------------------------

def test_mme(tmp_path, lmms):
    release = tmp_path / "MME/MME_Benchmark_release_version"
    questions = {"Yes": "Is there a cat in the image? Please answer yes or no.",
                 "No": "Is there a dog in the image? Please answer yes or no."}
    rows = []
    for category, image, truth, text, *_ in MME:
        txt = release / category / f"{image}.txt"  # MME's flat layout: answers beside the images
        txt.parent.mkdir(parents=True, exist_ok=True)
        with txt.open("a") as f:
            f.write(f"{questions[truth]}\t{truth}\n")
        rows.append({"question_id": f"{category}/{image}.png", "prompt": questions[truth], "text": text})
    result = run_score("mme", tmp_path, rows)
    # existence: 4/4 right, both images both right -> (1 + 1) * 100 = 200
    # count: only c2's "No" right -> acc 1/4, acc+ 0/2 -> 25 ("Y", "n" and "I think yes" read "other")
    # code_reasoning: one of two right per image -> acc 1/2, acc+ 0 -> 50
    assert result["details"]["subtasks"] == pytest.approx({"existence": 200.0, "count": 25.0, "code_reasoning": 50.0})
    assert result["score"] == pytest.approx(225.0) and result["details"]["cognition"] == pytest.approx(50.0)
    # lmms-eval's mme (Otter's reading): "y" -> yes, "n" -> no, so count's c1 is both right there:
    # count = ((100 + 100) + (50 + 0)) / 2 = 125, perception 200 + 125 = 325 (on purpose: ours is MME's
    # calculation.py, which reads "yes"/"no" or their presence in the first four characters only)
    assert lmms["mme"]["all"]["parsed"][4:6] == ["yes", "no"]
    assert lmms["mme"]["all"]["mme_perception_score"] == pytest.approx(325.0)
    assert lmms["mme"]["all"]["mme_cognition_score"] == pytest.approx(50.0)


def test_mme_answers_without_their_pair_are_refused(tmp_path):
    release = tmp_path / "MME/MME_Benchmark_release_version/count"
    release.mkdir(parents=True)
    (release / "c1.txt").write_text("Is there a cat? Please answer yes or no.\tYes\n")
    row = {"question_id": "count/c1.png", "prompt": "Is there a cow? Please answer yes or no.", "text": "Yes"}
    with pytest.raises(AnswersError, match="no MME ground truth"):
        run_score("mme", tmp_path, [row])


# --- SEED ----------------------------------------------------------------------------------------------

def test_seed(tmp_path, lmms):
    (tmp_path / "seed_bench").mkdir()
    questions = [{"question_id": q, "answer": a, "data_type": d, "question_type_id": 1} for q, a, d, *_ in SEED]
    (tmp_path / "seed_bench/SEED-Bench.json").write_text(json.dumps({"questions": questions}))
    result = run_score("seed", tmp_path, [{"question_id": q, "text": t} for q, _, _, t, *_ in SEED])
    # image: only s1 is exactly its letter -> 1/5 = 20; video: s6 -> 100
    assert result["score"] == pytest.approx(20.0)
    assert result["details"]["accuracy_by_type"] == pytest.approx({"image": 20.0, "video": 100.0})
    # on purpose: lmms-eval's seedbench takes the first character, case-insensitive: s1 s2 s3 -> 3/5;
    # ours is LLaVA's convert_seed_for_submission (exact match), the rule of the paper's SEED-I
    assert lmms["seedbench"]["all"]["seed_image"] == pytest.approx(3 / 5)
    assert lmms["seedbench"]["all"]["seed_video"] == pytest.approx(1.0)


# --- VQAv2 and VizWiz: the server files ----------------------------------------------------------------

def test_vqav2_upload(tmp_path, lmms):
    eval_data.write_jsonl(tmp_path / "vqav2/llava_vqav2_mscoco_test2015.jsonl",
                          [{"question_id": q} for q, *_ in VQAV2] + [{"question_id": 99}])
    result = run_score("vqav2", tmp_path, [{"question_id": q, "text": t} for q, t, *_ in VQAV2])
    upload = json.loads(Path(result["files"]["upload"]).read_text())
    assert upload == [{"question_id": q, "answer": a} for q, _, a, _, _ in VQAV2] + [{"question_id": 99, "answer": ""}]
    # the VQA accuracy of our uploaded answers, by lmms-eval's vqav2 code: the hand values
    assert lmms["vqav2"]["ours"]["per_doc"] == pytest.approx([acc for *_, acc in VQAV2])
    # lmms-eval's own answer for the same raw text: the same but for "It's red." (it skips EvalAI's
    # tokenizer, which splits "'s"); the server's normalisation makes both "it s red"
    raw = lmms["vqav2"]["raw"]["answers"]
    assert [a for a, (q, *_) in zip(raw, VQAV2) if q != 7] == [a for q, _, a, _, _ in VQAV2 if q != 7]
    assert raw[-1] == "it's red"


def test_vizwiz_upload(tmp_path, lmms):
    eval_data.write_jsonl(tmp_path / "vizwiz/llava_test.jsonl",
                          [{"question_id": q, "image": f"VizWiz_test_{q:08d}.jpg"} for q, *_ in VIZWIZ])
    rows = [{"question_id": q, "text": t} for q, t, *_ in reversed(VIZWIZ)]  # answers in any order
    result = run_score("vizwiz", tmp_path, rows)
    upload = json.loads(Path(result["files"]["upload"]).read_text())
    assert upload == [{"image": f"VizWiz_test_{q:08d}.jpg", "answer": a} for q, _, a, _, _ in VIZWIZ]
    assert lmms["vizwiz"]["raw"]["answers"] == [a for _, _, a, _, _ in VIZWIZ]  # the same processor
    assert lmms["vizwiz"]["ours"]["per_doc"] == pytest.approx([acc for *_, acc in VIZWIZ])


# --- MMBench and MMBench-CN: the server's sheet, scored by lmms-eval's CircularEval -------------------

def rotations(index: int, options: list[str], answer: str, question: str) -> list[dict]:
    """MMBench's circular copies: copy k (index + k * 1e6) shifts the options by k, so the answer letter
    moves with its text."""
    n, right = len(options), options["ABCD".index(answer)]
    out = []
    for k in range(n):
        shifted = options[k:] + options[:k]
        out.append({"index": index + k * 1_000_000, "question": question,
                    **{c: (shifted[j] if j < n else float("nan")) for j, c in enumerate("ABCD")},
                    "answer": "ABCD"[shifted.index(right)], "category": "fixture"})
    return out


MMBENCH = {  # (index, options, answer, question, predictions per rotation, right by CircularEval)
    "mmbench": [(1, ["cat", "dog", "bird", "fish"], "B", "Which animal?", ["B", "A. dog", "dog", "The answer is C"], 1),
                (2, ["yes", "no"], "A", "Is it?", ["A", "A"], 0),  # the same letter twice: one is wrong
                (3, ["red", "green", "blue"], "C", "Which colour?", ["C. blue", "blue", "A"], 1)],
    "mmbench_cn": [(1, ["猫", "狗"], "B", "哪种动物？", ["B", "狗"], 1),
                   (2, ["红色", "绿色", "蓝色"], "A", "什么颜色？", ["A", "B", "B"], 0)],
}


def write_mmbench_sheet(root: Path, key: str) -> dict:
    import pandas as pd

    table, rows = [], []
    for index, options, answer, question, predictions, _ in MMBENCH[key]:
        for copy, text in zip(rotations(index, options, answer, question), predictions):
            table.append({**copy, "hint": float("nan"), "source": "fixture", "l2-category": "x", "comment": "",
                          "split": "dev", "image": "aW1hZ2U="})
            rows.append({"question_id": copy["index"], "text": text})
    tsv = root / benchmarks.get(key).questions
    tsv.parent.mkdir(parents=True)
    pd.DataFrame(table).to_csv(tsv, sep="\t", index=False)
    result = run_score(key, root, rows[::-1])  # answers in any order
    return {"rows": rows, "sheet": pd.read_excel(result["files"]["upload"])}


@pytest.mark.parametrize("key", ["mmbench", "mmbench_cn"])
def test_mmbench_sheet_scores_by_circular_eval(key, sheets, lmms):
    sheet = sheets[key]["sheet"]
    assert sheet["index"].tolist() == [r["question_id"] for r in sheets[key]["rows"]]  # every copy, tsv order
    assert sheet["prediction"].tolist() == [r["text"] for r in sheets[key]["rows"]]  # the raw text
    # the server's rule, as lmms-eval implements it without GPT: a question counts only if every rotation
    # is right; mmbench 2 of 3 (question 2 answers "A" to both rotations), mmbench_cn 1 of 2
    hand = [r for *_, r in MMBENCH[key]]
    assert lmms["mmbench"][key]["circular_accuracy"] == pytest.approx(sum(hand) / len(hand))


# --- LLaVA-W and MM-Vet: the files the GPT-4 judges read ------------------------------------------------

def test_mmvet_results_are_keyed_as_mm_vet_json(tmp_path):
    rows = [{"question_id": 2, "text": "Two."}, {"question_id": 0, "text": "a red circle"}]
    result = run_score("mmvet", tmp_path, rows)
    # MM-Vet's evaluator looks each answer up as results["v1_<n>"], the keys of mm-vet.json; raw text
    assert json.loads(Path(result["files"]["results"]).read_text()) == {"v1_2": "Two.", "v1_0": "a red circle"}


def judge_llava_w(eval_dir: Path, answers: Path, right: dict[str, str], monkeypatch) -> str:
    """LLaVA's own eval_gpt_review_bench.py and summarize_gpt_review.py on `answers`, with a stand-in for
    GPT-4 that gives the reference 10 and our answer 10 when it is `right[question]`, else 4; returns
    what summarize_gpt_review prints."""
    import contextlib
    import io
    import re
    import runpy
    import sys
    import types

    def create(model, messages, **kwargs):
        content = messages[-1]["content"]
        question = re.search(r"\[Question\]\n(.*?)\n", content).group(1)
        mine = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", content, re.S).group(1)
        return {"choices": [{"message": {"content": f"10 {10 if right[question] == mine else 4}\nfake"}}]}

    openai = types.ModuleType("openai")
    openai.ChatCompletion = types.SimpleNamespace(create=create)
    openai.error = types.SimpleNamespace(RateLimitError=RuntimeError)
    monkeypatch.setitem(sys.modules, "openai", openai)
    base = eval_dir / "llava-bench-in-the-wild"
    rule = {f"llava_bench_{c}": {"role": "Assistant", "prompt": "Rate both."} for c in ("conv", "detail", "complex")}
    (eval_dir / "rule.json").write_text(json.dumps(rule))
    reviews = eval_dir / "reviews.jsonl"
    printed = io.StringIO()
    for module, argv in (("llava.eval.eval_gpt_review_bench",
                          ["-q", base / "questions.jsonl", "-c", base / "context.jsonl", "-a",
                           base / "answers_gpt4.jsonl", answers, "-r", eval_dir / "rule.json", "-o", reviews]),
                         ("llava.eval.summarize_gpt_review", ["-f", reviews])):
        monkeypatch.setattr(sys, "argv", [module, *map(str, argv)])
        with contextlib.redirect_stdout(printed):
            runpy.run_module(module, run_name="__main__")
    return printed.getvalue()


def test_llava_w_answers_are_judged_against_their_own_questions(tiny, tmp_path, monkeypatch):
    questions = eval_data.write_llava_w(tiny, tmp_path)  # conv, detail, complex; ids 0 1 2
    right = {q["text"]: f"right answer {q['question_id']}" for q in questions}
    texts = [right[questions[0]["text"]], "a wrong answer", right[questions[2]["text"]]]
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": f"a{k}",
             "model_id": "m", "metadata": {}} for k, (q, t) in enumerate(zip(questions, texts))]
    result = run_score("llava_w", tmp_path, rows)
    printed = judge_llava_w(tmp_path, Path(result["files"]["answers"]), right, monkeypatch)
    # LLaVA's relative score: mean(ours) / mean(GPT-4's) * 100 = ((10 + 4 + 10) / 3) / 10 * 100 = 80.0
    assert "all 80.0 100.0 80.0" in printed
    # out of question order, LLaVA's script would judge each answer against another question (it pairs
    # lines): ours refuses such a file, naming the first line that is out of place
    with pytest.raises(AnswersError, match="line 1 answers 2"):
        run_score("llava_w", tmp_path, rows[::-1])
