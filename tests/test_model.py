"""The AlignGPT architecture: where the alignment token goes, stages, gate output, generate, save/load."""

from __future__ import annotations

import warnings

import pytest
import torch
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from PIL import Image
from tiny_models import tiny_aligngpt

import aligngpt_plugin.integrations.llava.compat  # noqa: F401  (patches first)
from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args

pytestmark = pytest.mark.usefixtures("llava_ready")


def build(tiny, stage="finetune", padding="right", **alignment):
    model = tiny_aligngpt(tiny, **alignment)
    model.config.tune_mm_mlp_adapter = stage == "pretrain"
    model.config.tokenizer_padding_side = padding
    return model


def batch(tiny, padding="right"):
    """Two samples: [BOS, <image>, 5 text] with labels on the last 3, and a text-only [BOS, 3 text]."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    image = Image.open(next(tiny.images.glob("*.jpg"))).convert("RGB")
    pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
    a = [1, IMAGE_TOKEN_INDEX, 319, 2654, 8607, 297, 13]
    b = [1, 1724, 338, 29871]
    pad = 0
    if padding == "right":
        ids = torch.tensor([a, b + [pad] * 3])
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()
    else:
        ids = torch.tensor([a, [pad] * 3 + b])
        mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4]).bool()
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    labels[~mask] = IGNORE_INDEX
    labels[1, mask[1]] = torch.tensor([IGNORE_INDEX, 1724, 338, 29871])
    images = torch.cat([pixels, torch.zeros_like(pixels)])  # LLaVA's collator gives text-only samples zeros
    return ids, mask, labels, images


def llava_prepare(model, ids, mask, labels, images):
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    return LlavaLlamaForCausalLM.prepare_inputs_labels_for_multimodal(
        model, ids, None, mask, None, labels, images)


# --- insert_after_bos on constructed tensors -------------------------------------------------------

@pytest.mark.parametrize("left", [False, True])
def test_insert_after_bos_places_token_and_pads(left):
    from aligngpt_plugin.integrations.llava.model import insert_after_bos

    emb = torch.arange(1, 9, dtype=torch.float).view(2, 4, 1)  # sample 0: 1..4, sample 1: 5..8
    if left:
        mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]).bool()
    else:
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    emb = emb * mask.unsqueeze(-1)
    labels = torch.where(mask, emb.squeeze(-1).long(), IGNORE_INDEX)
    token = torch.tensor([[100.0], [200.0]])
    out, att, lab, pos = insert_after_bos(emb, mask, labels, token, torch.tensor([True, True]), left_padded=left)
    assert out[0].squeeze(-1).tolist() == [1, 100, 2, 3, 4]
    assert att[0].tolist() == [True] * 5 and pos[0].tolist() == [0, 1, 2, 3, 4]
    assert lab[0].tolist() == [1, IGNORE_INDEX, 2, 3, 4]
    if left:
        assert out[1].squeeze(-1).tolist() == [0, 0, 7, 200, 8]
        assert att[1].tolist() == [False, False, True, True, True] and pos[1].tolist() == [0, 0, 0, 1, 2]
    else:
        assert out[1].squeeze(-1).tolist() == [5, 200, 6, 0, 0]
        assert att[1].tolist() == [True, True, True, False, False] and pos[1].tolist() == [0, 1, 2, 0, 0]


@pytest.mark.parametrize("left", [False, True])
def test_insert_after_bos_pads_samples_without_token(left):
    from aligngpt_plugin.integrations.llava.model import insert_after_bos

    emb = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    out, att, lab, _ = insert_after_bos(emb, mask, None, torch.tensor([[9.0]]), torch.tensor([True, False]),
                                        left_padded=left)
    assert out[0].squeeze(-1).tolist() == [1, 9, 2, 3]
    expected = [0, 4, 5, 6] if left else [4, 5, 6, 0]
    assert out[1].squeeze(-1).tolist() == expected and lab is None
    assert att[1].tolist() == ([False, True, True, True] if left else [True, True, True, False])


# --- the model --------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["right", "left"])
def test_token_sits_after_bos_and_the_rest_is_llava(tiny, padding):
    model = build(tiny, padding=padding).eval()
    ids, mask, labels, images = batch(tiny, padding)
    _, ref_pos, ref_mask, _, ref_emb, ref_lab = llava_prepare(model, ids, mask, labels, images)
    _, pos, new_mask, _, emb, lab = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    assert emb.shape[1] == ref_emb.shape[1] + 1
    token = model._gate_weights @ model.alignment.level_embeddings[:-1] + model.alignment.level_embeddings[-1]
    s = 0  # sample 0 is the longest: it starts at column 0 on both padding sides
    assert torch.allclose(emb[0, s + 1], token[0])
    assert torch.equal(emb[0, s], ref_emb[0, s]) and torch.equal(emb[0, s + 2:], ref_emb[0, s + 1:])
    assert lab[0, s + 1] == IGNORE_INDEX and torch.equal(lab[0, s + 2:], ref_lab[0, s + 1:])
    assert new_mask[0].all() and int(new_mask[1].sum()) == int(ref_mask[1].sum())  # no token without image
    n1 = int(mask[1].sum())
    rows = slice(-n1, None) if padding == "left" else slice(0, n1)
    ref_rows = slice(-n1, None) if padding == "left" else slice(0, n1)
    assert torch.equal(emb[1, rows], ref_emb[1, ref_rows])
    assert pos is None or pos[0].tolist() == list(range(emb.shape[1]))


def test_pretraining_needs_levels_and_uses_them(tiny):
    model = build(tiny, stage="pretrain")
    ids, mask, labels, images = batch(tiny)
    with pytest.raises(ValueError, match="align_level"):
        model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    _, _, _, _, emb, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, mask, None, labels, images, alignment_levels=torch.tensor([5, 2]))
    assert torch.equal(emb[0, 1], model.alignment.level_embeddings[5])


def ours(caught) -> list[str]:
    """Messages of the caught warnings that are the renamed keyword's."""
    return [str(w.message) for w in caught if "align_levels" in str(w.message)]


def test_the_old_levels_keyword_warns_and_gives_what_the_new_one_gives(tiny):
    """The per-sample levels are `alignment_levels` (the transformers-native model's name); their old name
    `align_levels=` (which is N on the command line) still works, with a FutureWarning naming the new one."""
    model = build(tiny, stage="pretrain").eval()
    ids, mask, labels, images = batch(tiny)
    levels = torch.tensor([5, 2])
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = model(**inputs, alignment_levels=levels)
        new_ids = model.generate(ids[:1], images=images[:1], alignment_levels=levels[:1], max_new_tokens=3,
                                 do_sample=False)
    assert ours(caught) == []
    with torch.no_grad(), pytest.warns(FutureWarning, match=r"`align_levels=`.*renamed `alignment_levels=`"):
        old = model(**inputs, align_levels=levels)
    with torch.no_grad(), pytest.warns(FutureWarning, match="alignment_levels"):
        old_ids = model.generate(ids[:1], images=images[:1], align_levels=levels[:1], max_new_tokens=3,
                                 do_sample=False)
    with pytest.warns(FutureWarning, match="alignment_levels"):
        _, _, _, _, emb, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images,
                                                                         align_levels=levels)
    assert torch.equal(old.logits, new.logits) and torch.equal(old.loss, new.loss)
    assert torch.equal(old_ids, new_ids) and new_ids.shape == (1, 3)
    assert torch.equal(emb[0, 1], model.alignment.level_embeddings[5])  # the level given, not a default
    with torch.no_grad():  # the levels matter: another level for the image sample, other logits
        other = model(**inputs, alignment_levels=torch.tensor([0, 2]))
    assert not torch.equal(other.logits, new.logits)
    with pytest.raises(TypeError, match="both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model(**inputs, alignment_levels=levels, align_levels=levels)


def test_pretraining_gradient_reaches_the_level_and_projector_only(tiny):
    model = build(tiny, stage="pretrain").train()
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    model.alignment.level_embeddings.requires_grad_(True)
    ids, mask, labels, images = batch(tiny)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images, alignment_levels=torch.tensor([3, 0]))
    out.loss.backward()
    grad = model.alignment.level_embeddings.grad
    assert grad[3].abs().sum() > 0 and grad[[0, 1, 2, 4, 5, 6, 7]].abs().sum() == 0  # sample 1 has no image
    assert all(p.grad is not None for p in model.get_model().mm_projector.parameters())
    assert out.gate_weights is None


def test_finetuning_output_carries_gate_weights(tiny):
    model = build(tiny)
    ids, mask, labels, images = batch(tiny)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    assert out.gate_weights.shape == (1, 7) and torch.allclose(out.gate_weights.sum(-1), torch.ones(1))
    out.loss.backward()
    assert model.alignment.gate[0].weight.grad.abs().sum() > 0


def test_gate_takes_image_lists_of_any_length_when_pooled(tiny):
    """LLaVA-1.6 any-resolution: a list with several views per sample; each sample's views form its tokens."""
    ids, mask, labels, images = batch(tiny)
    one = images[:1]
    views = [torch.cat([one, one.flip(-1), one.flip(-2)]), torch.zeros_like(one)]  # 3 views, text-only sample
    model = build(tiny, gate_input="pooled")
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=views)
    assert out.gate_weights.shape == (1, 7) and torch.allclose(out.gate_weights.sum(-1), torch.ones(1))
    assert out.logits.shape[1] == 7 - 1 + 3 * 576 + 1  # text, 3 x 576 image tokens, the alignment token
    # the same image as a one-view list gives the gate exactly what the tensor batch gives it
    single = model(input_ids=ids, attention_mask=mask, labels=labels, images=[one[0], torch.zeros_like(one[0])])
    tensor = model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    assert torch.allclose(single.gate_weights, tensor.gate_weights, atol=1e-6)
    with pytest.raises(ValueError, match="pooled"):
        build(tiny)(input_ids=ids, attention_mask=mask, labels=labels, images=views)


def test_prompt_only_gate_text_ignores_answer_tokens(tiny):
    model = build(tiny, gate_text="prompt")
    ids, mask, labels, _ = batch(tiny)
    text = model.gate_text_mask(ids, mask, labels)
    assert text[0].tolist() == [False, False, True, True, False, False, False]
    model_all = build(tiny)
    assert model_all.gate_text_mask(ids, mask, labels)[0].tolist() == [False, False, True, True, True, True, True]


def test_truncation_keeps_room_for_the_token(tiny):
    model = build(tiny)
    model.config.tokenizer_model_max_length = 100
    ids, mask, labels, images = batch(tiny)
    _, _, _, _, emb, lab = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
    assert emb.shape[1] == 100 and model.config.tokenizer_model_max_length == 100


def test_generate_runs_the_gate_at_prefill_and_uses_the_cache(tiny):
    model = build(tiny).eval()
    ids, _, _, images = batch(tiny)
    prompt, image = ids[:1], images[:1]
    cached = model.generate(prompt, images=image, max_new_tokens=5, do_sample=False, use_cache=True)
    weights = model.last_gate_weights
    uncached = model.generate(prompt, images=image, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (1, 5) and torch.equal(cached, uncached)
    assert weights.shape == (1, 7)


def test_save_and_load_round_trip(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    model = build(tiny, mode="local", gate_input="pooled", gate_tokens=64)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is AlignGPTLlamaForCausalLM
    assert loaded.config.alignment_config == model.config.alignment_config
    assert torch.equal(loaded.alignment.level_embeddings, model.alignment.level_embeddings)
    assert torch.equal(loaded.alignment.gate[2].weight, model.alignment.gate[2].weight)
    assert (tmp_path / "model.safetensors").is_file()


def gate_calls(model) -> list[int]:
    """Batch sizes of every call of the gate's first layer (a ZeRO-3 gather and a DDP reduction each)."""
    calls: list[int] = []
    model.alignment.gate[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_text_only_batch_still_runs_the_alignment_module_adding_zero(tiny, stage):
    """Data-parallel ranks stay in step: a rank whose batch has no image uses the weights its stage trains
    (zero gradient), and the loss is exactly what it is without the module."""
    model = build(tiny, stage=stage)
    ids, mask, labels, images = batch(tiny)
    ids, mask, labels, images = ids[1:], mask[1:], labels[1:], images[1:]  # the text-only sample alone
    calls = gate_calls(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images,
                alignment_levels=torch.tensor([3]) if stage == "pretrain" else None)
    out.loss.backward()
    trained = model.alignment.level_embeddings if stage == "pretrain" else model.alignment.gate[0].weight
    assert trained.grad is not None and not trained.grad.any()
    assert calls == ([] if stage == "pretrain" else [0])  # the gate, once, on no sample
    with torch.no_grad():
        model.alignment.gate[0].weight.mul_(3)
        model.alignment.level_embeddings.mul_(3)
        again = model(input_ids=ids, attention_mask=mask, labels=labels, images=images,
                      alignment_levels=torch.tensor([3]) if stage == "pretrain" else None)
    assert again.loss.item() == out.loss.item()
    assert out.logits.shape[1] == int(mask.sum())  # no token inserted (LLaVA drops the padding)


def test_the_gate_runs_once_per_forward_also_for_image_lists(tiny):
    ids, mask, labels, images = batch(tiny)
    one = images[:1]
    two_images = torch.stack([ids[0], ids[0]])  # two samples with images, as lists of 3 and 1 views
    views = [torch.cat([one, one.flip(-1), one.flip(-2)]), one.flip(-1)]
    model = build(tiny, gate_input="pooled")
    calls = gate_calls(model)
    out = model(input_ids=two_images, attention_mask=mask[:1].expand(2, -1), labels=labels[:1].expand(2, -1),
                images=views)
    assert calls == [2]  # one call for both samples
    # each sample's weights are what the gate gives that sample alone
    for k in range(2):
        alone = model(input_ids=ids[:1], attention_mask=mask[:1], labels=labels[:1], images=[views[k]])
        torch.testing.assert_close(out.gate_weights[k], alone.gate_weights[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_trainer_hook_trains_what_each_stage_trains(tiny, tmp_path, stage):
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import TrainingArguments

    from aligngpt_plugin.integrations.llava.aligngpt_training import aligngpt_trainer

    model = build(tiny, stage=stage)
    if stage == "pretrain":  # what LLaVA's train() does before building the trainer
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    aligngpt_trainer(LLaVATrainer)(model=model, args=args)
    levels, gate = model.alignment.level_embeddings, model.alignment.gate
    assert levels.requires_grad is (stage == "pretrain")
    assert all(p.requires_grad is (stage == "finetune") for p in gate.parameters())
    assert all(p.requires_grad for p in model.get_model().mm_projector.parameters())
    assert model.lm_head.weight.requires_grad is (stage == "finetune")


@pytest.mark.parametrize("mode, gate_trains", [("adaptive", True), ("local", True), ("global", False),
                                               ("no_gate", False), ("fixed_level", False)])
def test_only_the_weights_a_mode_uses_train(tiny, tmp_path, mode, gate_trains):
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import TrainingArguments

    from aligngpt_plugin.integrations.llava.aligngpt_training import aligngpt_trainer

    model = build(tiny, mode=mode, fixed_level=2 if mode == "fixed_level" else None)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    aligngpt_trainer(LLaVATrainer)(model=model, args=args)
    assert all(p.requires_grad is gate_trains for p in model.alignment.gate.parameters())
    assert not model.alignment.level_embeddings.requires_grad
    ids, mask, labels, images = batch(tiny)
    calls = gate_calls(model)
    model(input_ids=ids, attention_mask=mask, labels=labels, images=images).loss.backward()
    assert (calls == [1]) is gate_trains  # a trainable gate is one that runs


def test_fast_path_equals_general_insertion():
    from aligngpt_plugin.integrations.llava.model import insert_after_bos

    torch.manual_seed(0)
    emb, tokens = torch.randn(3, 6, 4), torch.randn(3, 4)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]]).bool()
    labels = torch.randint(0, 9, (3, 6))
    fast = insert_after_bos(emb, mask, labels, tokens, torch.tensor([True, True, True]), left_padded=False)
    # the same insertion through the general path: one sample without a token forces it
    general = insert_after_bos(torch.cat([emb, emb[:1]]), torch.cat([mask, mask[:1]]), torch.cat([labels, labels[:1]]),
                               tokens, torch.tensor([True, True, True, False]), left_padded=False)
    for a, b in zip(fast, general):
        assert torch.equal(a, b[:3])


def test_stage2_loads_levels_refuses_other_level_counts_and_refits_other_gates(tiny, tmp_path, capsys):
    """`--pretrain_mm_mlp_adapter`: levels and a same-shaped gate load; another N is an error naming the
    file; another gate shape (stage 1 never trains the gate) starts fresh, with a note."""
    stage1 = build(tiny, stage="pretrain")
    saved = {f"model.{k}": v for k, v in stage1.get_model().state_dict().items()
             if k.startswith(("mm_projector.", "alignment."))}
    path = tmp_path / "mm_projector.bin"
    torch.save(saved, path)

    def stage2(**alignment):
        model = build(tiny, **alignment)
        model.get_model().initialize_vision_modules(vision_module_args(tiny.clip, pretrain_mm_mlp_adapter=path))
        return model.get_model().alignment

    same = stage2(num_levels=8)
    assert torch.equal(same.level_embeddings, saved["model.alignment.level_embeddings"])
    assert torch.equal(same.gate[0].weight, saved["model.alignment.gate.0.weight"])

    with pytest.raises(ValueError, match=r"mm_projector.bin: alignment weight 'level_embeddings' .*--align_levels 4"):
        stage2(num_levels=4)

    narrow = stage2(num_levels=8, gate_hidden_size=32)
    assert torch.equal(narrow.level_embeddings, saved["model.alignment.level_embeddings"])
    assert narrow.gate[0].weight.shape == (32, 576)
    assert "starts a fresh gate" in capsys.readouterr().out


def test_gate_dump_joins_a_batch_that_mixes_image_and_text_only_questions(tiny, tmp_path):
    """lmms-eval with batch_size > 1: one line per question, in order, None where there is no image."""
    import json

    from aligngpt_plugin.integrations.llava.loader import dump_gate_weights

    model = build(tiny, padding="left").eval()
    ids, mask, _, images = batch(tiny, padding="left")
    order = [1, 0, 1]  # text-only, image, text-only
    dump_gate_weights(model, tmp_path / "gates.jsonl")
    with torch.no_grad():
        model.generate(ids[order], images=images[order], attention_mask=mask[order], max_new_tokens=2,
                       do_sample=False)
        alone = model(input_ids=ids[:1], attention_mask=mask[:1], images=images[:1]).gate_weights[0]
    rows = [json.loads(line)["gate_weights"] for line in (tmp_path / "gates.jsonl").read_text().splitlines()]
    assert rows[0] is None and rows[2] is None
    torch.testing.assert_close(torch.tensor(rows[1]), alone, atol=1e-5, rtol=0)
