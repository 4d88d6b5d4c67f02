"""Stage 1 from an LLM and a CLIP, HF-native (`aligngpt-convert build-hf`, conversion.hf.build_hf), and stage 2
from its saved output, checked against what is not the builder: the LLM's own logits (`AutoModelForCausalLM`
on the LLM folder), the CLIP folder's own `CLIPVisionModel` (layer -2, LLaVA-1.5's choice), and the mean of
the LLM's embedding rows computed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import aligngpt_plugin  # noqa: F401  (registers the config types)

LEVELS = 4


def write_llama(out: Path) -> Path:
    """A tiny Llama with the bundled Vicuna tokenizer (BOS, no pad token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligngpt_plugin.devkit.tiny_checkpoints import save_with_tokenizer

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    return save_with_tokenizer(LlamaForCausalLM(config), out)


def write_qwen2(out: Path) -> Path:
    """A tiny Qwen2 with tied embeddings and a byte-level BPE tokenizer of its own: no BOS, a pad token (as
    Qwen2's tokenizers have), the embedding exactly as large as the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Is there a red circle in the image? Yes. No. A blue square at the top left."] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(4)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_clip_vision(out: Path) -> Path:
    """A tiny CLIPVisionModel (28 px in 14 px patches: 4 image tokens, 3 layers) with its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    torch.manual_seed(5)
    config = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=14)
    model = CLIPVisionModel(config)
    with torch.no_grad():  # away from init's near-identity layers, so reading the wrong layer shows
        for p in model.parameters():
            p.normal_(std=0.2)
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build_sources")
    return {"llama": write_llama(root / "llama"), "qwen2": write_qwen2(root / "qwen2"),
            "clip": write_clip_vision(root / "clip")}


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory) -> dict[str, Path]:
    from aligngpt_plugin.conversion.hf import build_hf

    root = tmp_path_factory.mktemp("built")
    return {name: build_hf(sources[name], sources["clip"], root / name, align_levels=LEVELS)
            for name in ("llama", "qwen2")}


def load_built(folder: Path):
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert all(not v for k, v in info.items() if k != "error_msgs"), info  # nothing missing or unused
    return model.eval()


def picture() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_the_llm_is_kept_intact(backbone, sources, built):
    """With no <align> token and no image, the built model's logits over the LLM's vocabulary are the LLM's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(sources[backbone]).eval()
    tokenizer = AutoTokenizer.from_pretrained(sources[backbone])
    ids = tokenizer(["Is there a red circle?", "A blue square at the top left."], padding="longest",
                    return_tensors="pt") if tokenizer.pad_token else None
    if ids is None:  # Vicuna's tokenizer has no pad token: two prompts of one length
        ids = tokenizer(["Is there a red circle?", "Is there a blue square?"], return_tensors="pt")
        assert ids["input_ids"].shape[1] == len(tokenizer("Is there a red circle?")["input_ids"])
    model = load_built(built[backbone])
    with torch.no_grad():
        theirs = llm(**ids).logits
        ours = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert ours.shape[-1] > theirs.shape[-1]  # the grown vocabulary
    mask = ids["attention_mask"].bool()
    torch.testing.assert_close(ours[..., :theirs.shape[-1]][mask], theirs[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_image_features_are_clip_layer_minus_2_patches_through_the_projector(backbone, sources, built):
    """The tower's layer -2 is the CLIP folder's own CLIPVisionModel's; the image features are LLaVA-1.5's
    splice: layer -2 without CLS, through linear_2(gelu(linear_1(.))) (computed here)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(sources["clip"]).eval()
    pixels = CLIPImageProcessor.from_pretrained(sources["clip"])(picture(), return_tensors="pt")["pixel_values"]
    model = load_built(built[backbone])
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        reference = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        tower = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        patches = reference[:, 1:]
        expected = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(patches))).flatten(0, 1)
        features = model.model.image_features(pixels)
    torch.testing.assert_close(tower, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    assert projector.linear_1.weight.shape == (32, 24) and projector.linear_2.weight.shape == (32, 32)


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_grown_rows_are_the_mean_of_the_old_rows_and_the_config_is_stage_1(backbone, sources, built):
    from safetensors.torch import load_file
    from transformers import AutoProcessor, AutoTokenizer

    from aligngpt_plugin.integrations.hf.processing_aligngpt import AlignGPTLlavaProcessor

    llm = load_file(sources[backbone] / "model.safetensors")
    ours = {}
    for f in built[backbone].glob("*.safetensors"):
        ours.update(load_file(f))
    old = llm["model.embed_tokens.weight"]
    before = len(AutoTokenizer.from_pretrained(sources[backbone]))
    assert old.shape[0] == before
    processor = AutoProcessor.from_pretrained(built[backbone])
    assert isinstance(processor, AlignGPTLlavaProcessor)
    tokenizer = processor.tokenizer
    added = ["<image>", "<align>"] + (["<pad>"] if backbone == "llama" else [])
    ids = sorted(tokenizer.convert_tokens_to_ids(t) for t in added)
    assert ids == list(range(before, before + len(added)))
    # Qwen2 ties its head to the embedding (no lm_head in its file): the built model's head is that matrix
    head = llm.get("lm_head.weight", old)
    assert (backbone == "qwen2") == ("lm_head.weight" not in llm)
    for key, rows in (("model.language_model.embed_tokens.weight", old), ("lm_head.weight", head)):
        weight = ours[key]
        assert weight.shape == (before + len(added), 32)
        torch.testing.assert_close(weight[:before], rows, atol=0, rtol=0)
        mean = rows.double().mean(0).float()  # by hand, in double
        for row in weight[before:]:
            torch.testing.assert_close(row, mean, atol=1e-7, rtol=0)
    config = json.loads((built[backbone] / "config.json").read_text())
    assert config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>")
    assert config["alignment_token_id"] == tokenizer.convert_tokens_to_ids("<align>")
    assert config["pad_token_id"] == tokenizer.pad_token_id
    if backbone == "qwen2":  # its own pad token is kept
        assert tokenizer.pad_token == "<|endoftext|>"
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert (config["alignment_stage"], config["alignment"]["num_levels"]) == ("pretrain", LEVELS)
    assert config["alignment"]["gate_tokens"] == config["image_seq_length"] == 4  # (28 / 14) ** 2
    assert ours["model.alignment.level_embeddings"].shape == (LEVELS, 32)


def test_stage_2_starts_from_the_saved_stage_1_output(sources, built, tmp_path):
    """Stage 1 trains the projector and the levels; its saved folder loads with from_pretrained, and
    set_stage('finetune') trains the gate, the projector and the LLM with stage 1's levels, bit for bit."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = load_built(built["llama"])
    processor = AutoProcessor.from_pretrained(built["llama"])
    counts = model.set_stage("pretrain")
    assert counts["llm"] == counts["vision"] == counts["gate"] == 0 and counts["levels"] == LEVELS * 32
    fresh = model.alignment.level_embeddings.detach().clone()
    batch = processor(images=[picture(), picture()], text=["<image>\nA red circle.", "<image>\nA blue square."],
                      alignment_levels=[3, 1], padding=True, return_tensors="pt")
    model.train()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    trained = model.alignment.level_embeddings.detach().clone()
    assert not torch.equal(trained, fresh)
    model.save_pretrained(tmp_path / "stage1")
    processor.save_pretrained(tmp_path / "stage1")

    stage2 = AutoModelForImageTextToText.from_pretrained(tmp_path / "stage1")
    assert stage2.config.alignment_stage == "pretrain"
    counts = stage2.set_stage("finetune")
    assert stage2.config.alignment_stage == "finetune"
    assert torch.equal(stage2.alignment.level_embeddings, trained)
    trainable = {n for n, p in stage2.named_parameters() if p.requires_grad}
    parts = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0] for n in trainable}
    assert parts == {"multi_modal_projector", "language_model", "lm_head", "alignment"}
    assert {n for n in trainable if n.startswith("model.alignment.")} == {
        f"model.alignment.gate.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert counts["levels"] == counts["vision"] == 0 and min(counts["gate"], counts["llm"], counts["projector"]) > 0
    stage2.eval()
    with torch.no_grad():  # the gate runs on the stage-1 output's image features
        batch = processor(images=[picture()], text=["<image>\nWhat is it?"], return_tensors="pt")
        assert stage2(**batch).gate_weights.shape == (1, LEVELS - 1)


def convert_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "aligngpt-convert"), *map(str, args)],
                          capture_output=True, text=True)


def test_build_hf_command_as_typed(sources, built, tmp_path):
    from safetensors.torch import load_file

    proc = convert_cli("build-hf", sources["llama"], tmp_path / "out", "--vision-tower", sources["clip"],
                       "--align-levels", LEVELS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {tmp_path / 'out'}"
    ours, fixture = {}, {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        ours.update(load_file(f))
    for f in built["llama"].glob("*.safetensors"):
        fixture.update(load_file(f))
    assert ours.keys() == fixture.keys() and [k for k in ours if not torch.equal(ours[k], fixture[k])] == []


def test_build_hf_bad_input_exits_2_and_writes_nothing(sources, tmp_path, capsys):
    import shutil

    from aligngpt_plugin.convert import build_parser, main

    assert "build-hf" in build_parser().format_help()
    llm, clip = str(sources["llama"]), str(sources["clip"])
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(sources["llama"] / name, no_tokenizer / name)
    (tmp_path / "exists").mkdir()
    cases = {
        "missing LLM": ([str(tmp_path / "nowhere"), str(tmp_path / "a"), "--vision-tower", clip], "does not exist"),
        "missing CLIP": ([llm, str(tmp_path / "b"), "--vision-tower", str(tmp_path / "nowhere")], "does not exist"),
        "no tokenizer": ([str(no_tokenizer), str(tmp_path / "c"), "--vision-tower", clip], "no usable tokenizer"),
        "CLIP as LLM": ([clip, str(tmp_path / "d"), "--vision-tower", clip], "not a text-only causal language"),
        "no tower": ([llm, str(tmp_path / "e")], "needs --vision-tower"),
        "output exists": ([llm, str(tmp_path / "exists"), "--vision-tower", clip], "already exists"),
        "one level": ([llm, str(tmp_path / "f"), "--vision-tower", clip, "--align-levels", "1"], "at least 2"),
    }
    for case, (args, message) in cases.items():
        assert main(["build-hf", *args]) == 2, case
        err = capsys.readouterr().err
        assert message in err, (case, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "no_tokenizer"]
    assert not any((tmp_path / "exists").iterdir())
