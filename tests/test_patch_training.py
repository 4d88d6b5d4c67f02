"""Patch-aligned pre-training through LLaVA's train(): flags, data, the trainer's loss and gradients, end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from aligngpt_plugin.core.patch_geometry import PatchLabelError
from aligngpt_plugin.devkit import pipeline
from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
from aligngpt_plugin.integrations.llava.patch_training import PatchAlignmentSettings, split_patch_alignment_args


@pytest.mark.parametrize("argv, expected", [
    (["--version", "plain"], None),
    (["--patch_align_weight", "0"], None),
    (["--patch_align_weight", "0.5"], PatchAlignmentSettings(0.5, "mean", 0.5)),
    (["--patch_align_weight", "2", "--patch_align_multi", "best", "--patch_align_min_overlap", "0.25"],
     PatchAlignmentSettings(2.0, "best", 0.25)),
])
def test_flags(argv, expected):
    settings, rest = split_patch_alignment_args(argv + ["--seed", "1"])
    assert settings == expected and rest[-2:] == ["--seed", "1"] and not any("patch_align" in a for a in rest)


@pytest.mark.parametrize("argv, error", [
    (["--patch_align_multi", "best"], "needs --patch_align_weight"),
    (["--patch_align_weight", "-1"], "must be >= 0"),
    (["--patch_align_weight", "1", "--patch_align_min_overlap", "0"], r"must be in \(0, 1\]"),
])
def test_bad_flags(argv, error):
    with pytest.raises(SystemExit, match=error):
        split_patch_alignment_args(argv)


def tokenizer(tiny):
    from llava import conversation
    from transformers import AutoTokenizer

    conversation.default_conversation = conversation.conv_templates["plain"]
    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False, model_max_length=2048)
    tok.pad_token = tok.unk_token
    return tok


def data_module(tiny, path, levels: int | None = None):
    from llava.train.train import make_supervised_data_module
    from transformers import CLIPImageProcessor

    from aligngpt_plugin.integrations.llava.data import make_level_aware_data_module
    from aligngpt_plugin.integrations.llava.patch_data import patch_label_data_module

    args = SimpleNamespace(data_path=str(path), image_folder=str(tiny.images), is_multimodal=True,
                           mm_use_im_start_end=False, image_aspect_ratio="square",
                           image_processor=CLIPImageProcessor.from_pretrained(tiny.clip))
    inner = make_supervised_data_module
    if levels:
        import functools

        inner = functools.partial(make_level_aware_data_module, num_levels=levels, require_levels=True)
    return patch_label_data_module(inner, tokenizer(tiny), args, min_overlap=0.5)


def test_batch_carries_patch_targets(tiny, tmp_path, llava_ready):
    from transformers import CLIPImageProcessor

    from aligngpt_plugin.core.patch_geometry import parse_record_labels, patch_targets, preprocess_geometry

    records = json.loads(tiny.pretrain_patches.read_text())[:3]
    records[1] = {k: v for k, v in records[1].items() if k != "patch_labels"}  # trains as usual
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    module = data_module(tiny, path)
    dataset, collate = module["train_dataset"], module["data_collator"]
    dataset.set_grid(24)
    assert len(dataset) == 3 and dataset.labelled_records == 2 and len(dataset.lengths) == 3
    batch = collate([dataset[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 336, 336) and batch["input_ids"].shape[0] == 3
    assert batch["patch_assignment"].shape == (3, 576, 2) and batch["patch_phrase_ids"].shape[:2] == (3, 2)
    assert not batch["patch_assignment"][1].any() and not batch["patch_phrase_mask"][1].any()
    tok = tokenizer(tiny)
    phrases = [tok.decode(ids[m]) for ids, m in zip(batch["patch_phrase_ids"][0], batch["patch_phrase_mask"][0])]
    assert phrases == [lab["phrase"] for lab in records[0]["patch_labels"]]
    from PIL import Image

    size = Image.open(tiny.images / records[2]["image"]).size
    geometry = preprocess_geometry(size, CLIPImageProcessor.from_pretrained(tiny.clip), "square")
    want = patch_targets(parse_record_labels(records[2], 2), size, geometry, 24, 0.5).assignment
    assert torch.equal(batch["patch_assignment"][2], torch.from_numpy(want)) and want.sum() > 10


def test_malformed_label_fails_before_training_naming_the_record(tiny, tmp_path, llava_ready):
    records = json.loads(tiny.pretrain_patches.read_text())[:2]
    records[1]["patch_labels"][0]["box"] = [10, 10, 5, 40]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(PatchLabelError, match=rf"record 1 \(id '{records[1]['id']}'\) of .*bad.json.*reversed"):
        data_module(tiny, path)


def pretraining_model(tiny, levels: int | None):
    """A LLaVA (or AlignGPT) model set up as LLaVA's stage 1 sets it up: only the projector trains."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from aligngpt_plugin.core.alignment import AlignmentConfig
    from aligngpt_plugin.integrations.llava.aligngpt_training import aligngpt_loader

    torch.manual_seed(0)
    cls = aligngpt_loader(AlignmentConfig(num_levels=levels)) if levels else LlavaLlamaForCausalLM
    model = cls.from_pretrained(tiny.llm)
    model.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
    model.config.tune_mm_mlp_adapter = True
    model.config.tokenizer_padding_side = "right"
    model.config.use_cache = False
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    return model


def make_trainer(tiny, tmp_path, model, module, levels: int | None, weight: float = 1.0):
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.train import TrainingArguments

    from aligngpt_plugin.integrations.llava.aligngpt_training import aligngpt_trainer
    from aligngpt_plugin.integrations.llava.patch_training import patch_aligned_trainer

    base = aligngpt_trainer(LLaVATrainer) if levels else LLaVATrainer
    cls = patch_aligned_trainer(base, PatchAlignmentSettings(weight=weight))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, report_to="none",
                             use_cpu=True)
    args.tune_mm_mlp_adapter = True  # as LLaVA's train() sets it
    return cls(model=model, tokenizer=tokenizer(tiny), args=args, **module)


@pytest.mark.parametrize("levels", [None, 8])
def test_gradient_reaches_only_the_projector_and_levels(tiny, tmp_path, llava_ready, levels):
    records = json.loads(tiny.pretrain_patches.read_text())[:2]
    records = [{**r, "align_level": i} for i, r in enumerate(records)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    module = data_module(tiny, path, levels)
    model = pretraining_model(tiny, levels)
    trainer = make_trainer(tiny, tmp_path, model, module, levels)
    batch = module["data_collator"]([module["train_dataset"][i] for i in range(2)])

    # 1. the training loss under LLaVA's stage-1 freeze: gradient on the projector (and level embeddings) only
    trainer.state.global_step = 0
    total = trainer.compute_loss(model, dict(batch))
    total.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {n for n, _ in model.named_parameters() if "mm_projector" in n}
    if levels:
        expected.add("model.alignment.level_embeddings")
    assert with_grad == expected
    trainer.state.global_step = 1
    logs = {"loss": float(total.detach())}
    trainer.log(logs)
    assert logs["caption_loss"] + logs["patch_loss"] == pytest.approx(float(total), rel=1e-5)
    assert 0 < logs["patch_loss"] < 2

    # 2. the patch term alone, with every weight trainable: it reaches the projector and nothing else
    model.zero_grad()
    model.requires_grad_(True)
    total = trainer.compute_loss(model, dict(batch))
    caption = model(**{k: v for k, v in batch.items() if not k.startswith("patch_")}).loss
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(total - caption, params, allow_unused=True)
    reached = {n for n, g in zip(names, grads) if g is not None and g.abs().max() > 1e-6}
    assert reached == {n for n in names if "mm_projector" in n}


def test_training_data_without_any_label_is_refused(tiny, tmp_path, llava_ready):
    module = data_module(tiny, tiny.pretrain)
    with pytest.raises(PatchLabelError, match="no record of the training data has `patch_labels`"):
        make_trainer(tiny, tmp_path, pretraining_model(tiny, None), module, None)


# --- end to end through python -m aligngpt_plugin.train ---------------------------------------------

def logs(run):
    return [row for row in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in row]


def test_pretraining_with_the_patch_loss(tiny, tmp_path):
    run = tmp_path / "patch"
    settings = pipeline.StageSettings(max_steps=3, save_steps=1, save_total_limit=3)
    pipeline.train(pipeline.pretrain_args(tiny, run, settings, data=tiny.pretrain_patches,
                                          extra=("--patch_align_weight", "0.5")), log=tmp_path / "log")
    rows = logs(run)
    assert len(rows) == 3
    for row in rows:
        assert 0 < row["patch_loss"] < 2 and row["caption_loss"] > 1
        assert row["loss"] == pytest.approx(row["caption_loss"] + 0.5 * row["patch_loss"], abs=2e-4)
    assert "patch alignment, weight 0.5, mean" in (tmp_path / "log").read_text()
    first = torch.load(run / "checkpoint-1" / "mm_projector.bin", weights_only=True)
    last = torch.load(run / "mm_projector.bin", weights_only=True)
    assert first.keys() == last.keys() and any(not torch.equal(first[k], last[k]) for k in first)


def test_pretraining_with_the_patch_loss_and_levels(tiny, tmp_path):
    data = tmp_path / "levels_and_patches.json"
    data.write_text(json.dumps([{**r, "align_level": i % 8}
                                for i, r in enumerate(json.loads(tiny.pretrain_patches.read_text()))]))
    run = tmp_path / "aligngpt"
    settings = pipeline.StageSettings(max_steps=2, save_steps=1000)
    pipeline.train(pipeline.pretrain_args(tiny, run, settings, data=data, extra=(
        "--align_levels", "8", "--patch_align_weight", "1", "--patch_align_multi", "best")), log=tmp_path / "log")
    rows = logs(run)
    assert len(rows) == 2 and all(r["loss"] == pytest.approx(r["caption_loss"] + r["patch_loss"], abs=2e-4)
                                  for r in rows)
    weights = torch.load(run / "mm_projector.bin", weights_only=True)
    assert "model.alignment.level_embeddings" in weights and "model.mm_projector.0.weight" in weights
    assert "AlignGPT, 8 levels, pre-training" in (tmp_path / "log").read_text()


def test_fine_tuning_refuses_the_flag(tiny, tmp_path):
    with pytest.raises(RuntimeError, match="applies to pre-training"):
        pipeline.train(pipeline.finetune_args(tiny, tmp_path / "none.bin", tmp_path / "ft",
                                              extra=("--patch_align_weight", "1")))
