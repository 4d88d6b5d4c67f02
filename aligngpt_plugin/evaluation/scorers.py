"""Score an answers file of one benchmark, or turn it into the file its server takes.

Where `llava` ships the scorer (POPE, ScienceQA, TextVQA, and the EvalAI answer normaliser for VQAv2 and
VizWiz) it is LLaVA's own code that scores; GQA, MME and SEED follow the official tools that LLaVA's
scripts call (GQA's eval.py accuracy, MME's calculation.py, SEED's per-question exact match), which do
not come with the `llava` package. Every scorer returns a dict with `score` (None where a server or a
GPT-4 judge scores) that `aligngpt-eval score` writes as `<results>/<key>.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from collections import defaultdict
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_json_atomic, write_jsonl_atomic
from aligngpt_plugin.evaluation.benchmarks import Benchmark

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
POPE_SPLITS = ("adversarial", "popular", "random")


class AnswersError(ValueError):
    """An answers file that cannot be scored as it is."""


def _answers_by_id(path: Path) -> dict:
    return {row["question_id"]: row for row in read_jsonl(path)}


def write_json(path: Path, value) -> Path:
    """Write `value` as JSON to `path`, atomically.

    Args:
        path: the file (its folder is created).
        value: a JSON-serialisable value.
    Returns:
        `path`.
    """
    write_json_atomic(path, value)
    return path


# --- LLaVA's own scorers -----------------------------------------------------------------------------

def score_pope(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """LLaVA's eval_pope per split (its printed F1, accuracy, precision, recall, yes-ratio); the
    benchmark's number is the mean F1 of the three splits, as LLaVA-1.5 and AlignGPT report it.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ...}.
    Raises:
        AnswersError: a split's answers and labels differ in number.
    """
    from llava.eval.eval_pope import eval_pope

    questions = {q["question_id"]: q for q in read_jsonl(eval_dir / "pope/llava_pope_test.jsonl")}
    rows = read_jsonl(answers)
    splits = {}
    for split in POPE_SPLITS:
        labels = eval_dir / f"pope/coco/coco_pope_{split}.json"
        if not labels.is_file():
            raise FileNotFoundError(f"{labels} is missing: POPE's output/coco folder holds it")
        mine = [dict(r) for r in rows if questions[r["question_id"]]["category"] == split]
        n_labels = sum(1 for line in open(labels) if line.strip())
        if len(mine) != n_labels:
            raise AnswersError(f"{answers}: {len(mine)} answers for POPE {split}, {labels} has {n_labels} labels; "
                               "eval_pope pairs them in order, so every question needs its answer")
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                eval_pope(mine, str(labels))
        except ZeroDivisionError:  # LLaVA's scorer divides by TP+FP and TP+FN: no true positive at all
            splits[split] = {"f1": 0.0, "note": "no true positive: precision and recall undefined, F1 taken as 0"}
            continue
        splits[split] = _pope_printed(printed.getvalue())
    mean_f1 = 100 * sum(s["f1"] for s in splits.values()) / len(splits)
    return {"score": mean_f1, "details": splits, "count": len(rows)}


def _pope_printed(text: str) -> dict:
    """The full-precision lines eval_pope prints ('F1 score: 0.66...'), not its rounded summary line."""
    names = {"Accuracy": "accuracy", "Precision": "precision", "Recall": "recall", "F1 score": "f1",
             "Yes ratio": "yes_ratio"}
    values = {}
    for line in text.splitlines():
        label, _, value = line.partition(": ")
        if label in names:
            values[names[label]] = float(value)
    return values


def score_sqa(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """LLaVA's eval_science_qa, run as LLaVA's script runs it; the paper's SQA-I is its IMG-Accuracy.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ...,
        "files": eval_science_qa's output and result}.
    """
    base = eval_dir / "scienceqa"
    output_file, output_result = out / f"sqa_{ckpt}_output.json", out / f"sqa_{ckpt}_result.json"
    out.mkdir(parents=True, exist_ok=True)
    argv = ["eval_science_qa", "--base-dir", str(base), "--result-file", str(answers),
            "--output-file", str(output_file), "--output-result", str(output_result)]
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module("llava.eval.eval_science_qa", run_name="__main__")
    finally:
        sys.argv = saved
    result = json.loads(output_file.read_text())
    image = [x for k in ("correct", "incorrect") for x in result[k] if x["is_multimodal"]]
    image_correct = sum(1 for x in result["correct"] if x["is_multimodal"])
    summary = json.loads(output_result.read_text())
    return {"score": 100 * image_correct / len(image) if image else None, "count": summary["count"],
            "details": {"accuracy": summary["acc"], "image_questions": len(image), "image_correct": image_correct},
            "files": {"output": str(output_file), "result": str(output_result)}}


def score_textvqa(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """LLaVA's eval_textvqa: its question matching and the m4c TextVQA accuracy.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ...}.
    Raises:
        AnswersError: a question is not in TextVQA_0.5.1_val.json.
    """
    from llava.eval.eval_textvqa import prompt_processor
    from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

    annotations = json.loads((eval_dir / "textvqa/TextVQA_0.5.1_val.json").read_text())["data"]
    by_key = {(a["image_id"], a["question"].lower()): a for a in annotations}
    preds = []
    for row in read_jsonl(answers):
        key = (row["question_id"], prompt_processor(row["prompt"]))
        if key not in by_key:
            raise AnswersError(f"{answers}: question {row['question_id']!r} ({key[1]!r}) is not in "
                               "TextVQA_0.5.1_val.json; was the question file llava_textvqa_val_v051_ocr.jsonl?")
        preds.append({"pred_answer": row["text"], "gt_answers": by_key[key]["answers"]})
    return {"score": 100 * TextVQAAccuracyEvaluator().eval_pred_list(preds), "count": len(preds)}


# --- the official tools' rules (not shipped with llava) ----------------------------------------------

def score_gqa(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """GQA's eval.py accuracy on testdev-balanced: exact match of LLaVA's converted prediction (trailing
    period stripped, lower-cased, as LLaVA's convert_gqa_for_eval) with the question's answer. Also writes
    `testdev_balanced_predictions.json` where GQA's own eval.py looks for it.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ...}.
    """
    questions = json.loads((eval_dir / "gqa/data/testdev_balanced_questions.json").read_text())
    preds = {str(r["question_id"]): r["text"].rstrip(".").lower() for r in read_jsonl(answers)}
    write_json(eval_dir / "gqa/data/testdev_balanced_predictions.json",
                [{"questionId": q, "prediction": p} for q, p in preds.items()])
    correct = sum(1 for qid, q in questions.items() if preds.get(str(qid)) == q["answer"])
    missing = sum(1 for qid in questions if str(qid) not in preds)
    return {"score": 100 * correct / len(questions), "count": len(questions),
            "details": {"correct": correct, "unanswered": missing}}


def _mme_ground_truth(release: Path) -> dict:
    truth = {}
    for category in sorted(p for p in release.iterdir() if p.is_dir() and p.name != "eval_tool"):
        qa = category / "questions_answers_YN" if (category / "images").is_dir() else category
        for txt in qa.glob("*.txt"):
            for n, line in enumerate(txt.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        question, answer = line.strip().split("\t")
                    except ValueError:
                        raise AnswersError(f"{txt}:{n}: expected 'question<TAB>answer'") from None
                    truth[(category.name, txt.stem, question)] = answer
    return truth


def mme_parse(text: str) -> str:
    """MME's calculation.py reading of an answer: yes, no, or other (from its first four characters).

    Args:
        text: the model's answer.
    Returns:
        "yes", "no" or "other".
    """
    text = text.lower().strip()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score_mme(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """MME's calculation.py: per subtask accuracy + accuracy+ (both questions of an image right), x100,
    summed over the 10 perception subtasks (the paper's MME column) and the 4 cognition ones.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ...}.
    Raises:
        AnswersError: an answer has no ground truth.
    """
    truth = _mme_ground_truth(eval_dir / "MME/MME_Benchmark_release_version")
    per_image = defaultdict(list)
    for row in read_jsonl(answers):
        category, image = row["question_id"].split("/")[0], Path(row["question_id"]).stem
        prompt = row["prompt"].replace("Answer the question using a single word or phrase.", "").strip()
        candidates = [prompt] if "Please answer yes or no." in prompt else [
            f"{prompt} Please answer yes or no.", f"{prompt}  Please answer yes or no."]
        found = next((c for c in candidates if (category, image, c) in truth), None)
        if found is None:
            raise AnswersError(f"{answers}: no MME ground truth for {row['question_id']!r} / {prompt!r}; was the "
                               "question file llava_mme.jsonl with this MME_Benchmark_release_version?")
        per_image[(category, image)].append(mme_parse(row["text"]) == truth[(category, image, found)].lower())
    subtasks = {}
    for category in sorted({c for c, _ in per_image}):
        images = [v for (c, _), v in per_image.items() if c == category]
        acc = sum(sum(v) for v in images) / sum(len(v) for v in images)
        acc_plus = sum(all(v) for v in images) / len(images)
        subtasks[category] = 100 * (acc + acc_plus)
    perception = sum(v for k, v in subtasks.items() if k in MME_PERCEPTION)
    cognition = sum(v for k, v in subtasks.items() if k in MME_COGNITION)
    return {"score": perception, "count": sum(len(v) for v in per_image.values()),
            "details": {"perception": perception, "cognition": cognition, "subtasks": subtasks}}


def score_seed(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """SEED-Bench's rule as LLaVA's convert_seed_for_submission applies it: exact match of the answer
    letter; the paper's SEED-I is the accuracy on image questions. Also writes the upload file.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": the benchmark's number, "count": answers scored, "details": ..., "files": {"upload"}}.
    """
    data = json.loads((eval_dir / "seed_bench/SEED-Bench.json").read_text())
    results = {str(r["question_id"]): r["text"] for r in read_jsonl(answers)}
    totals, correct = defaultdict(int), defaultdict(int)
    for q in data["questions"]:
        totals[q["data_type"]] += 1
        correct[q["data_type"]] += results.get(str(q["question_id"])) == q["answer"]
    upload = eval_dir / "seed_bench/answers_upload" / f"{ckpt}.jsonl"
    write_jsonl_atomic(upload, ({"question_id": q["question_id"], "prediction": results.get(str(q["question_id"]), "")}
                                for q in data["questions"]))
    accuracy = {t: 100 * correct[t] / totals[t] for t in totals}
    return {"score": accuracy.get("image"), "count": sum(totals.values()),
            "details": {"accuracy_by_type": accuracy}, "files": {"upload": str(upload)}}


# --- submission files --------------------------------------------------------------------------------

def _evalai(text: str) -> str:
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

    return EvalAIAnswerProcessor()(text)


def submit_vqav2(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """Every test2015 question with its EvalAI-normalised answer ('' where none), as LLaVA writes it.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"upload": the file written}, "note": where to submit it}.
    """
    results = {r["question_id"]: r["text"] for r in read_jsonl(answers)}
    split = read_jsonl(eval_dir / "vqav2/llava_vqav2_mscoco_test2015.jsonl")
    rows = [{"question_id": x["question_id"], "answer": _evalai(results[x["question_id"]])
             if x["question_id"] in results else ""} for x in split]
    dst = write_json(eval_dir / "vqav2/answers_upload/llava_vqav2_mscoco_test-dev2015" / f"{ckpt}.json", rows)
    return {"score": None, "count": len(results), "files": {"upload": str(dst)},
            "note": "submit the upload file to the VQAv2 test-dev server on EvalAI"}


def submit_vizwiz(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """The VizWiz-VQA server's upload file: every test question's image with its EvalAI-normalised answer.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"upload": the file written}, "note": where to submit it}.
    Raises:
        AnswersError: a question has no answer.
    """
    results = {r["question_id"]: r["text"] for r in read_jsonl(answers)}
    split = read_jsonl(eval_dir / "vizwiz/llava_test.jsonl")
    missing = [x["question_id"] for x in split if x["question_id"] not in results]
    if missing:
        raise AnswersError(f"{answers} has no answer for {len(missing)} VizWiz questions (first: {missing[:3]}); "
                           "the server needs all of them: rerun the inference")
    rows = [{"image": x["image"], "answer": _evalai(results[x["question_id"]])} for x in split]
    dst = write_json(eval_dir / "vizwiz/answers_upload" / f"{ckpt}.json", rows)
    return {"score": None, "count": len(rows), "files": {"upload": str(dst)},
            "note": "submit the upload file to the VizWiz-VQA server on EvalAI"}


def _submit_mmbench(tsv: Path, answers: Path, upload_dir: Path, ckpt: str) -> dict:
    import pandas as pd

    table = pd.read_table(tsv)
    sheet = table.drop(columns=[c for c in ("hint", "category", "source", "image", "comment", "l2-category")
                                if c in table.columns])
    sheet.insert(min(6, len(sheet.columns)), "prediction", None)
    for row in read_jsonl(answers):
        sheet.loc[table["index"] == row["question_id"], "prediction"] = row["text"]
    upload_dir.mkdir(parents=True, exist_ok=True)
    dst = upload_dir / f"{ckpt}.xlsx"
    sheet.to_excel(dst, index=False, engine="openpyxl")
    return {"score": None, "count": int(sheet["prediction"].notna().sum()), "files": {"upload": str(dst)},
            "note": "submit the xlsx to the MMBench evaluation server (OpenCompass)"}


def submit_mmbench(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """The MMBench (dev, English) upload sheet: LLaVA's convert_mmbench_for_submission's xlsx.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"upload": the file written}, "note": where to submit it}.
    """
    return _submit_mmbench(eval_dir / "mmbench/mmbench_dev_20230712.tsv", answers,
                           eval_dir / "mmbench/answers_upload/mmbench_dev_20230712", ckpt)


def submit_mmbench_cn(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """The MMBench-CN (dev) upload sheet: LLaVA's convert_mmbench_for_submission's xlsx.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"upload": the file written}, "note": where to submit it}.
    """
    return _submit_mmbench(eval_dir / "mmbench_cn/mmbench_dev_cn_20231003.tsv", answers,
                           eval_dir / "mmbench/answers_upload/mmbench_dev_cn_20231003", ckpt)


# --- GPT-judged --------------------------------------------------------------------------------------

def gpt_llava_w(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """The answers for LLaVA's GPT-4 judge, checked to be one per question in questions.jsonl's order:
    eval_gpt_review_bench.py pairs the two files line by line (zip, no id check), so any other order would
    have each answer judged against another question.

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"answers"}, "note": how to judge them}.
    Raises:
        AnswersError: naming the first line out of order.
    """
    rows = read_jsonl(answers)
    asked = [q["question_id"] for q in read_jsonl(eval_dir / "llava-bench-in-the-wild/questions.jsonl")]
    given = [r["question_id"] for r in rows]
    if given != asked:
        first = next((n for n, (a, g) in enumerate(zip(asked, given)) if a != g), min(len(asked), len(given)))
        raise AnswersError(f"{answers}: LLaVA's eval_gpt_review_bench.py pairs answers with questions.jsonl by "
                           f"line, but line {first + 1} answers {given[first] if first < len(given) else 'nothing'!r}"
                           f" where question {asked[first] if first < len(asked) else 'none'!r} is asked "
                           f"({len(given)} answers, {len(asked)} questions); rerun eval/llava_w.sh")
    return {"score": None, "count": len(rows), "files": {"answers": str(answers)},
            "note": "LLaVA-Bench is judged by GPT-4: run LLaVA's llava/eval/eval_gpt_review_bench.py with an "
                    "OpenAI key on these answers, then llava/eval/summarize_gpt_review.py"}


def gpt_mmvet(eval_dir: Path, answers: Path, out: Path, ckpt: str) -> dict:
    """The results file MM-Vet's GPT-4 evaluator reads ({"v1_<id>": answer}).

    Args:
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file (JSON lines) LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name, used in output file names.
    Returns:
        {"score": None, "count", "files": {"results"}, "note": how to judge them}.
    """
    results = {f"v1_{r['question_id']}": r["text"] for r in read_jsonl(answers)}
    dst = write_json(eval_dir / "mm-vet/results" / f"{ckpt}.json", results)
    return {"score": None, "count": len(results), "files": {"results": str(dst)},
            "note": "MM-Vet is judged by GPT-4: evaluate the results file with MM-Vet's official evaluator"}


SCORERS = {
    "pope": score_pope, "sqa": score_sqa, "textvqa": score_textvqa, "gqa": score_gqa, "mme": score_mme,
    "seed": score_seed, "vqav2": submit_vqav2, "vizwiz": submit_vizwiz, "mmbench": submit_mmbench,
    "mmbench_cn": submit_mmbench_cn, "llava_w": gpt_llava_w, "mmvet": gpt_mmvet,
}


def score(bench: Benchmark, eval_dir: str | Path, answers: str | Path, out: str | Path, ckpt: str) -> dict:
    """Score (or prepare for submission) `answers` of `bench`; the dict `aligngpt-eval score` writes.

    Args:
        bench: the benchmark.
        eval_dir: LLaVA's `playground/data/eval` folder.
        answers: the answers file LLaVA's eval module wrote.
        out: the folder for the scorer's own output files.
        ckpt: the checkpoint's name.
    Returns:
        {"benchmark", "title", "metric", "scoring", "checkpoint", "answers"} and the scorer's "score", "count",
        "details", "files", "note".
    Raises:
        FileNotFoundError: the answers file or a file the scorer needs is missing.
    """
    eval_dir, answers, out = Path(eval_dir), Path(answers), Path(out)
    if not answers.is_file():
        raise FileNotFoundError(f"{answers} does not exist: run eval/{bench.key}.sh (the inference) first")
    bench.require(eval_dir, for_scoring=True)
    result = SCORERS[bench.key](eval_dir, answers, out, ckpt)
    return {"benchmark": bench.key, "title": bench.title, "metric": bench.metric, "scoring": bench.scoring,
            "checkpoint": ckpt, "answers": str(answers), **result}
