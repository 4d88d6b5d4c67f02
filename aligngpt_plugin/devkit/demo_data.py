"""The demo's data: shape pictures whose captions match them to a known degree, and questions with answers.

What `make demo` trains and tests on (see `aligngpt_plugin.devkit.demo_experiment`):

- CLIP pairs: pictures with their true caption, for training the tiny CLIP contrastively;
- pre-training pairs (LLaVA's `plain` layout, as LCS-558K): each caption is `true` (colour, shape and
  place right), `partial` (one of the three wrong) or `unrelated` (alt-text about something else), in
  proportions like web alt-text; the truth is kept in each record (`truth`, `wrong`);
- instruction-tuning conversations (LLaVA's `v1` layout) with short-answer questions about colour,
  shape and place, all answered right;
- held-out questions (`model_vqa_loader`'s question file) on pictures no stage saw, one of each kind
  per picture, with the answer and the kind (`category`); the same pictures' truth (`heldout.json`) for
  the level probe, which captions them.

Pictures differ in size, background, shape size and position jitter, so no two are the same.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from aligngpt_plugin.devkit.tiny_checkpoints import COLOURS, PLACES, SHAPES, SHORT_ANSWER

TRUTH_KINDS = ("true", "partial", "unrelated")
# Web alt-text is often loosely or not at all about its image (DataComp keeps ~30% of CommonPool after
# CLIP filtering); half of the demo's captions are fully true.
WEB_MIX = {"true": 0.5, "partial": 0.25, "unrelated": 0.25}
ATTRIBUTES = ("colour", "shape", "place")
QUESTIONS = {  # kind -> (question, the answers it can have)
    "colour": ("What colour is the shape?", tuple(COLOURS)),
    "shape": ("What shape is in the picture?", SHAPES),
    "place": ("Where is the shape?", tuple(PLACES)),
}
CAPTIONS = (
    "A {colour} {shape} in the {place} of the picture.",
    "A {colour} {shape}, {place}.",
    "Picture of a {colour} {shape} at the {place}.",
)
UNRELATED = (  # alt-text found beside web images that says nothing about them
    "Click here to download the full catalogue.", "IMG_2034.JPG", "Free shipping on all orders over 50 dollars.",
    "Our team at the annual company picnic.", "Stock photo: sunset over a quiet beach.", "Company logo.",
    "Best price guaranteed, order today.", "View larger image.", "My grandmother's apple pie recipe.",
    "Thumbnail for the video of the wedding.", "Banner advertisement for summer sales.",
    "The new model comes in three sizes.", "A man riding a bicycle through the city.",
    "Two dogs playing in the snow.", "Read more about our privacy policy.", "Photo by an unknown author.",
    "Breaking news from the capital tonight.", "Handmade wooden chair for sale.",
    "A bowl of fresh fruit on a kitchen table.", "Screenshot of the settings page.",
)
PLAIN_PROMPT = "<image>\nGive a brief description of the image."
PICTURE_SIDES = (96, 120, 144)


@dataclass(frozen=True)
class Picture:
    """What one picture shows."""

    file: str
    colour: str
    shape: str
    place: str

    def attribute(self, name: str) -> str:
        return getattr(self, name)


def draw(colour: str, shape: str, place: str, rng: random.Random):
    """A PIL image of one shape: square side from PICTURE_SIDES, grey background, jittered size and place."""
    from PIL import Image, ImageDraw

    side = rng.choice(PICTURE_SIDES)
    grey = rng.randint(0, 255)
    image = Image.new("RGB", (side, side), (grey, grey, grey))
    fx, fy = PLACES[place]
    cx, cy = (fx + rng.uniform(-0.04, 0.04)) * side, (fy + rng.uniform(-0.04, 0.04)) * side
    r = side * rng.uniform(0.13, 0.2)
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    d = ImageDraw.Draw(image)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


def random_content(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))


def caption(colour: str, shape: str, place: str, rng: random.Random) -> str:
    return rng.choice(CAPTIONS).format(colour=colour, shape=shape, place=place)


def false_caption(pic: Picture, kind: str, rng: random.Random) -> tuple[str, str | None]:
    """A `partial` caption (one attribute swapped for another value; returns which) or an `unrelated` one."""
    if kind == "unrelated":
        return rng.choice(UNRELATED), None
    wrong = rng.choice(ATTRIBUTES)
    values = {"colour": pic.colour, "shape": pic.shape, "place": pic.place}
    values[wrong] = rng.choice([v for v in QUESTIONS[wrong][1] if v != values[wrong]])
    return caption(values["colour"], values["shape"], values["place"], rng), wrong


def write_pictures(folder: Path, n: int, rng: random.Random, prefix: str) -> list[Picture]:
    folder.mkdir(parents=True, exist_ok=True)
    pictures = []
    for i in range(n):
        content = random_content(rng)
        name = f"{prefix}_{i:05d}.png"
        draw(*content, rng).save(folder / name)
        pictures.append(Picture(name, *content))
    return pictures


def truth_kinds(n: int, rng: random.Random, mix: dict[str, float] = WEB_MIX) -> list[str]:
    """Exactly round(n * share) of each kind (the rest true), shuffled."""
    kinds = [k for k in TRUTH_KINDS[1:] for _ in range(round(n * mix[k]))]
    kinds += ["true"] * (n - len(kinds))
    rng.shuffle(kinds)
    return kinds


def pretrain_records(pictures: list[Picture], rng: random.Random) -> list[dict]:
    records = []
    for i, (pic, kind) in enumerate(zip(pictures, truth_kinds(len(pictures), rng))):
        if kind == "true":
            text, wrong = caption(pic.colour, pic.shape, pic.place, rng), None
        else:
            text, wrong = false_caption(pic, kind, rng)
        records.append({"id": f"pretrain_{i:05d}", "image": pic.file, "truth": kind, "wrong": wrong,
                        "conversations": [{"from": "human", "value": PLAIN_PROMPT}, {"from": "gpt", "value": text}]})
    return records


def short_answer(value: str) -> str:
    return value[0].upper() + value[1:]


def finetune_records(pictures: list[Picture], rng: random.Random) -> list[dict]:
    """A short-answer question of each kind per picture, in random order, as LLaVA-1.5's VQA data."""
    records = []
    for i, pic in enumerate(pictures):
        kinds = rng.sample(list(QUESTIONS), len(QUESTIONS))
        conversations = []
        for j, kind in enumerate(kinds):
            q = f"{QUESTIONS[kind][0]}\n{SHORT_ANSWER}"
            conversations += [{"from": "human", "value": f"<image>\n{q}" if j == 0 else q},
                              {"from": "gpt", "value": short_answer(pic.attribute(kind))}]
        records.append({"id": f"finetune_{i:05d}", "image": pic.file, "conversations": conversations})
    return records


def question_records(pictures: list[Picture]) -> list[dict]:
    return [{"question_id": len(QUESTIONS) * i + k, "image": pic.file, "category": kind,
             "text": f"{QUESTIONS[kind][0]}\n{SHORT_ANSWER}", "answer": pic.attribute(kind)}
            for i, pic in enumerate(pictures) for k, kind in enumerate(QUESTIONS)]


def chance(kind: str) -> float:
    """Accuracy of a uniform guess among the answers a question of this kind can have."""
    return 1 / len(QUESTIONS[kind][1])


@dataclass
class DemoData:
    images: Path
    pretrain: Path
    finetune: Path
    questions: Path
    heldout: Path  # [{image, colour, shape, place}] of the held-out pictures


def write_demo_data(root: Path, n_pretrain: int, n_finetune: int, n_eval: int, seed: int = 0) -> DemoData:
    """Pictures and the three LLaVA files under `root`; the same seed writes the same files."""
    rng = random.Random(seed)
    images = root / "images"
    pre = write_pictures(images, n_pretrain, rng, "pretrain")
    ft = write_pictures(images, n_finetune, rng, "finetune")
    ev = write_pictures(images, n_eval, rng, "heldout")
    out = DemoData(images, root / "pretrain.json", root / "finetune.json", root / "questions.jsonl",
                   root / "heldout.json")
    out.pretrain.write_text(json.dumps(pretrain_records(pre, rng), indent=1))
    out.finetune.write_text(json.dumps(finetune_records(ft, rng), indent=1))
    out.questions.write_text("".join(json.dumps(q) + "\n" for q in question_records(ev)))
    out.heldout.write_text(json.dumps([{"image": p.file, "colour": p.colour, "shape": p.shape, "place": p.place}
                                       for p in ev], indent=1))
    return out
