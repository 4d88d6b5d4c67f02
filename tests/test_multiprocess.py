"""Data-parallel training with 2 real processes on the CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3.

In every step one rank's batch holds an image and the other's only text (2 records, one per rank), and
fine-tuning uses LLaVA's `--group_by_modality_length`, whose last megabatch mixes both. Each run is bounded
by a timeout, so a rank left waiting on a collective fails the test instead of blocking CI. Each process
writes what it ended with (tests/multiprocess/sitecustomize.py); the test checks that the model was really
wrapped, that both ranks hold the same weights, and that the loss is a single-process run's on the same
global batch (one process, two accumulated micro-batches of one sample: the same mean of per-sample
losses and the same summed gradient).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import descendants, free_port

from aligngpt_plugin.devkit import pipeline

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "multiprocess"
FLAG = ("--align_levels", "8")
TIMEOUT = 300


def run_bounded(cmd: list[str], dump: Path, timeout: int = TIMEOUT, **env: str) -> str:
    """Run `cmd` with the rank-dump probe on the path; kill its whole process group after `timeout`."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROBE), str(ROOT)]),
               "ALIGNGPT_RANK_DUMP": str(dump), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ,
                            cwd=ROOT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:  # torchrun starts its workers in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"{' '.join(cmd[:4])}... did not finish in {timeout} s (ranks out of step?):\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def ranks(dump: Path, n: int) -> list[dict]:
    found = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(n)]
    assert [f["info"]["rank"] for f in found] == list(range(n))
    return found


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys() and any("alignment.gate" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def data(tiny, tmp_path_factory) -> dict[str, Path]:
    """Two fine-tuning records, one with an image and one text-only; two captions for pre-training."""
    root = tmp_path_factory.mktemp("mp_data")
    records = json.loads(tiny.finetune.read_text())
    mixed = [next(r for r in records if "image" in r), next(r for r in records if "image" not in r)]
    (root / "mixed.json").write_text(json.dumps(mixed))
    (root / "captions.json").write_text(json.dumps(json.loads(tiny.pretrain_levels.read_text())[:2]))
    return {"mixed": root / "mixed.json", "captions": root / "captions.json"}


@pytest.fixture(scope="module")
def stage1(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mp_stage1") / "pretrain"
    pipeline.train(pipeline.pretrain_args(tiny, out, pipeline.StageSettings(max_steps=1, save_steps=1000),
                                          data=tiny.pretrain_levels, extra=FLAG))
    return out / "mm_projector.bin"


def finetune_args(tiny, data, stage1, out: Path, batch: int, accumulation: int) -> list[str]:
    args = pipeline.finetune_args(tiny, stage1, out, pipeline.StageSettings(
        max_steps=3, batch_size=batch, learning_rate=1e-3, save_steps=1000), extra=FLAG)
    args[args.index("--data_path") + 1] = str(data["mixed"])
    args[args.index("--gradient_accumulation_steps") + 1] = str(accumulation)
    return args


@pytest.fixture(scope="module")
def single_process_finetune(tiny, data, stage1, tmp_path_factory) -> dict:
    """The reference: one process, the same two samples per step as two accumulated micro-batches."""
    root = tmp_path_factory.mktemp("mp_single")
    run_bounded([sys.executable, "-m", "aligngpt_plugin.train",
                 *finetune_args(tiny, data, stage1, root / "out", batch=1, accumulation=2)], root / "dump")
    return ranks(root / "dump", 1)[0]


def test_ddp_wraps_the_model_and_keeps_the_ranks_in_step(tiny, data, stage1, single_process_finetune, tmp_path):
    out = run_bounded(["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()),
                       "-m", "aligngpt_plugin.train",
                       *finetune_args(tiny, data, stage1, tmp_path / "out", batch=1, accumulation=1)],
                      tmp_path / "dump")
    first, second = ranks(tmp_path / "dump", 2)
    for r in (first, second):
        assert r["info"]["wrapped"] == "DistributedDataParallel" and r["info"]["world_size"] == 2
        assert r["info"]["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    assert_same_weights(first["state"], second["state"])  # gradients were all-reduced, the gate's too
    reference = single_process_finetune
    assert first["info"]["losses"] == pytest.approx(reference["info"]["losses"], abs=1e-5)
    assert_same_weights(first["state"], reference["state"], atol=1e-5)
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in out


def test_without_use_cpu_the_trainer_would_not_synchronise(tiny, data, stage1, single_process_finetune, tmp_path):
    """What patches/cpu_distributed.py prevents: an explicit `--use_cpu False` gets the Trainer's default,
    under which no rank is wrapped: each trains alone on a batch of one, not the global batch of two."""
    out = run_bounded(["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()),
                       "-m", "aligngpt_plugin.train",
                       *finetune_args(tiny, data, stage1, tmp_path / "out", batch=1, accumulation=1),
                       "--use_cpu", "False"], tmp_path / "dump")
    first, _ = ranks(tmp_path / "dump", 2)
    assert first["info"]["wrapped"] != "DistributedDataParallel"
    assert "parallel_mode != ParallelMode.DISTRIBUTED" in out
    reference = single_process_finetune["state"]
    assert any(not torch.allclose(first["state"][k], reference[k], atol=1e-5) for k in reference)


def script_env(tiny, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"ALIGNGPT_TINY": str(tiny.root), "NUM_GPUS": "2", "PER_DEVICE_BATCH": "1", "TINY_STEPS": "3",
            "CHECKPOINTS": str(tmp_path / "checkpoints"), "MASTER_PORT": str(free_port()),
            "PYTHON": sys.executable, **extra}


@pytest.fixture(scope="module")
def single_process_pretrain(tiny, data, tmp_path_factory) -> dict:
    """The reference for stage 1: the same script in one plain process, the global batch of two as two
    accumulated micro-batches of one caption."""
    root = tmp_path_factory.mktemp("mp_single_pretrain")
    run_bounded(["bash", "scripts/pretrain.sh"], root / "dump", **script_env(
        tiny, root, PRETRAIN_DATA=str(data["captions"]), NUM_GPUS="1", GLOBAL_BATCH="2", LAUNCHER="python",
        ZERO="none"))
    return ranks(root / "dump", 1)[0]


def test_zero2_pretraining_through_the_script(tiny, data, single_process_pretrain, tmp_path):
    """ZeRO-2 all-gathers the updated partitions after every step, so the ranks hold the same weights
    whatever their gradients were (planted with ALIGNGPT_PLANT_UNREDUCED, tests/multiprocess: with no reduction
    they still agree); what shows the gradients were reduced is the single-process run's losses and
    weights, which need the mean over both ranks' captions."""
    run_bounded(["bash", "scripts/pretrain.sh"], tmp_path / "dump",
                **script_env(tiny, tmp_path, PRETRAIN_DATA=str(data["captions"])))
    first, second = ranks(tmp_path / "dump", 2)
    assert first["info"]["wrapped"] == "DeepSpeedEngine" and first["info"]["world_size"] == 2
    assert_same_weights(first["state"], second["state"])
    reference = single_process_pretrain
    assert reference["info"]["wrapped"] != "DeepSpeedEngine" and len(reference["info"]["losses"]) == 3
    assert first["info"]["losses"] == pytest.approx(reference["info"]["losses"], abs=1e-5)
    assert_same_weights(first["state"], reference["state"], atol=1e-5)
    assert (tmp_path / "checkpoints" / "aligngpt-7b-pretrain" / "mm_projector.bin").is_file()


@pytest.mark.parametrize("launcher, zero", [("deepspeed", "zero3"), ("torchrun", "zero3"), ("deepspeed", "zero2")])
def test_finetuning_with_mixed_batches_through_the_script(tiny, data, stage1, single_process_finetune,
                                                          tmp_path, launcher, zero):
    """ZeRO-3 partitions the gate: the text-only rank must still join each gather of its weights; ZeRO-2
    reduces its gradients across the ranks."""
    out = run_bounded(["bash", "scripts/finetune.sh"], tmp_path / "dump", **script_env(
        tiny, tmp_path, FINETUNE_DATA=str(data["mixed"]), PROJECTOR=str(stage1), LAUNCHER=launcher,
        LR="1e-3", ZERO=zero))
    first, second = ranks(tmp_path / "dump", 2)
    assert first["info"]["wrapped"] == "DeepSpeedEngine" and first["info"]["world_size"] == 2
    assert f"{zero}.json" in out and "--group_by_modality_length True" in out
    assert_same_weights(first["state"], second["state"])
    assert first["info"]["losses"] == pytest.approx(single_process_finetune["info"]["losses"], abs=1e-4)
    assert (tmp_path / "checkpoints" / "aligngpt-7b" / "config.json").is_file()


def test_plain_ddp_through_the_script(tiny, data, stage1, tmp_path):
    run_bounded(["bash", "scripts/finetune.sh"], tmp_path / "dump", **script_env(
        tiny, tmp_path, FINETUNE_DATA=str(data["mixed"]), PROJECTOR=str(stage1), LAUNCHER="torchrun",
        ZERO="none"))
    first, second = ranks(tmp_path / "dump", 2)
    assert first["info"]["wrapped"] == "DistributedDataParallel"
    assert_same_weights(first["state"], second["state"])
