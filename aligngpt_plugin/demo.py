"""The main job on a built-in tiny default: score, levels, pre-training, fine-tuning, evaluation.

    make demo                          # installs what it needs, then runs this
    python -m aligngpt_plugin.demo --out runs/demo

The AlignGPT pipeline of METHOD.md end to end, each stage through the same entry point a user runs:

1. `aligngpt-score`: CLIP similarity of every pre-training image-caption pair (the fixture's CLIP,
   the one LLaVA's vision tower loads) and 8 equal-count alignment levels -> `levels/`.
2. LLaVA stage 1 with `--align_levels 8` on the levelled captions: projector and level embeddings
   -> `pretrain/mm_projector.bin`.
3. LLaVA stage 2 with `--align_levels 8`: LLM, projector and gate -> `aligngpt-tiny-finetune/`.
4. LLaVA's `model_vqa_loader` on the held-out questions, with the gate's weights dumped per question
   -> `eval/answers.jsonl`, `eval/answers.gates.jsonl`, `eval/gates.json`, `eval/gate_heatmap.png`.

`summary.json` gathers the level counts, both stages' losses, the answers, the share of colour
questions answered right and the gate's mean weights. On 2 CPU cores it takes a few minutes. The tiny
LLM starts from random weights: the demo shows that every stage runs, not a trained model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aligngpt_plugin.devkit.demo import LEVELS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aligngpt-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    parser.add_argument("--pretrain-epochs", type=float, default=3)
    parser.add_argument("--finetune-epochs", type=float, default=3)
    parser.add_argument("--levels", type=int, default=LEVELS, help="alignment levels (default %(default)s)")
    args = parser.parse_args(argv)
    run(Path(args.out), args.pretrain_epochs, args.finetune_epochs, args.levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
