"""Small probes of LLaVA code paths, each a breakage that one patch in patches/ fixes.

`tests/test_patches.py` runs every probe twice: in a subprocess where only the patches the probe does
not test are applied (the probe must fail there), and in-process with every patch applied (the probe
must pass). Run as a script, it prints {probe: "ok" | "<error type>: <message>"} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

# probe name -> the patch that must be left out for it to show the breakage
PROBES = {
    "import_llava_trainer": "all_layernorm_layers",
    "save_projector_without_deepspeed": "maybe_zero_3",
    "full_checkpoint": "save_checkpoint_signature",
    "train_dataloader": "train_sampler_signature",
    "adapter_checkpoint_resume": "adapter_checkpoint_resume",
    "generate": "generate_cache_position",
    "llava_script_flags": "evaluation_strategy_flag",
    "deepspeed_final_save": "deepspeed_final_save",
    "qlora_loading": "quantized_loading_kwargs",
    "vision_tower_rng": "vision_tower_rng",
}


def tiny_llava():
    """A LlavaLlamaForCausalLM with a tiny Llama and a 2-layer projector, no vision tower files needed."""
    import torch
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.multimodal_projector.builder import build_vision_projector

    torch.manual_seed(0)
    config = LlavaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlavaLlamaForCausalLM(config)
    config.mm_projector_type, config.mm_hidden_size = "mlp2x_gelu", 8
    model.get_model().mm_projector = build_vision_projector(config)
    return model


class TokenDataset:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        import torch

        ids = torch.arange(1, 9) + i
        return {"input_ids": ids, "labels": ids.clone()}


def trainer(output_dir: str, adapter: bool):
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import TrainingArguments

    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=2, max_steps=2, save_steps=1,
                             report_to=[], use_cpu=True, learning_rate=1e-3)
    args.tune_mm_mlp_adapter = adapter
    model = tiny_llava()
    if adapter:
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
        model.lm_head.requires_grad_(True)  # the probe's batches have no images: give the loss a gradient
    return LLaVATrainer(model=model, args=args, train_dataset=TokenDataset())


def probe_import_llava_trainer():
    import llava.train.llava_trainer  # noqa: F401


def probe_save_projector_without_deepspeed():
    import torch
    from llava.train.train import get_mm_adapter_state_maybe_zero_3

    state = get_mm_adapter_state_maybe_zero_3([("model.mm_projector.0.weight", torch.ones(2))], ["mm_projector"])
    assert torch.equal(state["model.mm_projector.0.weight"], torch.ones(2))


def probe_full_checkpoint():
    with tempfile.TemporaryDirectory() as out:
        t = trainer(out, adapter=False)
        t.create_optimizer_and_scheduler(num_training_steps=2)
        t._save_checkpoint(t.model, None)
        assert os.path.isfile(os.path.join(out, "checkpoint-0", "model.safetensors"))


def probe_train_dataloader():
    with tempfile.TemporaryDirectory() as out:
        batch = next(iter(trainer(out, adapter=False).get_train_dataloader()))
        assert batch["input_ids"].shape == (2, 8)


def probe_adapter_checkpoint_resume():
    import torch

    with tempfile.TemporaryDirectory() as out:
        t = trainer(out, adapter=True)
        t.train()
        folder = os.path.join(out, "checkpoint-1")
        saved = torch.load(os.path.join(folder, "mm_projector.bin"), weights_only=True)
        files = sorted(os.listdir(folder))
        assert {"trainer_state.json", "optimizer.pt"} <= set(files), f"checkpoint has no trainer_state.json: {files}"
        fresh = trainer(out, adapter=True)
        fresh._load_from_checkpoint(folder)
        params = dict(fresh.model.named_parameters())
        assert all(torch.equal(params[k], v) for k, v in saved.items())


def probe_generate():
    import torch

    model = tiny_llava().eval()
    out = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape[-1] == 3


def probe_llava_script_flags():
    from aligngpt_plugin.patches import rewrite_argv
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = rewrite_argv(["--output_dir", "unused", "--evaluation_strategy", "no", "--report_to", "none"])
    parser.parse_args_into_dataclasses(argv)


def probe_deepspeed_final_save():
    from llava.train.train import safe_save_model_for_hf_trainer

    with tempfile.TemporaryDirectory() as out:
        t = trainer(out, adapter=False)
        t.deepspeed = t.model  # what train() finds after DeepSpeed wrapped the model (any truthy engine)
        safe_save_model_for_hf_trainer(trainer=t, output_dir=out)
        assert os.path.isfile(os.path.join(out, "model.safetensors"))


def probe_qlora_loading():
    import torch
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from transformers import BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as out:
        tiny_llava().save_pretrained(out)
        # the kwargs LLaVA's train() passes for --bits 4
        model = LlavaLlamaForCausalLM.from_pretrained(
            out, device_map={"": "cpu"}, load_in_4bit=True, load_in_8bit=False,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["mm_projector"],
                                                   bnb_4bit_compute_dtype=torch.float32))
        assert type(model.get_model().layers[0].mlp.up_proj).__name__ == "Linear4bit"


def probe_vision_tower_rng():
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    from aligngpt_plugin.devkit.tiny_checkpoints import FixtureSpec, write_tiny_clip

    with tempfile.TemporaryDirectory() as out:
        write_tiny_clip(Path(out), FixtureSpec())
        torch.manual_seed(0)
        expected = torch.rand(4)  # the first draws after seeding
        torch.manual_seed(0)
        CLIPVisionTower(out, args=SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
        drawn = torch.rand(4)  # what the projector would draw next, in initialize_vision_modules
        assert torch.equal(drawn, expected), "loading the vision tower advanced torch's RNG"


def run(names=None) -> dict:
    results = {}
    for name in names or PROBES:
        try:
            globals()[f"probe_{name}"]()
            results[name] = "ok"
        except Exception as e:  # noqa: BLE001 - a probe reports any failure
            results[name] = f"{type(e).__name__}: {e}"[:500]
    return results


# patches that cannot be applied while the key is left out (they build on it)
BUILDS_ON = {
    "all_layernorm_layers": None,  # None: every other patch imports llava.train, which needs it
    "save_checkpoint_signature": {"adapter_checkpoint_resume"},
}


def run_without(left_out: str, name: str) -> dict:
    """Apply every patch except `left_out` (and those built on it), then run probe `name`."""
    from aligngpt_plugin import patches

    if left_out == "maybe_zero_3":  # the breakage is on machines without DeepSpeed: be one
        sys.modules["deepspeed"] = None
    skipped = BUILDS_ON.get(left_out, set())
    if left_out == "evaluation_strategy_flag":
        patches._module(left_out).rewrite_argv = list  # the rename is the whole patch
    for patch in patches.PATCH_MODULES:
        if skipped is not None and patch != left_out and patch not in skipped:
            patches._module(patch).apply()
    return run([name])


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(run_without(sys.argv[1], sys.argv[2])))
