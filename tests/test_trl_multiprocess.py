"""The TRL path with several processes: `accelerate launch` with the shipped configs (DDP, ZeRO-2, ZeRO-3) and 2
CPU processes (gloo) running `python -m aligngpt_plugin.sft`, stage 2, on a tiny HF-native AlignGPT.

The data are 2 records, one with an image and one text-only, at one per process: in every step one rank
holds an image batch and the other a text-only batch (each rank notes what each micro-batch held:
tests/trl_multiprocess/sitecustomize.py). The text-only rank must still run the vision tower, the projector
and the gate, in the image rank's order: DDP (run with `--ddp_find_unused_parameters False`, so that an unused
trainable weight is not papered over) waits for their gradients, ZeRO-2 reduces fixed gradient buckets and
ZeRO-3 gathers each module's partitions collectively. Each run is bounded by a timeout that kills the whole
process tree, so a rank left waiting fails the test instead of blocking CI.

Checked: the model was really wrapped (DistributedDataParallel / DeepSpeedEngine, world size 2), both ranks
end with the same trained weights (exactly), and the run equals one plain process fed the same two records per
step as two accumulated micro-batches of one (`--gradient_accumulation_steps 2`): the same token-weighted mean
loss (TRL's `num_items_in_batch` counts the label tokens of the whole global batch, across accumulation and
across ranks alike) and the same summed gradient. Tolerances: losses 1e-4 (the Trainer logs them rounded to 4
decimals); weights 1e-5 after 2 plain SGD steps at lr 0.1 (measured: DDP 0, ZeRO-2/3 1.2e-6 on 3 of 2M
embedding elements: the reductions add the same fp32 numbers in another order, and the weights differ by lr x
that rounding; a rank updating from its own gradient alone would be off by lr x the gradients' difference).
SGD, not AdamW: AdamW's first steps move each weight by about lr x sign(gradient), so an element whose gradient
is near zero flips by 2 x lr on rounding alone (seen under ZeRO-3 on transformers 5.24 in one v_proj element);
SGD keeps the comparison proportional to the gradients, which is what the reduction across ranks must get right.

Planted faults (tests/trl_multiprocess: ALIGNGPT_TRL_PLANT=skip_idle_gate, the text-only rank skips the
alignment module): DDP hangs at the first step's gradient reduction and the timeout kills it; ZeRO-3 fails
at once with gloo's "Received data size doesn't match expected size" (the ranks gather different modules).
Before the model ran the tower and projector on text-only batches (d1d3272), ZeRO-2 and ZeRO-3 failed the
same way and DDP hung.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from trl_helpers import environment, free_port, rank_dumps, run_bounded, start_point

from aligngpt_plugin.deepspeed_configs import config_path

TIMEOUT = 300
CONFIGS = {"ddp": ("accelerate_ddp", "DistributedDataParallel"), "zero2": ("accelerate_zero2", "DeepSpeedEngine"),
           "zero3": ("accelerate_zero3", "DeepSpeedEngine")}


@pytest.fixture(scope="module")
def setup(tiny, llava_ready, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl_mp")
    start = start_point(tiny, root / "start")
    records = json.loads(tiny.finetune.read_text())
    mixed = [next(r for r in records if "image" in r), next(r for r in records if "image" not in r)]
    (root / "mixed.json").write_text(json.dumps(mixed))
    return {"model": start.hf, "data": root / "mixed.json", "images": tiny.images}


def sft_args(setup: dict[str, Path], out: Path, accumulation: int) -> list[str]:
    return ["--model_name_or_path", str(setup["model"]), "--dataset_name", str(setup["data"]),
            "--image_folder", str(setup["images"]), "--align_stage", "2", "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps",
            str(accumulation), "--optim", "sgd", "--learning_rate", "0.1", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def single_process(setup, tmp_path_factory) -> dict:
    """The reference: one process, the same two records per step as two accumulated micro-batches."""
    root = tmp_path_factory.mktemp("trl_mp_single")
    run_bounded([sys.executable, "-m", "aligngpt_plugin.sft", *sft_args(setup, root / "out", 2)], TIMEOUT,
                environment(root / "dump"))
    return rank_dumps(root / "dump", 1)[0]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_two_processes_with_an_image_rank_and_a_text_rank_equal_one_process(setup, single_process, tmp_path, kind):
    config, wrapper = CONFIGS[kind]
    extra = ["--ddp_find_unused_parameters", "False"] if kind == "ddp" else []
    run_bounded(["accelerate", "launch", "--config_file", str(config_path(config)), "--num_processes", "2",
                 "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", "aligngpt_plugin.sft",
                 *sft_args(setup, tmp_path / "out", 1), *extra], TIMEOUT, environment(tmp_path / "dump"))
    first, second = rank_dumps(tmp_path / "dump", 2)
    for rank in (first, second):
        assert rank["info"]["wrapped"] == wrapper and rank["info"]["world_size"] == 2
        assert rank["info"]["trainer"].endswith("SFTTrainer")  # TRL's, or a subclass of it
    # every step: one rank on the image record, the other on the text-only one
    steps = list(zip(first["info"]["batches"], second["info"]["batches"]))
    assert len(steps) == 2 and all({a, b} == {"image", "text"} for a, b in steps), steps
    state = first["state"]
    assert any("alignment.gate" in k for k in state) and not any("level_embeddings" in k for k in state)
    assert any("multi_modal_projector" in k for k in state) and any("language_model" in k for k in state)
    assert state.keys() == second["state"].keys() == single_process["state"].keys()
    for key in state:  # both ranks apply the same reduced update
        assert torch.equal(state[key], second["state"][key]), key
    assert first["info"]["losses"] == pytest.approx(single_process["info"]["losses"], abs=1e-4)
    for key in state:
        torch.testing.assert_close(state[key], single_process["state"][key], atol=1e-5, rtol=0)
    assert (tmp_path / "out" / "config.json").is_file()
