"""Tiny inputs for the scoring tests: an open_clip model built from a config, pictures, LLaVA records."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
