"""One integration per training framework, siblings over `aligngpt_plugin.core`, each knowing only its own.

- `llava`: haotian-liu/LLaVA's own code (the `llava` package, `llava-torch` on PyPI): AlignGPT on its
  `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM`, `--align_levels` on its `train()`, its loader and
  eval scripts, and the fixes of `patches/`;
- `hf`: transformers' own Llava (`LlavaForConditionalGeneration`, the llava-hf checkpoints): AlignGPT as a
  transformers model with its own config, processor and Auto-class registration.

Neither integration imports the other (tests/test_layout.py checks it); moving a checkpoint between them
is `aligngpt_plugin.conversion`'s job.
"""
