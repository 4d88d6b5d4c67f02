"""Resume on the TRL path: a `python -m aligngpt_plugin.sft` run killed mid-stage, continued with
`--resume_from_checkpoint`, ends with the weights of the same run left uninterrupted, bit for bit (CPU, fp32,
one process: the same operations in the same order).

What the restore must bring back for that, and how the run makes each one matter:
- the optimizer (AdamW's moments) and the scheduler (1 warm-up step, then cosine): the kill comes after step 2
  of 4, with the learning rate and the moments far from their starting values;
- the RNG state: the model is the tiny start with attention dropout 0.1, so every step draws random numbers;
- the data position: 6 records at 2 per step is 3 steps per epoch; the checkpoint falls inside the first epoch,
  and the resumed run must skip the 2 batches already seen and shuffle the second epoch as the first run did.
The kill: tests/trl_multiprocess/sitecustomize.py (ALIGNGPT_TRL_KILL_AFTER_SAVE=2) ends the process with
`os._exit(3)` right after checkpoint-2 is written: no final save, no clean-up.

Planted faults, each seen failing the comparison: removing `optimizer.pt` from the checkpoint (the Trainer then
starts a fresh AdamW without a word), removing `rng_state.pth` (other dropout masks).

On transformers 4.57 this test first failed (steps 3-4: 10.3812, 10.2432 against 10.237, 10.1145): `save_pretrained`
writes Llava's checkpoint keys in the legacy layout (`language_model.model.*`, `multi_modal_projector.*`, ...)
and `Trainer._load_from_checkpoint` loaded them with `load_state_dict(strict=False)` without renaming, so every
LLM, projector and tower weight stayed at its start value with only a warning (huggingface/transformers#43701).
The plugin's trainers now load checkpoints through the model's key mapping (integrations/hf/training.py); with
that override removed, this test fails again on 4.57. 5.24 resumed bit-identically before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from trl_helpers import environment, rank_dumps, run_bounded, start_point

TIMEOUT = 300


@pytest.fixture(scope="module")
def setup(tiny, llava_ready, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl_resume")
    start = start_point(tiny, root / "start")
    config = json.loads((start.hf / "config.json").read_text())
    config["text_config"]["attention_dropout"] = 0.1  # every step draws from the RNG: its restore matters
    (start.hf / "config.json").write_text(json.dumps(config))
    records = json.loads(tiny.finetune.read_text())
    with_image = [r for r in records if "image" in r]
    text_only = [r for r in records if "image" not in r]
    (root / "data.json").write_text(json.dumps(with_image[:4] + text_only[:2]))
    return {"model": start.hf, "data": root / "data.json", "images": tiny.images}


def sft(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aligngpt_plugin.sft", "--model_name_or_path", str(setup["model"]),
            "--dataset_name", str(setup["data"]), "--image_folder", str(setup["images"]), "--align_stage", "2",
            "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "1",
            "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none",
            "--dataloader_num_workers", "0", "--seed", "0", *extra]


def test_a_killed_run_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(setup, tmp_path):
    run_bounded(sft(setup, tmp_path / "whole"), TIMEOUT, environment(tmp_path / "whole_dump"))
    whole = rank_dumps(tmp_path / "whole_dump", 1)[0]

    status, out = run_bounded(sft(setup, tmp_path / "killed"), TIMEOUT,
                              environment(tmp_path / "killed_dump", ALIGNGPT_TRL_KILL_AFTER_SAVE="2"),
                              expect_ok=False)
    checkpoint = tmp_path / "killed" / "checkpoint-2"
    assert status == 3 and not (tmp_path / "killed_dump").exists(), out[-3000:]
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    assert not (tmp_path / "killed" / "checkpoint-4").exists()

    run_bounded(sft(setup, tmp_path / "killed", "--resume_from_checkpoint", str(checkpoint)), TIMEOUT,
                environment(tmp_path / "resumed_dump"))
    resumed = rank_dumps(tmp_path / "resumed_dump", 1)[0]
    assert resumed["info"]["batches"] == whole["info"]["batches"][2:]  # only steps 3 and 4 ran again
    assert resumed["info"]["losses"] == whole["info"]["losses"]  # steps 1-2 from the checkpoint's state, 3-4 run
    state = whole["state"]
    assert state.keys() == resumed["state"].keys() and any("alignment.gate" in k for k in state)
    differ = [k for k in state if not torch.equal(state[k], resumed["state"][k])]
    assert differ == [], f"{len(differ)} of {len(state)} trained tensors differ, e.g. {differ[:3]}"
