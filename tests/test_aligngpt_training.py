"""AlignGPT with one flag on LLaVA's own training: pre-train -> fine-tune -> load -> generate, on each
language backbone LLaVA ships (Llama, Mistral; MPT is refused with a message).

Without the flag the plugin's entry point is LLaVA's `train()` to the last digit of the loss.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aligngpt_plugin.devkit import pipeline

FLAG = ("--align_levels", "8")
PRE = pipeline.StageSettings(max_steps=4, save_steps=1000)
FT = pipeline.StageSettings(max_steps=3, learning_rate=2e-5, save_steps=1000)


BACKBONES = {"llama": "AlignGPTLlamaForCausalLM", "mistral": "AlignGPTMistralForCausalLM"}


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Both stages with --align_levels 8 on a backbone's tiny LLM (each run once per module)."""
    runs = {}

    def run(backbone: str):
        if backbone not in runs:
            llm = tiny.llm if backbone == "llama" else tiny.mistral
            root = tmp_path_factory.mktemp(f"aligngpt_runs_{backbone}")
            pre, ft = root / "pretrain", root / "aligngpt-finetune"
            pipeline.train(pipeline.pretrain_args(tiny, pre, PRE, data=tiny.pretrain_levels, extra=FLAG, llm=llm),
                           log=root / "pre.log")
            pipeline.train(pipeline.finetune_args(tiny, pre / "mm_projector.bin", ft, FT, extra=FLAG, llm=llm),
                           log=root / "ft.log")
            runs[backbone] = root, pre, ft
        return runs[backbone]

    return run


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request):
    return request.param


@pytest.fixture(scope="module")
def aligngpt_runs(trained, backbone):
    return trained(backbone)


def test_pretraining_saves_levels_beside_the_projector(aligngpt_runs):
    root, pre, _ = aligngpt_runs
    weights = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert weights["model.alignment.level_embeddings"].shape == (8, 64)
    assert weights["model.alignment.gate.0.weight"].shape == (256, 576)
    assert "model.mm_projector.0.weight" in weights
    assert "AlignGPT, 8 levels, pre-training" in (root / "pre.log").read_text()


def test_finetuning_freezes_levels_and_trains_gate_and_llm(aligngpt_runs, backbone, tiny):
    _, pre, ft = aligngpt_runs
    stage1 = torch.load(pre / "mm_projector.bin", weights_only=True)
    stage2 = load_file(ft / "model.safetensors")
    assert torch.equal(stage2["model.alignment.level_embeddings"], stage1["model.alignment.level_embeddings"])
    assert not torch.equal(stage2["model.alignment.gate.2.weight"], stage1["model.alignment.gate.2.weight"])
    base = load_file((tiny.llm if backbone == "llama" else tiny.mistral) / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(stage2[key], base[key])


def test_checkpoint_loads_as_aligngpt_and_generates(aligngpt_runs, backbone, tiny, llava_ready):
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    _, _, ft = aligngpt_runs
    model = AutoModelForCausalLM.from_pretrained(ft).eval()
    assert type(model).__name__ == BACKBONES[backbone] and model.stage == "finetune"
    model.get_vision_tower().load_model()
    tok = AutoTokenizer.from_pretrained(ft, use_fast=False)
    from llava.mm_utils import tokenizer_image_token

    ids = tokenizer_image_token("USER: <image>\nWhat colour is the shape? ASSISTANT:", tok, return_tensors="pt")[None]
    image = Image.open(next(tiny.images.glob("question_*"))).convert("RGB")
    pixels = CLIPImageProcessor.from_pretrained(tiny.clip).preprocess(image, return_tensors="pt")["pixel_values"]
    out = model.generate(ids, images=pixels, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
    assert torch.allclose(model.last_gate_weights.sum(-1), torch.ones(1))

    # LLaVA's own loader, on a folder whose name says neither the backbone nor "llava"
    from llava.model import builder

    from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading

    enable_aligngpt_loading()
    _, loaded, processor, _ = builder.load_pretrained_model(str(ft), None, ft.name, device="cpu")
    assert type(loaded).__name__ == BACKBONES[backbone] and processor is not None
    again = loaded.float().generate(ids, images=pixels, max_new_tokens=4, do_sample=False)
    assert again.shape == (1, 4) and loaded.last_gate_weights.shape == (1, 7)


def test_mistral_model_is_mistral_underneath(trained, tiny, llava_ready):
    """The Mistral variant keeps Mistral's own attention (grouped-query heads) and config."""
    from transformers import AutoModelForCausalLM, MistralConfig

    _, _, ft = trained("mistral")
    model = AutoModelForCausalLM.from_pretrained(ft)
    assert isinstance(model.config, MistralConfig) and model.config.model_type == "aligngpt_mistral"
    attention = model.get_model().layers[0].self_attn
    assert attention.k_proj.out_features == model.config.hidden_size // 2  # 2 key-value heads of 4


def test_mpt_is_refused_with_a_message(tiny, tmp_path):
    mpt = tmp_path / "tiny-mpt-7b"
    mpt.symlink_to(tiny.llm)  # LLaVA dispatches on the name: any path with "mpt" builds its MPT model
    with pytest.raises(RuntimeError, match="AlignGPT runs on LLaVA's Llama and Mistral backbones only"):
        pipeline.train(pipeline.pretrain_args(tiny, tmp_path / "x", PRE, data=tiny.pretrain_levels, extra=FLAG,
                                              llm=mpt))


def test_other_backbones_are_refused_naming_the_supported_ones(tiny, tmp_path):
    from transformers import AutoConfig, GPT2Config

    from aligngpt_plugin.core.alignment import AlignmentConfig
    from aligngpt_plugin.integrations.llava.configuration import config_for_base

    with pytest.raises(ValueError, match="'gpt2' model; AlignGPT runs on LLaVA's Llama and Mistral"):
        config_for_base(GPT2Config(), AlignmentConfig(), "gpt2-folder")
    llava_llama = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4)
    assert config_for_base(llava_llama, AlignmentConfig(), "x").model_type == "aligngpt_llava"


def test_the_config_keeps_the_alignment_settings_it_was_given(tmp_path):
    """--align_levels reaches the model as the AlignmentConfig the command line built (not rebuilt from the
    config's dict on each access), while config.json holds the same `alignment` dict as ever."""
    import json

    from transformers import AutoConfig, LlamaConfig

    from aligngpt_plugin.core.alignment import AlignmentConfig
    from aligngpt_plugin.integrations.llava.configuration import config_for_base

    alignment = AlignmentConfig(num_levels=4, mode="global")
    config = config_for_base(LlamaConfig(hidden_size=64, num_attention_heads=4), alignment, "x")
    assert config.alignment_config is alignment and config.alignment_config is config.alignment_config
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["alignment"] == {"num_levels": 4, "gate_hidden_size": 256, "gate_tokens": 576, "gate_input": "fixed",
                                  "gate_text": "all", "mode": "global", "fixed_level": None}
    assert not any("_alignment" in key for key in saved)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.alignment_config == alignment and loaded.alignment_config is loaded.alignment_config
    loaded.alignment["mode"] = "adaptive"  # an edit of the dict is seen
    assert loaded.alignment_config.mode == "adaptive"


def test_pretraining_without_levels_in_the_data_fails_clearly(tiny, tmp_path):
    with pytest.raises(RuntimeError, match="have no alignment level"):
        pipeline.train(pipeline.pretrain_args(tiny, tmp_path / "x", PRE, extra=FLAG))


def test_stage2_refuses_a_projector_without_levels(tiny, tmp_path):
    plain = tmp_path / "plain"
    pipeline.train(pipeline.pretrain_args(tiny, plain, pipeline.StageSettings(max_steps=1, save_steps=1000)))
    with pytest.raises(RuntimeError, match="holds no alignment levels"):
        pipeline.train(pipeline.finetune_args(tiny, plain / "mm_projector.bin", tmp_path / "ft", FT, extra=FLAG))


LLAVA_DIRECT = """
import sys
from aligngpt_plugin.integrations.llava.compat import prepare_llava
from aligngpt_plugin.patches import rewrite_argv
prepare_llava()
from transformers import set_seed
set_seed(42)  # the --seed the runs use; LLaVA builds the projector before its Trainer seeds
from llava.train.train import train
sys.argv = ["train"] + rewrite_argv(sys.argv[1:])
train(attn_implementation="sdpa")
"""


def test_without_the_flag_training_is_llavas_to_the_last_digit(tiny, tmp_path, trained):
    args = lambda out: pipeline.pretrain_args(tiny, out, PRE, data=tiny.pretrain_levels)  # noqa: E731
    pipeline.train(args(tmp_path / "plugin"))
    subprocess.run([sys.executable, "-c", LLAVA_DIRECT, *args(tmp_path / "llava")], check=True, capture_output=True)
    plugin, llava = pipeline.logged_losses(tmp_path / "plugin"), pipeline.logged_losses(tmp_path / "llava")
    assert plugin == llava and len(plugin) == 4
    a = torch.load(tmp_path / "plugin" / "mm_projector.bin", weights_only=True)
    b = torch.load(tmp_path / "llava" / "mm_projector.bin", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("alignment" in k for k in a)
    # and the flag does change the run: the same seed now gives both the same start projector (the alignment
    # module draws from its own stream), and at init the token moves the logged loss less than its 4 decimals,
    # so the evidence is the weights: the levels are saved, and the token in the sequence changed the
    # projector's gradients
    flagged = torch.load(trained("llama")[1] / "mm_projector.bin", weights_only=True)
    assert any("alignment" in k for k in flagged)
    assert any(not torch.equal(flagged[k], a[k]) for k in a)


def test_gate_options_reach_the_model_through_train(trained, tiny, tmp_path):
    """`--align_*` options on LLaVA's command line: any-length (pooled) gate input, prompt-only gate text,
    a narrower gate; stage 2 starts from the default stage 1 (levels load, the differently shaped gate
    is built fresh) and the checkpoint remembers the options."""
    import json

    _, pre, _ = trained("llama")
    ft = tmp_path / "aligngpt-pooled"
    options = (*FLAG, "--align_gate_input", "pooled", "--align_gate_text", "prompt", "--align_gate_hidden_size", "32")
    pipeline.train(pipeline.finetune_args(tiny, pre / "mm_projector.bin", ft, pipeline.StageSettings(
        max_steps=2, learning_rate=2e-5, save_steps=1000), extra=options), log=tmp_path / "ft.log")
    alignment = json.loads((ft / "config.json").read_text())["alignment"]
    assert (alignment["gate_input"], alignment["gate_text"], alignment["gate_hidden_size"]) == ("pooled", "prompt", 32)
    weights = load_file(ft / "model.safetensors")
    assert weights["model.alignment.gate.0.weight"].shape == (32, 576)  # pooled: any length averaged to 576
    assert "stage 2 starts a fresh gate" in (tmp_path / "ft.log").read_text()
    stage1 = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert torch.equal(weights["model.alignment.level_embeddings"], stage1["model.alignment.level_embeddings"])
