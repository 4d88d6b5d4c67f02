"""LLaVA-1.5's two training stages and its answer-file eval, as command lines, for the demo and tests.

The arguments mirror LLaVA's `scripts/v1_5/pretrain.sh` and `finetune.sh` (docs/method.md#training-recipe) with
the sizes scaled down; `bf16`, `tf32` and DeepSpeed are left to GPU runs. Each stage runs in its own
process, as with LLaVA's scripts: LLaVA's `train()` keeps module-level state (the conversation
template, the rank) that must not leak from one stage into the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aligngpt_plugin.core.fileio import read_jsonl, write_text_atomic
from aligngpt_plugin.devkit.tiny_checkpoints import FixturePaths


@dataclass
class StageSettings:
    """The knobs that differ between a CI-sized run and the demo."""

    epochs: float = 1.0
    batch_size: int = 4
    learning_rate: float = 1e-3
    save_steps: int = 4
    save_total_limit: int = 2
    max_steps: int = -1
    logging_steps: int = 1
    seed: int = 42


def _common(fx: FixturePaths, out: Path, s: StageSettings, llm: Path | None) -> list[str]:
    flags = {
        "model_name_or_path": llm or fx.llm, "image_folder": fx.images, "vision_tower": fx.clip,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "output_dir": out, "num_train_epochs": s.epochs, "max_steps": s.max_steps,
        "per_device_train_batch_size": s.batch_size, "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "evaluation_strategy": "no",  # as LLaVA's scripts write it (renamed by patches/)
        "save_strategy": "steps", "save_steps": s.save_steps, "save_total_limit": s.save_total_limit,
        "learning_rate": s.learning_rate, "weight_decay": "0.", "warmup_ratio": 0.03, "lr_scheduler_type": "cosine",
        "logging_steps": s.logging_steps, "model_max_length": 2048, "gradient_checkpointing": True,
        "dataloader_num_workers": 0, "lazy_preprocess": True, "report_to": "none", "seed": s.seed,
    }
    return [part for name, value in flags.items() for part in (f"--{name}", str(value))]


def pretrain_args(fx: FixturePaths, out: Path, settings: StageSettings | None = None,
                  data: Path | None = None, extra: tuple[str, ...] = (), llm: Path | None = None) -> list[str]:
    """Stage 1 (LLaVA `pretrain.sh`): `plain` template, only the projector trains.
    `extra` adds flags (e.g. `--align_levels 8`); `data` replaces the fixture's caption file."""
    s = settings or StageSettings()
    return ["--version", "plain", "--data_path", str(data or fx.pretrain), "--tune_mm_mlp_adapter", "True",
            *_common(fx, out, s, llm), *extra]


def finetune_args(fx: FixturePaths, projector: Path, out: Path, settings: StageSettings | None = None,
                  extra: tuple[str, ...] = (), llm: Path | None = None) -> list[str]:
    """Stage 2 (LLaVA `finetune.sh`): `v1` template, projector from stage 1, LLM and projector train."""
    s = settings or StageSettings(learning_rate=2e-5)
    return ["--version", "v1", "--data_path", str(fx.finetune), "--pretrain_mm_mlp_adapter", str(projector),
            "--image_aspect_ratio", "pad", "--group_by_modality_length", "True", *_common(fx, out, s, llm), *extra]


def run_module(module: str, args: list[str], log: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` in a fresh process (`env` added to ours); raises with the output's tail
    when it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    if log is not None:
        write_text_atomic(log, proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}):\n{tail}")
    return proc


def train(args: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
    return run_module("aligngpt_plugin.train", args, log)


def answer_questions(model: Path, fx: FixturePaths, answers: Path, log: Path | None = None,
                     max_new_tokens: int = 8, gate_dump: Path | None = None) -> Path:
    """LLaVA's `model_vqa_loader` on the fixture questions, greedy, as LLaVA's eval scripts run it.
    `gate_dump`: append an AlignGPT model's gate weights there, one line per question."""
    from aligngpt_plugin.integrations.llava.loader import GATE_DUMP_ENV

    run_module("aligngpt_plugin.llava_eval", [
        "llava.eval.model_vqa_loader",
        "--model-path", str(model),
        "--question-file", str(fx.questions),
        "--image-folder", str(fx.images),
        "--answers-file", str(answers),
        "--temperature", "0",
        "--conv-mode", "vicuna_v1",
        "--max_new_tokens", str(max_new_tokens),
    ], log, env={GATE_DUMP_ENV: str(gate_dump)} if gate_dump else None)
    return answers


def answer_accuracy(answers: Path, questions: Path) -> float:
    """Share of answers that contain the expected word (the fixture questions carry an `answer`)."""
    truth = {q["question_id"]: q["answer"].lower() for q in read_jsonl(questions)}
    got = {a["question_id"]: a["text"].lower() for a in read_jsonl(answers)}
    if set(got) != set(truth):
        raise ValueError(f"{answers} answers {len(got)} questions, {questions} has {len(truth)}")
    return sum(truth[q] in got[q] for q in truth) / len(truth)


def logged_losses(output_dir: Path) -> list[float]:
    """The training losses the HF Trainer logged in `trainer_state.json`."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]
