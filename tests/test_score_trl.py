"""aligngpt-score --trl-dataset: the levelled LLaVA JSON also written in TRL's vision-language format, ready for
aligngpt-sft (the levels equal the levelled JSON's, the records convert as llava_json_to_trl converts them)."""

from __future__ import annotations

import json

import pytest
from scoring_helpers import cli_args, plain_records, write_pictures, write_records, write_tiny_open_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("score_trl")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = write_pictures(root / "images", 8)
    records = plain_records(pairs)
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images",
            "data": write_records(root / "data.json", records), "flags": ("--levels", "4")}


@pytest.mark.parametrize("kind", ["parquet", "folder"])
def test_the_trl_output_holds_the_levelled_data_in_trls_format(clip, tmp_path, kind, capsys):
    from aligngpt_plugin.integrations.hf.data import check_records, llava_json_to_trl, load_sft_dataset
    from aligngpt_plugin.score import main

    out = tmp_path / "out"
    assert main(cli_args(clip, clip["data"], out, "--trl-dataset", kind)) == 0
    capsys.readouterr()
    target = out / ("data_levels_trl.parquet" if kind == "parquet" else "data_levels_trl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["trl_dataset"] == str(target)
    levelled = json.loads((out / "data_levels.json").read_text())
    dataset = load_sft_dataset(target)
    # the reference: the levelled JSON converted by the training side's own loader
    expected = llava_json_to_trl(out / "data_levels.json", clip["images"].resolve())
    assert dataset["align_level"] == [r.get("align_level") for r in levelled] == expected["align_level"]
    assert dataset["messages"] == expected["messages"] and dataset["id"] == expected["id"]
    assert sorted(set(dataset["align_level"][:8])) == [0, 1, 2, 3] and dataset["align_level"][8] is None
    from PIL import Image

    first = Image.open(clip["images"] / levelled[0]["image"])
    assert dataset[0]["images"][0].size == first.size and len(dataset[8]["images"]) == 0
    assert check_records(dataset, num_levels=4, stage=1) == (dataset, 0)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_trl_dataset_needs_json_input(clip, tmp_path, capsys):
    from aligngpt_plugin.score import main

    shards = str(tmp_path / "s" / "{0000..0001}.tar")
    assert main(["--data", shards, "--output", str(tmp_path / "o"), "--trl-dataset", "parquet"]) == 2
    assert "--trl-dataset converts LLaVA JSON input" in capsys.readouterr().err
