"""Every record's bytes are read once per run, whatever the number of shards, ranks and workers.

Shards are read through `pipe:` commands that log each call to a file (as `pipe:aws s3 cp ...` would
download them), so the count covers every process, DataLoader workers included. JSON records are counted
by a logging wrapper around the parser, which forked workers inherit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scoring_helpers  # noqa: E402
from scoring_helpers import (  # noqa: E402
    make_config,
    plain_records,
    write_pictures,
    write_records,
    write_tar_shard,
    write_tiny_open_clip,
)

from aligngpt_plugin.scoring import score_dataset  # noqa: E402
from aligngpt_plugin.scoring.engine import merge_only  # noqa: E402

one_thread = scoring_helpers.one_thread
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")]  # 8 workers on 2 cores


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = write_pictures(root / "images", 24)
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images", "pairs": pairs}


def logged_shards(inputs: dict, folder: Path, shards: int) -> tuple[Path, Path]:
    """`shards` tar files of the 24 pictures, listed as `pipe:` commands that log their shard to a file.
    Returns the list file and the log."""
    folder.mkdir()
    log = folder / "opened.log"
    script = folder / "logcat.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec cat "$1"\n')
    script.chmod(0o755)
    per = len(inputs["pairs"]) // shards
    lines = []
    for s in range(shards):
        samples = []
        for i, (name, caption) in enumerate(inputs["pairs"][s * per:(s + 1) * per]):
            samples.append((f"{s:05d}{i:04d}", {name.rsplit(".", 1)[1]: (inputs["images"] / name).read_bytes(),
                                                "txt": caption.encode()}))
        tar = write_tar_shard(folder / f"{s:05d}.tar", samples)
        lines.append(f"pipe:{script} {tar}\n")
    listing = folder / "shards.txt"
    listing.write_text("".join(lines))
    return listing, log


def opened(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        counts[Path(line).stem] = counts.get(Path(line).stem, 0) + 1
    return counts


def test_one_shard_eight_workers_reads_it_once(inputs, tmp_path):
    listing, log = logged_shards(inputs, tmp_path / "shards", 1)
    out = tmp_path / "out"
    summary = score_dataset(make_config(inputs, listing, out, batch_size=2, num_workers=8, decode_threads=1,
                                        num_levels=2))
    assert summary.workers == 8 and summary.scored == 24  # 12 batches: every worker had some
    assert opened(log) == {"00000": 1}


def test_three_shards_two_ranks_two_workers_read_each_shard_once(inputs, tmp_path):
    listing, log = logged_shards(inputs, tmp_path / "shards", 3)
    out = tmp_path / "out"
    for rank in (0, 1):  # two jobs, as two nodes of a Slurm array: rank 0 has shards 0 and 2, rank 1 shard 1
        score_dataset(make_config(inputs, listing, out, num_workers=2, decode_threads=1, rank=rank, world_size=2,
                                  num_levels=2))
    assert opened(log) == {"00000": 1, "00001": 1, "00002": 1}
    summary = merge_only(make_config(inputs, listing, out, num_levels=2))
    assert summary.scored == 24 and opened(log) == {"00000": 1, "00001": 1, "00002": 1}  # the merge reads none


def test_a_json_file_of_one_chunk_is_parsed_once_whatever_the_workers(inputs, tmp_path, monkeypatch):
    """A planning pass (sha256, offsets) and one scoring pass: two reads of each record, with 3 workers."""
    import aligngpt_plugin.scoring.records as records

    log = tmp_path / "parsed.log"
    parse = records._iter_json_array

    def logged(path, offset, hasher):
        with open(log, "a") as f:  # appends from forked workers too
            for byte, record in parse(path, offset, hasher):
                f.write(f"{os.getpid()} {byte}\n")
                f.flush()
                yield byte, record

    monkeypatch.setattr(records, "_iter_json_array", logged)
    data = write_records(tmp_path / "data.json", plain_records(inputs["pairs"]))
    summary = score_dataset(make_config(inputs, data, tmp_path / "out", chunk_size=64, num_workers=3,
                                        decode_threads=1, num_levels=2))
    assert summary.workers == 3 and summary.scored == 24
    lines = [line.split() for line in log.read_text().splitlines()]
    per_record = np.bincount(np.unique([int(b) for _, b in lines], return_inverse=True)[1])
    # plan + score + merge (the levelled dataset is written in one more pass over the input)
    assert len(per_record) == 24 and per_record.tolist() == [3] * 24, per_record
    assert {pid for pid, _ in lines} == {str(os.getpid())}  # workers never touch the file
    assert len(json.loads((tmp_path / "out" / "data_levels.json").read_text())) == 24
