"""AlignGPT on transformers' own Llava (`LlavaForConditionalGeneration`, the llava-hf checkpoints).

- `configuration_aligngpt`: `AlignGPTLlavaConfig` (`model_type: llava_aligngpt`), registered with AutoConfig;
- `modeling_aligngpt`: `AlignGPTLlavaModel` / `AlignGPTLlavaForConditionalGeneration`, registered with
  AutoModel and AutoModelForImageTextToText (the alignment token is a real sequence position);
- `processing_aligngpt`: `AlignGPTLlavaProcessor` (LlavaProcessor plus the alignment token and levels).
- `data`: TRL's vision-language records (`messages`/`prompt`+`completion`, `images`, `align_level`) loaded
  and checked before the first step; `collator`: `AlignGPTVisionCollator` over TRL's
  `DataCollatorForVisionLanguageModeling`; `training`: `AlignSFTArguments`, the stages' trainable sets,
  LoRA with the projector and alignment module saved in full, `build_trainer` (SFTTrainer or the plain
  Trainer). These three import `trl` and `datasets` (the `trl` extra); the model files do not.

May import: transformers, peft, trl, datasets and `aligngpt_plugin.core`; not llava, the LLaVA integration, conversion,
scoring, evaluation, analysis or the dev kit.
"""
