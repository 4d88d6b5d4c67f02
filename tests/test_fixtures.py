"""The tiny offline fixtures load through the same code paths as the real hub checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from aligngpt_plugin.devkit.tiny_checkpoints import COLOURS, FixtureSpec, ShapePicture


def test_llm_and_tokenizer_load_as_vicuna_does(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False)
    assert isinstance(tok, LlamaTokenizer) and tok.legacy is False
    assert tok("Hello world").input_ids == [1, 15043, 3186]  # Llama-2's ids
    model = AutoModelForCausalLM.from_pretrained(tiny.llm)
    assert model.config.vocab_size == 32000 and model.config.model_type == "llama"


def test_clip_tower_loads_through_llava_and_selects_layer_minus_2(tiny, llava_ready):
    from types import SimpleNamespace

    from llava.model.multimodal_encoder.builder import build_vision_tower

    cfg = SimpleNamespace(mm_vision_tower=str(tiny.clip), mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    tower = build_vision_tower(cfg)
    image = Image.open(tiny.images / json.loads(tiny.pretrain.read_text())[0]["image"]).convert("RGB")
    pixels = tower.image_processor.preprocess(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 336, 336)
    features = tower(pixels)
    assert features.shape == (1, 576, 32)  # 24 x 24 patches, CLS dropped
    full = tower.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(features, full[-2][:, 1:])


def test_dataset_files_are_in_llava_layout(tiny):
    pretrain = json.loads(tiny.pretrain.read_text())
    assert all(len(r["conversations"]) == 2 and "<image>" in r["conversations"][0]["value"] for r in pretrain)
    finetune = json.loads(tiny.finetune.read_text())
    assert any("image" not in r for r in finetune), "text-only records are part of the mix"
    for r in finetune:
        roles = [t["from"] for t in r["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
    questions = [json.loads(line) for line in tiny.questions.read_text().splitlines()]
    assert {"question_id", "image", "text"} <= set(questions[0])
    for r in pretrain + [r for r in finetune if "image" in r] + questions:
        assert (tiny.images / r["image"]).is_file()


def test_captions_are_true_of_their_pictures(tiny):
    meta = json.loads((tiny.root / "data" / "pictures.json").read_text())
    for name, pic in list(meta.items())[:10]:
        image = Image.open(tiny.images / name).convert("RGB")
        x0, y0, x1, y1 = pic["box"]
        centre = image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2 + (y1 - y0) // 6))
        assert max(abs(a - b) for a, b in zip(centre, COLOURS[pic["colour"]])) < 40, (name, centre)
        assert f"{pic['colour']} {pic['shape']}" in ShapePicture(**pic).caption


def test_same_seed_same_fixtures(tmp_path):
    from aligngpt_plugin.devkit.tiny_checkpoints import write_dataset

    spec = FixtureSpec(n_pretrain=4, n_finetune=6, n_questions=2)
    a = write_dataset(tmp_path / "a", spec)
    b = write_dataset(tmp_path / "b", spec)
    for pa, pb in zip(a, b):
        assert pa.read_text() == pb.read_text()


@pytest.mark.parametrize("kwargs, error", [
    ({"vision_layers": 1}, "layer -2"),
    ({"image_size": 300}, "multiple of patch_size"),
    ({"hidden_size": 30}, "divisible"),
])
def test_bad_fixture_spec_is_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        FixtureSpec(**kwargs)


def test_cli_writes_everything(tmp_path):
    from aligngpt_plugin.devkit.tiny_checkpoints import fixture_paths
    from aligngpt_plugin.fixtures import main

    assert main([str(tmp_path), "--n-pretrain", "3", "--n-finetune", "6", "--n-questions", "2",
                 "--hidden-size", "32", "--image-size", "112"]) == 0
    paths = fixture_paths(tmp_path)
    assert (paths.llm / "tokenizer.model").is_file() and (paths.clip / "preprocessor_config.json").is_file()
    assert len(json.loads(paths.pretrain.read_text())) == 3


def test_cli_flags_are_the_specs_fields(tmp_path, capsys):
    """aligngpt-fixtures' flags are FixtureSpec's fields (dashed), with their help and defaults; a spec
    FixtureSpec refuses ends the command with exit 2 and the reason."""
    import dataclasses

    from aligngpt_plugin.fixtures import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    for f in dataclasses.fields(FixtureSpec):
        assert f"--{f.name.replace('_', '-')} {f.name.upper()} {' '.join(f.metadata['help'].split())} " \
               f"(default: {f.default})" in text
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), "--hidden-size", "30"])
    assert info.value.code == 2 and "hidden_size=30 is not divisible by num_heads=4" in capsys.readouterr().err


def test_fixture_clip_is_drawn_with_transformers_own_init_laws():
    """The fixture CLIP is redrawn from its own seed (the same on 4.57 and 5.x) with the laws of
    transformers' CLIP initialisation: each weight's spread equals that of a CLIPModel transformers built."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from aligngpt_plugin.devkit.tiny_checkpoints import redraw_clip_weights

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=336, patch_size=14), projection_dim=32)
    torch.manual_seed(1)
    built = dict(CLIPModel(config).named_parameters())
    redrawn = dict(redraw_clip_weights(CLIPModel(config), seed=7).named_parameters())
    large = [k for k, p in built.items() if p.numel() >= 1000 and p.std() > 0]
    assert len(large) > 20
    for k in large:
        assert redrawn[k].std().item() == pytest.approx(built[k].std().item(), rel=0.12), k
        assert not torch.equal(redrawn[k], built[k])
    again = dict(redraw_clip_weights(CLIPModel(config), seed=7).named_parameters())
    assert all(torch.equal(again[k], redrawn[k]) for k in redrawn)  # the seed alone decides
