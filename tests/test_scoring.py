"""aligngpt-score on a tiny open_clip model: scores, levels, bad inputs, kill and resume, two ranks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scoring_helpers
from scoring_helpers import (
    child_env,
    cli_args,
    make_config,
    open_clip_reference,
    plain_records,
    run_cli,
    write_pictures,
    write_records,
    write_tiny_open_clip,
)

from aligngpt_plugin.core.fileio import read_jsonl
from aligngpt_plugin.core.level_edges import LevelSplitError, assign_levels
from aligngpt_plugin.score import main as score_main
from aligngpt_plugin.scoring import ScoreError, merge_only, score_dataset
from aligngpt_plugin.scoring.records import iter_records, plan_input

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("scores.jsonl", "errors.jsonl", "data_levels.json", "levels.json", "scores_histogram.png")
TIMING = ("seconds", "images_per_s", "chunks_scored_now", "images_scored_now", "outputs", "device", "workers")
reference = scoring_helpers.reference  # the shared fixtures
one_thread = scoring_helpers.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = write_pictures(root / "images", 40)
    data = write_records(root / "data.json", plain_records(pairs))
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images", "data": data,
            "pairs": pairs, "config_defaults": {"chunk_size": 8}, "flags": ("--chunk-size", "4")}


@pytest.fixture(scope="module")
def inputs(clip):
    return clip


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}


# ------------------------------------------------------------------------------------------ reading records

@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_records_stream_with_offsets_a_worker_can_seek_to(tmp_path, monkeypatch, suffix):
    import aligngpt_plugin.scoring.records as score_records

    monkeypatch.setattr(score_records, "BLOCK", 7)  # records straddle many reads
    records = [{"id": i, "image": f"é{i}.jpg", "conversations": [{"from": "gpt", "value": "ü" * (i % 9)}]}
               for i in range(30)]
    records[20]["id"] = 4
    path = tmp_path / f"data{suffix}"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) if suffix == ".json" else
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    read = list(iter_records(path))
    assert [r for _, r in read] == records
    assert all(next(iter_records(path, offset))[1] == r for offset, r in read)
    plan = plan_input(path, chunk_size=8)
    assert plan.records == 30 and plan.chunk_offsets == [read[i][0] for i in (0, 8, 16, 24)]
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.duplicates == {20: 4}


# ------------------------------------------------------------------------------------------ scores and levels

def test_scores_equal_open_clip_and_levels_are_equal_count(clip, tmp_path):
    out = tmp_path / "out"
    summary = score_dataset(make_config(clip, clip["data"], out, num_workers=1))
    assert summary.scored == 40 and summary.errors == {} and summary.counts == [5] * 8
    scores = read_jsonl(out / "scores.jsonl")
    assert [s["id"] for s in scores] == [f"r{i:04d}" for i in range(40)]
    np.testing.assert_allclose([s["score"] for s in scores], open_clip_reference(clip, clip["pairs"])[0], atol=2e-6)

    levels = json.loads((out / "levels.json").read_text())
    assert levels["num_levels"] == 8 and levels["counts"] == [5] * 8 and levels["records"] == 40
    assert levels["input_sha256"] == hashlib.sha256(clip["data"].read_bytes()).hexdigest()
    assert levels["model"] == str(clip["config"]) and levels["pretrained"] == str(clip["checkpoint"])
    dataset = json.loads((out / "data_levels.json").read_text())
    expected = assign_levels(np.array([s["score"] for s in scores]), levels["edges"])
    assert [r["align_level"] for r in dataset] == expected.tolist()
    assert [{k: v for k, v in r.items() if k != "align_level"} for r in dataset] == \
        json.loads(clip["data"].read_text())
    top = max(scores, key=lambda s: s["score"])
    assert dataset[top["index"]]["align_level"] == 7
    assert (out / "scores_histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_levels_from_applies_old_edges_to_new_data(clip, tmp_path):
    first = tmp_path / "first"
    score_dataset(make_config(clip, clip["data"], first, num_levels=4))
    old = json.loads((first / "levels.json").read_text())
    new_data = write_records(tmp_path / "new.jsonl", plain_records(clip["pairs"][::-1][:20]))
    second = tmp_path / "second"
    summary = score_dataset(make_config(clip, new_data, second, levels_from=str(first / "levels.json")))
    new = json.loads((second / "levels.json").read_text())
    assert new["edges"] == old["edges"] and new["edges_from"] == str(first / "levels.json")
    scores = [s["score"] for s in read_jsonl(second / "scores.jsonl")]
    levels = [json.loads(line)["align_level"] for line in (second / "new_levels.jsonl").read_text().splitlines()]
    assert levels == assign_levels(np.array(scores), old["edges"]).tolist()
    assert sum(summary.counts) == 20
    with pytest.raises(ScoreError, match="contradicts"):
        score_dataset(make_config(clip, new_data, tmp_path / "third", num_levels=8,
                                  levels_from=str(first / "levels.json")))


def test_more_levels_than_scores_is_a_clear_error(clip, tmp_path, capsys):
    small = write_records(tmp_path / "small.json", plain_records(clip["pairs"][:5]))
    with pytest.raises(LevelSplitError, match="only 5 distinct scores"):
        score_dataset(make_config(clip, small, tmp_path / "a"))
    args = cli_args(clip, small, tmp_path / "b", "--levels", "6", "--num-workers", "0")
    assert score_main(args) == 2
    assert "6 levels asked for, but only 5 distinct scores" in capsys.readouterr().err


def test_workers_share_the_batches_of_one_chunk(clip, tmp_path):
    """40 records in one chunk of batches of 4: both workers decode (not one per chunk), and the outputs
    are the bytes of a run without workers."""
    alone = score_dataset(make_config(clip, clip["data"], tmp_path / "alone", chunk_size=64, num_workers=0))
    shared = score_dataset(make_config(clip, clip["data"], tmp_path / "shared", chunk_size=64, num_workers=2))
    assert (alone.workers, shared.workers) == (0, 2)
    for name in ("scores.jsonl", "levels.json", "data_levels.json"):
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "shared" / name).read_bytes(), name


@pytest.mark.parametrize("flags, kept", [(("--keep-top", "0.25"), 10), (("--min-score", "MEDIAN"), 20),
                                         (("--keep-top", "0.5", "--min-score", "TOP3"), 3)])
def test_filtered_dataset_keeps_the_best_aligned_records(clip, tmp_path, flags, kept):
    """DataComp-style filtering with the scores the levels come from; expected sets from the scores."""
    first = tmp_path / "first"
    assert score_main(cli_args(clip, clip["data"], first)) == 0
    scores = {s["index"]: s["score"] for s in read_jsonl(first / "scores.jsonl")}
    ranked = sorted(scores.values(), reverse=True)
    values = {"MEDIAN": repr(ranked[19]), "TOP3": repr(ranked[2])}
    flags = tuple(values.get(f, f) for f in flags)
    out = tmp_path / "filtered"
    assert score_main(cli_args(clip, clip["data"], out, *flags)) == 0
    records = json.loads(clip["data"].read_text())
    best = sorted(scores, key=scores.get, reverse=True)[:kept]
    filtered = json.loads((out / "data_filtered.json").read_text())
    assert [r["id"] for r in filtered] == [records[i]["id"] for i in sorted(best)]  # input order, best `kept`
    assert all("align_level" in r for r in filtered)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filtered"] == kept


def test_keep_top_must_be_a_fraction(clip, tmp_path, capsys):
    assert score_main(cli_args(clip, clip["data"], tmp_path / "x", "--keep-top", "30")) == 2
    assert "keep_top=30.0: give the fraction to keep, in (0, 1]" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad inputs

def bad_dataset(clip, folder: Path) -> tuple[Path, dict[str, str]]:
    """The clean records plus one of each kind of bad record; returns the file and id -> expected reason."""
    images = clip["images"]
    shutil.copy(images / "pic_0000.jpg", images / "truncated.jpg")
    data = (images / "pic_0001.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 10)
    records = plain_records(clip["pairs"][:24])
    caption = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a square"}]
    bad = [
        {"id": "missing", "image": "no_such_file.jpg", "conversations": caption},
        {"id": "truncated", "image": "truncated.jpg", "conversations": caption},
        {"id": "corrupt", "image": "corrupt.jpg", "conversations": caption},
        {"id": "empty", "image": "pic_0002.jpg", "conversations": [caption[0], {"from": "gpt", "value": " <image> "}]},
        {"id": "no_image", "conversations": caption},
        {"id": "r0003", "image": "pic_0004.jpg", "conversations": caption},  # the id of record 3
        {"id": "dotdot", "image": "../outside.jpg", "conversations": caption},  # a real image, outside
        {"id": "absolute", "image": "/etc/passwd", "conversations": caption},
        {"id": "link", "image": "link_out.jpg", "conversations": caption},  # a symlink out of the folder
    ]
    shutil.copy(images / "pic_0005.jpg", images.parent / "outside.jpg")
    (images / "link_out.jpg").unlink(missing_ok=True)
    (images / "link_out.jpg").symlink_to(images.parent / "outside.jpg")
    for k, record in enumerate(bad):
        records.insert(3 + 4 * k, record)
    reasons = {"missing": "image file not found", "truncated": "cannot decode image", "corrupt": "cannot decode image",
               "empty": "empty caption", "no_image": "no image", "r0003": "duplicate id",
               "dotdot": "image outside the image folder", "absolute": "image outside the image folder",
               "link": "image outside the image folder"}
    return write_records(folder / "bad.json", records), reasons


def test_every_bad_record_is_listed_left_out_and_counted(clip, tmp_path):
    data, reasons = bad_dataset(clip, tmp_path)
    out = tmp_path / "out"
    summary = score_dataset(make_config(clip, data, out, num_levels=4, num_workers=1))
    errors = read_jsonl(out / "errors.jsonl")
    assert {e["id"]: e["error"].split(":")[0] for e in errors} == reasons
    assert "truncated" in next(e["error"] for e in errors if e["id"] == "truncated")
    records = json.loads(data.read_text())
    assert all(records[e["index"]]["id"] == e["id"] for e in errors)
    assert summary.scored == 24 and sum(summary.errors.values()) == 9 and sum(summary.counts) == 24
    assert summary.errors["duplicate id"] == 1 and summary.errors["cannot decode image"] == 2
    assert summary.errors["image outside the image folder"] == 3
    scored = read_jsonl(out / "scores.jsonl")
    assert [s["id"] for s in scored] == [f"r{i:04d}" for i in range(24)]  # the first r0003 is scored
    dataset = json.loads((out / "bad_levels.json").read_text())
    assert len(dataset) == 33
    assert [r["id"] for r in dataset if "align_level" not in r] == [e["id"] for e in errors]

    dropped = tmp_path / "dropped"
    score_dataset(make_config(clip, data, dropped, num_levels=4, drop_errors=True))
    kept = json.loads((dropped / "bad_levels.json").read_text())
    assert len(kept) == 24 and all("align_level" in r for r in kept)


@pytest.mark.parametrize("bad_id,message", [("empty", "empty caption"), ("truncated", "cannot decode image")])
def test_strict_stops_at_the_first_bad_record(clip, tmp_path, bad_id, message):
    records = plain_records(clip["pairs"][:8])
    data, _ = bad_dataset(clip, tmp_path)
    records.insert(5, next(r for r in json.loads(data.read_text()) if r["id"] == bad_id))
    data = write_records(tmp_path / "one_bad.json", records)
    with pytest.raises(ScoreError, match=rf"record 5 \(id '{bad_id}'\).*{message}.*without --strict"):
        score_dataset(make_config(clip, data, tmp_path / "out", num_levels=2, strict=True))


def test_a_different_run_in_the_same_output_is_refused(clip, tmp_path):
    out = tmp_path / "out"
    small = write_records(tmp_path / "small.json", plain_records(clip["pairs"][:16]))
    score_dataset(make_config(clip, small, out, num_levels=2))
    other = write_records(tmp_path / "small.json", plain_records(clip["pairs"][1:17]))
    with pytest.raises(ScoreError, match="input_sha256.*--overwrite"):
        score_dataset(make_config(clip, other, out, num_levels=2))
    assert score_dataset(make_config(clip, other, out, num_levels=2, overwrite=True)).scored == 16


# ------------------------------------------------------------------------------------------ resume and shards

def test_killed_run_resumes_to_the_uninterrupted_output(clip, reference, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run_cli(*cli_args(clip, clip["data"], out, "--chunk-delay", "0.4"), start_new_session=True)
    work = out / "work"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("chunk_*.jsonl"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its DataLoader worker
    proc.wait()
    done = len(list(work.glob("chunk_*.jsonl")))
    assert 3 <= done < 10, f"{done} of 10 chunks were written before the kill"
    assert not (out / "levels.json").exists()

    assert score_main(cli_args(clip, clip["data"], out)) == 0  # the same command again
    assert f"this run: {40 - 4 * done} images" in capsys.readouterr().out
    assert_same_outputs(out, reference)
    assert not [p for p in out.rglob(".*tmp*")], "a temporary file was left behind"


def test_two_ranks_with_gloo_match_one_process(clip, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "aligngpt_plugin.score", *cli_args(clip, clip["data"], out)],
        cwd=REPO, env=child_env(),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x2 ranks" in proc.stdout
    assert_same_outputs(out, reference)


def test_separate_jobs_then_merge_match_one_process(clip, reference, tmp_path):
    out = tmp_path / "out"
    base = ["--num-workers", "0"]
    for rank in (1, 0):
        assert score_main(cli_args(clip, clip["data"], out, *base, "--rank", str(rank), "--world-size", "2")) == 0
        if rank == 1:
            with pytest.raises(ScoreError, match="not scored yet"):
                merge_only(replace(make_config(clip, clip["data"], out), chunk_size=4))
    assert score_main(cli_args(clip, clip["data"], out, "--merge-only")) == 0
    assert_same_outputs(out, reference)


# ------------------------------------------------------------------------------------------ transformers CLIP

def test_fixture_clip_folder_scores_like_transformers_and_levels_suit_pretraining(tiny, llava_ready, tmp_path):
    """The demo's path: the fixture's transformers CLIP (auto-detected folder) on the fixture captions."""
    import open_clip
    import torch
    import transformers
    from PIL import Image
    from transformers import CLIPModel

    from aligngpt_plugin.integrations.llava.data import record_level

    def features(out):  # transformers 5 returns a model output holding the projected features
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    out = tmp_path / "out"
    args = ["--data", str(tiny.pretrain), "--images", str(tiny.images), "--output", str(out), "--model",
            str(tiny.clip), "--batch-size", "8", "--num-workers", "0", "--no-progress"]
    assert score_main(args) == 0
    scores = read_jsonl(out / "scores.jsonl")
    records = json.loads(tiny.pretrain.read_text())
    assert len(scores) == len(records)

    model = CLIPModel.from_pretrained(tiny.clip).eval()
    # the PIL processor, whose pixels are 4.x's on every line (test_scoring_pixels.py holds them to a record)
    processor = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor).from_pretrained(
        tiny.clip)
    tokenizer = open_clip.SimpleTokenizer(context_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        for record, score in list(zip(records, scores))[:4]:
            pixels = processor(images=Image.open(tiny.images / record["image"]), return_tensors="pt")["pixel_values"]
            image = features(model.get_image_features(pixel_values=pixels))
            text = features(model.get_text_features(input_ids=tokenizer([record["conversations"][1]["value"]])))
            expected = torch.nn.functional.cosine_similarity(image, text).item()
            assert score["score"] == pytest.approx(expected, abs=2e-5)

    levels = json.loads((out / "levels.json").read_text())
    assert levels["model"] == str(tiny.clip) and levels["pretrained"] is None
    levelled = json.loads((out / "pretrain_levels.json").read_text())
    got = [record_level(r, i, 8, "pretrain_levels.json") for i, r in enumerate(levelled)]
    assert sorted(got) == sorted(i * 8 // len(got) for i in range(len(got)))  # 32 records: 4 per level


# ------------------------------------------------------------------------------------------ flags

def test_flags_come_from_score_config_and_keep_their_spellings(tmp_path):
    """The parser is made from ScoreConfig's fields (help written once, in the dataclass), and every flag the
    hand-written parser had is still there, building the config a caller would write by hand."""
    from dataclasses import fields

    from aligngpt_plugin.score import build_parser, score_flags
    from aligngpt_plugin.scoring import ScoreConfig

    old = ["--data", "--images", "--output", "--model", "--pretrained", "--levels", "--levels-from", "--caption",
           "--caption-field", "--embeddings", "--decode", "--batch-size", "--num-workers", "--decode-threads",
           "--chunk-size", "--device", "--precision", "--strict", "--drop-errors", "--keep-top", "--min-score",
           "--overwrite", "--rank", "--world-size", "--merge-only", "--no-progress", "--chunk-delay"]
    parser = build_parser()
    assert set(old) <= set(parser._option_string_actions)
    flags = score_flags()
    for f in fields(ScoreConfig):
        if f.name != "merge":
            assert flags.help(f.name).startswith(f.metadata["help"]) or f.name == "chunk_delay_s", f.name
    argv = ["--data", "d.json", "--images", str(tmp_path), "--output", "o", "--levels", "4", "--caption", "gpt-all",
            "--batch-size", "8", "--keep-top", "0.5", "--no-progress", "--rank", "1", "--world-size", "2",
            "--pretrained", ""]
    assert flags.build(parser.parse_args(argv)) == ScoreConfig(
        data_path="d.json", image_folder=str(tmp_path), output_dir="o", num_levels=4, caption="gpt-all",
        batch_size=8, keep_top=0.5, progress=False, rank=1, world_size=2, pretrained=None)
