"""aligngpt-convert on state dicts built in the released AlignGPT layout (METHOD.md section 6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aligngpt_plugin.convert import ConversionError, convert, main, rename

pytestmark = pytest.mark.usefixtures("llava_ready")


@pytest.fixture(scope="module")
def plugin_model(tiny):
    from test_model import build

    return build(tiny)


def released_folder(model, folder, shards=1, **break_shapes):
    """Write `model` as the released checkpoints are laid out: renamed keys, model_type aligngpt, .bin."""
    state = rename({k: v.clone() for k, v in model.state_dict().items()}, to_plugin=False)
    for key, shape in break_shapes.items():
        state[key] = torch.zeros(shape)
    folder.mkdir(parents=True)
    keys = sorted(state)
    for i in range(shards):
        part = {k: state[k] for k in keys[i::shards]}
        name = "pytorch_model.bin" if shards == 1 else f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save(part, folder / name)
    config = model.config.to_dict()
    config.pop("alignment")
    config["model_type"] = "aligngpt"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text("{}")
    return state


def test_released_keys_are_the_published_ones(plugin_model):
    released = rename(plugin_model.state_dict(), to_plugin=False)
    assert released["model.align_indicators.indicator_embs"].shape == (8, 64)
    assert released["model.gated_weight_layer.mlp.0.weight"].shape == (256, 576)
    assert released["model.gated_weight_layer.mlp.2.weight"].shape == (7, 256)
    assert "model.mm_projector.0.weight" in released and "lm_head.weight" in released


@pytest.mark.parametrize("shards", [1, 2])
def test_released_folder_converts_and_loads(plugin_model, tmp_path, shards):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.model import AlignGPTLlamaForCausalLM

    released = released_folder(plugin_model, tmp_path / "released", shards=shards)
    out = main(["to-plugin", str(tmp_path / "released"), str(tmp_path / "plugin")])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded) is AlignGPTLlamaForCausalLM
    assert loaded.config.alignment_config.num_levels == 8 and loaded.config.alignment_config.gate_tokens == 576
    ours = loaded.state_dict()
    for key, value in plugin_model.state_dict().items():
        if "vision_tower" not in key:  # LLaVA loads the tower from its own folder, not from the checkpoint
            assert torch.equal(ours[key], value), key
    assert (out / "tokenizer_config.json").is_file()

    back = convert(out, tmp_path / "back", to_plugin=False)
    again = {}
    for f in back.glob("*.safetensors"):
        again.update(load_file(f))
    assert again.keys() == released.keys() and all(torch.equal(again[k], released[k]) for k in released)
    assert json.loads((back / "config.json").read_text())["model_type"] == "aligngpt"


def test_pretrain_projector_file_converts_for_stage_2(plugin_model, tmp_path):
    state = {k: v for k, v in rename(plugin_model.state_dict(), False).items()
             if "mm_projector" in k or "align_indicators" in k or "gated_weight" in k}
    torch.save(state, tmp_path / "mm_projector_align.bin")
    out = convert(tmp_path / "mm_projector_align.bin", tmp_path / "mm_projector.bin")
    converted = torch.load(out, weights_only=True)
    assert torch.equal(converted["model.alignment.level_embeddings"], plugin_model.alignment.level_embeddings)
    assert "model.mm_projector.2.bias" in converted


@pytest.mark.parametrize("broken, error", [
    ({"model.gated_weight_layer.mlp.2.weight": (6, 256)}, "gives 6 weights, 8 levels need 7"),
    ({"model.align_indicators.indicator_embs": (8, 32)}, "32 wide, the LLM's hidden_size is 64"),
    ({"model.gated_weight_layer.mlp.0.weight": (128, 576)}, "do not chain"),
])
def test_shapes_that_do_not_fit_are_refused(plugin_model, tmp_path, broken, error):
    released_folder(plugin_model, tmp_path / "released", **broken)
    with pytest.raises(SystemExit, match=error):
        main(["to-plugin", str(tmp_path / "released"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists(), "nothing is written for a refused checkpoint"


def test_wrong_model_type_and_missing_files_are_named(plugin_model, tmp_path):
    released_folder(plugin_model, tmp_path / "released")
    with pytest.raises(ConversionError, match="expected 'aligngpt_llava' for from-plugin"):
        convert(tmp_path / "released", tmp_path / "x", to_plugin=False)
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path / "empty", tmp_path / "x")
