"""Training the HF-native AlignGPT with TRL's `SFTTrainer` (or transformers' plain `Trainer`), both stages.

    from aligngpt_plugin.integrations.hf.training import AlignSFTArguments, build_trainer
    trainer = build_trainer(model, processor, dataset, SFTConfig(...), AlignSFTArguments(align_stage=1))
    trainer.train()

- `AlignSFTArguments`: the plugin's flags of this path (`--align_stage`, `--align_bad_records`, ...), parsed
  beside TRL's `SFTConfig` and `ModelConfig` by `TrlParser` (`python -m aligngpt_plugin.sft`).
- `set_stage_trainable(model, stage, peft=False)`: which parameters train. Stage 1: the projector and the
  level embeddings (tower and LLM frozen); stage 2: the gate, the projector and the LLM, or with PEFT the LLM's
  LoRA weights (levels and tower frozen). Without PEFT it is the model's own `set_stage`.
- `prepare_peft_config(peft_config)`: LoRA on the LLM's linear layers only (unless target modules are given),
  the projector and the alignment module (gate and levels) in `modules_to_save`, so they train in full and are
  saved with the adapter.
- `build_trainer(...)`: checks every record first (`check_records`), sets the stage, and returns an
  `SFTTrainer` (trainer="trl") or a plain `transformers.Trainer` (trainer="hf") with the same collator
  (`AlignGPTVisionCollator`) and trainable set. Both keep the `align_level` column: TRL keeps only the
  columns its collator reads (`messages`, `prompt`, `completion`, `image`, `images`) and the plain Trainer
  only the model's forward arguments, so each is told the dataset columns the collator needs.
- `RecordTurnsSampler` (`--align_group_turns`): shuffles records rather than rows, so the rows `per_turn_records`
  makes of one conversation train in the same step, in the order LLaVA's own (seeded, ungrouped) sampler draws
  the records.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers

from aligngpt_plugin.core.trl_format import ALIGN_LEVEL
from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator
from aligngpt_plugin.integrations.hf.data import STAGE_NAMES, check_records

logger = logging.getLogger(__name__)

__all__ = ["AlignSFTArguments", "RecordTurnsSampler", "build_trainer", "prepare_peft_config",
           "set_stage_trainable"]

# LoRA goes on the LLM's linear layers only: the projector and the alignment module train in full
# (modules_to_save), the vision tower stays frozen
LLM_LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
FULL_MODULES = ("multi_modal_projector", "alignment")
DATA_COLUMNS = ("messages", "prompt", "completion", "image", "images", ALIGN_LEVEL)


@dataclass
class AlignSFTArguments:
    """The plugin's flags of the TRL path (`python -m aligngpt_plugin.sft --help` lists them with TRL's)."""

    align_stage: Literal[1, 2] = field(default=2, metadata={
        "help": "1: pre-training (the projector and the level embeddings train, each image-caption pair uses "
                "E[align_level]; every image record needs its level); 2: instruction tuning (the gate, the "
                "projector and the LLM, or its LoRA, train; levels frozen)"})
    align_bad_records: Literal["error", "skip"] = field(default="error", metadata={
        "help": "a record with a level outside 0..N-1, without a level in stage 1, or with a missing or unreadable "
                "image: stop before the first step naming it (error), or drop it and count it (skip)"})
    align_check_images: Literal["decode", "exists", "none"] = field(default="decode", metadata={
        "help": "before the first step, decode every image (catches missing, truncated and corrupt files; JPEGs "
                "at 1/8 scale, in threads), only look for the files (exists), or skip the image check (none)"})
    align_add_bos: bool = field(default=True, metadata={
        "help": "put the tokenizer's BOS first in rows where the chat template renders none (TRL tokenizes with "
                "add_special_tokens=False), as inference and the LLaVA-original path do; the alignment token "
                "follows it"})
    align_trainer: Literal["trl", "hf"] = field(default="trl", metadata={
        "help": "trl: TRL's SFTTrainer; hf: transformers' plain Trainer with the same collator and trainable set"})
    image_folder: str | None = field(default=None, metadata={
        "help": "the folder a LLaVA JSON dataset's image paths are relative to (not needed for a datasets folder "
                "or Parquet file, whose `images` hold paths or bytes)"})
    align_group_turns: bool = field(default=False, metadata={
        "help": "shuffle records, not rows: the rows per_turn_records makes of one conversation (ids <id>#<k>) stay "
                "together and in order, and the records come in the order LLaVA's trainer draws them (a random "
                "permutation seeded with --data_seed or --seed, plus the epoch; its --group_by_modality_length off). "
                "With k answers in every record and --per_device_train_batch_size k x b, each step trains the b "
                "records of LLaVA's step"})
    align_merge_lora: bool = field(default=True, metadata={
        "help": "with --use_peft: save the LoRA merged into the model (a folder from_pretrained loads as it is); "
                "--no_align_merge_lora saves the adapter (with the projector and alignment module) instead"})

    def __post_init__(self):
        self.align_stage = int(self.align_stage)
        if self.align_stage not in (1, 2):
            raise ValueError(f"--align_stage {self.align_stage}: choose 1 (pre-training) or 2 (instruction tuning)")
        if self.align_bad_records not in ("error", "skip"):
            raise ValueError(f"--align_bad_records {self.align_bad_records}: choose error or skip")
        if self.align_check_images not in ("decode", "exists", "none"):
            raise ValueError(f"--align_check_images {self.align_check_images}: choose decode, exists or none")
        if self.align_trainer not in ("trl", "hf"):
            raise ValueError(f"--align_trainer {self.align_trainer}: choose trl or hf")


def _unwrap(model) -> Any:
    """The AlignGPT model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def set_stage_trainable(model, stage: int | str, peft: bool = False) -> dict[str, int]:
    """Set the stage (`config.alignment_stage`) and which parameters train.

    Args:
        model: an `AlignGPTLlavaForConditionalGeneration`, or a PEFT model over one (with `peft=True`).
        stage: 1 / "pretrain" or 2 / "finetune".
        peft: the model is a PEFT model made with `prepare_peft_config`'s config: LoRA weights, the projector's
            and the gate's trainable copies train; the LLM's own weights, the tower, and (stage 2) the levels
            are frozen.
    Returns:
        Trainable parameter counts: {"projector", "levels", "gate", "llm", "vision", "lora"}.
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage={stage!r}; choose 1 (pretrain) or 2 (finetune)")
    name = STAGE_NAMES[stage]
    base = _unwrap(model)
    if not hasattr(base, "set_stage"):
        raise TypeError(f"{type(base).__name__} is not an AlignGPT model (no set_stage)")
    if not peft:
        if _is_peft(model):
            raise ValueError("a PEFT model: call set_stage_trainable(model, stage, peft=True)")
        counts = base.set_stage(name)
        counts["lora"] = 0
        return counts
    if name == "pretrain":
        raise ValueError("stage 1 trains no LLM weight, so LoRA has nothing to adapt: drop --use_peft for stage 1")
    base.config.alignment_stage = name
    alignment = next(m for m in base.modules() if type(m).__name__ == "AlignmentModule")
    trains = alignment.trainable(False)
    counts = dict.fromkeys(("projector", "levels", "gate", "llm", "vision", "lora"), 0)
    for param_name, param in model.named_parameters():
        part, flag = _peft_rule(param_name, trains)
        param.requires_grad_(flag)
        if flag:
            counts[part] += param.numel()
    return counts


def _peft_rule(name: str, trains: dict[str, bool]) -> tuple[str, bool]:
    """(part, trains?) of a PEFT model's parameter in stage 2."""
    if "lora_" in name:
        return "lora", True
    if "vision_tower" in name:
        return "vision", False
    if ".original_module." in name:  # PEFT's frozen original beside each modules_to_save copy
        return "llm", False
    if "multi_modal_projector" in name:
        return "projector", ".modules_to_save." in name
    if "alignment.level_embeddings" in name or name.endswith("alignment.modules_to_save.default.level_embeddings"):
        return "levels", False
    if ".alignment." in name:
        return "gate", trains["gate"] and ".modules_to_save." in name
    return "llm", ".modules_to_save." in name  # what the user asked PEFT to train in full (e.g. lm_head)


def prepare_peft_config(peft_config):
    """A copy of `peft_config` for AlignGPT: LoRA targets the LLM's linear layers (unless set), and the projector
    and the alignment module are in `modules_to_save` (trained in full, saved with the adapter).

    Args:
        peft_config: a `peft.LoraConfig` (e.g. TRL's `get_peft_config(model_args)`).
    Returns:
        The adjusted copy.
    """
    config = copy.deepcopy(peft_config)
    if config.target_modules is None:
        config.target_modules = LLM_LORA_TARGETS
    saved = list(config.modules_to_save or [])
    config.modules_to_save = saved + [m for m in FULL_MODULES if m not in saved]
    return config


def _keep_columns(trainer) -> None:
    """Tell a trainer the dataset columns the collator reads (its `remove_unused_columns` keeps only those)."""
    text_field = getattr(trainer.args, "dataset_text_field", "text")
    trainer._signature_columns = [*DATA_COLUMNS, text_field]


def checkpoint_state(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The full model weights of a Trainer checkpoint folder (safetensors, one file or sharded), or None where
    it holds none (a PEFT adapter, DeepSpeed's own files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / name))
        return state
    return None


def load_model_checkpoint(model, folder: str | Path) -> bool:
    """Load a checkpoint's full weights into `model`, renaming saved keys as `from_pretrained` does.

    transformers 4.57's `save_pretrained` writes Llava's weights under their legacy names
    (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.*`, `multi_modal_projector.*`), which
    `Trainer._load_from_checkpoint` loads with `strict=False` as they are: every LLM, tower and projector weight
    is then "missing", only a warning says so, and the resumed run goes on from the start weights
    (huggingface/transformers#43701). Here each key goes through the model's `_checkpoint_conversion_mapping`
    first, and any weight still missing or left over is an error.

    Args:
        model: the (unwrapped, non-PEFT) model being trained.
        folder: the checkpoint folder.
    Returns:
        True if loaded here; False where the folder holds no full model weights or the model has no mapping
        (transformers 5.x saves the model's own names): the Trainer's own loading applies.
    Raises:
        RuntimeError naming the weights that do not match.
    """
    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    state = checkpoint_state(folder) if mapping else None
    if state is None:
        return False
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in mapping.items():
            new, count = re.subn(pattern, replacement, key)
            if count:
                key = new
                break
        renamed[key] = value
    result = model.load_state_dict(renamed, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if model.config.get_text_config().tie_word_embeddings \
        else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint {folder} does not fit the model: missing {missing[:5]}, unexpected "
                           f"{result.unexpected_keys[:5]}")
    return True


def group_turns_problem(dataset) -> str | None:
    """Why `--align_group_turns` cannot order this dataset (None if it can)."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or "id" not in columns:
        return ("--align_group_turns needs the dataset's `id` column (per_turn_records writes <id>#<k> for the k-th "
                f"answer of record <id>); this dataset has the columns {columns}")
    return None


class RecordTurnsSampler(torch.utils.data.Sampler):
    """Rows in record order: a random permutation of the records, each record's rows together and in their order.

    The permutation is the one a seeded `RandomSampler` gives over the records (accelerate's `SeedableRandomSampler`,
    which the trainer puts in place of transformers' `RandomSampler`): `torch.randperm(n_records)` from a generator
    seeded with `seed + epoch`. So prompt/completion rows made by `per_turn_records` from LLaVA records are drawn in
    the order LLaVA's trainer (without `--group_by_modality_length`) draws the records themselves.

    Args:
        ids: the dataset's `id` column, one per row; rows `<id>#<k>` belong to record `<id>`, any other id is a
            record of its own row. A record's rows need not be adjacent; they keep their dataset order.
        seed: the trainer's `data_seed`, else its `seed`.
    """

    def __init__(self, ids: list, seed: int) -> None:
        records: dict[str, list[int]] = {}
        for row, rid in enumerate(ids):
            key = str(rid).rsplit("#", 1)[0] if rid is not None and "#" in str(rid) else f"{rid}\x00{row}"
            records.setdefault(key, []).append(row)
        self.records = list(records.values())
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.records)

    def set_epoch(self, epoch: int) -> None:
        """The trainer's epoch (it calls this at each epoch's start): the next permutation."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        for record in torch.randperm(len(self.records), generator=generator).tolist():
            yield from self.records[record]


class _AlignGPTTrainerMixin:
    """What both trainers add: keep the collator's columns; resume, and load the best checkpoint at the end, with
    every weight restored."""

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            _keep_columns(self)

    def _get_train_sampler(self, train_dataset=None):
        if not getattr(self, "align_group_turns", False):
            return super()._get_train_sampler(train_dataset)
        # the trainer's own dataset (build_trainer checked its `id` column): 5.x hands in a copy whose unused
        # columns, `id` among them, are already removed
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return RecordTurnsSampler(self.train_dataset["id"], seed)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        if _is_peft(target) or not load_model_checkpoint(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _load_best_model(self):
        # `load_best_model_at_end` reads the best checkpoint with the same non-strict load as resuming
        # (transformers#43701): on 4.57 the run would end with its start weights, not its best ones
        sharded = getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
        if sharded or _is_peft(self.model) or not load_model_checkpoint(self.model, self.state.best_model_checkpoint):
            super()._load_best_model()


def _trainer_classes():
    from trl import SFTTrainer

    class AlignGPTSFTTrainer(_AlignGPTTrainerMixin, SFTTrainer):
        """SFTTrainer that keeps the `align_level` column, collates with `AlignGPTVisionCollator` and resumes
        with every weight restored."""

    class AlignGPTTrainer(_AlignGPTTrainerMixin, transformers.Trainer):
        """transformers' Trainer that keeps the columns `AlignGPTVisionCollator` reads and resumes with every
        weight restored."""

    return AlignGPTSFTTrainer, AlignGPTTrainer


def build_trainer(model, processor, train_dataset, args, align_args: AlignSFTArguments, *,
                  trainer: Literal["trl", "hf"] = "trl", peft_config=None, eval_dataset=None,
                  **trainer_kwargs) -> transformers.Trainer:
    """A trainer for one AlignGPT stage, after checking every record.

    Args:
        model: an `AlignGPTLlavaForConditionalGeneration` (not yet wrapped by PEFT); loaded in 4 or 8 bits
            (QLoRA, `aligngpt_plugin.sft.load_model`) with a `peft_config` only.
        processor: its `AlignGPTLlavaProcessor`.
        train_dataset: a `datasets.Dataset` in TRL's VLM format with `align_level` (see `data.py`).
        args: TRL's `SFTConfig` (trainer="trl"), or any `TrainingArguments` (trainer="hf"; SFTConfig's
            `max_length`, `completion_only_loss`, `assistant_only_loss`, ... are read when present).
        align_args: the stage and the plugin's options.
        trainer: "trl" (SFTTrainer) or "hf" (transformers.Trainer), with the same collator and trainable set.
        peft_config: a `peft.LoraConfig` for stage 2 (adjusted by `prepare_peft_config`), or None.
        eval_dataset: checked like the training set.
        trainer_kwargs: passed on to the trainer (callbacks, ...).
    Returns:
        The trainer; `trainer.model` is the PEFT model with a peft_config.
    Raises:
        RecordError: a bad record (with align_bad_records="error").
    """
    if trainer not in ("trl", "hf"):
        raise ValueError(f"trainer={trainer!r}; choose trl or hf")
    stage = align_args.align_stage
    num_levels = int(_unwrap(model).config.alignment["num_levels"])
    check = {"on_bad": align_args.align_bad_records, "images": align_args.align_check_images}
    train_dataset, skipped = check_records(train_dataset, num_levels, stage, **check)
    if eval_dataset is not None:
        eval_dataset, _ = check_records(eval_dataset, num_levels, stage, **check)
    if peft_config is not None:
        if stage == 1:
            raise ValueError("stage 1 trains no LLM weight, so LoRA has nothing to adapt: drop --use_peft for "
                             "stage 1")
        peft_config = prepare_peft_config(peft_config)
    if align_args.align_group_turns and (problem := group_turns_problem(train_dataset)):
        raise ValueError(problem)
    if peft_config is None and _is_quantized(model):
        raise ValueError("a 4/8-bit model trains through LoRA only: pass a peft_config (--use_peft)")
    if peft_config is None:
        set_stage_trainable(model, stage)
    else:  # PEFT's trainable set is set below; the plain plan ("the LLM trains") would fail on a 4/8-bit weight
        _unwrap(model).config.alignment_stage = STAGE_NAMES[stage]
        model.requires_grad_(False)
    sft_trainer, plain_trainer = _trainer_classes()
    if trainer == "trl":
        built = sft_trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=processor, peft_config=peft_config, **trainer_kwargs)
        built.data_collator = AlignGPTVisionCollator.from_trl(built.data_collator, add_bos=align_args.align_add_bos)
        if peft_config is not None and _is_quantized(model):
            _restore_full_copies(built.model)
    else:
        collator = AlignGPTVisionCollator(
            processor=processor, max_length=getattr(args, "max_length", None),
            # as SFTTrainer decides it: on for prompt/completion data unless set
            completion_only_loss=_completion_only(args, train_dataset),
            pad_to_multiple_of=getattr(args, "pad_to_multiple_of", None),
            dataset_text_field=getattr(args, "dataset_text_field", "text"),
            assistant_only_loss=bool(getattr(args, "assistant_only_loss", False)),
            add_bos=align_args.align_add_bos)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()
        built = plain_trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              data_collator=collator, processing_class=processor, **trainer_kwargs)
    if peft_config is not None:
        counts = set_stage_trainable(built.model, stage, peft=True)
    else:
        counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    built.align_skipped = skipped
    built.align_group_turns = align_args.align_group_turns
    logger.info("AlignGPT stage %d: trainable parameters %s; %d record(s) skipped", stage, counts, skipped)
    return built


def _is_quantized(model) -> bool:
    """The model was loaded in 4 or 8 bits (bitsandbytes), as TRL tells it."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _restore_full_copies(model) -> int:
    """Give a quantized PEFT model's `modules_to_save` copies (the projector, the alignment module) back the
    values and dtype of the modules they copy.

    SFTTrainer casts every trainable parameter of a 4/8-bit model to bf16, meaning the LoRA weights (QLoRA's
    bf16 adapters). That also hits the copies that train in full: in bf16 they would meet the fp32 features
    (a dtype error without autocast), AdamW's small updates on them would round away, and the levels, frozen in
    stage 2, would move by the rounding. The copies are fresh (PEFT made them from the originals when TRL
    wrapped the model), so each gets its original back; the LoRA weights keep TRL's bf16.

    Args:
        model: the PEFT model TRL built (`trainer.model`).
    Returns:
        The number of parameters given back.
    """
    from peft.utils import ModulesToSaveWrapper

    restored = 0
    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        original = dict(wrapper.original_module.named_parameters())
        for copy_module in wrapper.modules_to_save.values():
            for name, param in copy_module.named_parameters():
                if param.dtype != original[name].dtype:
                    param.data = original[name].data.clone()
                    restored += 1
    return restored


def _completion_only(args, dataset) -> bool:
    value = getattr(args, "completion_only_loss", None)
    if value is None:
        columns = dataset.column_names
        return "prompt" in columns and "completion" in columns
    return bool(value)


def merged_for_saving(model) -> torch.nn.Module:
    """The model to save: a PEFT model's LoRA merged into its weights (and the modules_to_save copies put in
    place), or the model itself.

    Args:
        model: the trained model (PEFT or not).
    Returns:
        A plain `AlignGPTLlavaForConditionalGeneration`.
    """
    if _is_peft(model):
        return model.merge_and_unload()
    return model
