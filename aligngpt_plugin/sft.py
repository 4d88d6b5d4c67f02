"""aligngpt-sft: train an HF-native AlignGPT with TRL's SFTTrainer, as TRL's VLM recipe does, one stage at a time.

    # stage 1: the projector and the level embeddings (data: `messages` + `images` + `align_level`)
    python -m aligngpt_plugin.sft --model_name_or_path runs/aligngpt-7b-stage1-hf \\
        --dataset_name data/pretrain_levels.json --image_folder data/images --align_stage 1 \\
        --learning_rate 1e-3 --per_device_train_batch_size 32 --output_dir runs/stage1
    # stage 2: the gate, the projector and the LLM (or LoRA on it with --use_peft)
    python -m aligngpt_plugin.sft --model_name_or_path runs/stage1 --dataset_name data/instruct \\
        --align_stage 2 --use_peft --lora_r 128 --lora_alpha 256 --output_dir runs/stage2
    accelerate launch --config_file zero3.yaml -m aligngpt_plugin.sft ...   # several processes, DeepSpeed

Flags: TRL's `ScriptArguments` (`--dataset_name`: here a local `save_to_disk` folder, a .parquet file or a LLaVA
.json/.jsonl with `--image_folder`), `SFTConfig` (every `TrainingArguments` flag, `--max_length`,
`--completion_only_loss`, `--resume_from_checkpoint`, ...), `ModelConfig` (`--model_name_or_path`, `--dtype`,
`--use_peft`, `--lora_*`, `--load_in_4bit`) and the plugin's `AlignSFTArguments` (`--align_*`,
`--image_folder`); `--config FILE.yaml` as TRL's scripts. On a machine without CUDA, `--bf16` defaults to off
and `--use_cpu` to on (so `accelerate launch` with several CPU processes trains them together).

The model folder must be an HF-native AlignGPT (`aligngpt-convert to-hf` / `build-hf` write one; `import
aligngpt_plugin` registers the classes with `AutoModelForImageTextToText` / `AutoProcessor`). Every record is
checked before the first step (`--align_bad_records`). The output folder gets the model (with --use_peft: the
LoRA merged in, or with --no_align_merge_lora the adapter, which holds the projector and the alignment
module in full) and the processor.

Exit status: 0 trained and saved; 2 bad input (a missing dataset or image, a bad level, a folder that is not
an HF-native AlignGPT, 4/8-bit without --use_peft), with a one-line message naming the file or record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aligngpt_plugin.integrations.hf.training import AlignSFTArguments

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

MODEL_TYPE = "llava_aligngpt"


class InputError(ValueError):
    """Bad input to the command (exit status 2)."""


def build_parser():
    """TRL's parser over (ScriptArguments, SFTConfig, ModelConfig, AlignSFTArguments)."""
    import torch
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, AlignSFTArguments), prog="aligngpt-sft",
                       description=__doc__.split("\n\n")[0],
                       epilog="Exit status: 0 trained and saved; 2 bad input (the message names the file or record).")
    if not torch.cuda.is_available():
        # SFTConfig's default bf16 needs a GPU: fp32 unless asked. use_cpu: under `accelerate launch` without
        # CUDA the Trainer otherwise runs each process alone (DistributedType.NO) and the ranks never meet
        parser.set_defaults(bf16=False, use_cpu=True)
    return parser


def check_model_folder(path: str | None) -> Path:
    """The model folder, if it holds an HF-native AlignGPT (config.json with model_type llava_aligngpt)."""
    if not path:
        raise InputError("give --model_name_or_path, an HF-native AlignGPT folder (aligngpt-convert to-hf or build-hf)")
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file():
        raise InputError(f"{folder}: no config.json; give an HF-native AlignGPT folder (aligngpt-convert to-hf or "
                         "build-hf write one)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise InputError(f"{config}: not JSON ({e})") from e
    if model_type != MODEL_TYPE:
        raise InputError(f"{folder}: model_type {model_type!r} is not an HF-native AlignGPT ({MODEL_TYPE!r}); convert "
                         "it with aligngpt-convert to-hf (a LLaVA-original or released checkpoint) or build-hf")
    return folder


# modules kept in full precision under --load_in_4bit/--load_in_8bit: the projector and the alignment module train
# in full (a 4/8-bit weight cannot), lm_head is bitsandbytes' own default skip (dropped once skips are given), and
# the frozen vision tower as LLaVA's QLoRA keeps it (see load_model). Full paths from the model's root:
# transformers 4.x skips a module whose name contains an entry followed by ".", 5.x one whose name starts with it
QUANT_SKIP_MODULES = ("model.multi_modal_projector", "model.alignment", "model.vision_tower", "lm_head")


def quantization_config(model_args, folder: Path) -> BitsAndBytesConfig | None:
    """The bitsandbytes config of `--load_in_4bit` / `--load_in_8bit` (TRL's `get_quantization_config` fields),
    with `QUANT_SKIP_MODULES` left unquantized; None without either flag.

    Args:
        model_args: TRL's `ModelConfig`.
        folder: the model folder (its config.json's dtype is the 4-bit compute dtype under `--dtype auto`).
    Returns:
        A `transformers.BitsAndBytesConfig`, or None.
    """
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(QUANT_SKIP_MODULES)
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if not model_args.load_in_4bit:
        return None
    compute = model_args.dtype or "float32"
    if compute == "auto":  # TRL passes "auto" on to bitsandbytes, which fails on it: the checkpoint's own dtype
        config = json.loads((folder / "config.json").read_text())
        compute = config.get("dtype") or config.get("torch_dtype") or "float32"
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=getattr(torch, compute),
                              bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
                              bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage, llm_int8_skip_modules=skip)


def load_model(folder: Path, model_args) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model and processor from `folder` under ModelConfig's dtype, attention and quantization.

    With `--load_in_4bit` (NF4 by default) or `--load_in_8bit` the LLM's linear layers are bitsandbytes layers,
    on the CPU too (bitsandbytes runs both there; checked with 0.50.2); the projector, the alignment module,
    `lm_head` and the vision tower stay in full precision (`QUANT_SKIP_MODULES`). The tower is frozen and never
    adapted, so its quantization error would be a difference between the features the projector and gate train
    on and those of the full-precision model the adapter is merged into; LLaVA's own QLoRA (`--bits 4`) also
    loads it unquantized. (A 4-bit tower runs too; it would save about 0.45 GB of CLIP ViT-L/14-336.)

    Args:
        folder: an HF-native AlignGPT folder (`check_model_folder`).
        model_args: TRL's `ModelConfig`.
    Returns:
        (model, processor).
    Raises:
        InputError: 4/8-bit without `--use_peft`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    quantization = quantization_config(model_args, folder)
    if quantization is not None and not model_args.use_peft:
        raise InputError("--load_in_4bit / --load_in_8bit train through LoRA only: add --use_peft")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {"attn_implementation": model_args.attn_implementation, "quantization_config": quantization}
    if quantization is not None:  # each process's quantized weights on its own GPU, or on the CPU
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().local_process_index if torch.cuda.is_available() else "cpu"}
    try:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, **kwargs)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForImageTextToText.from_pretrained(folder, torch_dtype=dtype, **kwargs)
    return model, AutoProcessor.from_pretrained(folder)


def run(script_args, training_args, model_args, align_args) -> int:
    """Check the inputs, train one stage, save model and processor to `output_dir`. Raises InputError/RecordError
    on bad input."""
    from trl import get_peft_config

    from aligngpt_plugin.integrations.hf.data import load_sft_dataset
    from aligngpt_plugin.integrations.hf.training import build_trainer, group_turns_problem, merged_for_saving

    folder = check_model_folder(model_args.model_name_or_path)
    if not script_args.dataset_name:
        raise InputError("give --dataset_name: a save_to_disk folder, a .parquet file, or a LLaVA .json/.jsonl with "
                         "--image_folder")
    if model_args.use_peft and align_args.align_stage == 1:
        raise InputError("stage 1 trains no LLM weight, so LoRA has nothing to adapt: drop --use_peft for stage 1")
    dataset = load_sft_dataset(script_args.dataset_name, split=script_args.dataset_train_split,
                               image_folder=align_args.image_folder)
    if align_args.align_group_turns and (problem := group_turns_problem(dataset)):
        raise InputError(problem)
    model, processor = load_model(folder, model_args)
    trainer = build_trainer(model, processor, dataset, training_args, align_args, trainer=align_args.align_trainer,
                            peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out = Path(training_args.output_dir)
    merge = model_args.use_peft and align_args.align_merge_lora
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    unmerged = None  # why the adapter is saved as it is, said to the user so the folder's contents are no surprise
    if merge and (model_args.load_in_4bit or model_args.load_in_8bit):
        unmerged = ("a 4/8-bit base cannot take the LoRA exactly: the adapter (with the projector and the alignment "
                    "module in full) is saved unmerged; merge it into the full-precision base")
    elif merge and plugin is not None and plugin.zero_stage == 3:
        unmerged = ("ZeRO-3 holds partitioned weights: the LoRA adapter (with the projector and the alignment "
                    "module) is saved unmerged; merge it in one process")
    if unmerged:
        merge = False
        if trainer.accelerator.is_main_process:
            print(f"aligngpt-sft: {unmerged} with peft's PeftModel.from_pretrained(base, output_dir)"
                  ".merge_and_unload().save_pretrained(...)")
    if merge:
        if trainer.accelerator.is_main_process:
            merged_for_saving(trainer.model).save_pretrained(out)
    else:
        trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the logged losses, as LLaVA's train() leaves them
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(out)
        print(f"aligngpt-sft: stage {align_args.align_stage} done, {trainer.state.global_step} steps; saved to {out}"
              + (f" ({trainer.align_skipped} bad record(s) skipped)" if trainer.align_skipped else ""))
    trainer.accelerator.wait_for_everyone()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m aligngpt_plugin.sft` / `aligngpt-sft`. Returns the exit status (0 or 2)."""
    import aligngpt_plugin.integrations.hf.configuration_aligngpt  # noqa: F401  (registers the Auto classes)
    from aligngpt_plugin.integrations.hf.data import RecordError

    parser = build_parser()
    try:
        script_args, training_args, model_args, align_args = parser.parse_args_and_config(args=argv)
    except ValueError as e:  # a dataclass's own check (e.g. --bf16 without a GPU)
        print(f"aligngpt-sft: {e}", file=sys.stderr)
        return 2
    try:
        return run(script_args, training_args, model_args, align_args)
    except (InputError, RecordError) as e:
        print(f"aligngpt-sft: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
