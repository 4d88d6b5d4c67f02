"""AlignGPT on transformers' own Llava (aligngpt_plugin.integrations.hf), checked against code that is not ours:
transformers' `LlavaForConditionalGeneration` (no alignment token: the same logits) and the LLaVA-original
AlignGPT of `integrations/llava` run by LLaVA's own multimodal splice (a converted checkpoint: the same
logits, gate weights, loss and greedy tokens)."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

import aligngpt_plugin  # noqa: F401  (registers the config types)

IMAGE_ID, ALIGN_ID = 110, 111


def tiny_config(backbone: str, **alignment):
    from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config

    from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=14, projection_dim=32)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=120, eos_token_id=2, pad_token_id=0)
    # Qwen2 has no BOS token: the alignment token then opens the sequence
    text = LlamaConfig(bos_token_id=1, **common) if backbone == "llama" else Qwen2Config(bos_token_id=None, **common)
    alignment = {"num_levels": 4, "gate_tokens": 4, "gate_hidden_size": 8, **alignment}
    return AlignGPTLlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
                               image_seq_length=4, alignment_token_id=ALIGN_ID, alignment=alignment)


def tiny_pair(backbone: str, **alignment):
    """An AlignGPT model with random weights and transformers' own Llava holding the same weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration

    torch.manual_seed(0)
    config = tiny_config(backbone, **alignment)
    model = AlignGPTLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # levels far apart, so a misplaced or missing vector shows in the logits
        model.alignment.level_embeddings.normal_(std=1.0)
    plain = {k: v for k, v in config.to_dict().items()
             if k not in ("alignment", "alignment_token_id", "alignment_stage", "model_type", "architectures")}
    reference = LlavaForConditionalGeneration(LlavaConfig(**plain)).eval()
    loaded = reference.load_state_dict(model.state_dict(), strict=False)
    assert loaded.missing_keys == [] and all(k.startswith("model.alignment.") for k in loaded.unexpected_keys)
    return model, reference


def image_batch(first: int):
    """[first, <image> x4, 7, 8, 9] twice (two images), with `first` the BOS or a text token."""
    torch.manual_seed(1)
    ids = torch.tensor([[first, 5, *[IMAGE_ID] * 4, 7, 8, 9], [first, 6, *[IMAGE_ID] * 4, 17, 18, 19]])
    return ids, torch.randn(2, 3, 28, 28)


def with_token(ids: torch.Tensor, at: int) -> torch.Tensor:
    return torch.cat([ids[:, :at], torch.full_like(ids[:, :1], ALIGN_ID), ids[:, at:]], dim=1)


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_without_alignment_tokens_the_logits_are_transformers_llava(backbone):
    model, reference = tiny_pair(backbone)
    ids, pixels = image_batch(1 if backbone == "llama" else 4)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        theirs = reference(input_ids=ids, pixel_values=pixels).logits
        text_only = model(input_ids=ids[:, :2]).logits
        text_theirs = reference(input_ids=ids[:, :2]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_only, text_theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["llama", "qwen2"])
def test_the_token_is_the_gate_combination_at_its_own_position(backbone):
    """The logits equal transformers' Llava fed the same embeddings with the gate's vector at the token."""
    model, reference = tiny_pair(backbone)
    ids, pixels = image_batch(1 if backbone == "llama" else 4)
    ids = with_token(ids, 1 if backbone == "llama" else 0)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        # the vector by hand: features and text mean computed here, the gate applied by the core module
        features = reference.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                      vision_feature_select_strategy="default")
        features = torch.stack(list(getattr(features, "pooler_output", features)))
        embeds = reference.get_input_embeddings()(ids.masked_fill(ids == ALIGN_ID, 0))
        text = (ids != IMAGE_ID) & (ids != ALIGN_ID) & (ids != 1 if backbone == "llama" else True)
        mean = (embeds * text[..., None]).sum(1) / text.sum(1, keepdim=True)
        weights = torch.softmax(model.alignment.gate(torch.einsum("bth,bh->bt", features, mean)), -1)
        vector = weights @ model.alignment.level_embeddings[:-1] + model.alignment.level_embeddings[-1]
        embeds[ids == IMAGE_ID] = features.flatten(0, 1)
        embeds[ids == ALIGN_ID] = vector
        expected = reference(inputs_embeds=embeds).logits
    torch.testing.assert_close(out.gate_weights, weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


def test_stage1_uses_each_samples_level_and_trains_only_levels_and_projector():
    model, _ = tiny_pair("llama")
    counts = model.set_stage("pretrain")
    assert counts["llm"] == counts["vision"] == counts["gate"] == 0 and counts["projector"] > 0
    ids, pixels = image_batch(1)
    ids = with_token(ids, 1)
    labels = ids.masked_fill(ids == IMAGE_ID, -100)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(input_ids=ids, pixel_values=pixels, labels=labels, alignment_levels=torch.tensor([3, 0]))
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"model.alignment.level_embeddings", "model.multi_modal_projector.linear_1.weight",
                     "model.multi_modal_projector.linear_1.bias", "model.multi_modal_projector.linear_2.weight",
                     "model.multi_modal_projector.linear_2.bias"}
    level_grad = model.alignment.level_embeddings.grad
    assert level_grad[[0, 3]].abs().sum(1).gt(0).all() and level_grad[[1, 2]].abs().sum() == 0
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == grads
    with pytest.raises(ValueError, match="alignment_levels"):
        model(input_ids=ids, pixel_values=pixels)
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        model(input_ids=ids, pixel_values=pixels, alignment_levels=torch.tensor([3, -1]))


def test_stage2_trains_gate_projector_and_llm_not_levels_and_masks_the_tokens_label():
    model, _ = tiny_pair("llama")
    counts = model.set_stage("finetune")
    assert counts["levels"] == counts["vision"] == 0 and min(counts["gate"], counts["llm"], counts["projector"]) > 0
    ids, pixels = image_batch(1)
    ids = with_token(ids, 1)
    model.train()
    out = model(input_ids=ids, pixel_values=pixels, labels=ids.masked_fill(ids == IMAGE_ID, -100))
    out.loss.backward()
    assert model.alignment.level_embeddings.grad is None
    assert model.alignment.gate[0].weight.grad.abs().sum() > 0
    # the alignment token's label is ignored whatever the collator put there
    masked = ids.masked_fill((ids == IMAGE_ID) | (ids == ALIGN_ID), -100)
    with torch.no_grad():
        model.eval()
        a = model(input_ids=ids, pixel_values=pixels, labels=ids.masked_fill(ids == IMAGE_ID, -100)).loss
        b = model(input_ids=ids, pixel_values=pixels, labels=masked).loss
    assert a == b


def test_a_training_batch_without_images_runs_the_module_adding_zero():
    model, reference = tiny_pair("llama")
    model.train()
    ids = torch.tensor([[1, 5, 6, 7]])
    calls = []
    model.alignment.gate[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert calls == [0] and model.alignment.gate[0].weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(out.logits, reference.train()(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_a_training_batch_without_images_runs_tower_and_projector_before_the_module():
    """A text-only rank must run what an image rank runs, in the same order (ZeRO-3 gathers each module's
    partitions collectively, ZeRO-2 reduces fixed gradient buckets), as LLaVA's zero image does."""
    model, _ = tiny_pair("llama")
    model.train()
    order = []
    for name, module in (("tower", model.model.vision_tower), ("projector", model.model.multi_modal_projector),
                         ("alignment", model.model.alignment)):
        module.register_forward_hook(lambda m, args, out, name=name: order.append(name))
    ids = torch.tensor([[1, 5, 6, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert order == ["tower", "projector", "alignment"]
    grads = [p.grad for p in model.model.multi_modal_projector.parameters()]
    assert all(g is not None and not g.any() for g in grads)  # in the graph, and zero


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_generate_runs_the_gate_once_and_batches_with_either_padding(padding_side):
    model, _ = tiny_pair("llama")
    ids, pixels = image_batch(1)
    ids = with_token(ids, 1)
    alone = [model.generate(input_ids=ids[k:k + 1], pixel_values=pixels[k:k + 1], max_new_tokens=4,
                            do_sample=False) for k in range(2)]
    calls = []
    model.alignment.gate[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    pad = torch.zeros(1, 2, dtype=torch.long)
    short = ids[1:, :-2]  # the second sample two tokens shorter, padded
    both = torch.cat([ids[:1], torch.cat([pad, short], 1) if padding_side == "left" else torch.cat([short, pad], 1)])
    mask = (torch.arange(both.shape[1]) >= 2).long()[None] if padding_side == "left" else \
        (torch.arange(both.shape[1]) < short.shape[1]).long()[None]
    mask = torch.cat([torch.ones_like(mask), mask])
    if padding_side == "left":
        out = model.generate(input_ids=both, attention_mask=mask, pixel_values=pixels, max_new_tokens=4,
                             do_sample=False)
        assert calls == [2] and model.last_gate_weights.shape == (2, 3)  # once, at prefill, for both samples
        short_alone = model.generate(input_ids=short, pixel_values=pixels[1:], max_new_tokens=4, do_sample=False)
        assert torch.equal(out[0, -4:], alone[0][0, -4:]) and torch.equal(out[1, -4:], short_alone[0, -4:])
    else:  # right padding is for training; a forward over it equals each sample alone on its real positions
        with torch.no_grad():
            logits = model(input_ids=both, attention_mask=mask, pixel_values=pixels).logits
            first = model(input_ids=ids[:1], pixel_values=pixels[:1]).logits
            second = model(input_ids=short, pixel_values=pixels[1:]).logits
        torch.testing.assert_close(logits[0], first[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1, :short.shape[1]], second[0], atol=1e-5, rtol=0)


# --- a LLaVA-original AlignGPT checkpoint, converted ------------------------------------------------

@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory, llava_ready):
    """The tiny LLaVA-original AlignGPT (fixture LLM + CLIP), saved as LLaVA saves it and converted."""
    from tiny_models import tiny_aligngpt

    from aligngpt_plugin.conversion.hf import llava_to_hf
    from aligngpt_plugin.devkit.tiny_checkpoints import tokenizer_dir

    original = tiny_aligngpt(tiny).eval()
    with torch.no_grad():
        original.alignment.level_embeddings.normal_(std=1.0)
    root = tmp_path_factory.mktemp("hf")
    original.config.mm_vision_tower = str(tiny.clip)
    original.save_pretrained(root / "llava", safe_serialization=True)
    for f in tokenizer_dir().iterdir():
        (root / "llava" / f.name).write_bytes(f.read_bytes())
    llava_to_hf(root / "llava", root / "hf")
    return original, root / "hf"


def original_inputs(tiny):
    from llava.constants import IMAGE_TOKEN_INDEX
    from transformers import CLIPImageProcessor

    pixels = CLIPImageProcessor.from_pretrained(tiny.clip)(
        Image.open(next(tiny.images.glob("*.jpg"))).convert("RGB"), return_tensors="pt")["pixel_values"]
    return torch.tensor([[1, 319, IMAGE_TOKEN_INDEX, 2654, 8607, 297, 13]]), pixels


def hf_ids(ids, align_id: int, image_id: int, tokens: int) -> torch.Tensor:
    """LLaVA-original ids -> the HF-native sequence: <align> after BOS, <image> expanded to `tokens`."""
    from llava.constants import IMAGE_TOKEN_INDEX

    row = ids[0].tolist()
    at = row.index(IMAGE_TOKEN_INDEX)
    return torch.tensor([[row[0], align_id, *row[1:at], *[image_id] * tokens, *row[at + 1:]]])


def test_converted_checkpoint_loads_through_the_auto_classes_and_matches_the_original(tiny, converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration
    from aligngpt_plugin.integrations.hf.processing_aligngpt import AlignGPTLlavaProcessor

    original, folder = converted
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model) is AlignGPTLlavaForConditionalGeneration and type(processor) is AlignGPTLlavaProcessor
    ids, pixels = original_inputs(tiny)
    sequence = hf_ids(ids, model.config.alignment_token_id, model.config.image_token_id, 576)
    labels = sequence.clone()
    labels[:, :-3] = -100
    from llava.constants import IGNORE_INDEX

    original_labels = ids.clone()
    original_labels[:, :-3] = IGNORE_INDEX
    with torch.no_grad():
        ours = model(input_ids=sequence, pixel_values=pixels, labels=labels)
        theirs = original(input_ids=ids, images=pixels, labels=original_labels)
    vocab = theirs.logits.shape[-1]
    assert ours.logits.shape[1] == theirs.logits.shape[1] == sequence.shape[1]
    torch.testing.assert_close(ours.logits[..., :vocab], theirs.logits, atol=5e-5, rtol=0)
    torch.testing.assert_close(ours.gate_weights, theirs.gate_weights, atol=1e-6, rtol=0)
    # the converted vocabulary has 3 more entries (<image>, <pad>, <align>), which enter the softmax of the
    # model's own loss; over the original vocabulary the loss, and so the labels' placement, is the same
    restricted = torch.nn.functional.cross_entropy(ours.logits[0, :-1, :vocab], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(restricted, theirs.loss, atol=1e-5, rtol=0)
    assert abs(ours.loss - theirs.loss) < 1e-3
    greedy = model.generate(input_ids=sequence, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    reference = original.generate(ids, images=pixels, max_new_tokens=4, do_sample=False)
    assert greedy[0, sequence.shape[1]:].tolist() == reference[0].tolist()


def test_the_processor_puts_the_token_after_bos_of_image_samples_only(tiny, converted):
    from transformers import AutoProcessor

    _, folder = converted
    processor = AutoProcessor.from_pretrained(folder)
    image = Image.open(next(tiny.images.glob("*.jpg"))).convert("RGB")
    plain = processor.tokenizer(["USER: <image>\nWhat colour? ASSISTANT:", "USER: Hello ASSISTANT:"])["input_ids"]
    out = processor(images=[image], text=["USER: <image>\nWhat colour? ASSISTANT:", "USER: Hello ASSISTANT:"],
                    alignment_levels=[5, 2], padding=True, return_tensors="pt")
    align, img = processor.alignment_token_id, processor.image_token_id
    first = out["input_ids"][0].tolist()
    assert first[:2] == [1, align] and first.count(align) == 1 and first.count(img) == 576
    # the text around the token tokenizes exactly as llava-hf's processor tokenizes it
    assert [t for t in first if t not in (align, img)] == [t for t in plain[0] if t != img]
    assert align not in out["input_ids"][1].tolist() and out["alignment_levels"].tolist() == [5, -1]
    assert out["attention_mask"][1].sum() == len(plain[1]) and out["pixel_values"].shape == (1, 3, 336, 336)


def test_readme_chat_template_then_generate(tiny, converted, tmp_path, monkeypatch, capsys):
    """The README's example, run as written there, on the converted tiny checkpoint."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"<!-- hf-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    _, folder = converted
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "aligngpt-7b-hf").symlink_to(folder)
    (tmp_path / "picture.jpg").write_bytes(next(tiny.images.glob("*.jpg")).read_bytes())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert scope["model"].last_gate_weights.shape == (1, 7) and "tensor(" in printed
    assert scope["inputs"]["input_ids"][0, 1] == scope["processor"].alignment_token_id
    assert scope["output"].shape[1] > scope["inputs"]["input_ids"].shape[1]
