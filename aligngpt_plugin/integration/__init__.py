"""The one layer that knows LLaVA: it subclasses, registers and wraps LLaVA's code, never copies it.

- `compat`: the stack check and the fixes of `patches/`, applied before LLaVA is imported for training;
- `configuration`: the AlignGPT configs, registered with transformers' Auto classes;
- `model`: AlignGPT on LLaVA's language backbones (the alignment token after BOS, stages, generate);
- `data`, `hooks`: the level-aware dataset and collator, and what `--align_levels` switches in `train()`;
- `patch_training`: `--patch_align_weight` (patch-aligned pre-training);
- `lora`, `lora_merge`: LoRA/QLoRA through LLaVA's flags, and merging adapters;
- `loader`: LLaVA's `load_pretrained_model`, dispatching on the config instead of the folder name;
- `released`: the released AlignGPT checkpoints, converted both ways;
- `training`: the entry point's work (`python -m aligngpt_plugin.train`).

May import: llava, transformers, peft, DeepSpeed, bitsandbytes, and `aligngpt_plugin.core`; not the
scoring, evaluation, analysis or dev-kit layers.
"""
