"""LLaVA JSON -> TRL's vision-language format, loading, and the record checks that run before the first step
(aligngpt_plugin.integrations.hf.data, aligngpt_plugin.core.trl_format)."""

from __future__ import annotations

import json

import pytest
from trl_tiny import llava_records, trl_dataset, write_llava_json, write_pictures

from aligngpt_plugin.core.trl_format import RecordError, llava_to_trl_record
from aligngpt_plugin.integrations.hf.data import check_records, llava_json_to_trl, load_sft_dataset


def test_a_llava_record_becomes_trls_conversational_vlm_record(tmp_path):
    record = {"id": 17, "image": "coco/a.jpg", "align_level": 5,
              "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                {"from": "gpt", "value": "A cat."},
                                {"from": "human", "value": "And its colour?"},
                                {"from": "gpt", "value": "Grey."}]}
    # written by hand from TRL's documented format (docs: dataset_formats#vision-datasets)
    expected = {"id": "17", "images": [str(tmp_path / "coco/a.jpg")], "align_level": 5, "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Grey."}]}]}
    assert llava_to_trl_record(record, 0, tmp_path) == expected
    # the picture after the text, and a text-only record
    late = {"conversations": [{"from": "human", "value": "Look:\n<image>"}, {"from": "gpt", "value": "ok"}],
            "image": "b.png"}
    assert llava_to_trl_record(late, 1, None)["messages"][0]["content"] == [{"type": "text", "text": "Look:"},
                                                                            {"type": "image"}]
    text = llava_to_trl_record({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
                               2, tmp_path)
    assert text["images"] == [] and text["align_level"] is None and text["id"] is None


def test_the_dataset_holds_images_as_the_image_feature_and_keeps_the_level(tmp_path):
    from datasets import Image, List

    dataset, folder = trl_dataset(tmp_path, count=2)
    assert dataset.column_names == ["id", "messages", "images", "align_level"]
    assert dataset.features["images"] == List(Image())
    row = dataset[1]
    assert row["align_level"] == 1 and row["id"] == "r1" and row["images"][0].size == (32, 32)
    assert dataset[2]["images"] == [] and dataset[2]["align_level"] is None


@pytest.mark.parametrize("bad, message", [
    ({"conversations": [{"from": "robot", "value": "x"}]}, "record 1 (id 'x1'): turn"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image> <image>"}]}, "2 `<image>`"),
    ({"align_level": "high", "conversations": [{"from": "human", "value": "x"}]}, "integer level"),
])
def test_a_record_that_cannot_be_converted_is_named(tmp_path, bad, message):
    good = {"id": "x0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path = write_llava_json(tmp_path / "d.json", [good, {"id": "x1", **bad}])
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        llava_json_to_trl(path, tmp_path)


def bad_data(tmp_path):
    """Six image records and one text-only record, three of them bad in different ways."""
    names = write_pictures(tmp_path / "images", 6)
    records = llava_records(names)
    records[1]["align_level"] = 4           # outside 0..3
    del records[3]["align_level"]           # stage 1 needs it
    records[4]["image"] = "gone.png"        # missing file
    picture = tmp_path / "images" / "p5.png"  # cut short: its header opens, its pixels do not decode
    picture.write_bytes(picture.read_bytes()[:-200])
    return llava_json_to_trl(write_llava_json(tmp_path / "d.json", records), tmp_path / "images")


def test_check_records_stops_at_the_first_bad_record_naming_it(tmp_path):
    dataset = bad_data(tmp_path)
    with pytest.raises(RecordError, match=r"record 1 \(id 'r1'\): `align_level` 4 is outside 0..3"):
        check_records(dataset, num_levels=4, stage=1)
    good = dataset.select([0, 2, 3, 4, 5, 6])
    with pytest.raises(RecordError, match=r"record 2 \(id 'r3'\): no `align_level`: stage 1 needs"):
        check_records(good, num_levels=4, stage=1)
    with pytest.raises(RecordError, match=r"record 3 \(id 'r4'\): image '.*gone.png' does not exist"):
        check_records(good, num_levels=4, stage=2)  # stage 2 needs no level
    with pytest.raises(RecordError, match=r"record 3 \(id 'r5'\): image '.*p5.png' cannot be read"):
        check_records(good.select([0, 1, 2, 4, 5]), num_levels=4, stage=2)


def test_skip_drops_and_counts_the_bad_records(tmp_path):
    dataset = bad_data(tmp_path)
    kept, skipped = check_records(dataset, num_levels=4, stage=1, on_bad="skip")
    assert skipped == 4 and kept["id"] == ["r0", "r2", "t0"]
    kept, skipped = check_records(dataset, num_levels=4, stage=2, on_bad="skip")
    assert skipped == 3 and kept["id"] == ["r0", "r2", "r3", "t0"]  # a missing level is fine in stage 2
    clean, skipped = check_records(kept, num_levels=4, stage=2)
    assert skipped == 0 and clean is kept


def test_load_sft_dataset_reads_a_folder_a_parquet_file_and_llava_json(tmp_path):
    dataset, folder = trl_dataset(tmp_path, count=2)
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "data.parquet"))
    for path, kwargs in ((tmp_path / "saved", {}), (tmp_path / "data.parquet", {}),
                         (tmp_path / "data.json", {"image_folder": folder})):
        loaded = load_sft_dataset(path, **kwargs)
        assert loaded["id"] == dataset["id"] and loaded["align_level"] == dataset["align_level"], path
        assert loaded[0]["images"][0].size == (32, 32), path
    with pytest.raises(RecordError, match="nowhere.json: no such dataset"):
        load_sft_dataset(tmp_path / "nowhere.json")
    with pytest.raises(RecordError, match="give --image_folder"):
        load_sft_dataset(tmp_path / "data.json")
    (tmp_path / "notes.txt").write_text(json.dumps([]))
    with pytest.raises(RecordError, match="not a dataset folder"):
        load_sft_dataset(tmp_path / "notes.txt")


def test_the_image_check_can_look_for_files_only_or_not_at_all(tmp_path):
    dataset = bad_data(tmp_path).select([0, 2, 4, 5])  # r4: missing file, r5: truncated file
    assert check_records(dataset, num_levels=4, stage=2, on_bad="skip", images="decode", threads=1)[1] == 2
    kept, skipped = check_records(dataset, num_levels=4, stage=2, on_bad="skip", images="exists")
    assert skipped == 1 and kept["id"] == ["r0", "r2", "r5"]
    assert check_records(dataset, num_levels=4, stage=2, images="none")[1] == 0
