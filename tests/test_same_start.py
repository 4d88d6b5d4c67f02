"""The same seed gives AlignGPT and plain LLaVA the same weights where they share them (the projector above
all), in both integrations: the alignment module draws from a private stream (core/alignment.py), so
building it does not move the global RNG that the projector and the rest are drawn from afterwards.

The models' weight init (transformers' `_init_weights`) leaves the gate's layers to the module
(`core.alignment.is_alignment_layer`); without that it draws them from the global RNG first and these fail.
"""

from __future__ import annotations

import torch

import aligngpt_plugin  # noqa: F401  (registers the config types)


def test_llava_original_aligngpt_draws_plain_llavas_projector_for_the_same_seed(tiny, llava_ready):
    """As LLaVA's train() builds each model after the plugin seeded every RNG with --seed (the LLM from
    its checkpoint, the alignment module new), then `initialize_vision_modules` draws the projector."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from transformers import AutoConfig, CLIPVisionConfig

    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    vision = CLIPVisionConfig.from_pretrained(tiny.clip)
    base = AutoConfig.from_pretrained(tiny.llm).to_dict()
    base.pop("model_type", None)
    alignment = {"num_levels": 8, "gate_tokens": (vision.image_size // vision.patch_size) ** 2}

    def build(aligngpt: bool):
        torch.manual_seed(5)
        if aligngpt:
            model = AlignGPTLlamaForCausalLM.from_pretrained(tiny.llm, config=AlignGPTConfig(alignment=alignment,
                                                                                              **base))
        else:
            model = LlavaLlamaForCausalLM.from_pretrained(tiny.llm)
        state = torch.get_rng_state()
        model.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
        return model.get_model().mm_projector.state_dict(), state

    (ours, ours_state), (plain, plain_state) = build(True), build(False)
    assert torch.equal(ours_state, plain_state)
    assert set(ours) == set(plain) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for key, value in plain.items():
        assert torch.equal(ours[key], value), key


def test_hf_native_aligngpt_equals_transformers_llava_for_the_same_seed():
    """AlignGPTLlavaForConditionalGeneration and transformers' LlavaForConditionalGeneration built from the
    same configuration (AlignGPT's less its alignment settings) after the same seed: every weight they
    share is identical, and the global RNG stands where it does after Llava."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig
    from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=14, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=120, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common = dict(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=110,
                  image_seq_length=4)
    torch.manual_seed(0)
    ours = AlignGPTLlavaForConditionalGeneration(AlignGPTLlavaConfig(
        **common, alignment_token_id=111, alignment={"num_levels": 4, "gate_tokens": 4, "gate_hidden_size": 8}))
    ours_state = torch.get_rng_state()
    torch.manual_seed(0)
    plain = LlavaForConditionalGeneration(LlavaConfig(**common))
    assert torch.equal(ours_state, torch.get_rng_state())
    weights = ours.state_dict()
    shared = plain.state_dict()
    assert any("multi_modal_projector" in k for k in shared) and set(shared) <= set(weights)
    assert [k for k, v in shared.items() if not torch.equal(weights[k], v)] == []
