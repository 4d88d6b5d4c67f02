"""The AlignGPT training feature (`--align_levels N`): switch LLaVA's `train()` to AlignGPT: the model class,
the level-aware data, the trainer, the saving.

Its shape is every training feature's (`features`): the settings are `core.alignment.AlignmentConfig`
(its fields are the `--align_*` flags, `--align_levels` being `num_levels`), the data module is
`data.make_level_aware_data_module`, and `enable_aligngpt(config, pretraining)` replaces four names that
`llava.train.train` looks up at call time, and nothing else:

- `LlavaLlamaForCausalLM`: loads the base LLM as the AlignGPT model of its backbone (Llama or Mistral,
  from its config) with the alignment config (or an AlignGPT checkpoint as it is);
- `make_supervised_data_module`: LLaVA's dataset and collator with each record's level;
- `LLaVATrainer`: marks what each stage trains (pre-training: the level embeddings beside the
  projector; instruction tuning: the gate, with the level embeddings frozen);
- `get_mm_adapter_state_maybe_zero_3` (also in `llava.train.llava_trainer`): `mm_projector.bin` and
  adapter checkpoints also hold the alignment module, so stage 2's `--pretrain_mm_mlp_adapter` loads
  both (see `AlignGPTLlamaModel.initialize_vision_modules`).
"""

from __future__ import annotations

import functools

from aligngpt_plugin.core.alignment import AlignmentConfig
from aligngpt_plugin.integrations.llava.features import TrainingRun, register_training_feature

ALIGNMENT_KEY = "alignment."


def aligngpt_loader(alignment: AlignmentConfig):
    """A stand-in for LLaVA's model class in `train()` (only `from_pretrained` is used there): builds the
    AlignGPT model of the checkpoint's backbone, read from its config (LLaVA would pick Llama by name).

    Args:
        alignment: the run's alignment settings (the `--align_*` flags).
    Returns:
        A class whose `from_pretrained(path, ...)` returns the AlignGPT causal LM of the checkpoint's backbone.
    """

    class AlignGPTFromBase:
        @classmethod
        def from_pretrained(cls, path, *args, **kwargs):
            from transformers import AutoConfig

            from aligngpt_plugin.integrations.llava.configuration import config_for_base
            from aligngpt_plugin.integrations.llava.lora_training import quantized_loading_kwargs
            from aligngpt_plugin.integrations.llava.model import model_class_for

            kwargs = quantized_loading_kwargs(kwargs)  # QLoRA: levels and gate stay out of bitsandbytes
            base = AutoConfig.from_pretrained(path, cache_dir=kwargs.get("cache_dir"))
            config = config_for_base(base, alignment, str(path))
            return model_class_for(config).from_pretrained(path, *args, config=config, **kwargs)

    return AlignGPTFromBase


def with_alignment_keys(collect):
    """`get_mm_adapter_state_maybe_zero_3` that also collects the alignment module's weights.

    Args:
        collect: LLaVA's `get_mm_adapter_state_maybe_zero_3(named_params, keys_to_match)`.
    Returns:
        The same function with `alignment.` added to the keys it matches (marked `__aligngpt__`).
    """

    @functools.wraps(collect)
    def collect_with_alignment(named_params, keys_to_match):
        return collect(named_params, [*keys_to_match, ALIGNMENT_KEY])

    collect_with_alignment.__aligngpt__ = True
    return collect_with_alignment


def aligngpt_trainer(base):
    """LLaVA's trainer class, extended to set which alignment weights train in the run's stage and mode.

    Args:
        base: `LLaVATrainer` (or a subclass of it).
    Returns:
        A subclass of `base` whose constructor sets `requires_grad` of the level embeddings and the gate.
    """
    class AlignGPTTrainer(base):
        """LLaVATrainer that sets which alignment weights train in the current stage and mode."""

        def __init__(self, model=None, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            inner = model.get_model() if hasattr(model, "get_model") else model.base_model.model.get_model()
            pretraining = getattr(model.config, "tune_mm_mlp_adapter", False)
            trainable = inner.alignment.trainable(pretraining)  # only what the stage and mode use
            inner.alignment.level_embeddings.requires_grad_(trainable["level_embeddings"])
            inner.alignment.gate.requires_grad_(trainable["gate"])

    return AlignGPTTrainer


def enable_aligngpt(alignment: AlignmentConfig, pretraining: bool) -> None:
    """Make the next `llava.train.train.train()` call train AlignGPT with `alignment`.

    Args:
        alignment: the alignment settings the model is built with.
        pretraining: stage 1 (`--tune_mm_mlp_adapter True`): every record with an image must carry a level.
    """
    from llava.train import llava_trainer
    from llava.train import train as llava_train

    from aligngpt_plugin.integrations.llava.data import make_level_aware_data_module

    llava_train.LlavaLlamaForCausalLM = aligngpt_loader(alignment)
    llava_train.make_supervised_data_module = functools.partial(
        make_level_aware_data_module, num_levels=alignment.num_levels, require_levels=pretraining)
    if not getattr(llava_train.LLaVATrainer, "__aligngpt__", False):
        llava_train.LLaVATrainer = aligngpt_trainer(llava_train.LLaVATrainer)
        llava_train.LLaVATrainer.__aligngpt__ = True
    for module in (llava_train, llava_trainer):
        if not getattr(module.get_mm_adapter_state_maybe_zero_3, "__aligngpt__", False):
            module.get_mm_adapter_state_maybe_zero_3 = with_alignment_keys(module.get_mm_adapter_state_maybe_zero_3)
    from aligngpt_plugin.integrations.llava.lora_training import enable_lora_support

    enable_lora_support(llava_train)  # --lora_enable: LoRA on the LLM only; alignment weights in non_lora_trainables


def refuse_mpt(run: TrainingRun) -> None:
    """LLaVA builds its MPT model for any `--model_name_or_path` containing 'mpt', past the plugin's
    AlignGPT model: that run would be plain LLaVA, so --align_levels refuses it.

    Args:
        run: the training run (its `model_args.model_name_or_path` is read).
    Raises:
        SystemExit: with the reason, for an MPT path.
    """
    path = run.model_args.model_name_or_path or ""
    if "mpt" in path:
        raise SystemExit(f"--align_levels with --model_name_or_path {path}: LLaVA takes the MPT path for any "
                         "name containing 'mpt', and AlignGPT runs on LLaVA's Llama and Mistral backbones only "
                         "(LLaVA's MPT keeps its LLM under `transformer`, with ALiBi attention and its own "
                         "forward). Use a Llama or Mistral checkpoint")


def enable_for_run(alignment: AlignmentConfig, run: TrainingRun) -> None:
    """The feature's enabling function: AlignGPT for this run's stage, on a backbone that can take it.

    Args:
        alignment: the alignment settings from the `--align_*` flags.
        run: the training run (its stage and model path).
    """
    refuse_mpt(run)
    enable_aligngpt(alignment, run.pretraining)


def describe(alignment: AlignmentConfig, run: TrainingRun) -> str:
    """The feature's one-line summary for the start of the run's log.

    Args:
        alignment: the alignment settings.
        run: the training run (its stage).
    Returns:
        E.g. "AlignGPT, 8 levels, pre-training (levels), mode adaptive".
    """
    stage = "pre-training (levels)" if run.pretraining else "instruction tuning (gate)"
    return f"AlignGPT, {alignment.num_levels} levels, {stage}, mode {alignment.mode}"


FEATURE = register_training_feature(
    "aligngpt", settings_cls=AlignmentConfig, prefix="align_", names={"num_levels": "levels"},
    switch="num_levels", switch_metavar="N", title="AlignGPT (--align_levels N switches it on)",
    enable=enable_for_run, describe=describe)
