"""AlignGPT's thesis tested end to end on a laptop, beside plain LLaVA: `make demo`.

    make demo                                    # installs what it needs, then runs this (< 10 min, 2 cores)
    python -m aligngpt_plugin.demo --out runs/demo
    python -m aligngpt_plugin.demo --out runs/quick --quick          # the test suite's size (2 seeds)
    python -m aligngpt_plugin.demo --out runs/demo --seeds 0 1 2 3 4 # more training seeds
    python -m aligngpt_plugin.demo --out runs/demo --trl             # AlignGPT through TRL too, both routes compared
    python -m aligngpt_plugin.demo --out runs/demo --report-only     # statistics and report again from the files

AlignGPT claims that pre-training pairs differ in how well caption and image match, that CLIP scores
measure it, and that a model told each pair's level (and later mixing levels per task) does better.
The demo tests that in miniature, with the truth known, each stage through the entry point a user runs:

1. Data: pictures of coloured shapes; each pre-training caption is true, partly true (one of colour,
   shape, place wrong) or unrelated alt-text (50/25/25), the truth kept in the record -> `data/`.
2. CLIP: a tiny open_clip model trained contrastively (open_clip's ClipLoss) on other shape pictures;
   its held-out AUC of true against false captions; its vision half as LLaVA's tower -> `clip/`.
3. `aligngpt-score` with that CLIP: scores and 8 levels, and how the levels follow the truth -> `levels/`.
4. For each training seed (default 0, 1, 2), AlignGPT (`--align_levels 8`) and plain LLaVA, same data
   and steps, both from one shared start (`seed<k>/start.bin`): stage 1 (pre-training) and stage 2
   (instruction tuning) with `python -m aligngpt_plugin.train` -> `seed<k>/aligngpt/`, `seed<k>/llava/`.
5. The level probe: each stage-1 checkpoint captions the held-out pictures, AlignGPT's once per fixed
   level; the captions' colour, shape and place are scored against the pictures -> `seed<k>/probe/`.
6. LLaVA's `model_vqa_loader` on the held-out pictures, a question on colour, shape and place each;
   AlignGPT's gate weights per question -> `seed<k>/eval/`.
7. With `--trl`: the same AlignGPT through TRL's SFTTrainer on the HF-native model (`aligngpt-sft`, both stages,
   same start, steps and learning rates), converted back and answered by the same harness -> `seed<k>/aligngpt-trl/`;
   its answers are tested against the LLaVA-code route's, paired.
8. `report.md` with the numbers, paired exact tests and figures; `summary.json`.

Data, CLIP, levels and the LLM's language warm-up are made once (`--data-seed`) and shared by all
training seeds; the seeds vary the start weights, data order and everything the two trainings draw.

The LLM is a tiny Llama with Vicuna-v1.5's tokenizer, first trained a minute as a plain LM on captions
and alt-text without images (as Vicuna, it reads the captions' language before stage 1 freezes it): its
answers show what the pipeline learnt, not what a pretrained LLM knew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from aligngpt_plugin.devkit.demo_experiment import LEVELS, DemoSettings

    defaults = DemoSettings()
    parser = argparse.ArgumentParser(prog="aligngpt-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    parser.add_argument("--quick", action="store_true", help="small data and short trainings (the test suite's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"training seeds (default {' '.join(map(str, defaults.seeds))}; --quick: "
                             f"{' '.join(map(str, DemoSettings.quick().seeds))})")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seeds data, CLIP and the LLM's language warm-up (default 0)")
    parser.add_argument("--eval-pictures", type=int, default=None,
                        help=f"held-out pictures, one question of each kind (default {defaults.eval_pictures})")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"trainings run at once (default {defaults.jobs}; 1: one after another, with "
                             "progress bars)")
    parser.add_argument("--pretrain-epochs", type=float, default=None,
                        help=f"stage 1 epochs (default {defaults.pretrain_epochs:g})")
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help=f"stage 2 epochs (default {defaults.finetune_epochs:g})")
    parser.add_argument("--trl", action="store_true",
                        help="also train AlignGPT through TRL's SFTTrainer on the HF-native model (aligngpt-sft) and "
                             "test it against the LLaVA-code route on the same questions (needs the `trl` extra; "
                             "--quick: 198 s instead of ~130; TRL 1.16's fused LM head runs its torch fallback on "
                             "the CPU, ~8x slower a step than the full-logits loss at this size)")
    parser.add_argument("--levels", type=int, default=LEVELS, help="alignment levels (default %(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="recompute the statistics from --out's answer, caption and gate files and redraw "
                             "report.md, summary.json and the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.report_only:
        from aligngpt_plugin.devkit.demo_experiment import rescore
        from aligngpt_plugin.devkit.demo_report import draw

        out = Path(args.out)
        if (out / "data" / "questions.jsonl").is_file() and (out / "report_data.json").is_file():
            rescore(out)  # the numbers again from the run's answer, caption and gate files
        else:
            draw(out)
        print(f"report: {Path(args.out) / 'report.md'}")
        return 0
    from aligngpt_plugin.devkit.demo_experiment import run

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.data_seed = args.data_seed
    settings.levels = args.levels
    settings.trl = args.trl
    for name in ("seeds", "eval_pictures", "jobs"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, tuple(value) if name == "seeds" else value)
    if len(set(settings.seeds)) != len(settings.seeds) or settings.jobs < 1 or settings.eval_pictures < 1:
        parser.error(f"--seeds must differ from each other ({settings.seeds}), --jobs and --eval-pictures be >= 1")
    if args.pretrain_epochs is not None:
        settings.pretrain_epochs = args.pretrain_epochs
    if args.finetune_epochs is not None:
        settings.finetune_epochs = args.finetune_epochs
    run(Path(args.out), settings, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
