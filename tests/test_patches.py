"""Every fix in patches/: the LLaVA code path it repairs fails without it and works with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llava_checks
import pytest

from aligngpt_plugin import patches

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def unpatched_results() -> dict[str, str]:
    """Each probe's result in a fresh process where its patch was not applied (all run at once)."""
    procs = {
        probe: subprocess.Popen([sys.executable, str(HERE / "llava_checks.py"), patch, probe],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
        for probe, (patch, _) in BREAKAGES.items()
    }
    results = {}
    for probe, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results[probe] = json.loads(out.strip().splitlines()[-1])[probe]
    return results


# probe -> (patch left out, a piece of the error LLaVA gives without the patch on this stack)
BREAKAGES = {
    "import_llava_trainer": ("all_layernorm_layers", "ALL_LAYERNORM_LAYERS"),
    "save_projector_without_deepspeed": ("maybe_zero_3", "deepspeed"),
    "full_checkpoint": ("save_checkpoint_signature", "positional arguments"),
    "train_dataloader": ("train_sampler_signature", "positional argument"),
    "adapter_checkpoint_resume": ("adapter_checkpoint_resume", "no trainer_state.json"),
    "generate": ("generate_cache_position", ("cache_position", "'cache'")),  # 4.38-4.57, 5.24+
    "llava_script_flags": ("evaluation_strategy_flag", "evaluation_strategy"),
    "deepspeed_final_save": ("deepspeed_final_save", "NVIDIA driver"),
    "qlora_loading": ("quantized_loading_kwargs", ("You can't pass `load_in_4bit`",  # 4.57
                                                   "unexpected keyword argument 'load_in_4bit'")),  # 5.x
    "vision_tower_rng": ("vision_tower_rng", "advanced torch's RNG"),  # 4.x
}


# patches whose breakage only some transformers releases show (needed() says which)
VERSION_DEPENDENT = {"generate_cache_position", "vision_tower_rng"}


@pytest.mark.parametrize("probe", sorted(BREAKAGES))
def test_probe_fails_without_its_patch(unpatched_results, probe):
    patch, symptom = BREAKAGES[probe]
    if patch in VERSION_DEPENDENT and not patches._module(patch).needed():
        pytest.skip(f"patches/{patch}.py is not needed on this transformers")
    result = unpatched_results[probe]
    assert result != "ok", f"{probe} passed without patches/{patch}.py: is the patch still needed?"
    symptoms = (symptom,) if isinstance(symptom, str) else symptom
    assert any(s in result for s in symptoms), result


@pytest.mark.parametrize("probe", sorted(BREAKAGES))
def test_probe_passes_with_all_patches(llava_ready, probe):
    assert llava_checks.run([probe]) == {probe: "ok"}


def test_every_patch_is_probed_or_tested_elsewhere():
    probed = {patch for patch, _ in BREAKAGES.values()}
    # eval_device: tests/test_llava_end_to_end.py runs LLaVA's eval module with and without it;
    # trainer_tokenizer_kwarg: transformers 5 only, tested below on a stand-in with 5.x's signature;
    # cpu_distributed: needs several processes: tests/test_multiprocess.py runs 2 with it and without it.
    # clip_image_processor_backend, slow_tokenizer_class: tests/test_golden_tokenization.py (pixels) and
    # tests/test_aligngpt_training.py (Mistral backbone, v1 targets) on transformers 5;
    # warmup_ratio_flag: the unit test below, and every script run (tests/test_scripts.py) on 5.15+.
    assert probed | {"eval_device", "trainer_tokenizer_kwarg", "cpu_distributed", "clip_image_processor_backend",
                     "slow_tokenizer_class", "warmup_ratio_flag"} == set(patches.PATCH_MODULES)


def test_apply_all_is_idempotent(llava_ready):
    from llava.train.llava_trainer import LLaVATrainer

    before = {name: getattr(LLaVATrainer, name) for name in ("_save_checkpoint", "_get_train_sampler")}
    for name in patches.PATCH_MODULES:
        assert patches._module(name).apply() is False, f"{name} changed something a second time"
    assert before == {name: getattr(LLaVATrainer, name) for name in before}


def test_status_reports_every_patch(llava_ready):
    rows = {row.name: row for row in patches.status()}
    assert set(rows) == set(patches.PATCH_MODULES)
    for row in rows.values():
        assert row.summary and not row.summary.startswith('"""')
        if row.needed and row.name != "evaluation_strategy_flag":
            assert row.applied, f"{row.name} is needed on this stack but not applied"



class Trainer5:
    """Stand-in with transformers 5's Trainer.__init__ signature (no `tokenizer` keyword)."""

    def __init__(self, model=None, args=None, processing_class=None):
        self.processing_class = processing_class


def test_tokenizer_kwarg_maps_to_processing_class():
    from aligngpt_plugin.patches.trainer_tokenizer_kwarg import accept_tokenizer_kwarg

    class Unpatched(Trainer5):
        pass

    with pytest.raises(TypeError, match="tokenizer"):
        Unpatched(model=None, tokenizer="tok")

    class Patched(Trainer5):
        pass

    accept_tokenizer_kwarg(Patched)
    assert Patched(model=None, tokenizer="tok").processing_class == "tok"
    with pytest.raises(TypeError, match="not both"):
        Patched(tokenizer="a", processing_class="b")
    accept_tokenizer_kwarg(Patched)  # idempotent: still one level of wrapping
    assert Patched(tokenizer="tok").processing_class == "tok"


@pytest.mark.parametrize("module", [
    "llava.eval.model_vqa_loader", "llava.eval.model_vqa", "llava.eval.model_vqa_science",
    "llava.eval.model_vqa_mmbench",
])
def test_eval_device_rewrite_removes_every_cuda_literal(module):
    import importlib.util

    from aligngpt_plugin.patches.eval_device import rewrite

    source = importlib.util.find_spec(module).loader.get_source(module)
    assert "device='cuda'" in source or ".cuda()" in source
    fixed = rewrite(source)
    assert "device='cuda'" not in fixed and ".cuda()" not in fixed
    assert fixed.count("\n") == source.count("\n"), "line numbers must stay LLaVA's"
    compile(fixed, module, "exec")


def test_script_flag_rename_keeps_other_arguments():
    from aligngpt_plugin.patches.evaluation_strategy_flag import rewrite_argv

    argv = ["--evaluation_strategy", "no", "--evaluation_strategy=steps", "--lr", "1"]
    assert rewrite_argv(argv) == ["--eval_strategy", "no", "--eval_strategy=steps", "--lr", "1"]


def test_cpu_distributed_adds_use_cpu_only_for_several_processes_without_cuda(monkeypatch):
    from aligngpt_plugin.patches import cpu_distributed

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cpu_distributed.rewrite_argv(["--x", "1"]) == ["--x", "1", "--use_cpu", "True"]
    assert cpu_distributed.rewrite_argv(["--use_cpu", "False"]) == ["--use_cpu", "False"]  # the user's word wins
    assert cpu_distributed.rewrite_argv(["--use_cpu=False"]) == ["--use_cpu=False"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cpu_distributed.rewrite_argv(["--x", "1"]) == ["--x", "1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert cpu_distributed.rewrite_argv(["--x", "1"]) == ["--x", "1"]


def test_warmup_ratio_becomes_warmup_steps_where_the_field_is_gone(monkeypatch):
    from aligngpt_plugin.patches import warmup_ratio_flag as w

    monkeypatch.setattr(w, "needed", lambda: True)
    assert w.rewrite_argv(["--warmup_ratio", "0.03", "--lr", "1"]) == ["--lr", "1", "--warmup_steps", "0.03"]
    assert w.rewrite_argv(["--warmup_ratio=0.03"]) == ["--warmup_steps", "0.03"]
    # 4.x: a positive warmup_steps wins over the ratio
    assert w.rewrite_argv(["--warmup_ratio", "0.03", "--warmup_steps", "5"]) == ["--warmup_steps", "5"]
    assert w.rewrite_argv(["--warmup_ratio", "1.0"]) == ["--warmup_steps", "0.9999999"]
    assert w.rewrite_argv(["--lr", "1"]) == ["--lr", "1"]
    monkeypatch.setattr(w, "needed", lambda: False)
    assert w.rewrite_argv(["--warmup_ratio", "0.03"]) == ["--warmup_ratio", "0.03"]
