"""The demo's second route (`aligngpt-demo --trl`): the same AlignGPT trained through TRL's SFTTrainer on the
HF-native model (`aligngpt-sft`), evaluated by the same LLaVA harness, so that its answers pair with the
LLaVA-code route's on the same questions.

Per training seed, beside `seed<k>/aligngpt/` (LLaVA's code) the route writes `seed<k>/aligngpt-trl/`:
1. `start/`: `aligngpt-convert build-hf`'s stage-1 model from the demo's LLM and CLIP (`build_hf`), its projector,
   level embeddings and gate then set to the seed's shared start (`seed<k>/start.bin`), as both other models;
2. `pretrain/`: `aligngpt-sft --align_stage 1` on the levelled captions (LLaVA JSON, LLaVA's `plain` prompt as a
   chat template: integrations/hf/templates.py);
3. `finetune/`: `aligngpt-sft --align_stage 2` on the instruction data, each answer of a conversation a
   prompt/completion row (`per_turn_records`; `vicuna_v1` template): each answer is a target once, after the same
   history as in LLaVA's record. One step takes 3 x batch rows (3 answers a picture), so that both routes take
   the same steps over the same answers;
4. `llava/`: the stage-2 model back in LLaVA's layout (`hf_to_llava`), answered by LLaVA's `model_vqa_loader` as
   the other two models, with its gate dump.

The data order is the same: stage 1's rows are the captions, drawn by the same seeded sampler; in stage 2
`--align_group_turns` keeps a picture's three answer rows together and draws the pictures in the order the
LLaVA-code route's seeded sampler draws its records (that route trains stage 2 without
`--group_by_modality_length`: demo_experiment.UNGROUPED), so each step trains the same 4 pictures on both routes.
What differs by construction: the vocabulary has 3 more rows (`<image>`, `<pad>`, `<align>`, mean rows, never
targets), and the HF processor's centre crop instead of LLaVA's pad-to-square (the demo's pictures are square,
so the pixels are the same). Step counts, learning rates, warm-up, schedule, batch targets and the start weights
are the same. tests/test_trl_equivalence.py shows the two paths give the same loss per step for the same data,
multi-turn records shuffled over several steps included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aligngpt_plugin.core.fileio import atomic_path
from aligngpt_plugin.devkit import demo_data, pipeline
from aligngpt_plugin.devkit.demo_experiment import TRL_MODEL, answer_questions, run_module

__all__ = ["TRL_MODEL", "finetune_rows", "hf_start", "sft_args", "train_and_test_trl", "warmup_steps"]
WARMUP_RATIO = 0.03  # LLaVA-1.5's scripts (pipeline._common)


def hf_start(llm: Path, tower: Path, start: Path, dst: Path, levels: int) -> Path:
    """`build_hf`'s stage-1 HF-native AlignGPT with the seed's shared start weights put in.

    Args:
        llm: the demo's tiny LLM folder (with its tokenizer).
        tower: the demo's CLIP vision tower folder.
        start: `seed<k>/start.bin` (LLaVA names: `model.mm_projector.*`, `model.alignment.*`).
        dst: the output folder; an existing complete one is kept (a rerun).
        levels: alignment levels.
    Returns:
        `dst`.
    Raises:
        ValueError: a start weight has no place or another shape in the built model.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from aligngpt_plugin.conversion.hf import TO_HF, build_hf, rename

    if (dst / "config.json").is_file():
        return dst
    build_hf(llm, tower, dst, align_levels=levels)
    weights = {rename(k, TO_HF): v for k, v in torch.load(start, map_location="cpu", weights_only=True).items()}
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    missing = sorted(set(weights) - set(index))
    if missing:
        raise ValueError(f"{start}: {missing[:3]} have no place in the built model {dst}")
    for shard in sorted({index[k] for k in weights}):
        tensors = load_file(str(dst / shard))
        for k, v in weights.items():
            if index[k] != shard:
                continue
            if tensors[k].shape != v.shape:
                raise ValueError(f"{start}: {k} is {list(v.shape)}, the built model's {list(tensors[k].shape)}")
            tensors[k] = v.to(tensors[k].dtype).contiguous()
        with atomic_path(dst / shard) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    return dst


def finetune_rows(finetune: Path, images: Path, dst: Path) -> Path:
    """The instruction data as TRL prompt/completion rows, one per answer (`per_turn_records`), saved once."""
    from aligngpt_plugin.integrations.hf.data import load_sft_dataset, per_turn_records

    if not (dst / "state.json").is_file():
        per_turn_records(load_sft_dataset(finetune, image_folder=images)).save_to_disk(str(dst))
    return dst


def warmup_steps(rows: int, batch: int, epochs: float) -> int:
    """LLaVA's `--warmup_ratio 0.03` as steps (transformers 5 drops the ratio): ceil(0.03 x total steps)."""
    return math.ceil(WARMUP_RATIO * math.ceil(math.ceil(rows / batch) * epochs))


def sft_args(model: Path, data: Path, out: Path, template: Path, stage: int, batch: int, lr: float, epochs: float,
             rows: int, seed: int, logging_steps: int, images: Path | None = None) -> list[str]:
    """`aligngpt-sft`'s flags for one stage, as LLaVA-1.5's scripts set the LLaVA-code route (pipeline._common)."""
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--align_stage", str(stage),
            *(["--image_folder", str(images)] if images else []), "--chat_template_path", str(template),
            "--output_dir", str(out), "--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(batch),
            "--learning_rate", str(lr), "--weight_decay", "0.", "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(warmup_steps(rows, batch, epochs)), "--logging_steps", str(logging_steps),
            "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
            "--gradient_checkpointing", "False", "--seed", str(seed)]


def train_and_test_trl(seed: int, ctx: dict) -> dict:
    """AlignGPT for one training seed through TRL: stage 1, stage 2, the held-out questions (see the module
    docstring). Returns {"pretrain_loss": [...], "finetune_loss": [...]} as logged."""
    from aligngpt_plugin.conversion.hf import hf_to_llava

    s, out, fx, stage, env, progress = (ctx[k] for k in ("settings", "out", "fx", "stage", "env", "progress"))
    base = out / f"seed{seed}"
    root, logs = base / TRL_MODEL, base / "logs"
    tag = f"seed {seed} {TRL_MODEL}"
    start = hf_start(fx.llm, fx.clip, base / "start.bin", root / "start", s.levels)
    pre, ft = root / "pretrain", root / "finetune"
    captions = len(json.loads(Path(ctx["levelled"]).read_text()))
    with stage(f"{tag}: stage 1", "aligngpt-sft --align_stage 1 (projector + level embeddings), from the shared "
               "start") as cpu:
        cpu.append(run_module("aligngpt_plugin.sft", sft_args(
            start, ctx["levelled"], pre, ctx["templates"]["plain"], 1, s.batch_size, s.pretrain_lr,
            s.pretrain_epochs, captions, seed, 1, images=fx.images), logs / f"{TRL_MODEL}_pretrain.log", "steps",
            progress, env))
    answers_per_picture = len(demo_data.QUESTIONS)
    with stage(f"{tag}: stage 2", "aligngpt-sft --align_stage 2 (LLM + projector + gate), one row per answer") as cpu:
        cpu.append(run_module("aligngpt_plugin.sft", sft_args(
            pre, ctx["trl_finetune"], ft, ctx["templates"]["v1"], 2, s.batch_size * answers_per_picture,
            s.finetune_lr, s.finetune_epochs, s.finetune_pictures * answers_per_picture, seed, 5)
            + ["--align_group_turns"],
            logs / f"{TRL_MODEL}_finetune.log", "steps", progress, env))
    converted = root / "aligngpt-trl-shapes-finetune-original"
    if not (converted / "config.json").is_file():
        hf_to_llava(ft, converted, vision_tower=str(fx.clip))
    answers = base / "eval" / f"{TRL_MODEL}_answers.jsonl"
    gates = answers.with_suffix(".gates.jsonl")
    gates.unlink(missing_ok=True)
    with stage(f"{tag}: eval", "LLaVA's model_vqa_loader on the held-out questions (converted back to LLaVA's "
               "layout)") as cpu:
        cpu.append(answer_questions(converted, fx, answers, logs / f"{TRL_MODEL}_eval.log", progress, gates, env))
    return {"pretrain_loss": pipeline.logged_losses(pre), "finetune_loss": pipeline.logged_losses(ft)}
