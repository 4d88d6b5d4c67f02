"""AlignGPT on transformers' own Llava (`LlavaForConditionalGeneration`, the llava-hf checkpoints).

- `configuration_aligngpt`: `AlignGPTLlavaConfig` (`model_type: llava_aligngpt`), registered with AutoConfig;
- `modeling_aligngpt`: `AlignGPTLlavaModel` / `AlignGPTLlavaForConditionalGeneration`, registered with
  AutoModel and AutoModelForImageTextToText (the alignment token is a real sequence position);
- `processing_aligngpt`: `AlignGPTLlavaProcessor` (LlavaProcessor plus the alignment token and levels).

May import: transformers, peft, and `aligngpt_plugin.core`; not llava, the LLaVA integration, conversion,
scoring, evaluation, analysis or the dev kit.
"""
