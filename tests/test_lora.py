"""LoRA / QLoRA support for AlignGPT: what LoRA wraps, what is saved beside the adapter, the 4-bit
loading config, and merging an adapter back into a full checkpoint (on hand-made adapters; the scripts'
real LoRA runs are in tests/test_scripts.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_aligngpt

import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
from aligngpt_plugin.conversion import lora_merge
from aligngpt_plugin.integrations.llava import lora_training as lora

pytestmark = pytest.mark.usefixtures("llava_ready")

LLM_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def build(tiny):
    model = tiny_aligngpt(tiny)
    model.config.tune_mm_mlp_adapter = False
    return model


def test_lora_targets_only_the_llm(tiny):
    from llava.train.train import get_peft_state_non_lora_maybe_zero_3  # noqa: F401  (llava importable)
    from peft import LoraConfig, get_peft_model

    model = build(tiny)  # vision tower loaded: its q_proj/k_proj/v_proj must not be wrapped either
    targets = lora.lora_target_names(model)
    assert len(targets) == len(LLM_LINEARS) * model.config.num_hidden_layers
    assert {t.rsplit(".", 1)[-1] for t in targets} == set(LLM_LINEARS)
    assert all(t.startswith("model.layers.") for t in targets)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=lora.lora_target_names(model)))
    wrapped = {n.split(".lora_")[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert wrapped and not any(part in n for n in wrapped for part in ("alignment", "mm_projector", "vision"))


def test_llavas_own_targets_would_wrap_the_gate(tiny):
    """Why the plugin replaces find_all_linear_names: LLaVA's gives the gate's Sequential names "0" and "2",
    which peft matches against every module ending in .0 / .2 (the projector's layers among them)."""
    import importlib.util

    # a fresh copy of llava.train.train: an earlier enable_aligngpt in this process replaced the function
    spec = importlib.util.find_spec("llava.train.train")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.find_all_linear_names.__module__ == "llava.train.train"
    assert {"0", "2"} <= set(fresh.find_all_linear_names(build(tiny)))


def test_non_lora_state_adds_the_frozen_levels(tiny):
    from llava.train.train import get_peft_state_non_lora_maybe_zero_3

    model = build(tiny)
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    model.alignment.gate.requires_grad_(True)  # stage 2: gate trains, levels frozen
    named = list(model.named_parameters())
    plain = get_peft_state_non_lora_maybe_zero_3(named)
    assert not any(k.endswith("level_embeddings") for k in plain)
    state = lora.with_alignment_weights(get_peft_state_non_lora_maybe_zero_3)(named)
    assert set(state) == set(plain) | {"model.alignment.level_embeddings"}
    assert torch.equal(state["model.alignment.level_embeddings"], model.alignment.level_embeddings.detach())


def test_enable_lora_support_is_idempotent():
    module = SimpleNamespace(find_all_linear_names=None, get_peft_state_non_lora_maybe_zero_3=lambda n, r=True: {})
    lora.enable_lora_support(module)
    first = module.get_peft_state_non_lora_maybe_zero_3
    lora.enable_lora_support(module)
    assert module.get_peft_state_non_lora_maybe_zero_3 is first
    assert module.find_all_linear_names is lora.lora_target_names


def test_4bit_loading_skips_the_alignment_module():
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["mm_projector"])
    kwargs = {"load_in_4bit": True, "load_in_8bit": False, "quantization_config": config, "device_map": {"": "cpu"}}
    fixed = lora.quantized_loading_kwargs(kwargs)
    assert fixed == kwargs  # load_in_4bit/8bit: patches/quantized_loading_kwargs.py drops them for every model
    assert config.llm_int8_skip_modules == ["mm_projector", "model.alignment"]
    lora.quantized_loading_kwargs(fixed)
    assert config.llm_int8_skip_modules == ["mm_projector", "model.alignment"]
    plain = {"torch_dtype": torch.float32}
    assert lora.quantized_loading_kwargs(plain) is plain


def save_lora_output(model, out):
    """What LLaVA's train() writes for --lora_enable: config.json, the adapter, non_lora_trainables.bin."""
    from llava.train.train import get_peft_state_maybe_zero_3, get_peft_state_non_lora_maybe_zero_3
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora.lora_target_names(model)))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # trained adapters are not zero
            param.data.normal_(0, 0.02)
    inner = peft_model.get_base_model()
    inner.alignment.gate.requires_grad_(True)  # as LLaVA's flow leaves them: the gate and the projector
    inner.get_model().mm_projector.requires_grad_(True)  # (built after get_peft_model there) train in full
    named = list(peft_model.named_parameters())
    model.config.save_pretrained(out)
    peft_model.save_pretrained(out, state_dict=get_peft_state_maybe_zero_3(named, "none"))
    collect = lora.with_alignment_weights(get_peft_state_non_lora_maybe_zero_3)
    torch.save(collect(named), out / lora.NON_LORA_FILE)
    return peft_model


def test_merge_keeps_the_logits_and_loads_with_automodel(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    trained = save_lora_output(build(tiny), tmp_path / "lora").eval()
    from aligngpt_plugin.lora import main  # python -m aligngpt_plugin.lora merge ...

    assert main(["merge", str(tmp_path / "lora"), "--base", str(tiny.llm), "--out", str(tmp_path / "m")]) == 0
    merged_dir = tmp_path / "m"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert isinstance(merged, AlignGPTLlamaForCausalLM)
    merged.get_vision_tower().load_model()
    from test_scripts import tiny_batch

    ids, images = tiny_batch(tiny)
    with torch.no_grad():
        want = trained(input_ids=ids, images=images).logits
        got = merged(input_ids=ids, images=images).logits
        plain = trained.get_base_model()
        with trained.disable_adapter():
            without = plain(input_ids=ids, images=images).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(without, want, atol=1e-4)  # the adapter changed something that merging kept
    assert torch.equal(merged.alignment.level_embeddings, plain.alignment.level_embeddings)


def test_merge_without_non_lora_file_says_what_is_missing(tiny, tmp_path):
    save_lora_output(build(tiny), tmp_path)
    (tmp_path / lora.NON_LORA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="non_lora_trainables.bin is missing"):
        lora_merge.load_lora_model(tmp_path, tiny.llm)


def test_merge_refuses_non_lora_weights_without_levels(tiny, tmp_path):
    save_lora_output(build(tiny), tmp_path)
    path = tmp_path / lora.NON_LORA_FILE
    weights = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in weights.items() if "level_embeddings" not in k}, path)
    with pytest.raises(ValueError, match="lacks .*level_embeddings"):
        lora_merge.load_lora_model(tmp_path, tiny.llm)
