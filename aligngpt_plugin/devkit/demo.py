"""The work behind `make demo` / `aligngpt-demo` (what it runs and writes: `aligngpt_plugin.demo`): the
AlignGPT pipeline of METHOD.md on the tiny fixtures, each stage through the entry point a user runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_json_atomic
from aligngpt_plugin.devkit import pipeline
from aligngpt_plugin.devkit.fixtures import FixtureSpec, write_fixtures

LEVELS = 8


def run(out: Path, pretrain_epochs: float = 3, finetune_epochs: float = 3, levels: int = LEVELS) -> dict:
    out = Path(out).resolve()  # checkpoints record the fixture paths: absolute, they load from anywhere
    logs = out / "logs"
    started = time.time()
    summary: dict = {"align_levels": levels}
    flag = ("--align_levels", str(levels))

    def step(name: str) -> None:
        print(f"[demo] {name} ({time.time() - started:.0f}s)", flush=True)

    step("writing tiny fixtures")
    fx = write_fixtures(out / "fixtures", FixtureSpec())

    step(f"aligngpt-score: CLIP scores of the pre-training pairs and {levels} levels")
    level_dir = out / "levels"
    pipeline.run_module("aligngpt_plugin.score", [
        "--data", str(fx.pretrain), "--images", str(fx.images), "--output", str(level_dir),
        "--model", f"hf:{fx.clip}", "--levels", str(levels), "--batch-size", "16", "--num-workers", "0",
        "--no-progress", "--overwrite"], log=logs / "score.log")
    levelled = level_dir / f"{fx.pretrain.stem}_levels.json"
    summary["level_counts"] = json.loads((level_dir / "levels.json").read_text())["counts"]

    step(f"stage 1: pre-training with --align_levels {levels} (projector + level embeddings)")
    pre_dir = out / "pretrain"
    pipeline.train(pipeline.pretrain_args(fx, pre_dir, pipeline.StageSettings(
        epochs=pretrain_epochs, save_steps=1000, logging_steps=4), data=levelled, extra=flag),
        log=logs / "pretrain.log")
    summary["pretrain_loss"] = pipeline.logged_losses(pre_dir)

    step(f"stage 2: instruction tuning with --align_levels {levels} (LLM + projector + gate)")
    ft_dir = out / "aligngpt-tiny-finetune"  # recognised by its config, whatever the folder is called
    pipeline.train(pipeline.finetune_args(fx, pre_dir / "mm_projector.bin", ft_dir, pipeline.StageSettings(
        epochs=finetune_epochs, learning_rate=1e-3, save_steps=1000, logging_steps=4), extra=flag),
        log=logs / "finetune.log")
    summary["finetune_loss"] = pipeline.logged_losses(ft_dir)

    step("eval: LLaVA's model_vqa_loader, gate weights dumped per question")
    from aligngpt_plugin.evaluation.gates import analyse

    eval_dir = out / "eval"
    answers = eval_dir / "answers.jsonl"
    gates = answers.with_suffix(".gates.jsonl")
    gates.unlink(missing_ok=True)  # the dump appends: a rerun starts afresh
    pipeline.answer_questions(ft_dir, fx, answers, log=logs / "eval.log", gate_dump=gates)
    summary["colour_accuracy"] = pipeline.answer_accuracy(answers, fx.questions)
    summary["answers"] = [a["text"] for a in read_jsonl(answers)]
    gate_summary = analyse({"demo": (answers, gates)}, eval_dir)["benchmarks"]["demo"]
    summary["gate_mean_weights"] = gate_summary["mean_weights"]
    summary["gate_mean_entropy"] = gate_summary["mean_entropy"]
    summary["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / "summary.json", summary, indent=1)
    step("done")
    print(f"levels: {summary['level_counts']} records per level ({levelled})")
    print(f"pre-training loss {summary['pretrain_loss'][0]:.3f} -> {summary['pretrain_loss'][-1]:.3f}; "
          f"fine-tuning loss {summary['finetune_loss'][0]:.3f} -> {summary['finetune_loss'][-1]:.3f}")
    print(f"colour questions answered right: {summary['colour_accuracy']:.0%}; answers in {answers}")
    print("gate mean weights per level: " + " ".join(f"{w:.3f}" for w in summary["gate_mean_weights"])
          + f" (entropy {summary['gate_mean_entropy']:.3f}; heatmap {eval_dir / 'gate_heatmap.png'})")
    return summary
