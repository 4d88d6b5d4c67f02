"""Checkpoints moved between layouts (`aligngpt-convert`, `python -m aligngpt_plugin.lora`).

- `released`: the released AlignGPT checkpoints (the public code's layout) <-> the LLaVA integration's;
- `hf`: LLaVA-original checkpoints (AlignGPT or plain LLaVA) -> HF-native folders (transformers' Llava);
- `lora_merge`: a LoRA adapter folder merged into a full checkpoint.

Conversions stream: one input shard open at a time, output shards of bounded size, resumable.

May import: `aligngpt_plugin.core`, the integrations, safetensors, transformers; not scoring,
evaluation, analysis or the dev kit.
"""
