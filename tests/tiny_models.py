"""A tiny AlignGPT model on the session's fixtures, built as LLaVA's train() builds it (for unit tests)."""

from __future__ import annotations


def tiny_aligngpt(tiny, **alignment):
    """AlignGPTLlamaForCausalLM from the fixture LLM (seed 0) with the fixture CLIP and a fresh projector;
    `alignment`: AlignmentConfig fields (defaults: 8 levels, adaptive)."""
    import torch
    from transformers import AutoConfig

    import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    base = AutoConfig.from_pretrained(tiny.llm).to_dict()
    base.pop("model_type", None)
    torch.manual_seed(0)
    model = AlignGPTLlamaForCausalLM.from_pretrained(tiny.llm, config=AlignGPTConfig(alignment=alignment, **base))
    model.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
    return model
