"""Both AlignGPT stages through TRL's SFTTrainer and through transformers' plain Trainer (build_trainer): which
parameters get gradients, that frozen ones stay bit-identical over 2 steps and trained ones move; LoRA on the
LLM with the projector and gate trained in full, merged, saved and loaded back with the PEFT model's logits."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments
from trl import SFTConfig
from trl_tiny import GradientNames, tiny_model, tiny_processor, trl_dataset

from aligngpt_plugin.integrations.hf.training import AlignSFTArguments, build_trainer

PROJECTOR = "model.multi_modal_projector."
# what each stage trains, by name (the paper: stage 1 projector + levels; stage 2 gate + projector + LLM)
TRAINS = {
    1: lambda n: n.startswith(PROJECTOR) or n == "model.alignment.level_embeddings",
    2: lambda n: n.startswith((PROJECTOR, "model.language_model.", "lm_head.", "model.alignment.gate.")),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    dataset, _ = trl_dataset(tmp_path_factory.mktemp("stages"), count=6, text_only=2)
    return tiny_processor(), dataset


def arguments(kind: str, out, **extra):
    common = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                  report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True) | extra
    if kind == "trl":
        return SFTConfig(bf16=False, gradient_checkpointing=False, **common)
    return TrainingArguments(**common)


def train(setup, tmp_path, stage: int, kind: str, peft_config=None):
    processor, dataset = setup
    model = tiny_model(processor)
    grads = GradientNames()
    trainer = build_trainer(model, processor, dataset, arguments(kind, tmp_path), AlignSFTArguments(align_stage=stage),
                            trainer=kind, peft_config=peft_config, callbacks=[grads])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return trainer, grads.names, moved, set(before)


@pytest.mark.parametrize("kind", ["trl", "hf"])
@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_trains_its_parameters_and_no_other(setup, tmp_path, stage, kind):
    trainer, with_grad, moved, names = train(setup, tmp_path, stage, kind)
    expected = {n for n in names if TRAINS[stage](n)}
    assert expected and with_grad == expected and moved == expected
    assert trainer.model.config.alignment_stage == ("pretrain" if stage == 1 else "finetune")
    assert not any(n.startswith("model.vision_tower.") for n in moved)


@pytest.mark.parametrize("kind", ["trl", "hf"])
def test_lora_trains_lora_gate_and_projector_and_merges_to_the_same_logits(setup, tmp_path, kind):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator

    processor, dataset = setup
    trainer, with_grad, moved, names = train(setup, tmp_path, 2, kind, LoraConfig(r=4, lora_alpha=8,
                                                                                  task_type="CAUSAL_LM"))
    copies = ".modules_to_save.default."
    expected = {n for n in names if "lora_" in n
                or (copies in n and (PROJECTOR in n or "alignment.modules_to_save.default.gate." in n))}
    assert any("language_model" in n and "lora_A" in n for n in expected)
    # the gate and the projector train in full, as PEFT copies saved with the adapter; the levels are frozen
    assert {n.split(copies)[0].rsplit(".", 1)[-1] for n in with_grad if copies in n} == {"multi_modal_projector",
                                                                                         "alignment"}
    assert any(".gate." in n for n in with_grad) and not any("level_embeddings" in n for n in moved)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in expected if "lora_" in n)
    assert with_grad == expected and moved == expected
    # merged, saved, loaded: the PEFT model's logits
    batch = AlignGPTVisionCollator(processor=processor)([dataset[k] for k in (0, 6, 1)])
    peft_model = trainer.model.eval()
    with torch.no_grad():
        want = peft_model(**batch).logits
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    assert type(loaded).__name__ == "AlignGPTLlavaForConditionalGeneration"
    with torch.no_grad():
        got = loaded(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.equal(loaded.model.multi_modal_projector.linear_1.weight,
                           tiny_model(processor).model.multi_modal_projector.linear_1.weight)  # the trained copy


def test_stage_1_refuses_lora(setup, tmp_path):
    from peft import LoraConfig

    processor, dataset = setup
    with pytest.raises(ValueError, match="drop --use_peft for stage 1"):
        build_trainer(tiny_model(processor), processor, dataset, arguments("hf", tmp_path),
                      AlignSFTArguments(align_stage=1), trainer="hf", peft_config=LoraConfig(r=4))


@pytest.mark.parametrize("kind", ["trl", "hf"])
def test_load_best_model_at_end_restores_every_weight_of_the_best_checkpoint(setup, tmp_path, kind):
    """`load_best_model_at_end` with the best checkpoint not the last: the model the trainer ends with equals the
    best checkpoint as `from_pretrained` reads it (the outside reference), weight for weight. The run evaluates
    and saves every step; `greater_is_better=True` on the eval loss makes the worst-loss step "best", so the
    choice is known from the logged losses (the test checks it is not the last step). Planted: without the
    trainers' `_load_best_model` override, 4.57 loads the legacy checkpoint keys non-strictly (transformers#43701)
    and the model keeps its last weights: every LLM and projector weight differs from the checkpoint's."""
    from transformers import AutoModelForImageTextToText

    processor, dataset = setup
    extra = dict(max_steps=3, learning_rate=5e-2, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                 save_steps=1, load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True)
    trainer = build_trainer(tiny_model(processor), processor, dataset, arguments(kind, tmp_path, **extra),
                            AlignSFTArguments(align_stage=2), trainer=kind, eval_dataset=dataset)
    trainer.train()
    losses = {row["step"]: row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row}
    best_step = max(losses, key=losses.get)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}") and best_step != 3
    best = AutoModelForImageTextToText.from_pretrained(trainer.state.best_model_checkpoint)
    reference = best.state_dict()
    ours = trainer.model.state_dict()
    assert set(ours) == set(reference)
    differ = [k for k in ours if not torch.equal(ours[k], reference[k])]
    assert not differ, differ[:5]
