"""AlignGPT on haotian-liu/LLaVA's own code (the `llava` package): subclassed, registered and wrapped,
never copied.

- `compat`: the stack check and the fixes of `patches/`, applied before LLaVA is imported for training;
- `configuration`: the AlignGPT configs, registered with transformers' Auto classes;
- `model`: AlignGPT on LLaVA's language backbones (the alignment token after BOS, stages, generate);
- `data`, `aligngpt_training`: the level-aware dataset and collator, and what `--align_levels` switches in
  `train()`;
- `features`: the registry of training features that `training` loops over;
- `patch_training`, `patch_data`: the patch-alignment feature (`--patch_align_*`: settings, trainer,
  enabling; its dataset and collator);
- `lora_training`: LoRA/QLoRA through LLaVA's flags;
- `loader`: LLaVA's `load_pretrained_model`, dispatching on the config instead of the folder name;
- `training`: the entry point's work (`python -m aligngpt_plugin.train`).

May import: llava, transformers, peft, DeepSpeed, bitsandbytes, and `aligngpt_plugin.core`; not the
other integration, conversion, scoring, evaluation, analysis or dev-kit layers.
"""
