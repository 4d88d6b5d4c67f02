"""lmms-eval's own scoring code for the benchmarks, run on hand-made answers: the oracle that
tests/test_benchmark_oracles.py compares the plugin's scorers with.

lmms-eval lives in its own folder (`.venv/lmms-eval`, see tests/test_lmms.py), not on the venv's path,
so this file runs as a subprocess with that folder on PYTHONPATH: it reads {benchmark: cases} as JSON on
stdin and prints {benchmark: values}. Each function calls the task's `process_results` and aggregation
functions exactly as lmms-eval's evaluator chains them (per-document results, then the metric's
aggregation over them); nothing here re-implements a rule.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LMMS_DIR = Path(os.environ.get("ALIGNGPT_LMMS_EVAL_DIR", Path(sys.prefix) / "lmms-eval"))


def pope(cases: list[dict]) -> dict:
    """cases: [{question_id, answer (label), prediction}] of one split -> POPE's aggregates."""
    from lmms_eval.tasks.pope import utils

    per_doc = [utils.pope_process_results(c, [c["prediction"]]) for c in cases]
    return {name: getattr(utils, f"pope_aggregate_{name}")([r[f"pope_{name}"] for r in per_doc])
            for name in ("accuracy", "precision", "recall", "f1_score")}


def scienceqa(cases: list[dict]) -> dict:
    """cases: [{choices, answer (index), prediction}] -> per-document exact_match and their mean."""
    from lmms_eval.tasks.scienceqa import utils

    scores = [utils.sqa_process_results(c, [c["prediction"]])["exact_match"] for c in cases]
    return {"per_doc": scores, "mean": sum(scores) / len(scores)}


def textvqa(cases: list[dict]) -> dict:
    """cases: [{question_id, answers (10), prediction}] -> per-document accuracy and the mean."""
    from lmms_eval.tasks.textvqa import utils

    out = [utils.textvqa_process_results(c, [c["prediction"]]) for c in cases]
    scores = [r["exact_match"] for r in out]
    return {"per_doc": scores, "mean": sum(scores) / len(scores)}


def gqa(cases: list[dict]) -> dict:
    """GQA's task yaml: metric exact_match (lmms-eval's hf-evaluate version) with ignore_case and
    ignore_punctuation, mean over documents."""
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    per_doc = [float(exact_match_hf_evaluate([c["prediction"]], [c["answer"]], ignore_case=True,
                                             ignore_punctuation=True)["exact_match"]) for c in cases]
    return {"per_doc": per_doc, "mean": sum(per_doc) / len(per_doc)}


def mme(cases: list[dict]) -> dict:
    """cases: [{question_id (the image), category, answer, prediction}] -> perception and cognition."""
    from lmms_eval.tasks.mme import utils

    by_key: dict[str, list] = {}
    for c in cases:
        for key, value in utils.mme_process_results(c, [c["prediction"]]).items():
            by_key.setdefault(key, []).append(value)
    return {"parsed": [utils.parse_pred_ans(c["prediction"]) for c in cases],
            **{key: utils.mme_aggregate_results(values) for key, values in by_key.items()}}


def seedbench(cases: list[dict]) -> dict:
    """cases: [{question_id, answer, data_type, prediction}] -> seed_image / seed_video / seed_all."""
    from lmms_eval.tasks.seedbench import utils

    by_key: dict[str, list] = {}
    for c in cases:
        for key, value in utils.seed_process_result(c, [c["prediction"]]).items():
            by_key.setdefault(key, []).append(value)
    return {key: utils.seed_aggregation_result(values) for key, values in by_key.items()}


def vqav2(cases: list[dict]) -> dict:
    """cases: [{question_id, answers: [{answer}], prediction}] -> the submission answer and accuracy."""
    from lmms_eval.tasks.vqav2 import utils

    out = [utils.vqav2_process_results(c, [c["prediction"]]) for c in cases]
    return {"answers": [r["submission"]["answer"] for r in out], "per_doc": [r["exact_match"] for r in out]}


def vizwiz(cases: list[dict]) -> dict:
    """cases: [{question_id, answers, prediction}] -> the submission answer and accuracy."""
    from lmms_eval.tasks.vizwiz_vqa import utils

    out = [utils.vizwiz_vqa_process_results(c, [c["prediction"]]) for c in cases]
    return {"answers": [r["submission"]["answer"] for r in out], "per_doc": [r["exact_match"] for r in out]}


def mmbench(rows: list[dict]) -> dict:
    """rows: the MMBench sheet's records (index, question, A..D, answer, category, prediction, rotations
    at index + k*1e6) -> CircularEval accuracy by lmms-eval's evaluator, its static (no GPT) method."""
    import contextlib
    import io
    import warnings

    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # pandas' chained-assignment warnings inside the evaluator
        overall, _, _ = MMBench_Evaluator().eval_result(rows, eval_method="static")
    return {"circular_accuracy": float(overall)}


ORACLES = {"pope": pope, "scienceqa": scienceqa, "textvqa": textvqa, "gqa": gqa, "mme": mme,
           "seedbench": seedbench, "vqav2": vqav2, "vizwiz": vizwiz, "mmbench": mmbench}


def run(requests: dict, python: str = sys.executable) -> dict:
    """Run the oracles named in `requests` ({name: {label: cases}}) in a subprocess with lmms-eval on
    the path; returns {name: {label: values}}."""
    import subprocess

    if not (LMMS_DIR / "lmms_eval").is_dir():
        raise FileNotFoundError(f"lmms-eval is not installed in {LMMS_DIR}: run `make install`")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LMMS_DIR), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LOGURU_LEVEL": "WARNING"}
    proc = subprocess.run([python, __file__], input=json.dumps(requests), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lmms-eval oracle failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    requests = json.load(sys.stdin)
    out = {name: {label: ORACLES[name](cases) for label, cases in labelled.items()}
           for name, labelled in requests.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
