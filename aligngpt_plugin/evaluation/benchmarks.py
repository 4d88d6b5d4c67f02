"""The 12 benchmarks of LLaVA-1.5 / AlignGPT: where LLaVA keeps each one's files and how it is scored.

Paths are relative to LLaVA's eval folder (`playground/data/eval`, from LLaVA's eval.zip plus each
benchmark's own download, as LLaVA's docs/Evaluation.md describes). `eval/<key>.sh` runs the inference
with LLaVA's eval module and then `aligngpt-eval score <key>`; the paper's numbers are in
`aligngpt_plugin.evaluation.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Scoring = Literal["local", "submission", "gpt"]
EVAL_DOCS = "LLaVA's docs/Evaluation.md (github.com/haotian-liu/LLaVA)"


@dataclass(frozen=True)
class Benchmark:
    key: str
    title: str  # the column name in the paper's table
    module: str  # LLaVA's eval module that writes the answers
    questions: str
    images: str | None
    scoring: Scoring
    metric: str
    needs: tuple[str, ...] = ()  # further files the scorer reads
    extra_args: tuple[str, ...] = ()
    source: str = ""  # where LLaVA's docs get the data
    notes: dict[str, str] = field(default_factory=dict)

    def missing(self, eval_dir: str | Path, for_scoring: bool = False) -> list[str]:
        """Files or folders of this benchmark that are not under `eval_dir`."""
        root = Path(eval_dir)
        paths = [self.questions, *([self.images] if self.images else [])]
        if for_scoring:
            paths = list(self.needs)
        return [p for p in paths if not (root / p).exists()]

    def require(self, eval_dir: str | Path, for_scoring: bool = False) -> None:
        """A clear error naming what is missing and where LLaVA's docs get it."""
        missing = self.missing(eval_dir, for_scoring)
        if missing:
            listed = "\n  ".join(str(Path(eval_dir) / m) for m in missing)
            raise FileNotFoundError(
                f"{self.title}: missing\n  {listed}\nGet them as {EVAL_DOCS} says ({self.title} section): "
                f"{self.source}")


EVAL_ZIP = "LLaVA's eval.zip extracted to playground/data/eval"

BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in (
    Benchmark("vqav2", "VQAv2", "llava.eval.model_vqa_loader",
              "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl", "vqav2/test2015", "submission", "accuracy (server)",
              needs=("vqav2/llava_vqav2_mscoco_test2015.jsonl",),
              source=f"{EVAL_ZIP}, and COCO test2015 images under vqav2/test2015; submit to the EvalAI server"),
    Benchmark("gqa", "GQA", "llava.eval.model_vqa_loader",
              "gqa/llava_gqa_testdev_balanced.jsonl", "gqa/data/images", "local", "accuracy",
              needs=("gqa/data/testdev_balanced_questions.json",),
              source=f"{EVAL_ZIP}, and GQA's images and questions (testdev_balanced_questions.json) under gqa/data"),
    Benchmark("vizwiz", "VizWiz", "llava.eval.model_vqa_loader",
              "vizwiz/llava_test.jsonl", "vizwiz/test", "submission", "accuracy (server)",
              needs=("vizwiz/llava_test.jsonl",),
              source=f"{EVAL_ZIP}, and VizWiz's test.json and test images under vizwiz/test; submit to EvalAI"),
    Benchmark("sqa", "SQA-I", "llava.eval.model_vqa_science",
              "scienceqa/llava_test_CQM-A.json", "scienceqa/images/test", "local", "image accuracy",
              needs=("scienceqa/problems.json", "scienceqa/pid_splits.json"), extra_args=("--single-pred-prompt",),
              source=f"{EVAL_ZIP}, and images, pid_splits.json, problems.json from ScienceQA's data/scienceqa"),
    Benchmark("textvqa", "TextVQA", "llava.eval.model_vqa_loader",
              "textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images", "local", "accuracy",
              needs=("textvqa/TextVQA_0.5.1_val.json",),
              source=f"{EVAL_ZIP}, and TextVQA_0.5.1_val.json with the train_val images under textvqa"),
    Benchmark("pope", "POPE", "llava.eval.model_vqa_loader",
              "pope/llava_pope_test.jsonl", "pope/val2014", "local", "F1 (mean of 3 splits)",
              needs=("pope/coco",),
              source=f"{EVAL_ZIP}, POPE's output/coco folder as pope/coco, COCO val2014 images as pope/val2014"),
    Benchmark("mme", "MME", "llava.eval.model_vqa_loader",
              "MME/llava_mme.jsonl", "MME/MME_Benchmark_release_version", "local", "perception score",
              needs=("MME/MME_Benchmark_release_version",),
              source=f"{EVAL_ZIP}, and MME_Benchmark_release_version from MME's official instructions"),
    Benchmark("mmbench", "MMB", "llava.eval.model_vqa_mmbench",
              "mmbench/mmbench_dev_20230712.tsv", None, "submission", "CircularEval accuracy (server)",
              extra_args=("--single-pred-prompt",),
              source="mmbench_dev_20230712.tsv from OpenMMLab's download site under mmbench; submit to OpenCompass"),
    Benchmark("mmbench_cn", "MMB-CN", "llava.eval.model_vqa_mmbench",
              "mmbench_cn/mmbench_dev_cn_20231003.tsv", None, "submission", "CircularEval accuracy (server)",
              extra_args=("--lang", "cn", "--single-pred-prompt"),
              source="mmbench_dev_cn_20231003.tsv from OpenMMLab's download site under mmbench_cn; submit to "
                     "OpenCompass"),
    Benchmark("seed", "SEED-I", "llava.eval.model_vqa_loader",
              "seed_bench/llava-seed-bench.jsonl", "seed_bench", "local", "image accuracy",
              needs=("seed_bench/SEED-Bench.json",),
              source=f"{EVAL_ZIP}, and SEED-Bench's images (SEED-Bench-image) and SEED-Bench.json under seed_bench"),
    Benchmark("llava_w", "LLaVA-W", "llava.eval.model_vqa",
              "llava-bench-in-the-wild/questions.jsonl", "llava-bench-in-the-wild/images", "gpt",
              "GPT-4 relative score",
              source="llava-bench-in-the-wild (a hub dataset) extracted to llava-bench-in-the-wild"),
    Benchmark("mmvet", "MM-Vet", "llava.eval.model_vqa",
              "mm-vet/llava-mm-vet.jsonl", "mm-vet/images", "gpt", "GPT-4 score",
              source="mm-vet.zip from MM-Vet's GitHub releases extracted to mm-vet"),
)}


def get(key: str) -> Benchmark:
    try:
        return BENCHMARKS[key]
    except KeyError:
        raise SystemExit(f"unknown benchmark {key!r}; choose one of {', '.join(BENCHMARKS)}") from None
