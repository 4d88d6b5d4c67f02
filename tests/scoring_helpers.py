"""Tiny inputs for the scoring tests: an open_clip model built from a config, pictures, LLaVA records."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 210, 30)}


def write_tiny_open_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny open_clip config JSON (registered by file name) and a random-init checkpoint of it."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip-test", pretrained=None)
    checkpoint = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


def write_pictures(folder: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n small JPEG/PNG pictures of a coloured square; returns (file name, caption) pairs."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        size = (rng.choice((40, 48, 64)), rng.choice((40, 56)))
        image = Image.new("RGB", size, (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
        x, y = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
        ImageDraw.Draw(image).rectangle((x, y, x + 15, y + 15), fill=COLOURS[colour])
        name = f"pic_{i:04d}." + ("png" if i % 4 == 3 else "jpg")
        image.save(folder / name)
        pairs.append((name, f"A {colour} square on a plain background, number {i}."))
    return pairs


def write_tar_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A webdataset shard as img2dataset writes it: KEY.jpg, KEY.txt, KEY.json, sample after sample."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return path


def plain_records(pairs: list[tuple[str, str]]) -> list[dict]:
    """LLaVA `plain` pre-training records (as LCS-558K)."""
    return [{"id": f"r{i:04d}", "image": name,
             "conversations": [{"from": "human", "value": "<image>\nDescribe the picture."},
                               {"from": "gpt", "value": caption}]}
            for i, (name, caption) in enumerate(pairs)]


def write_records(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


# ------------------------------------------------------------------------------------------ runs and references
# Both scoring test modules describe their inputs as one dict (`inputs` fixture): root, model config and
# checkpoint, images, pairs, data (the input a reference run reads), and their own config defaults and flags.

def make_config(inputs: dict, data, out: Path, **kw):
    """A ScoreConfig on the tiny model with the test defaults (batches of 4, no workers, 2 decode threads)."""
    from aligngpt_plugin.scoring import ScoreConfig
    from aligngpt_plugin.scoring.shards import is_shard_input

    values = dict(data_path=str(data), image_folder=None if is_shard_input(str(data)) else str(inputs["images"]),
                  output_dir=str(out), model=str(inputs["config"]), pretrained=str(inputs["checkpoint"]),
                  batch_size=4, num_workers=0, decode_threads=2, progress=False, **inputs.get("config_defaults", {}))
    values.update(kw)
    return ScoreConfig(**values)


def cli_args(inputs: dict, data, out: Path, *extra: str) -> list[str]:
    """aligngpt-score's arguments for the tiny model: batches of 4, one worker, 2 decode threads."""
    from aligngpt_plugin.scoring.shards import is_shard_input

    images = [] if is_shard_input(str(data)) else ["--images", str(inputs["images"])]
    return ["--data", str(data), *images, "--output", str(out), "--model", str(inputs["config"]), "--pretrained",
            str(inputs["checkpoint"]), "--batch-size", "4", "--num-workers", "1", "--decode-threads", "2",
            "--no-progress", *inputs.get("flags", ()), *extra]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a scoring subprocess: this checkout first on the path, one intra-op thread."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", **extra}


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m aligngpt_plugin.score ARGS` in a subprocess, stdout and stderr together."""
    return subprocess.Popen([sys.executable, "-m", "aligngpt_plugin.score", *args], cwd=REPO,
                            env=child_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def open_clip_reference(inputs: dict, pairs: list[tuple[str, str]]):
    """Scores and normalised image and text embeddings as open_clip itself computes them, one picture file at
    a time: (scores [n], image embeddings [n, dim], text embeddings [n, dim]) as numpy arrays."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test",
                                                                 pretrained=str(inputs["checkpoint"]))
    tokenizer = open_clip.get_tokenizer("tiny-clip-test")
    model.eval()
    scores, images, texts = [], [], []
    with torch.no_grad():
        for name, caption in pairs:
            image = model.encode_image(preprocess(Image.open(inputs["images"] / name)).unsqueeze(0))
            text = model.encode_text(tokenizer([caption]))
            image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
            scores.append(float((image * text).sum()))
            images.append(image[0].numpy())
            texts.append(text[0].numpy())
    return np.array(scores), np.array(images), np.array(texts)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread here and in the subprocesses: fast on a shared 2-core machine, and the same
    arithmetic everywhere, so outputs can be compared byte for byte."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(inputs):
    """One uninterrupted run over inputs["data"] with the settings of the subprocess runs (`cli_args`)."""
    from aligngpt_plugin.score import main as score_main

    out = inputs["root"] / "reference"
    assert score_main(cli_args(inputs, inputs["data"], out)) == 0
    return out
