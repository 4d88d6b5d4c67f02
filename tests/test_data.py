"""Level-aware data: each record's level reaches the batch; bad levels are errors that name the record."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.usefixtures("llava_ready")


@pytest.mark.parametrize("record, expected", [
    ({"id": "a", "align_level": 3}, 3),
    ({"id": "a", "similarity": 0}, 0),  # the public AlignGPT data's field
    ({"id": "a", "align_level": 7, "similarity": 7}, 7),
    ({"id": "a"}, None),
])
def test_record_level(record, expected):
    from aligngpt_plugin.integrations.llava.data import record_level

    assert record_level(record, 0, 8) == expected


@pytest.mark.parametrize("record, error", [
    ({"id": "r9", "align_level": 8}, r"record 4 \(id 'r9'\).*align_level=8 is outside 0..7"),
    ({"id": "r9", "similarity": -1}, "outside 0..7"),
    ({"id": "r9", "align_level": 2.0}, "not an integer level"),
    ({"id": "r9", "align_level": True}, "not an integer level"),
    ({"id": "r9", "align_level": "3"}, "not an integer level"),
    ({"id": "r9", "align_level": 1, "similarity": 2}, "keep one"),
])
def test_bad_levels_name_the_record(record, error):
    from aligngpt_plugin.integrations.llava.data import LevelError, record_level

    with pytest.raises(LevelError, match=error):
        record_level(record, 4, 8, "data.json")


def data_args(tiny):
    from transformers import CLIPImageProcessor

    return SimpleNamespace(data_path=None, image_folder=str(tiny.images), is_multimodal=True,
                           mm_use_im_start_end=False, image_aspect_ratio="square",
                           image_processor=CLIPImageProcessor.from_pretrained(tiny.clip))


def tokenizer(tiny):
    from llava import conversation
    from transformers import AutoTokenizer

    conversation.default_conversation = conversation.conv_templates["plain"]
    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False, model_max_length=2048)
    tok.pad_token = tok.unk_token
    return tok


def test_levels_reach_the_batch(tiny):
    from aligngpt_plugin.integrations.llava.data import make_level_aware_data_module

    args = data_args(tiny)
    args.data_path = str(tiny.pretrain_levels)
    module = make_level_aware_data_module(tokenizer(tiny), args, num_levels=8, require_levels=True)
    items = [module["train_dataset"][i] for i in range(3)]
    batch = module["data_collator"](items)
    assert batch["alignment_levels"].tolist() == [0, 1, 2]
    assert batch["images"].shape == (3, 3, 336, 336) and batch["input_ids"].shape[0] == 3


def test_pretraining_refuses_records_without_levels(tiny, tmp_path):
    from aligngpt_plugin.integrations.llava.data import LevelError, make_level_aware_data_module

    records = json.loads(tiny.pretrain_levels.read_text())
    del records[5]["align_level"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(records))
    args = data_args(tiny)
    args.data_path = str(path)
    with pytest.raises(LevelError, match=r"1 pre-training records of .*partial.json.*5 \(id 'pretrain_00005'\)"):
        make_level_aware_data_module(tokenizer(tiny), args, num_levels=8, require_levels=True)
    module = make_level_aware_data_module(tokenizer(tiny), args, num_levels=8, require_levels=False)
    assert module["train_dataset"][5]["align_level"] == -1


def test_pretraining_checks_level_range_against_the_flag(tiny):
    from aligngpt_plugin.integrations.llava.data import LevelError, make_level_aware_data_module

    args = data_args(tiny)
    args.data_path = str(tiny.pretrain_levels)
    with pytest.raises(LevelError, match="outside 0..3 for --align_levels 4"):
        make_level_aware_data_module(tokenizer(tiny), args, num_levels=4, require_levels=True)


def test_collator_without_levels_is_llavas(tiny):
    from llava.train.train import DataCollatorForSupervisedDataset

    from aligngpt_plugin.integrations.llava.data import LevelAwareCollator

    tok = tokenizer(tiny)
    items = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])},
             {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2])}]
    ours, theirs = LevelAwareCollator(tokenizer=tok)(items), DataCollatorForSupervisedDataset(tokenizer=tok)(items)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("argv, levels, rest", [
    (["--lr", "1"], None, ["--lr", "1"]),
    (["--align_levels", "8", "--lr", "1"], 8, ["--lr", "1"]),
    (["--align_levels=4", "--align_mode", "global"], 4, []),
])
def test_alignment_flags_are_split_from_llavas(argv, levels, rest):
    from aligngpt_plugin.integrations.llava.training import split_alignment_args

    config, remaining = split_alignment_args(argv)
    assert (config.num_levels if config else None) == levels and remaining == rest


def test_alignment_option_without_levels_is_refused():
    from aligngpt_plugin.integrations.llava.training import split_alignment_args

    with pytest.raises(SystemExit, match="needs --align_levels"):
        split_alignment_args(["--align_mode", "global"])
