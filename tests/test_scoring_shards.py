"""aligngpt-score on webdataset shards (img2dataset's layout) made here: scores against open_clip itself, bad
members, a truncated tar, kill and resume on shards, two ranks, filters; and the GPU decoding path run on the
CPU (selection, pixels, fallback)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
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
    write_tar_shard,
    write_tiny_open_clip,
)

from aligngpt_plugin.core.level_edges import assign_levels  # noqa: E402
from aligngpt_plugin.score import main as score_main  # noqa: E402
from aligngpt_plugin.scoring import ScoreError, score_dataset  # noqa: E402
from aligngpt_plugin.scoring.shards import ShardError, expand_shards, is_shard_input, plan_shards  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARDS, PER_SHARD = 4, 10
CORRUPT = b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 10
reference = scoring_helpers.reference  # the shared fixtures
one_thread = scoring_helpers.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """Four clean shards of ten samples (keys SSSSSIIII), and the bad cases apart; what each should give."""
    root = tmp_path_factory.mktemp("shards")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = write_pictures(root / "images", SHARDS * PER_SHARD)
    clean = root / "clean"
    clean.mkdir()
    expected: dict[str, tuple[str, str]] = {}  # key -> (image file, caption)
    for s in range(SHARDS):
        samples = []
        for i in range(PER_SHARD):
            name, caption = pairs[s * PER_SHARD + i]
            key = f"{s:05d}{i:04d}"
            expected[key] = (name, caption)
            members = {name.rsplit(".", 1)[1]: (root / "images" / name).read_bytes(), "txt": caption.encode(),
                       "json": json.dumps({"caption": caption, "key": key}).encode()}
            samples.append((key, members))
        write_tar_shard(clean / f"{s:05d}.tar", samples)
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images", "pairs": pairs,
            "clean": clean, "expected": expected, "data": clean, "config_defaults": {"num_levels": 4},
            "flags": ("--levels", "4")}


@pytest.fixture(scope="module")
def inputs(web):
    return web


def read_scores(out: Path, name: str) -> dict:
    return pq.read_table(out / "scores" / f"{name}.parquet").to_pydict()


def output_files(out: Path) -> dict[str, bytes]:
    files = sorted(out.glob("scores/*.parquet")) + sorted(out.glob("errors/*.jsonl")) + \
        [out / "levels.json", out / "scores_histogram.png"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


# ------------------------------------------------------------------------------------------ what --data names

def test_brace_pattern_folder_and_list_file_name_the_same_shards(web, tmp_path):
    clean = web["clean"]
    wanted = [str(clean / f"{s:05d}.tar") for s in range(SHARDS)]
    listing = tmp_path / "shards.txt"
    listing.write_text("# img2dataset output\n" + "".join(f"{os.path.relpath(p, tmp_path)}\n" for p in wanted))
    for data in (f"{clean}/{{00000..0000{SHARDS - 1}}}.tar", str(clean), str(listing)):
        assert is_shard_input(data)
        assert [str(Path(p).resolve()) for p in expand_shards(data)] == wanted
    assert not is_shard_input(str(tmp_path / "data.json"))
    assert plan_shards(str(clean)).names == [f"{s:05d}" for s in range(SHARDS)]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "{00000..00009}.tar", "6 of 10 shards not found"),
    (lambda d: d.parent / "empty_dir", "holds no .tar files"),
    (lambda d: d.parent / "none.txt", "shard list .* not found"),
])
def test_a_bad_shard_list_is_refused_before_scoring(web, tmp_path, make, message):
    (web["clean"].parent / "empty_dir").mkdir(exist_ok=True)
    with pytest.raises(ShardError, match=message):
        plan_shards(str(make(web["clean"])))


def test_json_input_needs_images_and_shards_refuse_them(web, tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert score_main(["--data", str(data), "--output", str(tmp_path / "out")]) == 2
    assert "give --images" in capsys.readouterr().err
    assert score_main(["--data", str(web["clean"]), "--images", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "hold their images: drop --images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ scores and errors

def test_shard_scores_equal_open_clip_with_embeddings_and_levels(web, tmp_path):
    out = tmp_path / "out"
    summary = score_dataset(make_config(web, f"{web['clean']}/{{00000..00003}}.tar", out, embeddings=True))
    assert summary.records == summary.scored == SHARDS * PER_SHARD and summary.errors == {}
    keys = [f"{s:05d}{i:04d}" for s in range(SHARDS) for i in range(PER_SHARD)]
    scores, images, texts = open_clip_reference(web, [web["expected"][k] for k in keys])
    got = {k: [] for k in ("key", "score", "image_embedding", "text_embedding")}
    for s in range(SHARDS):
        for column, values in read_scores(out, f"{s:05d}").items():
            got[column].extend(values)
        assert (out / "errors" / f"{s:05d}.jsonl").read_text() == ""
    assert got["key"] == keys
    np.testing.assert_allclose(got["score"], scores, atol=2e-6)
    np.testing.assert_allclose(np.array(got["image_embedding"]), images, atol=2e-6)
    np.testing.assert_allclose(np.array(got["text_embedding"]), texts, atol=2e-6)

    levels = json.loads((out / "levels.json").read_text())
    assert levels["counts"] == [10] * 4 and levels["records"] == 40 and levels["caption"] == "txt"
    assert np.bincount(assign_levels(np.array(got["score"]), levels["edges"]), minlength=4).tolist() == [10] * 4
    identity = hashlib.sha256()
    for s in range(SHARDS):
        digest = hashlib.sha256((web["clean"] / f"{s:05d}.tar").read_bytes()).hexdigest()
        identity.update(f"{s:05d} {digest}\n".encode())
    assert levels["input_sha256"] == identity.hexdigest()


def bad_shards(web, folder: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """Shard 00000: a corrupt JPEG, a sample without caption, one without image, a repeated key, a caption in
    .json only; shard 00001: cut inside the 7th sample's image. Returns the folder and shard -> key -> kind."""
    folder.mkdir()
    images = web["images"]
    pairs = web["pairs"]

    def sample(i: int, **drop) -> tuple[str, dict[str, bytes]]:
        name, caption = pairs[i]
        members = {name.rsplit(".", 1)[1]: (images / name).read_bytes(), "txt": caption.encode()}
        return f"k{i:04d}", {k: v for k, v in members.items() if k not in drop}

    first = [sample(i) for i in range(10)]
    first[2] = ("k0002", {"jpg": CORRUPT, "txt": b"a corrupt picture"})
    first[4] = sample(4, txt=True)  # no caption
    first[5] = ("k0005", {"txt": b"a caption without a picture", "json": b"{}"})
    first.append(sample(1))  # k0001 again, apart from the first
    first.append(("k0011", {"jpg": (images / pairs[0][0]).read_bytes(), "txt": b"  ",
                            "json": json.dumps({"caption": "in the json"}).encode()}))  # blank .txt
    write_tar_shard(folder / "00000.tar", first)
    whole = write_tar_shard(folder / "00001.tar", [sample(10 + i) for i in range(10)])
    data = whole.read_bytes()
    with tarfile.open(whole) as tar:
        seventh = [m for m in tar.getmembers() if m.name.startswith("k0016.")][0]
    whole.write_bytes(data[: seventh.offset_data + seventh.size // 2])
    kinds = {"00000": {"k0002": "cannot decode image", "k0004": "empty caption", "k0005": "no image",
                       "k0001": "duplicate key", "k0011": "empty caption"},
             "00001": {"k0016": "truncated shard"}}
    return folder, kinds


def test_bad_members_and_a_truncated_shard_are_errors_naming_shard_and_key(web, tmp_path):
    folder, kinds = bad_shards(web, tmp_path / "bad")
    out = tmp_path / "out"
    summary = score_dataset(make_config(web, folder, out, num_levels=2))
    for shard, expected in kinds.items():
        errors = [json.loads(line) for line in (out / "errors" / f"{shard}.jsonl").read_text().splitlines()]
        assert {e["key"]: e["error"].split(":")[0] for e in errors} == expected
        assert all(e["shard"] == shard for e in errors)
        assert all(shard in e["error"] for e in errors if not e["error"].startswith("cannot decode"))
    truncated = json.loads((out / "errors" / "00001.jsonl").read_text())
    assert "ends inside member 'k0016." in truncated["error"]
    first = read_scores(out, "00000")
    assert first["key"] == ["k0000", "k0001", "k0003", "k0006", "k0007", "k0008", "k0009"]
    assert read_scores(out, "00001")["key"] == [f"k{10 + i:04d}" for i in range(6)]  # the samples before the cut
    scores, _, _ = open_clip_reference(web, [web["pairs"][int(k[1:])] for k in first["key"]])
    np.testing.assert_allclose(first["score"], scores, atol=2e-6)
    assert summary.records == 12 + 7 and summary.scored == 13
    assert summary.errors == {"cannot decode image": 1, "duplicate key": 1, "empty caption": 2, "no image": 1,
                              "truncated shard": 1}

    score_dataset(make_config(web, folder / "00000.tar", tmp_path / "json", caption_field="caption", merge=False))
    assert read_scores(tmp_path / "json", "00000")["key"] == ["k0011"]  # the one sample with a .json caption
    kinds = [json.loads(line)["error"].split(":")[0]
             for line in (tmp_path / "json" / "errors" / "00000.jsonl").read_text().splitlines()]
    assert sorted(kinds) == ["empty caption"] * 10 + ["no image"]  # 9 without .json, and k0001 again


def test_a_tar_cut_at_a_member_boundary_is_truncated_too(web, tmp_path):
    """tarfile reads a tar cut between members as complete; the missing end-of-archive blocks tell."""
    whole = web["clean"] / "00000.tar"
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    cut = tmp_path / "00000.tar"
    cut.write_bytes(whole.read_bytes()[: members[10].offset])  # ends after sample 3's image, before its .txt
    out = tmp_path / "out"
    score_dataset(make_config(web, cut, out, num_levels=2))
    error = json.loads((out / "errors" / "00000.jsonl").read_text())
    assert error["key"] == "000000003" and error["error"].startswith("truncated shard: 00000 stops after member")
    assert read_scores(out, "00000")["key"] == ["000000000", "000000001", "000000002"]

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "00007.tar").write_bytes(b"")  # a download that never started
    score_dataset(make_config(web, tmp_path / "empty" / "00007.tar", tmp_path / "empty_out", merge=False))
    error = json.loads((tmp_path / "empty_out" / "errors" / "00007.jsonl").read_text())
    assert error["error"].startswith("truncated shard: 00007 ends inside its first member")


def test_strict_names_the_shard_and_key(web, tmp_path):
    folder, _ = bad_shards(web, tmp_path / "bad")
    with pytest.raises(ScoreError, match=r"shard 00000, key 'k0002': cannot decode image.*without --strict"):
        score_dataset(make_config(web, folder / "00000.tar", tmp_path / "out", num_levels=2, strict=True))


def test_other_shards_in_the_same_output_are_refused(web, tmp_path):
    out = tmp_path / "out"
    score_dataset(make_config(web, web["clean"] / "00000.tar", out, num_levels=2))
    with pytest.raises(ScoreError, match="shards: .*--overwrite"):
        score_dataset(make_config(web, web["clean"] / "00001.tar", out, num_levels=2))


@pytest.mark.parametrize("flags, kept", [(("--keep-top", "0.25"), 10), (("--min-score", "TOP7"), 7)])
def test_filters_on_shards_keep_the_best_aligned_keys(web, reference, tmp_path, flags, kept):
    scored = {k: s for n in range(SHARDS) for k, s in zip(*read_scores(reference, f"{n:05d}").values())}
    ranked = sorted(scored.values(), reverse=True)
    flags = tuple(repr(float(np.float32(ranked[6]))) if f == "TOP7" else f for f in flags)
    out = tmp_path / "out"
    assert score_main(cli_args(web, web["clean"], out, "--num-workers", "0", *flags)) == 0
    table = pq.read_table(out / "filtered.parquet").to_pydict()
    assert sorted(table["key"]) == sorted(sorted(scored, key=scored.get, reverse=True)[:kept])
    assert table["shard"] == [k[:5] for k in table["key"]]
    assert json.loads((out / "summary.json").read_text())["filtered"] == kept


# ------------------------------------------------------------------------------------------ workers, resume, ranks

@pytest.mark.parametrize("data, workers", [("00002.tar", 2), ("", 2)])
def test_workers_give_the_bytes_of_a_run_without_workers(web, reference, tmp_path, data, workers):
    """One shard: both workers read it and share its batches; four shards: each worker takes whole shards."""
    path = web["clean"] / data
    alone = tmp_path / "alone"
    score_main(cli_args(web, path, alone, "--num-workers", "0"))
    shared = tmp_path / "shared"
    summary = score_dataset(make_config(web, path, shared, num_workers=workers))
    assert summary.workers == workers
    assert output_files(alone) == output_files(shared)
    if data == "":
        assert output_files(shared) == output_files(reference)


def test_killed_run_resumes_at_the_next_shard_to_the_same_bytes(web, reference, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run_cli(*cli_args(web, web["clean"], out, "--chunk-delay", "1.0"), start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "work").glob("shard_*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its DataLoader worker
    proc.wait()
    done = sorted(p.name for p in (out / "work").glob("shard_*.json"))
    assert 2 <= len(done) < SHARDS, f"{done} were written before the kill"
    assert not (out / "levels.json").exists()

    assert score_main(cli_args(web, web["clean"], out)) == 0  # the same command again
    assert f"this run: {(SHARDS - len(done)) * PER_SHARD} images" in capsys.readouterr().out
    assert output_files(out) == output_files(reference)
    assert not [p for p in out.rglob(".*tmp*")], "a temporary file was left behind"


def test_two_ranks_with_gloo_split_shards_and_match_one_process(web, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "aligngpt_plugin.score", *cli_args(web, web["clean"], out, "--num-workers", "0")],
        cwd=REPO, env=child_env(),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x2 ranks" in proc.stdout and "this run: 20 images" in proc.stdout  # rank 0: shards 0 and 2
    assert output_files(out) == output_files(reference)


# ------------------------------------------------------------------------------------------ GPU decoding, on the CPU

def test_decode_choice_without_cuda(web):
    import torch

    from aligngpt_plugin.scoring.backends import load_scorer
    from aligngpt_plugin.scoring.decoding import choose_decode, prefer_device, resize_crop_of

    scorer = load_scorer(str(web["config"]), str(web["checkpoint"]))
    assert resize_crop_of(scorer.preprocess) is not None and scorer.normalize is not None
    cpu = torch.device("cpu")
    assert choose_decode("auto", cpu, scorer.preprocess, 4) == ("cpu", "the model runs on cpu, not on a CUDA device")
    assert choose_decode("cpu", cpu, scorer.preprocess, 4)[0] == "cpu"
    with pytest.raises(ValueError, match="--decode device: the model runs on cpu.*--decode cpu"):
        choose_decode("device", cpu, scorer.preprocess, 4)
    # the device must beat all CPU decoders together: 1 ms/image vs 5 ms on 4 cores (1.25 ms) wins, on 8 loses
    assert prefer_device(0.001, 0.005, 4) and not prefer_device(0.001, 0.005, 8)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_device_path_on_the_cpu_decodes_the_same_pixels_and_falls_back_to_pil(web, tmp_path, monkeypatch):
    """The GPU path (JPEG bytes from the workers, decode_jpeg, tensor resize) run with device=cpu: decoded
    pixels equal PIL's, model inputs within one level of 255, scores close; a corrupt JPEG is still an error,
    a PNG is decoded by the worker."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    import aligngpt_plugin.scoring.engine as engine
    from aligngpt_plugin.scoring.backends import load_scorer
    from aligngpt_plugin.scoring.decoding import JpegDecoder, resize_crop_of

    scorer = load_scorer(str(web["config"]), str(web["checkpoint"]))
    jpegs = [name for name, _ in web["pairs"] if name.endswith(".jpg")][:6]
    for name in jpegs:
        data = (web["images"] / name).read_bytes()
        ours = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        pil = np.asarray(Image.open(web["images"] / name).convert("RGB"))
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), pil)
        cropped = resize_crop_of(scorer.preprocess)(ours)
        worker = scorer.preprocess(Image.open(web["images"] / name).convert("RGB"))
        assert cropped.shape == worker.shape and cropped.dtype == worker.dtype == torch.uint8
        assert (cropped.int() - worker.int()).abs().max() <= 1

    monkeypatch.setattr(engine, "_decoder", lambda config, scorer, device, workers:
                        JpegDecoder(device, resize_crop_of(scorer.preprocess)))
    folder, _ = bad_shards(web, tmp_path / "bad")
    out = tmp_path / "device"
    score_dataset(make_config(web, folder / "00000.tar", out, num_levels=2))
    cpu = tmp_path / "cpu"
    monkeypatch.undo()
    score_dataset(make_config(web, folder / "00000.tar", cpu, num_levels=2))
    a, b = read_scores(out, "00000"), read_scores(cpu, "00000")
    assert a["key"] == b["key"]  # PNGs (k0003, k0007) through the workers, JPEGs through decode_jpeg
    np.testing.assert_allclose(a["score"], b["score"], atol=5e-3)
    errors = [json.loads(line) for line in (out / "errors" / "00000.jsonl").read_text().splitlines()]
    assert next(e for e in errors if e["key"] == "k0002")["error"].startswith("cannot decode image")


def test_separate_jobs_then_merge_only_on_shards(web, reference, tmp_path):
    out = tmp_path / "out"
    for rank in (1, 0):
        assert score_main(cli_args(web, web["clean"], out, "--num-workers", "0", "--rank", str(rank),
                                   "--world-size", "2")) == 0
        if rank == 1:
            assert sorted(p.name for p in (out / "work").glob("shard_*")) == ["shard_00001.json", "shard_00003.json"]
            assert score_main(cli_args(web, web["clean"], out, "--merge-only")) == 2  # shards 0 and 2 missing
    assert score_main(cli_args(web, web["clean"], out, "--merge-only")) == 0
    assert output_files(out) == output_files(reference)


def test_shards_through_a_pipe_as_from_an_object_store(web, tmp_path):
    """A list file of `pipe:` commands (as `pipe:aws s3 cp s3://bucket/00000.tar -`), opened by gopen."""
    listing = tmp_path / "shards.txt"
    listing.write_text("".join(f"pipe:cat {web['clean'] / f'{s:05d}.tar'}\n" for s in range(2)))
    out = tmp_path / "out"
    summary = score_dataset(make_config(web, listing, out))
    assert summary.scored == 2 * PER_SHARD
    for s in range(2):
        assert read_scores(out, f"{s:05d}")["key"] == [f"{s:05d}{i:04d}" for i in range(PER_SHARD)]
    done = json.loads((out / "work" / "shard_00001.json").read_text())
    assert done["sha256"] == hashlib.sha256((web["clean"] / "00001.tar").read_bytes()).hexdigest()


def test_text_tower_on_trimmed_tokens_equals_open_clip(web):
    """The padding after the longest caption is cut before open_clip's causal text tower: same features."""
    import open_clip
    import torch

    from aligngpt_plugin.scoring.backends import encode_text_trimmed, load_scorer

    scorer = load_scorer(str(web["config"]), str(web["checkpoint"]))
    tokens = scorer.tokenize([caption for _, caption in web["pairs"][:8]] + ["a"])
    assert tokens.shape[1] == 32 and int((tokens != 0).sum(dim=1).max()) < 20  # there is padding to cut
    with torch.inference_mode():
        np.testing.assert_allclose(encode_text_trimmed(scorer.model, tokens).numpy(),
                                   scorer.model.encode_text(tokens).numpy(), atol=1e-5, rtol=1e-5)
    assert type(scorer.model) is open_clip.model.CLIP and scorer.model.text_pool_type == "argmax"


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_device_path_on_the_cpu_for_json_input(web, tmp_path, monkeypatch):
    """The same for LLaVA JSON input: workers read the files' bytes, JPEGs are decoded by decode_jpeg."""
    import aligngpt_plugin.scoring.engine as engine
    from aligngpt_plugin.core.fileio import read_jsonl
    from aligngpt_plugin.scoring.decoding import JpegDecoder, resize_crop_of

    (web["images"] / "corrupt.jpg").write_bytes(CORRUPT)
    records = plain_records(web["pairs"][:12] + [("corrupt.jpg", "a corrupt picture")])
    data = write_records(tmp_path / "data.json", records)
    config = dict(image_folder=str(web["images"]), num_levels=2)
    score_dataset(make_config(web, data, tmp_path / "cpu", **config))
    monkeypatch.setattr(engine, "_decoder", lambda config, scorer, device, workers:
                        JpegDecoder(device, resize_crop_of(scorer.preprocess)))
    score_dataset(make_config(web, data, tmp_path / "device", **config))
    cpu, device = read_jsonl(tmp_path / "cpu" / "scores.jsonl"), read_jsonl(tmp_path / "device" / "scores.jsonl")
    assert [s["id"] for s in cpu] == [s["id"] for s in device] == [r["id"] for r in records[:12]]
    np.testing.assert_allclose([s["score"] for s in device], [s["score"] for s in cpu], atol=5e-3)
    errors = read_jsonl(tmp_path / "device" / "errors.jsonl")
    assert [(e["id"], e["image"], e["error"].split(":")[0]) for e in errors] == \
        [(records[12]["id"], "corrupt.jpg", "cannot decode image")]
