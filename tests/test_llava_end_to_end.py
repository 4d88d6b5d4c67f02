"""LLaVA's own training and eval, unmodified, through the plugin's entry points, on the tiny fixtures.

Stage 1 (`--tune_mm_mlp_adapter True`, `plain`) writes `mm_projector.bin`; stage 2 (`v1`) starts from it
through LLaVA's `--pretrain_mm_mlp_adapter`; LLaVA's `load_pretrained_model` loads the result and
`llava.eval.model_vqa_loader` writes an answer file. Both stages are also interrupted and resumed,
and must end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligngpt_plugin.devkit import pipeline

PRETRAIN = pipeline.StageSettings(epochs=1, batch_size=4, learning_rate=1e-3, save_steps=4, save_total_limit=2)
FINETUNE = pipeline.StageSettings(epochs=1, batch_size=4, learning_rate=2e-5, save_steps=3, save_total_limit=2)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_runs")
    pre = root / "llava-tiny-pretrain"
    pipeline.train(pipeline.pretrain_args(tiny, pre, PRETRAIN), log=root / "pretrain.log")
    ft = root / "llava-tiny-finetune"
    pipeline.train(pipeline.finetune_args(tiny, pre / "mm_projector.bin", ft, FINETUNE), log=root / "finetune.log")
    return root, pre, ft


def resume_from(run: Path, checkpoint: str, copy_to: Path) -> Path:
    """A copy of `run` as it was when `checkpoint` was the newest thing written (an interrupted run)."""
    shutil.copytree(run, copy_to)
    for item in copy_to.iterdir():
        if item.name != checkpoint:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    return copy_to


def test_pretraining_saves_only_the_projector(runs):
    _, pre, _ = runs
    weights = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert set(weights) == {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert weights["model.mm_projector.0.weight"].shape == (64, 32)  # CLIP width 32 -> LLM width 64
    assert not list(pre.glob("*.safetensors")), "stage 1 must not save the frozen LLM"
    losses = pipeline.logged_losses(pre)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))


def test_pretraining_resumes_to_the_same_projector(runs, tiny):
    root, pre, _ = runs
    resumed = resume_from(pre, "checkpoint-4", root / "pretrain-resumed")
    pipeline.train(pipeline.pretrain_args(tiny, resumed, PRETRAIN), log=root / "pretrain-resumed.log")
    a = torch.load(pre / "mm_projector.bin", weights_only=True)
    b = torch.load(resumed / "mm_projector.bin", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pipeline.logged_losses(resumed)[-4:] == pipeline.logged_losses(pre)[-4:]


def test_finetuning_starts_from_the_pretrained_projector(runs):
    _, pre, ft = runs
    projector = torch.load(pre / "mm_projector.bin", weights_only=True)
    tuned = load_file(ft / "model.safetensors")
    # 6 AdamW steps at lr 2e-5 move a weight by at most ~1.2e-4; a fresh init would differ by ~0.1
    for key, value in projector.items():
        assert (tuned[key] - value).abs().max() < 2e-3, key
    config = json.loads((ft / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["mm_vision_select_layer"] == -2


def test_finetuning_trains_the_llm_but_not_the_vision_tower(runs, tiny):
    _, _, ft = runs
    tuned = load_file(ft / "model.safetensors")
    base = load_file(tiny.llm / "model.safetensors")
    assert not torch.equal(tuned["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    clip = load_file(tiny.clip / "model.safetensors")
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    # transformers 5's CLIPVisionModel has no `vision_model` level: its weights save without that prefix
    saved = tuned.get(f"model.vision_tower.vision_tower.{key}",
                      tuned.get(f"model.vision_tower.vision_tower.{key.removeprefix('vision_model.')}"))
    assert saved.dtype == torch.float16  # LLaVA runs the frozen tower in half precision without bf16
    assert torch.equal(saved, clip[key].half())


def test_finetuning_resumes_to_the_same_weights(runs, tiny):
    root, pre, ft = runs
    resumed = resume_from(ft, "checkpoint-3", root / "llava-tiny-finetune-resumed")
    args = pipeline.finetune_args(tiny, pre / "mm_projector.bin", resumed, FINETUNE)
    pipeline.train(args, log=root / "finetune-resumed.log")
    a, b = load_file(ft / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llava_loader_gives_back_the_finetuned_model(runs, llava_ready):
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    _, _, ft = runs
    tokenizer, model, processor, context = load_pretrained_model(
        str(ft), None, get_model_name_from_path(str(ft)), device="cpu")
    assert isinstance(model, LlavaLlamaForCausalLM)
    saved = load_file(ft / "model.safetensors")
    # LLaVA's loader always gives float16 weights
    assert torch.equal(model.get_model().mm_projector[0].weight, saved["model.mm_projector.0.weight"].half())
    assert processor.crop_size == {"height": 336, "width": 336}
    assert tokenizer("USER:").input_ids[0] == 1 and context == 2048


def test_model_vqa_loader_writes_an_answer_per_question(runs, tiny):
    root, _, ft = runs
    answers = pipeline.answer_questions(ft, tiny, root / "answers.jsonl", log=root / "eval.log")
    rows = pipeline.read_jsonl(answers)
    questions = pipeline.read_jsonl(tiny.questions)
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
    assert all(isinstance(r["text"], str) and r["model_id"] == "llava-tiny-finetune" for r in rows)
    assert 0.0 <= pipeline.answer_accuracy(answers, tiny.questions) <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the CPU breakage; with CUDA there is none")
def test_llava_eval_module_without_the_device_patch_fails_on_cpu(runs, tiny):
    root, _, ft = runs
    proc = subprocess.run([
        sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", str(ft),
        "--question-file", str(tiny.questions), "--image-folder", str(tiny.images),
        "--answers-file", str(root / "unpatched.jsonl"), "--temperature", "0",
    ], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "NVIDIA" in proc.stderr or "CUDA" in proc.stderr, proc.stderr[-2000:]
