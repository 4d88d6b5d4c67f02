"""Tiny offline fixtures: a random-init Llama with LLaVA-1.5's real tokenizer, a tiny CLIP, a tiny dataset.

`write_fixtures(folder)` (the `aligngpt-fixtures` command) writes, under the folder given::

    llm/                  LlamaForCausalLM, random init, with the Llama-2 tokenizer of Vicuna-7B-v1.5
    mistral/              MistralForCausalLM, random init (grouped-query attention, sliding window), same
                          tokenizer (Mistral-7B's is a 32000-piece SentencePiece model of the same kind)
    clip/                 CLIPModel, random init, with a CLIPImageProcessor (336 px, OpenAI mean/std)
    data/images/          JPEG and PNG pictures of coloured shapes, of several sizes and aspect ratios
    data/pretrain.json    caption pairs in LLaVA's `plain` pre-training layout (as LCS-558K)
    data/pretrain_levels.json  the same pairs with an `align_level` each (round robin over 8 levels: a
                          stand-in for CLIP scores where a test needs levels but not a scorer)
    data/finetune.json    conversations in LLaVA's `v1` layout (as mix665k), text-only records included
    data/questions.jsonl  a question file for `llava.eval.model_vqa_loader`

Every test and the demo use these instead of hub checkpoints (no hub is reachable here). The folders
load with the same code as the real ones: wherever LLaVA takes `lmsys/vicuna-7b-v1.5` or
`openai/clip-vit-large-patch14-336`, it takes `llm/` and `clip/`. The pictures are drawn so that each
caption is true of its image (colour, shape, position), which gives the tiny models something real to
learn and gives patch-level labels (the shape's box) for free.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 30),
    "purple": (140, 40, 170),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
PLACES = {  # name -> centre as a fraction of (width, height)
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "centre": (0.5, 0.5),
}
PLAIN_PROMPTS = (  # LCS-558K's human turns look like these
    "<image>\nRender a clear and concise summary of the photo.",
    "Give a brief description of the image.\n<image>",
    "<image>\nWrite a terse but informative summary of the picture.",
)
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass
class FixtureSpec:
    """Sizes of the tiny models and dataset. Defaults keep LLaVA-1.5's geometry where it matters:
    336 px images in 14 px patches (576 image tokens), CLIP features from layer -2, a 32000-token
    Llama vocabulary."""

    hidden_size: int = field(default=64, metadata={"help": "LLM hidden size"})
    num_layers: int = field(default=2, metadata={"help": "LLM decoder layers"})
    num_heads: int = field(default=4, metadata={"help": "LLM attention heads"})
    vision_hidden_size: int = field(default=32, metadata={"help": "CLIP vision width"})
    vision_layers: int = field(default=3, metadata={"help": "CLIP vision layers (>= 2 for select layer -2)"})
    image_size: int = field(default=336, metadata={"help": "CLIP input resolution"})
    patch_size: int = field(default=14, metadata={"help": "CLIP patch size"})
    n_pretrain: int = field(default=32, metadata={"help": "caption pairs in pretrain.json"})
    n_finetune: int = field(default=24, metadata={"help": "conversations in finetune.json"})
    n_questions: int = field(default=6, metadata={"help": "questions in questions.jsonl"})
    seed: int = field(default=0, metadata={"help": "seeds weights, pictures and texts"})

    def __post_init__(self) -> None:
        if self.vision_layers < 2:
            raise ValueError(f"vision_layers={self.vision_layers}: LLaVA selects layer -2, so at least 2 are needed")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")


@dataclass
class FixturePaths:
    """Where `write_fixtures` put everything."""

    root: Path
    llm: Path
    clip: Path
    mistral: Path
    images: Path
    pretrain: Path
    pretrain_levels: Path
    finetune: Path
    questions: Path
    pretrain_patches: Path | None = None  # pretrain.json plus each shape's patch labels
    heldout_patches: Path | None = None  # the fine-tuning and question pictures, captioned and labelled


def tokenizer_dir() -> Path:
    """The bundled Llama-2 tokenizer folder (see aligngpt_plugin/assets/README.md)."""
    return Path(str(resources.files("aligngpt_plugin") / "assets" / "llama_tokenizer"))


def save_with_tokenizer(model, out: Path) -> Path:
    """Save a tiny LLM as a hub checkpoint is laid out, with the bundled tokenizer.

    Args:
        model: the causal LM.
        out: the folder (created).
    Returns:
        `out`.
    """
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_length=4096).save_pretrained(out)
    for f in tokenizer_dir().iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def write_tiny_llm(out: Path, spec: FixtureSpec) -> Path:
    """A random-init LlamaForCausalLM with Vicuna-v1.5's tokenizer, saved as a hub checkpoint would be.

    Args:
        out: the folder to write.
        spec: sizes and seed.
    Returns:
        `out`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    return save_with_tokenizer(model, out)


def write_tiny_mistral(out: Path, spec: FixtureSpec) -> Path:
    """A random-init MistralForCausalLM (the other language backbone LLaVA ships) with the same tokenizer.

    Args:
        out: the folder to write.
        spec: sizes and seed.
    Returns:
        `out`.
    """
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(spec.seed + 2)
    config = MistralConfig(
        vocab_size=32000, hidden_size=spec.hidden_size, intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=max(1, spec.num_heads // 2), sliding_window=4096, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    return save_with_tokenizer(model, out)


def vision_module_args(clip: str | Path, pretrain_mm_mlp_adapter: str | Path | None = None):
    """The `model_args` LLaVA's `initialize_vision_modules` reads, as LLaVA-1.5's scripts set them
    (CLIP's second-last layer, patch tokens, the 2-layer GELU projector) for the vision tower `clip`.

    Args:
        clip: the vision tower (folder or hub id).
        pretrain_mm_mlp_adapter: a stage-1 `mm_projector.bin` to load, or None.
    Returns:
        A SimpleNamespace with LLaVA's ModelArguments fields.
    """
    from types import SimpleNamespace

    return SimpleNamespace(
        vision_tower=str(clip), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None if pretrain_mm_mlp_adapter is None else str(pretrain_mm_mlp_adapter),
        mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")


def _clip_init_std(name: str, config) -> float | None:
    """The standard deviation transformers' CLIP initialisation gives parameter `name` (initializer_factor 1);
    None for what it sets to a constant (norms, biases, logit scale)."""
    tower = config.text_config if name.startswith("text") else config.vision_config
    width, layers = tower.hidden_size, tower.num_hidden_layers
    if name.endswith("class_embedding"):
        return width ** -0.5
    if name.endswith("embedding.weight"):  # token, position and patch embeddings: initializer_range
        return 0.02
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc2.weight")):
        return width ** -0.5 * (2 * layers) ** -0.5
    if name.endswith("out_proj.weight") or name.endswith("projection.weight"):
        return width ** -0.5
    if name.endswith("fc1.weight"):
        return (2 * width) ** -0.5
    return None


def redraw_clip_weights(model, seed: int):
    """Draw `model`'s random weights again, with CLIP's own laws, from one seeded generator in name order.
    transformers 4.57 and 5.x draw CLIP's initial weights in a different order (same laws, other numbers),
    and the fixtures must be the same on both lines: tests/test_reference_run.py compares whole runs across
    them.

    Args:
        model: a CLIPModel (changed in place).
        seed: the generator's seed.
    Returns:
        `model`.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            std = _clip_init_std(name, model.config)
            if std is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def write_tiny_clip(out: Path, spec: FixtureSpec) -> Path:
    """A random-init CLIPModel (text and vision, like openai/clip-vit-large-patch14-336) and its processor.

    Args:
        out: the folder to write.
        spec: sizes and seed.
    Returns:
        `out`.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    torch.manual_seed(spec.seed + 1)
    width = spec.vision_hidden_size
    config = CLIPConfig(
        text_config=dict(hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=width, intermediate_size=width * 2,
                           num_hidden_layers=spec.vision_layers, num_attention_heads=4,
                           image_size=spec.image_size, patch_size=spec.patch_size),
        projection_dim=width,
    )
    model = redraw_clip_weights(CLIPModel(config), spec.seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        resample=3,  # bicubic, as the OpenAI checkpoints
    ).save_pretrained(out)
    return out


@dataclass
class ShapePicture:
    """What one picture shows; the caption and the answers are derived from it."""

    file: str
    colour: str
    shape: str
    place: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the saved file
    size: tuple[int, int]

    @property
    def caption(self) -> str:
        return f"A {self.colour} {self.shape} in the {self.place} of the picture."


def draw_picture(path: Path, colour: str, shape: str, place: str, size: tuple[int, int],
                 background: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Draw one shape on a plain background and save it (format from the suffix).

    Args:
        path: the file (.jpg or .png).
        colour: a key of COLOURS.
        shape: "circle", "square" or "triangle".
        place: a key of PLACES (where the shape's centre goes).
        size: (width, height) in pixels.
        background: the RGB background.
    Returns:
        The shape's box (x0, y0, x1, y1) in pixels.
    """
    from PIL import Image, ImageDraw

    w, h = size
    cx, cy = PLACES[place][0] * w, PLACES[place][1] * h
    r = min(w, h) * 0.18
    box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92) if path.suffix == ".jpg" else image.save(path)
    return box


def write_pictures(folder: Path, n: int, rng: random.Random, prefix: str) -> list[ShapePicture]:
    """Draw `n` pictures of one random shape each.

    Args:
        folder: where to save them.
        n: how many.
        rng: the random source (colour, shape, place, size, background).
        prefix: the file names' prefix (`<prefix>_00000.jpg`; every fifth is a PNG).
    Returns:
        What each picture shows, in order.
    """
    pictures = []
    for i in range(n):
        colour, shape, place = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))
        size = (rng.choice((224, 280, 336, 400, 480)), rng.choice((224, 280, 336, 400)))
        background = rng.choice(((255, 255, 255), (20, 20, 20), (200, 200, 200)))
        name = f"{prefix}_{i:05d}." + ("png" if i % 5 == 4 else "jpg")
        box = draw_picture(folder / name, colour, shape, place, size, background)
        pictures.append(ShapePicture(name, colour, shape, place, box, size))
    return pictures


def plain_record(idx: str, pic: ShapePicture, rng: random.Random) -> dict:
    """A stage-1 record: a captioning prompt and the picture's caption.

    Args:
        idx: the record's id.
        pic: the picture.
        rng: picks the prompt.
    Returns:
        A LLaVA record (id, image, conversations).
    """
    return {
        "id": idx,
        "image": pic.file,
        "conversations": [
            {"from": "human", "value": rng.choice(PLAIN_PROMPTS)},
            {"from": "gpt", "value": pic.caption},
        ],
    }


def conversation_record(idx: str, pic: ShapePicture, rng: random.Random) -> dict:
    """A stage-2 record: 1 to 3 questions about the picture's colour, shape, place or content.

    Args:
        idx: the record's id.
        pic: the picture.
        rng: picks the questions and where `<image>` goes.
    Returns:
        A LLaVA record (id, image, conversations).
    """
    qa = [
        ("What colour is the shape?", f"It is {pic.colour}."),
        ("What shape is in the picture?", f"A {pic.shape}."),
        ("Where is the shape?", f"In the {pic.place}."),
        ("Describe the picture.", pic.caption),
    ]
    rng.shuffle(qa)
    turns = qa[: rng.randint(1, 3)]
    conversations = []
    for j, (q, a) in enumerate(turns):
        if j == 0:
            q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
        conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": idx, "image": pic.file, "conversations": conversations}


def text_only_record(idx: str, rng: random.Random) -> dict:
    """A stage-2 record without an image: a small sum.

    Args:
        idx: the record's id.
        rng: picks the numbers.
    Returns:
        A LLaVA record (id, conversations).
    """
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return {
        "id": idx,
        "conversations": [
            {"from": "human", "value": f"What is {a} plus {b}?"},
            {"from": "gpt", "value": f"{a} plus {b} is {a + b}."},
        ],
    }


def write_dataset(data: Path, spec: FixtureSpec) -> tuple[Path, Path, Path]:
    """Pictures plus the three files LLaVA's training and eval code read (and pretrain_levels.json, pictures.json).

    Args:
        data: the data folder.
        spec: counts and seed.
    Returns:
        (pretrain.json, finetune.json, questions.jsonl).
    """
    rng = random.Random(spec.seed)
    images = data / "images"
    pre = write_pictures(images, spec.n_pretrain, rng, "pretrain")
    pretrain = [plain_record(f"pretrain_{i:05d}", p, rng) for i, p in enumerate(pre)]

    n_text = max(1, spec.n_finetune // 6)
    ft = write_pictures(images, spec.n_finetune - n_text, rng, "finetune")
    finetune = [conversation_record(f"finetune_{i:05d}", p, rng) for i, p in enumerate(ft)]
    finetune += [text_only_record(f"text_{i:05d}", rng) for i in range(n_text)]
    rng.shuffle(finetune)

    qs = write_pictures(images, spec.n_questions, rng, "question")
    questions = [
        {"question_id": i, "image": p.file, "text": f"What colour is the shape?\n{SHORT_ANSWER}",
         "answer": p.colour, "category": "colour"}
        for i, p in enumerate(qs)
    ]

    paths = data / "pretrain.json", data / "finetune.json", data / "questions.jsonl"
    paths[0].write_text(json.dumps(pretrain, indent=1))
    paths[1].write_text(json.dumps(finetune, indent=1))
    paths[2].write_text("".join(json.dumps(q) + "\n" for q in questions))
    levelled = [{**r, "align_level": i % 8} for i, r in enumerate(pretrain)]
    (data / "pretrain_levels.json").write_text(json.dumps(levelled, indent=1))
    meta = {p.file: asdict(p) for p in pre + ft + qs}
    (data / "pictures.json").write_text(json.dumps(meta, indent=1))
    return paths


def shape_labels(pic: ShapePicture) -> list[dict]:
    """The picture's patch labels: its colour and its shape, both over the shape's region, given as a
    box (square), a polygon (triangle) or a compressed COCO RLE mask (circle), drawn as `draw_picture` does.

    Args:
        pic: the picture.
    Returns:
        Two `patch_labels` entries, {"phrase": ..., "box" or "mask": ...}.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from aligngpt_plugin.core.patch_geometry import encode_rle

    if pic.shape == "square":
        region = {"box": list(pic.box)}
    elif pic.shape == "triangle":
        x0, y0, x1, y1 = pic.box
        cx = PLACES[pic.place][0] * pic.size[0]
        region = {"mask": [[cx, y0, x1, y1, x0, y1]]}
    else:
        canvas = Image.new("1", tuple(pic.size), 0)
        ImageDraw.Draw(canvas).ellipse(pic.box, fill=1)
        region = {"mask": encode_rle(np.array(canvas, dtype=bool))}
    return [{"phrase": pic.colour, **region}, {"phrase": pic.shape, **region}]


def write_patch_labels(data: Path, seed: int = 0) -> tuple[Path, Path]:
    """`pretrain_patches.json` (pretrain.json with `patch_labels`) and `heldout_patches.json` (the other
    pictures as labelled caption records, for aligngpt-analyze on images the projector never saw).

    Args:
        data: the data folder `write_dataset` wrote.
        seed: seeds the held-out records' prompts.
    Returns:
        The two files.
    """
    rng = random.Random(seed)
    pictures = {name: ShapePicture(**{**m, "box": tuple(m["box"]), "size": tuple(m["size"])})
                for name, m in json.loads((data / "pictures.json").read_text()).items()}
    pretrain = json.loads((data / "pretrain.json").read_text())
    labelled = [{**r, "patch_labels": shape_labels(pictures[r["image"]])} for r in pretrain]
    heldout = [{**plain_record(name.split(".")[0], pic, rng), "patch_labels": shape_labels(pic)}
               for name, pic in pictures.items() if not name.startswith("pretrain_")]
    paths = data / "pretrain_patches.json", data / "heldout_patches.json"
    paths[0].write_text(json.dumps(labelled, indent=1))
    paths[1].write_text(json.dumps(heldout, indent=1))
    return paths


def write_fixtures(root: str | Path, spec: FixtureSpec | None = None) -> FixturePaths:
    """Write the tiny LLM, the tiny CLIP and the tiny dataset under `root` and return their paths.

    Writing again over an existing folder replaces what was there with identical content (same seed).

    Args:
        root: the fixtures' folder.
        spec: sizes, counts and seed (default FixtureSpec()).
    Returns:
        The FixturePaths.
    """
    spec = spec or FixtureSpec()
    root = Path(root)
    write_tiny_llm(root / "llm", spec)
    write_tiny_mistral(root / "mistral", spec)
    write_tiny_clip(root / "clip", spec)
    write_dataset(root / "data", spec)
    (root / "fixture_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    write_patch_labels(root / "data", spec.seed)
    return fixture_paths(root)


def fixture_paths(root: str | Path) -> FixturePaths:
    """The paths of fixtures written under `root` (by `write_fixtures` or `aligngpt-fixtures`).

    Args:
        root: the fixtures' folder.
    Returns:
        The FixturePaths.
    """
    root, data = Path(root), Path(root) / "data"
    return FixturePaths(root, root / "llm", root / "clip", root / "mistral", data / "images", data / "pretrain.json",
                        data / "pretrain_levels.json", data / "finetune.json", data / "questions.jsonl",
                        data / "pretrain_patches.json", data / "heldout_patches.json")
