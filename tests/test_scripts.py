"""The reproduction scripts in scripts/: their commands carry the paper's recipe, and each one runs end to
end in tiny mode (ALIGNGPT_TINY) through DeepSpeed on the CPU, so a typo in a script fails here.

The tests run the scripts themselves (bash scripts/NAME.sh), not a copy of their commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
ALL_SCRIPTS = ("pretrain.sh", "finetune.sh", "finetune_lora.sh", "finetune_qlora.sh", "ablation.sh")


def script_env(**extra: str) -> dict[str, str]:
    """This interpreter's bin folder first on PATH (its `deepspeed`, `torchrun`), and PYTHON set to it."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOSTFILE", "NUM_GPUS", "ALIGNGPT_TINY", "LAUNCHER")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHON=sys.executable,
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_script(name: str, log: Path | None = None, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPTS / name)], env=script_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise AssertionError(f"bash scripts/{name} failed (exit {proc.returncode}):\n{tail}")
    return proc


def dry_run(name: str, **env: str) -> dict[str, str]:
    """The command a script would run (DRY_RUN=1), as {flag: value} plus '_argv' (the command's words)."""
    words = shlex.split(run_script(name, DRY_RUN="1", **env).stdout.strip().splitlines()[-1])
    flags = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            flags[word] = "" if nxt.startswith("--") else nxt
    flags["_argv"] = words
    return flags


def global_batch(flags: dict[str, str], processes: int) -> int:
    return (int(flags["--per_device_train_batch_size"]) * int(flags["--gradient_accumulation_steps"]) * processes)


# ---- the commands: docs/method.md#training-recipe, without running anything ------------------------------------

RECIPE = {  # script -> flags every run must carry (docs/method.md#training-recipe, LLaVA-1.5's scripts)
    "pretrain.sh": {"--version": "plain", "--tune_mm_mlp_adapter": "True", "--learning_rate": "1e-3",
                    "--deepspeed": "zero2.json"},
    "finetune.sh": {"--version": "v1", "--learning_rate": "2e-5", "--image_aspect_ratio": "pad",
                    "--group_by_modality_length": "True", "--deepspeed": "zero3.json"},
    "finetune_lora.sh": {"--version": "v1", "--lora_enable": "True", "--lora_r": "128", "--lora_alpha": "256",
                         "--learning_rate": "2e-4", "--mm_projector_lr": "2e-5", "--deepspeed": "zero3.json"},
    "finetune_qlora.sh": {"--bits": "4", "--quant_type": "nf4", "--double_quant": "True", "--lora_enable": "True",
                          "--learning_rate": "2e-4", "--deepspeed": "zero2.json"},
}
SHARED = {"--vision_tower": "openai/clip-vit-large-patch14-336", "--mm_projector_type": "mlp2x_gelu",
          "--mm_vision_select_layer": "-2", "--bf16": "True", "--tf32": "True", "--num_train_epochs": "1",
          "--weight_decay": "0.", "--warmup_ratio": "0.03", "--lr_scheduler_type": "cosine",
          "--model_max_length": "2048", "--gradient_checkpointing": "True", "--align_levels": "8"}


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("script", sorted(RECIPE))
def test_commands_carry_the_paper_recipe(script, size):
    flags = dry_run(script, MODEL_SIZE=size, NUM_GPUS="8")
    assert flags["_argv"][:5] == ["deepspeed", "--num_gpus", "8", "--master_port", "29500"]
    assert flags["--module"] == "aligngpt_plugin.train"
    assert flags["--model_name_or_path"] == f"lmsys/vicuna-{size}-v1.5"
    for flag, value in {**SHARED, **RECIPE[script]}.items():
        if flag == "--deepspeed":
            config = Path(flags[flag])
            assert config.name == value and config.is_file(), flags[flag]
            assert config.parent == ROOT / "aligngpt_plugin" / "deepspeed_configs"
        else:
            assert flags[flag] == value, (flag, flags[flag])
    want = 256 if script == "pretrain.sh" else 128
    assert global_batch(flags, 8) == want
    if script == "pretrain.sh":  # AlignGPT's own split: 8 GPUs x 8 x accumulation 4
        assert (flags["--per_device_train_batch_size"], flags["--gradient_accumulation_steps"]) == ("8", "4")
        # 558,128 pairs / 256 = 2,181 steps: a checkpoint at least every tenth of the run, so it can resume
        assert int(flags["--save_steps"]) <= 558_128 // 256 // 10


@pytest.mark.parametrize("gpus,per_device,accum", [("1", "16", "8"), ("2", "16", "4"), ("16", "8", "1")])
def test_global_batch_stays_128_for_any_gpu_count(gpus, per_device, accum):
    flags = dry_run("finetune.sh", NUM_GPUS=gpus)
    assert (flags["--per_device_train_batch_size"], flags["--gradient_accumulation_steps"]) == (per_device, accum)
    assert global_batch(flags, int(gpus)) == 128


def test_multinode_goes_through_deepspeeds_launcher(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n")
    flags = dry_run("pretrain.sh", HOSTFILE=str(hostfile), MASTER_ADDR="10.0.0.1")
    assert flags["--hostfile"] == str(hostfile) and flags["--launcher"] == "pdsh"
    assert flags["--master_addr"] == "10.0.0.1" and "--num_gpus" not in flags
    assert global_batch(flags, 16) == 256  # 16 processes: 8 x 16 x accumulation 2
    flags = dry_run("finetune.sh", HOSTFILE=str(hostfile), NO_SSH="1", NODE_RANK="1", DS_LAUNCHER="slurm")
    assert flags["--no_ssh"] == "" and flags["--node_rank"] == "1" and flags["--launcher"] == "slurm"
    assert global_batch(flags, 16) == 128
    flags = dry_run("finetune.sh", LAUNCHER="torchrun", NUM_GPUS="4", NNODES="2", NODE_RANK="1")
    assert flags["_argv"][0] == "torchrun" and flags["--nnodes"] == "2" and flags["--deepspeed"].endswith("zero3.json")


def test_overrides_reach_the_command():
    flags = dry_run("finetune.sh", ZERO="zero3_offload", ATTN="eager", LLM="/models/vicuna", ALIGN_LEVELS="0",
                    EXTRA_ARGS="--align_gate_input pooled --report_to wandb")
    assert flags["--deepspeed"].endswith("zero3_offload.json")
    assert flags["--model_name_or_path"] == "/models/vicuna" and "--align_levels" not in flags
    assert flags["_argv"][-4:] == ["--align_gate_input", "pooled", "--report_to", "wandb"]


@pytest.mark.parametrize("env,message", [
    ({"MODEL_SIZE": "30b"}, "MODEL_SIZE=30b: choose 7b or 13b"),
    ({"NUM_GPUS": "3"}, "GLOBAL_BATCH=128 is not a multiple of PER_DEVICE_BATCH=16 x 3 processes"),
    ({"LAUNCHER": "mpirun"}, "LAUNCHER=mpirun: choose deepspeed, torchrun or python"),
    ({"HOSTFILE": "/nonexistent/hostfile"}, "HOSTFILE=/nonexistent/hostfile does not exist"),
    ({"CHECKPOINTS": "/nonexistent"}, "mm_projector.bin not found: run scripts/pretrain.sh first"),
])
def test_bad_settings_fail_with_a_clear_message(env, message):
    proc = run_script("finetune.sh", check=False, **{"DRY_RUN": "1" if "CHECKPOINTS" not in env else "0", **env})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_shipped_deepspeed_configs(name):
    from aligngpt_plugin.deepspeed_configs import config_path, load_config

    config = load_config(name)
    stage = config["zero_optimization"]["stage"]
    assert stage == (2 if name == "zero2" else 3)
    assert ("offload_param" in config["zero_optimization"]) == (name == "zero3_offload")
    # batch, accumulation and precision come from the command line, so one file serves every run
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    assert "train_batch_size" not in config  # DeepSpeed derives it with its own world size
    assert config["bf16"]["enabled"] == "auto"
    printed = subprocess.run([sys.executable, "-m", "aligngpt_plugin.deepspeed_configs", name],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Path(printed) == config_path(name)
    with pytest.raises(ValueError, match="available: zero2, zero3, zero3_offload"):
        config_path("zero1")


# ---- every script, end to end, in tiny mode ---------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Every script once in tiny mode: pre-training first, then the four others side by side."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("DeepSpeed is not installed; the scripts' CI check runs them through it: "
                    "pip install -c constraints.txt deepspeed")
    out = tmp_path_factory.mktemp("scripts")
    base = {"ALIGNGPT_TINY": str(tiny.root), "CHECKPOINTS": str(out)}
    run_script("pretrain.sh", out / "pretrain.log", **base)
    jobs = {
        "finetune.sh": {**base},
        "finetune_lora.sh": {**base, "MASTER_PORT": "29511"},
        "finetune_qlora.sh": {**base, "MASTER_PORT": "29512"},
        "ablation.sh": {**base, "ALIGN_LEVELS": "4", "ALIGN_MODE": "global", "MASTER_PORT": "29513"},
    }
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two runs at a time
        futures = [pool.submit(run_script, name, out / f"{name}.log", **env) for name, env in jobs.items()]
        for future in futures:
            future.result()
    return out


def levels_of(projector: Path) -> torch.Tensor:
    weights = torch.load(projector, map_location="cpu", weights_only=True)
    return next(v for k, v in weights.items() if k.endswith("alignment.level_embeddings"))


def test_pretrain_script_trains_levels_with_zero2(runs):
    out = runs / "aligngpt-7b-pretrain"
    weights = torch.load(out / "mm_projector.bin", map_location="cpu", weights_only=True)
    assert any("mm_projector" in k for k in weights)
    assert levels_of(out / "mm_projector.bin").shape[0] == 8
    log = (runs / "pretrain.log").read_text()
    assert "[aligngpt] attention: sdpa" in log  # the attention choice is reported at start
    assert "[scripts] deepspeed --num_gpus 1" in log and "zero2.json" in log
    # DeepSpeed wrote its own ZeRO-2 checkpoint layout (ZeRO-3 would shard the model states per rank)
    assert (out / "checkpoint-2" / "global_step2" / "mp_rank_00_model_states.pt").is_file()


def test_finetune_script_gives_a_loadable_aligngpt_checkpoint(runs, llava_ready):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    out = runs / "aligngpt-7b"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, AlignGPTLlamaForCausalLM)
    # stage 2 keeps the levels of stage 1 frozen, whatever the ZeRO stage did to them in between
    assert torch.equal(model.alignment.level_embeddings.detach(),
                       levels_of(runs / "aligngpt-7b-pretrain" / "mm_projector.bin"))
    log = (runs / "finetune.sh.log").read_text()
    assert "zero3.json" in log  # through DeepSpeed, also on the CPU (patches/deepspeed_final_save.py)
    assert (out / "checkpoint-2" / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()


def test_lora_script_saves_adapter_gate_and_levels_with_zero3(runs):
    out = runs / "aligngpt-7b-lora"
    config = json.loads((out / "adapter_config.json").read_text())
    targets = config["target_modules"]
    assert len(targets) == 7 * 2 and all(t.startswith("model.layers.") for t in targets)  # 2 layers x 7 Linear
    weights = torch.load(out / "non_lora_trainables.bin", map_location="cpu", weights_only=True)
    assert any(".alignment.gate." in k for k in weights) and any(".mm_projector." in k for k in weights)
    assert torch.equal(levels_of(out / "non_lora_trainables.bin"),
                       levels_of(runs / "aligngpt-7b-pretrain" / "mm_projector.bin"))
    assert (out / "checkpoint-2" / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()


def test_lora_checkpoint_merges_and_loads_back_with_the_same_logits(runs, tiny, llava_ready, tmp_path):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.conversion.lora_merge import load_lora_model, merge_lora

    adapter = runs / "aligngpt-7b-lora"
    merged_dir = merge_lora(adapter, tiny.llm, tmp_path / "merged")
    lora = load_lora_model(adapter, tiny.llm).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    merged.get_vision_tower().load_model()
    assert not any("lora" in k for k in merged.state_dict())
    ids, images = tiny_batch(tiny)
    with torch.no_grad():
        want = lora(input_ids=ids, images=images).logits
        got = merged(input_ids=ids, images=images).logits
    assert lora.get_base_model().last_gate_weights is not None  # the gate ran on the image
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_qlora_script_keeps_alignment_in_full_precision(runs):
    out = runs / "aligngpt-7b-qlora"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["load_in_4bit"] is True
    assert "model.alignment" in config["quantization_config"]["llm_int8_skip_modules"]
    weights = torch.load(out / "non_lora_trainables.bin", map_location="cpu", weights_only=True)
    alignment = {k: v for k, v in weights.items() if ".alignment." in k}
    assert any(".gate." in k for k in alignment) and all(v.dtype == torch.float32 for v in alignment.values())
    assert (out / "checkpoint-2" / "global_step2" / "mp_rank_00_model_states.pt").is_file()  # ZeRO-2


def test_ablation_script_trains_four_levels_in_global_mode(runs):
    projector = runs / "aligngpt-7b-levels4-pretrain" / "mm_projector.bin"
    assert levels_of(projector).shape[0] == 4
    config = json.loads((runs / "aligngpt-7b-levels4-global" / "config.json").read_text())
    assert config["alignment"]["num_levels"] == 4 and config["alignment"]["mode"] == "global"


def tiny_batch(tiny) -> tuple[torch.Tensor, torch.Tensor]:
    from llava.constants import IMAGE_TOKEN_INDEX
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    image = Image.open(next(tiny.images.glob("*.jpg"))).convert("RGB")
    pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 319, 2654, 8607, 297, 13]])
    return ids, pixels
