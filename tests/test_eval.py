"""Evaluation: LLaVA's loader on AlignGPT checkpoints, the scorers against hand-computed values, the eval
scripts from checkpoint to score, the report and the gate heatmap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import eval_data
import pytest
from weight_reports import assert_every_weight_in_place

import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
from aligngpt_plugin.evaluation import benchmarks
from aligngpt_plugin.evaluation.scorers import AnswersError, score

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("llava_ready")


def answers(path: Path, rows: list[dict]) -> Path:
    return eval_data.write_jsonl(path, rows)


# --- scorers on constructed answers, values computed by hand ----------------------------------------

def test_pope_mean_f1_by_hand(tiny, tmp_path):
    data = eval_data.write_pope(tiny, tmp_path)
    texts = ["Yes, there is.", "No.", "Yes", "Yes", "no", "Yes"]  # per split: labels yes, no
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(data["questions"], texts)]
    result = score(benchmarks.get("pope"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")
    # adversarial: TP=1 TN=1 -> F1 1; popular: TP=1 FP=1 -> P .5 R 1 F1 2/3; random: TP=0 -> F1 0
    assert result["details"]["adversarial"]["f1"] == 1.0
    assert result["details"]["popular"]["precision"] == 0.5
    assert result["score"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3, abs=1e-2)


def test_pope_needs_every_answer(tiny, tmp_path):
    data = eval_data.write_pope(tiny, tmp_path)
    rows = [{"question_id": q["question_id"], "prompt": "", "text": "yes"} for q in data["questions"][:-1]]
    with pytest.raises(AnswersError, match="random"):
        score(benchmarks.get("pope"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")


def test_sqa_image_accuracy_by_hand(tiny, tmp_path):
    eval_data.write_sqa(tiny, tmp_path)
    rows = [{"question_id": pid, "prompt": ("<image>\n" if pid != "102" else "") + "Which colour?", "text": "A"}
            for pid in ("100", "101", "102")]  # answers: A (right), A (wrong, B), A (right, no image)
    result = score(benchmarks.get("sqa"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")
    assert result["score"] == pytest.approx(50.0)
    assert result["details"]["accuracy"] == pytest.approx(200 / 3)


def test_textvqa_accuracy_by_hand(tiny, tmp_path):
    eval_data.write_textvqa(tiny, tmp_path)
    qs = [json.loads(x) for x in open(tmp_path / "textvqa/llava_textvqa_val_v051_ocr.jsonl")]
    gt = [p["colour"] for p in eval_data.pictures(tiny, n=3)]
    texts = [gt[0], "purple", gt[2].capitalize() + "."]  # the last is right after m4c's normalisation
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(qs, texts)]
    result = score(benchmarks.get("textvqa"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")
    assert result["score"] == pytest.approx(200 / 3)


def test_mme_scores_by_hand(tiny, tmp_path):
    eval_data.write_mme(tiny, tmp_path)
    qs = [json.loads(x) for x in open(tmp_path / "MME/llava_mme.jsonl")]
    # existence (truth Yes, No per image): Yes No | Yes Yes -> acc 3/4, acc+ 1/2; code_reasoning: all yes
    texts = ["Yes", "No", "Yes", "Yes", "yes", "yes", "yes, it is", "yes"]
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(qs, texts)]
    result = score(benchmarks.get("mme"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")
    assert result["details"]["subtasks"] == pytest.approx({"existence": 125.0, "code_reasoning": 50.0})
    assert result["score"] == pytest.approx(125.0) and result["details"]["cognition"] == pytest.approx(50.0)


def test_mme_unknown_question_is_an_error(tiny, tmp_path):
    eval_data.write_mme(tiny, tmp_path)
    q = json.loads(open(tmp_path / "MME/llava_mme.jsonl").readline())
    rows = [{"question_id": q["question_id"], "prompt": "Is there a cat?", "text": "no"}]
    with pytest.raises(AnswersError, match="no MME ground truth"):
        score(benchmarks.get("mme"), tmp_path, answers(tmp_path / "a.jsonl", rows), tmp_path / "r", "m")


def test_gqa_and_seed_by_hand(tmp_path):
    eval_data.write_gqa(tmp_path, {"1": {"answer": "red"}, "2": {"answer": "yes"}, "3": {"answer": "left"}})
    eval_data.write_jsonl(tmp_path / "gqa/llava_gqa_testdev_balanced.jsonl", [])
    rows = [{"question_id": "1", "text": "Red."}, {"question_id": "2", "text": "no"}]
    result = score(benchmarks.get("gqa"), tmp_path, answers(tmp_path / "g.jsonl", rows), tmp_path / "r", "m")
    assert result["score"] == pytest.approx(100 / 3) and result["details"]["unanswered"] == 1
    preds = json.loads((tmp_path / "gqa/data/testdev_balanced_predictions.json").read_text())
    assert preds[0] == {"questionId": "1", "prediction": "red"}

    seed = {"questions": [{"question_id": "1", "answer": "A", "data_type": "image", "question_type_id": 1},
                          {"question_id": "2", "answer": "B", "data_type": "image", "question_type_id": 1},
                          {"question_id": "3", "answer": "A", "data_type": "video", "question_type_id": 2}],
            "question_type": {"Scene": 1, "Action": 2}}
    (tmp_path / "seed_bench").mkdir()
    (tmp_path / "seed_bench/SEED-Bench.json").write_text(json.dumps(seed))
    rows = [{"question_id": "1", "text": "A"}, {"question_id": "2", "text": "C"}, {"question_id": "3", "text": "A"}]
    result = score(benchmarks.get("seed"), tmp_path, answers(tmp_path / "s.jsonl", rows), tmp_path / "r", "m")
    assert result["score"] == 50.0 and result["details"]["accuracy_by_type"]["video"] == 100.0
    assert len(Path(result["files"]["upload"]).read_text().splitlines()) == 3


def test_submission_files(tiny, tmp_path):
    import pandas as pd

    eval_data.write_jsonl(tmp_path / "vqav2/llava_vqav2_mscoco_test2015.jsonl",
                          [{"question_id": 1}, {"question_id": 2}])
    result = score(benchmarks.get("vqav2"), tmp_path,
                   answers(tmp_path / "v.jsonl", [{"question_id": 1, "text": "Two."}]), tmp_path / "r", "m")
    upload = json.loads(Path(result["files"]["upload"]).read_text())
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": ""}]  # EvalAI normalised

    eval_data.write_jsonl(tmp_path / "vizwiz/llava_test.jsonl", [{"question_id": 7, "image": "VizWiz_7.jpg"}])
    with pytest.raises(AnswersError, match="VizWiz"):
        score(benchmarks.get("vizwiz"), tmp_path, answers(tmp_path / "z.jsonl", [{"question_id": 8, "text": "x"}]),
              tmp_path / "r", "m")

    eval_data.write_mmbench(tiny, tmp_path)
    result = score(benchmarks.get("mmbench"), tmp_path,
                   answers(tmp_path / "m.jsonl", [{"question_id": 1, "text": "B"}]), tmp_path / "r", "m")
    sheet = pd.read_excel(result["files"]["upload"])
    assert "image" not in sheet.columns and sheet["prediction"].tolist()[1] == "B"
    assert pd.isna(sheet["prediction"].tolist()[0])


def test_missing_benchmark_files_say_where_to_get_them(tmp_path):
    code = subprocess.run([sys.executable, "-m", "aligngpt_plugin.evaluate", "check", "pope", "--eval-dir",
                           str(tmp_path)], capture_output=True, text=True)
    assert code.returncode == 2
    assert "pope/llava_pope_test.jsonl" in code.stderr and "Evaluation.md" in code.stderr


# --- report and gates -------------------------------------------------------------------------------

def test_report_marks_what_was_not_run(tmp_path):
    from aligngpt_plugin.evaluate import main

    run = tmp_path / "my-run"
    run.mkdir()
    (run / "pope.json").write_text(json.dumps({"benchmark": "pope", "score": 85.04, "scoring": "local"}))
    (run / "mmbench.json").write_text(json.dumps({"benchmark": "mmbench", "score": None, "scoring": "submission"}))
    assert main(["report", str(run), "--out", str(tmp_path / "report.md")]) == 0
    table = (tmp_path / "report.md").read_text().splitlines()
    mine = next(line for line in table if line.startswith("| my-run"))
    cells = [c.strip() for c in mine.strip("|").split("|")]
    assert cells[1 + list(benchmarks.BENCHMARKS).index("pope")] == "85.0"
    assert cells[1 + list(benchmarks.BENCHMARKS).index("mmbench")] == "to submit"
    assert cells[1 + list(benchmarks.BENCHMARKS).index("gqa")] == "not run"
    assert any(line.startswith("| AlignGPT-7B (paper) | 79.1 | 62.9") for line in table)


def test_gate_summary_and_heatmap(tmp_path):
    from aligngpt_plugin.evaluation.gates import analyse

    pairs = {}
    for key, weights in (("pope", [[1.0, 0.0], [0.5, 0.5]]), ("gqa", [[0.0, 1.0], [0.0, 1.0]])):
        a = answers(tmp_path / f"{key}.jsonl", [{"question_id": i, "text": "x"} for i in range(2)])
        g = answers(tmp_path / f"{key}.gates.jsonl", [{"question_id": i, "gate_weights": w}
                                                     for i, w in enumerate(weights)])
        pairs[key] = (a, g)
    summary = analyse(pairs, tmp_path / "out")
    pope = summary["benchmarks"]["pope"]
    assert pope["mean_weights"] == [0.75, 0.25]
    assert pope["mean_entropy"] == pytest.approx((0 + 0.6931472) / 2, abs=1e-6)
    assert summary["max_level_spread"] == pytest.approx(0.75)
    assert (tmp_path / "out/gate_heatmap.png").stat().st_size > 1000
    answers(tmp_path / "gqa.gates.jsonl", [{"question_id": 0, "gate_weights": [0.0, 1.0]}])
    with pytest.raises(AnswersError, match="not of the same run"):
        analyse({"gqa": pairs["gqa"]}, tmp_path / "out2")


# --- LLaVA's loader -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    # a folder name without 'llava' and with 'lora' in it: LLaVA would load it as a plain LM or a LoRA;
    # converted from the released layout, as a user of the released checkpoints has it
    return eval_data.write_converted_checkpoint(tiny, tmp_path_factory.mktemp("ckpt") / "aligngpt-tiny-lora-free")


def test_llava_loader_recognises_aligngpt_by_config(checkpoint, tmp_path):
    from llava.model import builder

    from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading
    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    enable_aligngpt_loading()
    enable_aligngpt_loading()  # idempotent
    _, model, processor, _ = builder.load_pretrained_model(str(checkpoint), None, checkpoint.name, device="cpu")
    assert type(model) is AlignGPTLlamaForCausalLM and processor is not None
    assert model.alignment.level_embeddings.shape[0] == 8

    released = tmp_path / "aligngpt-7b"
    released.mkdir()
    (released / "config.json").write_text(json.dumps({"model_type": "aligngpt"}))
    with pytest.raises(ValueError, match="aligngpt-convert to-plugin"):
        builder.load_pretrained_model(str(released), None, "aligngpt-7b", device="cpu")


def test_routed_name_follows_the_folder_not_its_name(tmp_path):
    from aligngpt_plugin.integrations.llava.loader import routed_model_name

    assert routed_model_name("my-lora-run", str(tmp_path)) == "my--run-llava"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert routed_model_name("checkpoint", str(tmp_path)).endswith("-llava-lora")


# --- the eval scripts, from checkpoint to score -----------------------------------------------------------

def run_script(name: str, checkpoint: Path, eval_dir: Path, results: Path, chunks: int = 1):
    env = {**os.environ, "MODEL_PATH": str(checkpoint), "EVAL_DIR": str(eval_dir), "RESULTS_DIR": str(results),
           "CKPT": "tiny", "CHUNKS": str(chunks), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "0"}
    out = subprocess.run(["bash", str(REPO / "eval" / f"{name}.sh")], env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def test_scripts_from_checkpoint_to_score(tiny, checkpoint, tmp_path):
    from aligngpt_plugin.core.fileio import read_jsonl

    eval_dir, results = tmp_path / "eval", tmp_path / "results" / "tiny"
    eval_data.write_pope(tiny, eval_dir)
    eval_data.write_sqa(tiny, eval_dir)
    eval_data.write_textvqa(tiny, eval_dir)
    eval_data.write_mmbench(tiny, eval_dir)
    eval_data.write_mme(tiny, eval_dir)

    log = run_script("pope", checkpoint, eval_dir, results, chunks=2)  # two chunks, merged in question order
    assert_every_weight_in_place(log.stdout + log.stderr)  # 4.x's sentences and 5.x's load report
    for name in ("sqa", "textvqa", "mmbench", "mme"):
        run_script(name, checkpoint, eval_dir, results)

    pope_answers = eval_dir / "answers/tiny/pope.jsonl"
    questions = read_jsonl(eval_dir / "pope/llava_pope_test.jsonl")
    assert [r["question_id"] for r in read_jsonl(pope_answers)] == [q["question_id"] for q in questions]
    # the checkpoint answers "Yes" to everything (eval_data.answer_yes_then_stop), so by hand:
    # POPE: per split TP=1 FP=1 -> F1 2/3; SQA: "Yes" is no option -> 0; TextVQA: no colour -> 0;
    # MME: per image one of two right, never both -> 50 per subtask
    expected = {"pope": 200 / 3, "sqa": 0.0, "textvqa": 0.0, "mme": 50.0}
    assert {r["text"] for r in read_jsonl(pope_answers)} == {"Yes"}
    for key in ("pope", "sqa", "textvqa", "mme"):
        result = json.loads((results / f"{key}.json").read_text())
        assert result["score"] == pytest.approx(expected[key], abs=1e-6), key
        gates = read_jsonl(result["gates"])  # one gate line per answer, each a distribution over 7 levels
        assert len(gates) == result["count"] or key == "sqa"
        # each line carries its question's id (chunks merged: the same order as the answers)
        assert [g["question_id"] for g in gates] == [r["question_id"] for r in read_jsonl(result["answers"])]
        assert all(abs(sum(g["gate_weights"]) - 1) < 1e-2 for g in gates if g["gate_weights"] is not None)
    assert Path(json.loads((results / "mmbench.json").read_text())["files"]["upload"]).is_file()

    from aligngpt_plugin.evaluate import main

    assert main(["gates", str(results)]) == 0
    assert (results / "gate_heatmap.png").is_file()
    assert main(["report", str(results), "--out", str(tmp_path / "report.md")]) == 0
    assert "| tiny |" in (tmp_path / "report.md").read_text()


def test_remaining_scripts_from_checkpoint_to_output(tiny, checkpoint, tmp_path):
    """GQA, SEED, VQAv2, VizWiz, MMBench-CN, LLaVA-W and MM-Vet, each script from the checkpoint to its
    score or server/judge file, on tiny datasets in the benchmarks' own formats."""
    import pandas as pd

    from aligngpt_plugin.core.fileio import read_jsonl

    eval_dir, results = tmp_path / "eval", tmp_path / "results" / "tiny"
    gqa = eval_data.write_gqa_testdev(tiny, eval_dir)
    seed = eval_data.write_seed(tiny, eval_dir)
    vqav2 = eval_data.write_vqav2(tiny, eval_dir)
    vizwiz = eval_data.write_vizwiz(tiny, eval_dir)
    mmbench_cn = pd.read_table(eval_data.write_mmbench_cn(tiny, eval_dir))["index"].tolist()  # 3 rows
    llava_w = eval_data.write_llava_w(tiny, eval_dir)
    mmvet = eval_data.write_mmvet(tiny, eval_dir)

    run_script("gqa", checkpoint, eval_dir, results, chunks=2)  # chunked, as LLaVA runs GQA
    for name in ("seed", "vqav2", "vizwiz", "mmbench_cn", "llava_w", "mmvet"):
        run_script(name, checkpoint, eval_dir, results)

    # every answer is "Yes" (eval_data.answer_yes_then_stop), one per question, in question order
    questions = {"gqa": gqa["llava"], "seed": seed["llava"], "vqav2": vqav2["dev"], "vizwiz": vizwiz,
                 "llava_w": llava_w, "mmvet": mmvet["llava"],
                 "mmbench_cn": [{"question_id": i} for i in mmbench_cn]}
    scored = {}
    for key, asked in questions.items():
        rows = read_jsonl(eval_dir / f"answers/tiny/{key}.jsonl")
        assert [r["question_id"] for r in rows] == [q["question_id"] for q in asked], key
        assert {r["text"] for r in rows} == {"Yes"}, key
        scored[key] = result = json.loads((results / f"{key}.json").read_text())
        assert result["count"] == len(asked), key
        gates = read_jsonl(result["gates"])  # one gate line per answer, a distribution over the levels
        assert len(gates) == len(rows) and all(abs(sum(g["gate_weights"]) - 1) < 1e-2 for g in gates), key
        assert [g["question_id"] for g in gates] == [r["question_id"] for r in rows], key  # ids in every line

    # GQA: LLaVA's conversion makes "Yes" "yes"; 2 of the 4 answers (yes, no, a colour, yes) are "yes" -> 50
    assert scored["gqa"]["score"] == pytest.approx(50.0)
    assert scored["gqa"]["details"] == {"correct": 2, "unanswered": 0}
    predictions = json.loads((eval_dir / "gqa/data/testdev_balanced_predictions.json").read_text())
    assert predictions == [{"questionId": qid, "prediction": "yes"} for qid in gqa["questions"]]

    # SEED: exact match of the option letter; "Yes" is none -> 0 for image (the score) and video questions;
    # the upload has every SEED-Bench.json question (its string ids) with the raw prediction
    assert scored["seed"]["score"] == 0.0
    assert scored["seed"]["details"]["accuracy_by_type"] == {"image": 0.0, "video": 0.0}
    upload = read_jsonl(scored["seed"]["files"]["upload"])
    assert upload == [{"question_id": q["question_id"], "prediction": "Yes"} for q in seed["questions"]]

    # VQAv2: every test2015 question in its order, EvalAI-normalised "yes", "" for the test-std-only one
    upload = json.loads(Path(scored["vqav2"]["files"]["upload"]).read_text())
    dev = {q["question_id"] for q in vqav2["dev"]}
    assert upload == [{"question_id": q["question_id"], "answer": "yes" if q["question_id"] in dev else ""}
                      for q in vqav2["test"]]
    assert Path(scored["vqav2"]["files"]["upload"]).parent.name == "llava_vqav2_mscoco_test-dev2015"

    # VizWiz: one {image, answer} per llava_test.jsonl question, in its order, "yes" after EvalAI's processor
    upload = json.loads(Path(scored["vizwiz"]["files"]["upload"]).read_text())
    assert upload == [{"image": q["image"], "answer": "yes"} for q in vizwiz]

    # MMBench-CN: LLaVA's convert_mmbench_for_submission sheet (prediction as the 7th column), raw "Yes" each
    sheet = pd.read_excel(scored["mmbench_cn"]["files"]["upload"])
    assert Path(scored["mmbench_cn"]["files"]["upload"]).parent.name == "mmbench_dev_cn_20231003"
    assert sheet.columns.tolist() == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert sheet["index"].tolist() == mmbench_cn and sheet["prediction"].tolist() == ["Yes"] * 3
    assert sheet["question"].tolist()[0] == "图中形状是什么颜色？" and pd.isna(sheet["C"].tolist()[2])

    # LLaVA-W: LLaVA's eval_gpt_review_bench pairs questions.jsonl, answers_gpt4.jsonl and these answers by line
    answers_w = read_jsonl(scored["llava_w"]["answers"])
    gpt4 = read_jsonl(eval_dir / "llava-bench-in-the-wild/answers_gpt4.jsonl")
    for q, reference, mine in zip(llava_w, gpt4, answers_w, strict=True):
        assert q["question_id"] == reference["question_id"] == mine["question_id"] and mine["prompt"] == q["text"]
    assert scored["llava_w"]["score"] is None and scored["llava_w"]["scoring"] == "gpt"

    # MM-Vet: LLaVA's convert_mmvet_for_eval results file, keyed as mm-vet.json (v1_<id>), raw "Yes"
    results_file = Path(scored["mmvet"]["files"]["results"])
    assert results_file == eval_dir / "mm-vet/results/tiny.json"
    assert list(json.loads(results_file.read_text()).items()) == [(k, "Yes") for k in mmvet["questions"]]

    from aligngpt_plugin.evaluate import main

    assert main(["report", str(results), "--out", str(tmp_path / "report.md")]) == 0
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| tiny"))
    cells = dict(zip(benchmarks.BENCHMARKS, (c.strip() for c in row.strip("|").split("|")[1:])))
    assert cells["gqa"] == "50.0" and cells["seed"] == "0.0"
    assert {cells[k] for k in ("vqav2", "vizwiz", "mmbench_cn")} == {"to submit"}
    assert {cells[k] for k in ("llava_w", "mmvet")} == {"to judge (GPT-4)"}
