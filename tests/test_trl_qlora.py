"""QLoRA on the TRL path, on the CPU (bitsandbytes runs NF4 `Linear4bit` there): `aligngpt-sft --use_peft
--load_in_4bit` as typed; which layers are quantized; which parameters get gradients and which stay
bit-identical; the saved adapter loaded again over a fresh 4-bit base (peft's `PeftModel.from_pretrained`, the
outside reference) gives the trained model's logits; merged into the full-precision base it loads with
`from_pretrained` and stays within the base's own NF4 error of the QLoRA model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from trl import ModelConfig, SFTConfig
from trl_tiny import (
    GradientNames,
    llava_records,
    tiny_model,
    tiny_processor,
    trl_dataset,
    write_llava_json,
    write_pictures,
)

from aligngpt_plugin.integrations.hf.training import AlignSFTArguments, build_trainer
from aligngpt_plugin.sft import load_model

bnb = pytest.importorskip("bitsandbytes")

LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COPIES = ".modules_to_save.default."
PROJECTOR = "model.multi_modal_projector"


def write_folder(folder):
    """The tiny HF-native AlignGPT of trl_tiny with a 64-wide LLM: bitsandbytes' CPU kernel (used in eval) packs
    4-bit weights in blocks of 64 input features, so trl_tiny's 32-wide LLM cannot run in 4 bits."""
    processor = tiny_processor()
    tiny_model(processor, text_hidden=64).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def model_args(folder, bits: int = 4) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(folder), use_peft=True, load_in_4bit=bits == 4, load_in_8bit=bits == 8)


def frozen_state(model) -> dict[str, torch.Tensor]:
    """Every parameter and every 4-bit layer's quantization scales (absmax), copied."""
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state[f"{name}.absmax"] = module.weight.quant_state.absmax.clone()
    return state


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    dataset, _ = trl_dataset(root, count=6, text_only=2)
    return write_folder(root / "model"), dataset, root


def train_qlora(setup, kind: str, out) -> dict:
    """2 QLoRA steps (LoRA r 4) through TRL's SFTTrainer (kind="trl") or the plain Trainer ("hf"): the trainer,
    the parameters that got gradients, every parameter (and 4-bit scale) before and after, LoRA's base layers."""
    from peft import LoraConfig
    from transformers import TrainingArguments

    folder, dataset, _ = setup
    model, processor = load_model(folder, model_args(folder))
    common = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, report_to=[],
                  save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True)
    args = SFTConfig(bf16=False, gradient_checkpointing=False, **common) if kind == "trl" else \
        TrainingArguments(**common)
    grads = GradientNames()
    trainer = build_trainer(model, processor, dataset, args, AlignSFTArguments(align_stage=2), trainer=kind,
                            peft_config=LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"), callbacks=[grads])
    lora_bases = {type(m.base_layer).__name__ for n, m in trainer.model.named_modules() if hasattr(m, "lora_A")}
    before = frozen_state(trainer.model)
    trainer.train()
    return {"trainer": trainer, "processor": processor, "grads": grads.names, "before": before,
            "after": frozen_state(trainer.model), "lora_bases": lora_bases}


@pytest.fixture(scope="module")
def trained(setup):
    """train_qlora through TRL; the adapter saved; the trained model's logits on 3 rows (2 with a picture)."""
    from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator

    _, dataset, root = setup
    run = train_qlora(setup, "trl", root / "run")
    run["trainer"].save_model(str(root / "adapter"))
    batch = AlignGPTVisionCollator(processor=run["processor"])([dataset[k] for k in (0, 6, 1)])
    return run | {"adapter": root / "adapter", "batch": batch, "logits": logits(run["trainer"].model, batch)}


@pytest.mark.parametrize("bits", [4, 8])
def test_load_model_quantizes_the_llm_and_keeps_the_trained_modules_and_tower_in_full(setup, bits):
    folder, _, _ = setup
    model, _ = load_model(folder, model_args(folder, bits))
    quantized = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    llm = {n for n in kinds if n.startswith("model.language_model.") and n.endswith(LLM_LINEAR)}
    assert len(llm) == 2 * 7 and all(kinds[n] is quantized for n in llm)
    # what trains in full (projector, gate), lm_head and the frozen tower: plain fp32 Linear layers
    full = {n for n in kinds if n not in llm}
    assert any(n.startswith(PROJECTOR) for n in full) and any(n.startswith("model.alignment.gate") for n in full)
    assert "lm_head" in full and any(n.startswith("model.vision_tower.") for n in full)
    assert all(kinds[n] is torch.nn.Linear and model.get_submodule(n).weight.dtype == torch.float32 for n in full)


def check_trained_set(run) -> None:
    """Gradients reach LoRA on the LLM's 4-bit layers, the projector and the gate (PEFT copies), and those and only
    those moved; the full copies stayed fp32."""
    assert run["lora_bases"] == {"Linear4bit"}
    names = set(run["before"])
    expected = {n for n in names if "lora_" in n or (COPIES in n and (f"{PROJECTOR}{COPIES}" in n
                                                                       or f"alignment{COPIES}gate." in n))}
    assert any("language_model" in n and "lora_A" in n for n in expected)
    assert run["grads"] == expected
    moved = {n for n in names if not torch.equal(run["before"][n], run["after"][n])}
    assert moved == expected
    # (TRL casts a quantized model's trainable weights to bf16: build_trainer gives the full copies their dtype back)
    assert all(p.dtype == torch.float32 for n, p in run["trainer"].model.named_parameters() if COPIES in n)


def test_qlora_gradients_reach_lora_projector_and_gate_only(trained):
    check_trained_set(trained)


def test_the_plain_trainer_trains_the_same_set_under_qlora(setup, tmp_path):
    check_trained_set(train_qlora(setup, "hf", tmp_path))


def test_qlora_leaves_the_levels_and_the_quantized_base_bit_identical(setup, trained):
    from safetensors.torch import load_file

    folder, _, _ = setup
    start = load_file(folder / "model.safetensors")
    levels = next(v for k, v in start.items() if k.endswith("alignment.level_embeddings"))
    model = trained["trainer"].model
    for name, param in model.named_parameters():
        if name.endswith("level_embeddings"):  # the original and the PEFT copy the forward uses
            assert torch.equal(param.detach(), levels), name
    quantized = [n for n in trained["before"] if n.endswith(".absmax") or (".base_layer." in n and "language" in n)]
    assert len(quantized) >= 2 * 2 * 7
    assert all(torch.equal(trained["before"][n], trained["after"][n]) for n in quantized)


def test_the_adapter_over_a_fresh_4_bit_base_gives_the_trained_logits(setup, trained):
    from peft import PeftModel

    folder, _, _ = setup
    base, _ = load_model(folder, model_args(folder))
    loaded = PeftModel.from_pretrained(base, trained["adapter"])
    # peft loads the adapter in fp32; TRL trained the LoRA weights in bf16 (QLoRA's recipe): as trained, bit for
    # bit; as loaded, within the bf16 rounding of the LoRA branch (measured 2.4e-3 on logits of max 0.8)
    as_loaded = logits(loaded, trained["batch"])
    torch.testing.assert_close(as_loaded, trained["logits"], atol=1e-2, rtol=0)
    for name, param in loaded.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    torch.testing.assert_close(logits(loaded, trained["batch"]), trained["logits"], atol=0, rtol=0)


def test_merged_into_the_full_precision_base_within_the_nf4_error(setup, trained, tmp_path):
    """A 4-bit base cannot take the LoRA exactly: a QLoRA user merges the adapter into the full-precision base.
    Its logits differ from the QLoRA model's by the base's NF4 error; the bound is that error measured on the
    start model (fp32 vs 4-bit logits before training) with 50% slack. Training moved the logits by several
    times that bound, so a merge that lost the adapter (or the trained projector) would fail."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    folder, _, _ = setup
    batch = trained["batch"]
    base = AutoModelForImageTextToText.from_pretrained(folder)
    start_4bit = logits(load_model(folder, model_args(folder))[0], batch)
    nf4_error = (logits(base, batch) - start_4bit).abs().max().item()
    assert (trained["logits"] - start_4bit).abs().max().item() > 4 * nf4_error  # the check below can fail
    merged = PeftModel.from_pretrained(base, trained["adapter"]).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(loaded).__name__ == "AlignGPTLlavaForConditionalGeneration"
    error = (logits(loaded, batch) - trained["logits"]).abs().max().item()
    assert 0 < error <= 1.5 * nf4_error, (error, nf4_error)
    # the projector and gate come from the adapter in full: the trained copies, bit for bit
    trained_model = trained["trainer"].model
    for name in ("multi_modal_projector.linear_1.weight", "alignment.gate.0.weight"):
        want = next(p for n, p in trained_model.named_parameters() if COPIES in n
                    and n.replace(COPIES, ".").endswith(name))
        assert torch.equal(loaded.get_parameter(f"model.{name}"), want), name


def test_aligngpt_sft_qlora_as_typed_exits_0_and_saves_the_adapter_with_the_full_modules(setup, tmp_path):
    from safetensors.torch import load_file

    folder, _, root = setup
    names = write_pictures(tmp_path / "images", 3)
    data = write_llava_json(tmp_path / "data.json", llava_records(names))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "aligngpt_plugin.sft", "--model_name_or_path", str(folder), "--dataset_name",
         str(data), "--image_folder", str(tmp_path / "images"), "--align_stage", "2", "--use_peft",
         "--load_in_4bit", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "2", "--learning_rate", "1e-2",
         "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no", "--gradient_checkpointing",
         "false", "--per_device_train_batch_size", "2", "--disable_tqdm", "true"],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 2 done, 2 steps" in proc.stdout
    assert "a 4/8-bit base cannot take the LoRA exactly" in proc.stdout  # told why the folder holds an adapter
    saved = load_file(out / "adapter_model.safetensors")
    assert any("language_model" in k and "lora_A" in k for k in saved)
    # the projector and the alignment module (gate and levels) in full, in fp32
    start = load_file(folder / "model.safetensors")
    for part in ("multi_modal_projector.linear_1.weight", "alignment.gate.0.weight", "alignment.level_embeddings"):
        key = next(k for k in saved if k.endswith(part) and "lora" not in k)
        original = next(v for k, v in start.items() if k.endswith(part))
        assert saved[key].dtype == torch.float32 and saved[key].shape == original.shape, part
        if part.endswith("level_embeddings"):  # frozen in stage 2
            assert torch.equal(saved[key], original)
    assert not (out / "config.json").exists()  # the adapter, not a merged model (a 4-bit base cannot take it)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_dtype_auto_computes_4_bit_layers_in_the_checkpoints_dtype(tmp_path, key):
    import json

    from aligngpt_plugin.sft import quantization_config

    (tmp_path / "config.json").write_text(json.dumps({key: "bfloat16"}))  # transformers 4.56+ / older
    args = ModelConfig(model_name_or_path=str(tmp_path), use_peft=True, load_in_4bit=True, dtype="auto")
    config = quantization_config(args, tmp_path)  # TRL's own get_quantization_config fails on "auto"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_type == "nf4"
    assert "model.multi_modal_projector" in config.llm_int8_skip_modules


def test_build_trainer_refuses_a_quantized_model_without_lora(setup, tmp_path):
    from transformers import TrainingArguments

    folder, dataset, _ = setup
    model, processor = load_model(folder, model_args(folder))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="LoRA only: pass a peft_config"):
        build_trainer(model, processor, dataset, args, AlignSFTArguments(align_stage=2), trainer="hf")
