"""`python -m aligngpt_plugin.sft` as a user types it: --help lists TRL's and the plugin's flags, a 2-step run
exits 0 and writes a folder the Auto classes load, bad input exits 2 with one line naming the file or record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trl_tiny import llava_records, write_llava_json, write_pictures, write_tiny_folder

ENV_FLAGS = ["--report_to", "none", "--save_strategy", "no", "--gradient_checkpointing", "false",
             "--per_device_train_batch_size", "2", "--disable_tqdm", "true"]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aligngpt_plugin.sft", *args], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    names = write_pictures(root / "images", 4)
    write_llava_json(root / "data.json", llava_records(names))
    return write_tiny_folder(root / "model"), root


def test_help_lists_trls_flags_and_the_plugins(capsys):
    from aligngpt_plugin.sft import main

    with pytest.raises(SystemExit) as exit_:  # in process: the run below starts the command as typed
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aligngpt-sft")
    for flag in ("--learning_rate", "--max_length", "--completion_only_loss", "--resume_from_checkpoint",
                 "--use_peft", "--lora_r", "--load_in_4bit", "--model_name_or_path", "--dataset_name",
                 "--align_stage", "--align_bad_records", "--align_trainer", "--image_folder", "--align_group_turns"):
        assert flag in out, flag


def test_a_two_step_run_exits_0_and_writes_a_loadable_folder(inputs, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, root = inputs
    out = tmp_path / "stage1"
    proc = run_cli("--model_name_or_path", str(model), "--dataset_name", str(root / "data.json"), "--image_folder",
                   str(root / "images"), "--align_stage", "1", "--max_steps", "2", "--learning_rate", "1e-2",
                   "--output_dir", str(out), *ENV_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 1 done, 2 steps" in proc.stdout
    trained = AutoModelForImageTextToText.from_pretrained(out)
    start = AutoModelForImageTextToText.from_pretrained(model)
    assert type(trained).__name__ == "AlignGPTLlavaForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "AlignGPTLlavaProcessor"
    assert trained.config.alignment_stage == "pretrain"
    # stage 1 moved the levels and the projector, not the LLM
    assert not torch.equal(trained.model.alignment.level_embeddings, start.model.alignment.level_embeddings)
    assert torch.equal(trained.lm_head.weight, start.lm_head.weight)


def bad_cases(model, root, tmp_path):
    records = llava_records(write_pictures(tmp_path / "images", 3))
    records[2]["align_level"] = 9
    bad_level = write_llava_json(tmp_path / "bad_level.json", records)
    records = llava_records(write_pictures(tmp_path / "images", 3))
    records[1]["image"] = "missing.png"
    missing_image = write_llava_json(tmp_path / "missing_image.json", records)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llava"}))
    data = ["--dataset_name", str(root / "data.json"), "--image_folder", str(root / "images")]
    from aligngpt_plugin.integrations.hf.data import load_sft_dataset

    load_sft_dataset(str(root / "data.json"), image_folder=str(root / "images")).remove_columns("id").save_to_disk(
        str(tmp_path / "no_ids"))
    return {
        "missing dataset": (["--model_name_or_path", str(model), "--dataset_name", str(tmp_path / "nope.json"),
                             "--image_folder", str(root / "images")], "nope.json: no such dataset"),
        "bad level": (["--model_name_or_path", str(model), "--dataset_name", str(bad_level), "--image_folder",
                       str(tmp_path / "images")], "record 2 (id 'r2'): `align_level` 9 is outside 0..3"),
        "missing image": (["--model_name_or_path", str(model), "--dataset_name", str(missing_image),
                           "--image_folder", str(tmp_path / "images")], "record 1 (id 'r1'): image"),
        "not aligngpt": (["--model_name_or_path", str(plain), *data], "model_type 'llava' is not an HF-native"),
        "no model": (["--model_name_or_path", str(tmp_path / "nowhere"), *data], "nowhere: no config.json"),
        "lora in stage 1": (["--model_name_or_path", str(model), *data, "--use_peft", "--align_stage", "1"],
                            "drop --use_peft"),
        "4-bit without LoRA": (["--model_name_or_path", str(model), *data, "--load_in_4bit"], "add --use_peft"),
        "turns without ids": (["--model_name_or_path", str(model), "--dataset_name", str(tmp_path / "no_ids"),
                               "--align_group_turns"], "--align_group_turns needs the dataset's `id` column"),
    }


def test_bad_input_exits_2_naming_the_file_or_record(inputs, tmp_path, capsys, monkeypatch):
    from aligngpt_plugin.sft import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    model, root = inputs
    for name, (args, message) in bad_cases(model, root, tmp_path).items():
        status = main([*args, "--output_dir", str(tmp_path / "out"), "--max_steps", "1", *ENV_FLAGS])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2, name
        assert err and err[-1].startswith("aligngpt-sft: ") and message in err[-1], (name, err[-3:])
        assert not (tmp_path / "out" / "config.json").exists(), name
