"""The main job on a built-in tiny default: fixtures, pre-training, fine-tuning, answers, a score.

    make demo                          # installs what it needs, then runs this
    python -m aligngpt_plugin.demo --out runs/demo

Writes under `--out`: `fixtures/` (tiny Llama with LLaVA-1.5's tokenizer, tiny CLIP, the shapes
dataset), `pretrain/` (LLaVA stage 1: `mm_projector.bin`), `finetune/` (LLaVA stage 2: a full
checkpoint), `answers.jsonl` (LLaVA's `model_vqa_loader`) and `summary.json`. Every stage is LLaVA's
own code, run through the plugin's entry points; on 2 CPU cores it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aligngpt_plugin import pipeline
from aligngpt_plugin.fixtures import FixtureSpec, write_fixtures


def run(out: Path, pretrain_epochs: float = 3, finetune_epochs: float = 3) -> dict:
    out = Path(out)
    started = time.time()
    summary: dict = {}

    def step(name: str) -> None:
        print(f"[demo] {name} ({time.time() - started:.0f}s)", flush=True)

    step("writing tiny fixtures")
    fx = write_fixtures(out / "fixtures", FixtureSpec())

    step("stage 1: LLaVA pre-training (projector only, `plain` template)")
    pre_dir = out / "pretrain"
    pipeline.train(pipeline.pretrain_args(fx, pre_dir, pipeline.StageSettings(
        epochs=pretrain_epochs, save_steps=1000, logging_steps=4)), log=out / "logs" / "pretrain.log")
    summary["pretrain_loss"] = pipeline.logged_losses(pre_dir)

    step("stage 2: LLaVA fine-tuning (LLM + projector, `v1` template)")
    ft_dir = out / "llava-tiny-finetune"  # LLaVA's loader picks the architecture from 'llava' in the name
    pipeline.train(pipeline.finetune_args(fx, pre_dir / "mm_projector.bin", ft_dir, pipeline.StageSettings(
        epochs=finetune_epochs, learning_rate=1e-3, save_steps=1000, logging_steps=4)),
        log=out / "logs" / "finetune.log")
    summary["finetune_loss"] = pipeline.logged_losses(ft_dir)

    step("eval: LLaVA's model_vqa_loader answer file")
    answers = pipeline.answer_questions(ft_dir, fx, out / "answers.jsonl", log=out / "logs" / "eval.log")
    summary["colour_accuracy"] = pipeline.answer_accuracy(answers, fx.questions)
    summary["answers"] = [a["text"] for a in pipeline.read_jsonl(answers)]
    summary["seconds"] = round(time.time() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    step("done")
    first, last = summary["pretrain_loss"][0], summary["pretrain_loss"][-1]
    print(f"pre-training loss {first:.3f} -> {last:.3f}; fine-tuning loss "
          f"{summary['finetune_loss'][0]:.3f} -> {summary['finetune_loss'][-1]:.3f}")
    print(f"colour questions answered right: {summary['colour_accuracy']:.0%}; answers in {answers}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="aligngpt-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    parser.add_argument("--pretrain-epochs", type=float, default=3)
    parser.add_argument("--finetune-epochs", type=float, default=3)
    args = parser.parse_args(argv)
    return run(Path(args.out), args.pretrain_epochs, args.finetune_epochs)


if __name__ == "__main__":
    main()
