"""A whole tiny AlignGPT run, recorded once on transformers 4.57.6 and compared on every other line.

What it runs, each stage through the entry point a user runs (`aligngpt_plugin.train`, LLaVA's
`model_vqa_loader`), on the tiny fixtures with seed 42:

1. stage 1 (`plain`, projector + level embeddings) with `--align_levels 8`, 4 steps;
2. stage 2 (`v1`, LLM + projector + gate) with `--align_levels 8`, 4 steps;
3. greedy answers to the fixture questions, with the gate's weights per question.

The recorded file holds each step's training loss, the answers and the gate weights. Record it under the
reference line (the `.venv` of `make install`) with::

    .venv/bin/python tests/golden/reference_run.py tests/golden/reference_run_4.57.6.json

`tests/test_reference_run.py` runs the same under the installed transformers and compares: losses and
gates within float tolerance, answers identical. The fixtures are drawn the same on every line
(`devkit.fixtures.redraw_weights`), so any difference comes from the stack, not the data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = 4
LEVELS = ("--align_levels", "8")


def run(root: Path) -> dict:
    import transformers

    from aligngpt_plugin.core.fileio import read_jsonl
    from aligngpt_plugin.devkit import pipeline
    from aligngpt_plugin.devkit.tiny_checkpoints import write_fixtures

    fx = write_fixtures(root / "fixtures")
    pre, ft = root / "pretrain", root / "aligngpt-finetune"
    pipeline.train(pipeline.pretrain_args(fx, pre, pipeline.StageSettings(max_steps=STEPS, save_steps=1000),
                                          data=fx.pretrain_levels, extra=LEVELS), log=root / "pretrain.log")
    pipeline.train(pipeline.finetune_args(fx, pre / "mm_projector.bin", ft, pipeline.StageSettings(
        max_steps=STEPS, learning_rate=1e-3, save_steps=1000), extra=LEVELS), log=root / "finetune.log")
    answers, gates = root / "answers.jsonl", root / "gates.jsonl"
    pipeline.answer_questions(ft, fx, answers, log=root / "eval.log", gate_dump=gates)
    return {
        "transformers": transformers.__version__,
        "pretrain_loss": pipeline.logged_losses(pre),
        "finetune_loss": pipeline.logged_losses(ft),
        "answers": {str(a["question_id"]): a["text"] for a in read_jsonl(answers)},
        "gates": [g["gate_weights"] for g in read_jsonl(gates)],  # one row per question, in question order
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
